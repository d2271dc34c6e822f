//! Optimisers and the learning-rate schedule, over [`Params`]: a step
//! reaches each parameter, gradient and moment by its handle (the moments
//! are kept in the parameters' layout), not by name.
//!
//! Both optimisers follow PyTorch's update formulas (`torch.optim.SGD` with
//! `dampening = 0`, `torch.optim.AdamW`), so hyper-parameters from papers and
//! reference implementations transfer unchanged:
//!
//! - [`Sgd`]: `d = g + wd·w`; `buf = μ·buf + d` (`buf = d` on the first step);
//!   `w −= lr·buf`, or with Nesterov `w −= lr·(d + μ·buf)`.
//! - [`AdamW`]: `w −= lr·wd·w` (decoupled decay); `m = β₁m + (1−β₁)g`;
//!   `v = β₂v + (1−β₂)g²`; `w −= lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)`.
//!
//! **Weight decay is applied only to tensors with two or more dimensions**
//! (linear weights). Biases and other 1-D tensors (e.g. SigLIP's
//! `loss.t_prime` / `loss.bias`) are never decayed: shrinking them toward zero
//! has no regularising effect and, for the temperature, changes the loss.
//! This matches the common "no decay on bias/norm" parameter groups of
//! SimCLR/BYOL/ViT training recipes.
//!
//! The learning rate is an argument of [`Optimizer::step`] (normally
//! [`CosineSchedule::lr`] of the step index); the `lr` field of each optimiser
//! is the base rate a caller hands to the schedule.
//!
//! A step is atomic: every gradient is validated (known name, same shape,
//! finite) before any parameter or buffer is written, so a bad gradient leaves
//! the state untouched. Parameters without a gradient are skipped (as PyTorch
//! skips `grad is None`), their buffers untouched.

use std::fmt;
use std::str::FromStr;

use ndarray::{ArrayD, Zip};

use super::params::{Params, ParamsError};

/// Errors of optimiser steps, checkpoints and configuration.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A gradient or buffer names an unknown parameter or has the wrong shape.
    #[error(transparent)]
    Params(#[from] ParamsError),

    /// NaN or ±Inf in a gradient (or loaded optimiser state).
    #[error("'{0}' holds NaN or infinite values")]
    NonFinite(String),

    /// A hyper-parameter is outside its domain.
    #[error("invalid {name} = {value}: must be {requirement}")]
    InvalidParameter {
        name: &'static str,
        value: f64,
        requirement: &'static str,
    },

    /// Optimiser state that cannot be loaded.
    #[error("invalid optimiser state: {0}")]
    InvalidState(String),

    /// An `--optimizer` value that is not a known optimiser.
    #[error("unknown optimizer {0:?} (expected \"sgd\" or \"adamw\")")]
    UnknownKind(String),
}

/// Result alias for this module.
pub type Result<T, E = OptimError> = std::result::Result<T, E>;

/// An optimiser updating a [`Params`] in place from gradients of the same names.
///
/// `Send` so that a [`Trainer`](super::trainer::Trainer) can move to another
/// thread (the C ABI keeps trainers in a process-wide handle registry).
pub trait Optimizer: Send {
    /// One update with learning rate `lr` (see the module docs for the
    /// formulas). Parameters missing from `grads` are left as they are.
    fn step(&mut self, params: &mut Params, grads: &Params, lr: f32) -> Result<()>;

    /// The optimiser's internal state as named tensors, for checkpoints.
    fn state(&self) -> Params;

    /// Restores state produced by [`Optimizer::state`]. Names that do not
    /// belong to this optimiser are ignored, so a checkpoint may keep model
    /// and optimiser tensors in one map.
    fn load_state(&mut self, state: &Params) -> Result<()>;
}

fn check_hyper(name: &'static str, value: f32, ok: bool, requirement: &'static str) -> Result<()> {
    if ok && value.is_finite() {
        Ok(())
    } else {
        Err(OptimError::InvalidParameter {
            name,
            value: f64::from(value),
            requirement,
        })
    }
}

/// `got` must have `expected`'s shape; `name` (built only on a mismatch)
/// says which tensor.
fn check_shape(
    name: impl FnOnce() -> String,
    got: &ArrayD<f32>,
    expected: &ArrayD<f32>,
) -> Result<()> {
    if got.shape() != expected.shape() {
        return Err(ParamsError::Shape {
            name: name(),
            got: got.shape().to_vec(),
            expected: expected.shape().to_vec(),
        }
        .into());
    }
    Ok(())
}

