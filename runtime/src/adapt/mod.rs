//! On-device adaptation of a small trainable head on top of a frozen encoder.
//!
//! Two augmented views of a batch go through the frozen ONNX encoder and the
//! head; a contrastive objective from [`loss`] turns the two head outputs into
//! a scalar and its analytic gradient, which the training loop backpropagates
//! into the head. Nothing here depends on an autodiff framework: the losses'
//! gradients are derived by hand and checked against finite differences in
//! `runtime/tests/losses.rs`; the encoder's own trained layers ([`tail`])
//! run on [`nn`], a small engine of ops that each know their backward.

pub mod adapted;
pub mod bank;
pub mod budget;
pub mod checkpoint;
pub mod collapse;
pub mod config;
pub mod export;
pub mod layers;
pub mod loss;
pub mod nn;
pub mod optim;
pub mod params;
pub mod resume;
pub mod session;
pub mod tail;
pub mod trainer;
pub mod views;

pub use params::{ParamId, Params, ParamsError};
