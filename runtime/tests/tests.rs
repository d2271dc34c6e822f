//! The integration tests: one binary (each test binary links tract, so one
//! link instead of fifteen), one module per concern. Run a part with a filter,
//! e.g. `cargo test --release --test integration -- losses::`.

mod common;

mod adapt_layers;
mod adapt_tail;
mod augment;
mod bad_inputs;
mod bank;
mod blocks;
mod checkpoint;
mod data;
mod errors;
mod export;
mod losses;
mod metrics;
mod model;
mod model_init;
mod nn_ops;
mod nn_torch;
mod ort_parity;
mod probe;
mod second_model;
mod session;