/// Checks every gradient against `params` before anything is written.
fn validate_grads(params: &Params, grads: &Params) -> Result<()> {
    for (id, name, g) in grads.iter_ids() {
        check_shape(|| name.to_owned(), g, params.get_by(id, name)?)?;
        if g.iter().any(|v| !v.is_finite()) {
            return Err(OptimError::NonFinite(name.to_owned()));
        }
    }
    Ok(())
}

/// Checks the buffers (`{kind}.{param}`, restored from a checkpoint) of
/// every parameter with a gradient against that parameter. First puts the
/// buffers in the parameters' layout, so that the step reaches them by
/// handle (a no-op after the first step).
fn check_buffers(buffers: &mut Params, kind: &str, params: &Params, grads: &Params) -> Result<()> {
    if !buffers.same_layout(params) {
        *buffers = buffers.relaid_like(params);
    }
    for (id, name, buf) in buffers.iter_ids() {
        if grads.get_by(id, name).is_err() {
            continue;
        }
        check_shape(|| format!("{kind}.{name}"), buf, params.get_by(id, name)?)?;
    }
    Ok(())
}

fn decays(w: &ArrayD<f32>) -> bool {
    w.ndim() >= 2
}

fn state_entries(state: &Params, prefix: &str) -> Result<Vec<(String, ArrayD<f32>)>> {
    state
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|p| (k, p, v)))
        .map(|(full, param, v)| {
            if param.is_empty() {
                return Err(OptimError::InvalidState(format!(
                    "'{full}' names no parameter"
                )));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(OptimError::NonFinite(full.to_owned()));
            }
            Ok((param.to_owned(), v.clone()))
        })
        .collect()
}

// ---------------------------------------------------------------------- SGD

/// Stochastic gradient descent with momentum, PyTorch semantics
/// (`dampening = 0`); weight decay only on tensors with ≥ 2 dimensions.
#[derive(Debug, Clone)]
pub struct Sgd {
    /// Base learning rate (for the schedule; `step` uses its `lr` argument).
    pub lr: f32,
    /// Momentum `μ ∈ [0, 1)`; 0 is plain SGD.
    pub momentum: f32,
    /// L2 penalty coefficient added to the gradient (`g + wd·w`).
    pub weight_decay: f32,
    /// Nesterov momentum (needs `momentum > 0`).
    pub nesterov: bool,
    /// Momentum buffers by parameter name (empty until the first step).
    pub momentum_buffers: Params,
}

impl Sgd {
    pub fn new(lr: f32, momentum: f32, weight_decay: f32, nesterov: bool) -> Self {
        Self {
            lr,
            momentum,
            weight_decay,
            nesterov,
            momentum_buffers: Params::new(),
        }
    }

    fn validate(&self, lr: f32) -> Result<()> {
        check_hyper("lr", lr, lr >= 0.0, "finite and ≥ 0")?;
        check_hyper(
            "momentum",
            self.momentum,
            (0.0..1.0).contains(&self.momentum),
            "in [0, 1)",
        )?;
        check_hyper(
            "weight_decay",
            self.weight_decay,
            self.weight_decay >= 0.0,
            "finite and ≥ 0",
        )?;
        if self.nesterov && self.momentum <= 0.0 {
            return Err(OptimError::InvalidParameter {
                name: "momentum",
                value: f64::from(self.momentum),
                requirement: "> 0 with Nesterov",
            });
        }
        Ok(())
    }
}

impl Default for Sgd {
    /// `lr = 0.05`, `momentum = 0.9`, `weight_decay = 1e-4` (no Nesterov).
    fn default() -> Self {
        Self::new(0.05, 0.9, 1e-4, false)
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut Params, grads: &Params, lr: f32) -> Result<()> {
        self.validate(lr)?;
        validate_grads(params, grads)?;
        check_buffers(&mut self.momentum_buffers, "sgd.momentum", params, grads)?;
        let (mu, wd, nesterov) = (self.momentum, self.weight_decay, self.nesterov);
        for (id, name, g) in grads.iter_ids() {
            let w = params.get_by_mut(id, name)?;
            let wd = if decays(w) { wd } else { 0.0 };
            // d = g + wd·w
            let mut d = g.clone();
            if wd != 0.0 {
                Zip::from(&mut d).and(&*w).for_each(|d, &w| *d += wd * w);
            }
            if mu == 0.0 {
                Zip::from(&mut *w).and(&d).for_each(|w, &d| *w -= lr * d);
                continue;
            }
            let buffers = &mut self.momentum_buffers;
            let buf = if buffers.get_by(id, name).is_ok() {
                let buf = buffers.get_by_mut(id, name)?;
                Zip::from(&mut *buf)
                    .and(&d)
                    .for_each(|b, &d| *b = mu * *b + d);
                buf
            } else {
                // PyTorch: buf = d on the first step (μ·0 + d).
                buffers.accumulate_at(id, name, d.clone())?;
                buffers.get_by_mut(id, name)?
            };
            if nesterov {
                Zip::from(&mut *w)
                    .and(&d)
                    .and(&*buf)
                    .for_each(|w, &d, &b| *w -= lr * (d + mu * b));
            } else {
                Zip::from(&mut *w).and(&*buf).for_each(|w, &b| *w -= lr * b);
            }
        }
        Ok(())
    }

