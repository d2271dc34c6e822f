//! Named trainable tensors: the one currency the adaptation pieces exchange.
//!
//! Layers read their weights from a [`Params`] by name and return gradients as
//! another [`Params`] with the same names; the optimiser, the momentum (EMA)
//! copy, checkpoints and the ONNX export all work on that map. Keeping the
//! state in one ordered map (as candle's `VarMap` does) means a checkpoint or
//! an export can never miss a tensor a layer uses.
//!
//! Names used by edgeclr (row-major, `weight` is `[out, in]` as in PyTorch):
//!
//! | name | shape | what |
//! | --- | --- | --- |
//! | `adapter.down.weight`, `adapter.down.bias` | `[r, d]`, `[r]` | residual bottleneck adapter, down projection |
//! | `adapter.up.weight`, `adapter.up.bias` | `[d, r]`, `[d]` | up projection, zero at init (adapter = identity) |
//! | `head.fc1.*`, `head.fc2.*` | `[h, d]`, `[o, h]` | projection head (loss only, dropped at export) |
//! | `predictor.fc1.*`, `predictor.fc2.*` | `[h, o]`, `[o, h]` | BYOL predictor |
//! | `loss.t_prime`, `loss.bias` | `[1]` | SigLIP temperature and bias |
//! | `loss.classifier.weight`, `loss.classifier.bias` | `[C, d]`, `[C]` | `ce`'s softmax classifier (dropped at export) |

use std::collections::BTreeMap;

use ndarray::{ArrayD, ArrayViewD, Zip};

/// Errors in parameter bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("no parameter named '{0}'")]
    Missing(String),
    #[error("parameter '{name}' has shape {got:?}, expected {expected:?}")]
    Shape {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("parameter '{0}' holds NaN or infinite values")]
    NonFinite(String),
}

/// An ordered map from parameter name to tensor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(BTreeMap<String, ArrayD<f32>>);

impl Params {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, value: ArrayD<f32>) {
        self.0.insert(name.into(), value);
    }

    pub fn get(&self, name: &str) -> Result<&ArrayD<f32>, ParamsError> {
        self.0
            .get(name)
            .ok_or_else(|| ParamsError::Missing(name.to_owned()))
    }

    pub fn get_mut(&mut self, name: &str) -> Result<&mut ArrayD<f32>, ParamsError> {
        self.0
            .get_mut(name)
            .ok_or_else(|| ParamsError::Missing(name.to_owned()))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &ArrayD<f32>)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut ArrayD<f32>)> {
        self.0.iter_mut().map(|(k, v)| (k.as_str(), v))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of scalars held.
    pub fn numel(&self) -> usize {
        self.0.values().map(|v| v.len()).sum()
    }

    /// The tensors whose names start with `prefix` (e.g. `"adapter."`).
    pub fn with_prefix(&self, prefix: &str) -> Params {
        Params(
            self.0
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// Moves every tensor of `other` into `self` (replacing same names).
    pub fn extend(&mut self, other: Params) {
        self.0.extend(other.0);
    }

    /// Zeros shaped like every tensor here (a gradient or optimiser buffer).
    pub fn zeros_like(&self) -> Params {
        Params(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), ArrayD::zeros(v.raw_dim())))
                .collect(),
        )
    }

    /// `self[name] += value` for every tensor of `other` (gradient accumulation).
    pub fn add_assign(&mut self, other: &Params) -> Result<(), ParamsError> {
        for (name, g) in other.iter() {
            let dst = self.get_mut(name)?;
            check_shape(name, dst.view(), g.view())?;
            *dst += g;
        }
        Ok(())
    }

    /// Adds every tensor of `other` into `self`, inserting names `self` lacks
    /// (summing the gradients of a parameter used more than once).
    pub fn accumulate(&mut self, other: Params) -> Result<(), ParamsError> {
        for (name, g) in other.0 {
            match self.0.get_mut(&name) {
                Some(dst) => {
                    check_shape(&name, dst.view(), g.view())?;
                    *dst += &g;
                }
                None => {
                    self.0.insert(name, g);
                }
            }
        }
        Ok(())
    }

    /// The first tensor holding NaN or ±Inf, if any: a step must never write one.
    pub fn first_non_finite(&self) -> Option<&str> {
        self.iter()
            .find(|(_, v)| v.iter().any(|x| !x.is_finite()))
            .map(|(k, _)| k)
    }

    /// Euclidean norm over all tensors (for gradient clipping and reports).
    pub fn global_norm(&self) -> f64 {
        self.0
            .values()
            .flat_map(|v| v.iter())
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt()
    }

    /// Exponential moving average toward `online`, as MoCo/BYOL's momentum
    /// encoder: `self = m·self + (1−m)·online`, over the names `self` holds.
    pub fn ema_update(&mut self, online: &Params, momentum: f32) -> Result<(), ParamsError> {
        for (name, target) in self.0.iter_mut() {
            let src = online.get(name)?;
            check_shape(name, target.view(), src.view())?;
            Zip::from(target)
                .and(src)
                .for_each(|t, &o| *t = momentum * *t + (1.0 - momentum) * o);
        }
        Ok(())
    }
}

fn check_shape(name: &str, a: ArrayViewD<f32>, b: ArrayViewD<f32>) -> Result<(), ParamsError> {
    if a.shape() != b.shape() {
        return Err(ParamsError::Shape {
            name: name.to_owned(),
            got: b.shape().to_vec(),
            expected: a.shape().to_vec(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    #[test]
    fn ema_moves_toward_online_and_checks_shapes() {
        let mut target = Params::new();
        target.insert("a", arr1(&[0.0f32, 10.0]).into_dyn());
        let mut online = Params::new();
        online.insert("a", arr1(&[1.0f32, 0.0]).into_dyn());
        target.ema_update(&online, 0.9).unwrap();
        let a = target.get("a").unwrap();
        assert!((a[[0]] - 0.1).abs() < 1e-6 && (a[[1]] - 9.0).abs() < 1e-6);
        online.insert("a", arr1(&[1.0f32]).into_dyn());
        assert!(matches!(
            target.ema_update(&online, 0.9),
            Err(ParamsError::Shape { .. })
        ));
    }

    #[test]
    fn bookkeeping() {
        let mut p = Params::new();
        p.insert("adapter.x", ArrayD::ones(vec![2, 3]));
        p.insert("head.y", ArrayD::ones(vec![4]));
        assert_eq!(p.numel(), 10);
        assert_eq!(p.with_prefix("adapter.").len(), 1);
        let mut g = p.zeros_like();
        g.add_assign(&p).unwrap();
        assert!((g.global_norm() - 10f64.sqrt()).abs() < 1e-9);
        assert!(p.first_non_finite().is_none());
        p.get_mut("head.y").unwrap()[[1]] = f32::NAN;
        assert_eq!(p.first_non_finite(), Some("head.y"));
    }
}