    /// `sgd.momentum.<param>` for every parameter that has a buffer.
    fn state(&self) -> Params {
        let mut s = Params::new();
        for (name, buf) in self.momentum_buffers.iter() {
            s.insert(format!("sgd.momentum.{name}"), buf.clone());
        }
        s
    }

    fn load_state(&mut self, state: &Params) -> Result<()> {
        let mut buffers = Params::new();
        for (name, buf) in state_entries(state, "sgd.momentum.")? {
            buffers.insert(name, buf);
        }
        self.momentum_buffers = buffers;
        Ok(())
    }
}

// -------------------------------------------------------------------- AdamW

/// Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch
/// semantics; weight decay only on tensors with ≥ 2 dimensions.
///
/// One step counter is shared by all parameters (PyTorch keeps one per
/// parameter; they agree whenever every parameter gets a gradient each step).
#[derive(Debug, Clone)]
pub struct AdamW {
    /// Base learning rate (for the schedule; `step` uses its `lr` argument).
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled decay: `w −= lr·wd·w` before the Adam update.
    pub weight_decay: f32,
    /// Steps taken so far (`t` of the bias corrections).
    pub step: u64,
    /// First moments by parameter name.
    pub m: Params,
    /// Second moments by parameter name.
    pub v: Params,
}

impl AdamW {
    pub fn new(lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32) -> Self {
        Self {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step: 0,
            m: Params::new(),
            v: Params::new(),
        }
    }

    fn validate(&self, lr: f32) -> Result<()> {
        check_hyper("lr", lr, lr >= 0.0, "finite and ≥ 0")?;
        check_hyper(
            "beta1",
            self.beta1,
            (0.0..1.0).contains(&self.beta1),
            "in [0, 1)",
        )?;
        check_hyper(
            "beta2",
            self.beta2,
            (0.0..1.0).contains(&self.beta2),
            "in [0, 1)",
        )?;
        check_hyper("eps", self.eps, self.eps > 0.0, "finite and > 0")?;
        check_hyper(
            "weight_decay",
            self.weight_decay,
            self.weight_decay >= 0.0,
            "finite and ≥ 0",
        )?;
        Ok(())
    }
}

impl Default for AdamW {
    /// PyTorch's defaults except the rate: `lr = 1e-3`, `β = (0.9, 0.999)`,
    /// `ε = 1e-8`, `weight_decay = 0.01`.
    fn default() -> Self {
        Self::new(1e-3, 0.9, 0.999, 1e-8, 0.01)
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, params: &mut Params, grads: &Params, lr: f32) -> Result<()> {
        self.validate(lr)?;
        validate_grads(params, grads)?;
        check_buffers(&mut self.m, "adamw.m", params, grads)?;
        check_buffers(&mut self.v, "adamw.v", params, grads)?;
        self.step += 1;
        let t = self.step as f64;
        let (b1, b2) = (self.beta1, self.beta2);
        let bc1 = 1.0 - f64::from(b1).powf(t);
        let bc2_sqrt = (1.0 - f64::from(b2).powf(t)).sqrt();
        let step_size = (f64::from(lr) / bc1) as f32;
        let inv_bc2_sqrt = (1.0 / bc2_sqrt) as f32;
        let eps = self.eps;
        for (id, name, g) in grads.iter_ids() {
            let w = params.get_by_mut(id, name)?;
            if self.weight_decay != 0.0 && decays(w) {
                let keep = 1.0 - lr * self.weight_decay;
                w.mapv_inplace(|x| x * keep);
            }
            if self.m.get_by(id, name).is_err() {
                self.m.accumulate_at(id, name, ArrayD::zeros(g.raw_dim()))?;
                self.v.accumulate_at(id, name, ArrayD::zeros(g.raw_dim()))?;
            }
            let m = self.m.get_by_mut(id, name)?;
            let v = self.v.get_by_mut(id, name)?;
            Zip::from(&mut *w)
                .and(&mut *m)
                .and(&mut *v)
                .and(g)
                .for_each(|w, m, v, &g| {
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    let denom = v.sqrt() * inv_bc2_sqrt + eps;
                    *w -= step_size * *m / denom;
                });
        }
        Ok(())
    }

    /// `adamw.step` `[1]`, and `adamw.m.<param>`, `adamw.v.<param>` for
    /// every parameter seen so far.
    fn state(&self) -> Params {
        let mut s = Params::new();
        s.insert("adamw.step", ArrayD::from_elem(vec![1], self.step as f32));
        for (name, m) in self.m.iter() {
            s.insert(format!("adamw.m.{name}"), m.clone());
        }
        for (name, v) in self.v.iter() {
            s.insert(format!("adamw.v.{name}"), v.clone());
        }
        s
    }

    fn load_state(&mut self, state: &Params) -> Result<()> {
        let step = match state.get("adamw.step") {
            Ok(s) if s.len() == 1 => {
                let s = s.iter().next().copied().unwrap_or(f32::NAN);
                if !(s.is_finite() && s >= 0.0 && s.fract() == 0.0) {
                    return Err(OptimError::InvalidState(format!(
                        "adamw.step = {s} is not a step count"
                    )));
                }
                s as u64
            }
            Ok(s) => {
                return Err(OptimError::InvalidState(format!(
                    "adamw.step has shape {:?}, expected [1]",
                    s.shape()
                )))
            }
            Err(_) => return Err(OptimError::InvalidState("no adamw.step".to_owned())),
        };
        let mut m = Params::new();
        for (name, buf) in state_entries(state, "adamw.m.")? {
            m.insert(name, buf);
        }
        let mut v = Params::new();
        for (name, buf) in state_entries(state, "adamw.v.")? {
            v.insert(name, buf);
        }
        let m_names: Vec<&str> = m.names().collect();
        let v_names: Vec<&str> = v.names().collect();
        if m_names != v_names {
            return Err(OptimError::InvalidState(
                "adamw.m.* and adamw.v.* name different parameters".to_owned(),
            ));
        }
        for (name, mb) in m.iter() {
            check_shape(|| format!("adamw.v.{name}"), v.get(name)?, mb)?;
        }
        if step == 0 && !m.is_empty() {
            return Err(OptimError::InvalidState(
                "moments present but adamw.step = 0".to_owned(),
            ));
        }
        self.step = step;
        self.m = m;
        self.v = v;
        Ok(())
    }
}

// ----------------------------------------------------------------- schedule

/// Linear warm-up from 0 to `base_lr` over `warmup_steps`, then a half
/// cosine from `base_lr` down to `min_lr` at `total_steps`; `min_lr` after.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    pub base_lr: f32,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub min_lr: f32,
}

impl CosineSchedule {
    /// The learning rate at (0-based) `step`:
    /// `base·step/warmup` for `step < warmup`,
    /// `min + ½(base − min)(1 + cos(π·(step − warmup)/(total − warmup)))` up
    /// to `total`, and `min` from `total` on (also when `total ≤ warmup`).
    pub fn lr(&self, step: usize) -> f32 {
        let base = f64::from(self.base_lr);
        let min = f64::from(self.min_lr);
        if step < self.warmup_steps {
            return (base * step as f64 / self.warmup_steps as f64) as f32;
        }
        if step >= self.total_steps {
            return self.min_lr;
        }
        let progress =
            (step - self.warmup_steps) as f64 / (self.total_steps - self.warmup_steps) as f64;
        (min + 0.5 * (base - min) * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
    }
}

// --------------------------------------------------------------------- kind

/// Which optimiser to build (a CLI `--optimizer` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptimizerKind {
    Sgd,
    #[default]
    AdamW,
}

impl OptimizerKind {
    /// The optimiser with base rate `lr`, decay `weight_decay` and the usual
    /// defaults otherwise (SGD: momentum 0.9; AdamW: β = (0.9, 0.999), ε = 1e-8).
    pub fn build(self, lr: f32, weight_decay: f32) -> Box<dyn Optimizer> {
        match self {
            OptimizerKind::Sgd => Box::new(Sgd::new(lr, 0.9, weight_decay, false)),
            OptimizerKind::AdamW => Box::new(AdamW::new(lr, 0.9, 0.999, 1e-8, weight_decay)),
        }
    }
}

impl FromStr for OptimizerKind {
    type Err = OptimError;

    /// `"sgd"` or `"adamw"`, case-insensitive.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adamw" => Ok(OptimizerKind::AdamW),
            _ => Err(OptimError::UnknownKind(s.to_owned())),
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::AdamW => "adamw",
        })
    }
}
