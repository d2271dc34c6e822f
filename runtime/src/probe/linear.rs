//! Linear probe: multinomial logistic regression on frozen embeddings.
//!
//! The objective is scikit-learn's `LogisticRegression(C, solver="lbfgs")`
//! for the multinomial case, exactly:
//!
//! ```text
//! minimise  ½‖W‖²_F + C · Σᵢ CE(softmax(W xᵢ + b), yᵢ)
//! ```
//!
//! with the intercept `b` unpenalised, f64 arithmetic and a start from zero,
//! so a probe trained here and one trained with scikit-learn agree to solver
//! tolerance and accuracy numbers are comparable across the two.

use std::path::Path;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use serde::{Deserialize, Serialize};

use super::lbfgs::{self, LbfgsConfig, Termination};
use super::{
    accuracy_of, check_finite, check_labels, check_shape, check_unique, load_json,
    save_json_atomic, ProbeError, Result,
};
use crate::metrics::l2_normalize_rows;

const FORMAT: &str = "edgeclr-linear-probe";
const VERSION: u32 = 1;

/// Training settings of [`LinearProbe::fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct LinearProbeConfig {
    /// Inverse regularisation strength, as scikit-learn's `C`: larger means
    /// less shrinkage of the weights.
    pub c: f64,
    /// Maximum L-BFGS iterations (scikit-learn's `max_iter`).
    pub max_iter: usize,
    /// Stop when the largest gradient component of the *mean* loss
    /// (`objective / (C·n)`, the scaling scikit-learn optimises) is below
    /// this; scikit-learn's `tol`. Scaling by `n` makes the tolerance mean
    /// the same for 100 and 100 000 samples.
    pub tol: f64,
    /// L2-normalise embeddings before training (and, recorded in the probe,
    /// before every prediction), i.e. probe the hypersphere that contrastive
    /// losses actually shape.
    pub normalize: bool,
}

impl Default for LinearProbeConfig {
    /// scikit-learn's defaults, without normalisation.
    fn default() -> Self {
        Self {
            c: 1.0,
            max_iter: 1000,
            tol: 1e-4,
            normalize: false,
        }
    }
}

impl LinearProbeConfig {
    fn validate(&self) -> Result<()> {
        if !(self.c.is_finite() && self.c > 0.0) {
            return Err(ProbeError::InvalidConfig(format!(
                "C must be positive and finite, got {}",
                self.c
            )));
        }
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(ProbeError::InvalidConfig(format!(
                "tol must be non-negative and finite, got {}",
                self.tol
            )));
        }
        Ok(())
    }
}

/// How training went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitReport {
    /// L-BFGS iterations used.
    pub iterations: usize,
    /// Final value of `½‖W‖² + C·Σ CE` (unscaled).
    pub objective: f64,
    /// Whether a tolerance was met before `max_iter`.
    pub converged: bool,
    /// The precise stopping reason.
    pub termination: Termination,
}

/// The regularised softmax cross-entropy and its gradient, exposed so the
/// gradient can be checked against finite differences and the objective
/// compared with other implementations.
///
/// Parameters are laid out as the `classes × dim` weight matrix in row-major
/// order followed by the `classes` biases.
#[derive(Debug, Clone)]
pub struct SoftmaxObjective {
    x: Array2<f64>,
    labels: Vec<usize>,
    n_classes: usize,
    c: f64,
}

impl SoftmaxObjective {
    /// Validates the data and converts it to f64 once.
    pub fn new(x: ArrayView2<f32>, labels: &[usize], n_classes: usize, c: f64) -> Result<Self> {
        check_not_empty(&x)?;
        check_finite(&x, "training set")?;
        check_labels(labels, x.nrows(), n_classes)?;
        if !(c.is_finite() && c > 0.0) {
            return Err(ProbeError::InvalidConfig(format!(
                "C must be positive and finite, got {c}"
            )));
        }
        Ok(Self {
            x: x.mapv(f64::from),
            labels: labels.to_vec(),
            n_classes,
            c,
        })
    }

    /// Length of the parameter vector: `classes · (dim + 1)`.
    pub fn n_params(&self) -> usize {
        self.n_classes * (self.x.ncols() + 1)
    }

    /// Returns the objective at `params` and writes its gradient into `grad`.
    pub fn value_and_gradient(&self, params: &[f64], grad: &mut [f64]) -> Result<f64> {
        let n = self.n_params();
        if let Some(&found) = [params.len(), grad.len()].iter().find(|&&len| len != n) {
            return Err(ProbeError::ParamCount { expected: n, found });
        }
        Ok(self.evaluate(params, grad))
    }

    /// Unchecked core of [`Self::value_and_gradient`]; returns NaN (which the
    /// line search treats as a failed step) if the lengths are wrong.
    fn evaluate(&self, params: &[f64], grad: &mut [f64]) -> f64 {
        let (k, d) = (self.n_classes, self.x.ncols());
        if params.len() != self.n_params() || grad.len() != self.n_params() {
            return f64::NAN;
        }
        let (w, b) = params.split_at(k * d);
        let (grad_w, grad_b) = grad.split_at_mut(k * d);
        let (Ok(w), Ok(mut grad_w)) = (
            ArrayView2::from_shape((k, d), w),
            ArrayViewMut2::from_shape((k, d), grad_w),
        ) else {
            return f64::NAN;
        };

        // Logits become residuals softmax(z) - onehot(y) in place.
        let mut z = self.x.dot(&w.t()) + ArrayView1::from(b);
        let mut loss = 0.0;
        for (mut row, &y) in z.outer_iter_mut().zip(&self.labels) {
            let max = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            loss += lse - row[y];
            row.mapv_inplace(|v| (v - lse).exp());
            row[y] -= 1.0;
        }

        grad_w.assign(&(z.t().dot(&self.x) * self.c + w));
        for (gb, r) in grad_b.iter_mut().zip(z.sum_axis(Axis(0))) {
            *gb = self.c * r;
        }
        0.5 * w.iter().map(|v| v * v).sum::<f64>() + self.c * loss
    }
}

/// A trained linear probe: class names, weights and the provenance needed to
/// apply it to the right embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "LinearProbeFile", into = "LinearProbeFile")]
pub struct LinearProbe {
    classes: Vec<String>,
    weights: Array2<f32>,
    bias: Array1<f32>,
    /// Name of the encoder whose embeddings the probe was trained on; a probe
    /// is meaningless on another model's embedding space.
    pub model: Option<String>,
    /// Whether training used L2-normalised embeddings; if so, inputs are
    /// normalised before every prediction so train and test see the same space.
    pub normalized: bool,
}

impl LinearProbe {
    /// Trains a probe on `x` (one embedding per row) with `labels[i]` indexing
    /// into `classes`. Every class needs at least one example: an absent class
    /// has no finite optimum for its unpenalised bias.
    pub fn fit(
        x: ArrayView2<f32>,
        labels: &[usize],
        classes: Vec<String>,
        cfg: &LinearProbeConfig,
    ) -> Result<(Self, FitReport)> {
        cfg.validate()?;
        check_classes(&classes)?;
        check_not_empty(&x)?;
        check_labels(labels, x.nrows(), classes.len())?;
        let mut counts = vec![0usize; classes.len()];
        labels.iter().for_each(|&l| counts[l] += 1);
        if let Some(empty) = counts.iter().position(|&n| n == 0) {
            return Err(ProbeError::EmptyClass(classes[empty].clone()));
        }
        check_finite(&x, "training set")?;
        let objective = if cfg.normalize {
            SoftmaxObjective::new(l2_normalize_rows(x).view(), labels, classes.len(), cfg.c)?
        } else {
            SoftmaxObjective::new(x, labels, classes.len(), cfg.c)?
        };

        // Optimise the mean loss, as scikit-learn does, so `tol` is scale-free.
        let scale = 1.0 / (cfg.c * x.nrows() as f64);
        let mut params = vec![0.0; objective.n_params()];
        let lbfgs_cfg = LbfgsConfig {
            max_iter: cfg.max_iter,
            grad_tol: cfg.tol,
            ..LbfgsConfig::default()
        };
        let report = lbfgs::minimize(
            |p, g| {
                let f = objective.evaluate(p, g);
                g.iter_mut().for_each(|v| *v *= scale);
                f * scale
            },
            &mut params,
            &lbfgs_cfg,
        );

        let (k, d) = (classes.len(), x.ncols());
        let weights = Array2::from_shape_fn((k, d), |(i, j)| params[i * d + j] as f32);
        let bias = Array1::from_shape_fn(k, |i| params[k * d + i] as f32);
        let probe = Self {
            classes,
            weights,
            bias,
            model: None,
            normalized: cfg.normalize,
        };
        let fit = FitReport {
            iterations: report.iterations,
            objective: report.value / scale,
            converged: report.converged(),
            termination: report.termination,
        };
        Ok((probe, fit))
    }

    /// Embedding width the probe expects.
    pub fn dim(&self) -> usize {
        self.weights.ncols()
    }

    /// Class names; a label is an index into this list.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Label of a class name, e.g. to turn a dataset's string labels into indices.
    pub fn class_index(&self, name: &str) -> Result<usize> {
        self.classes
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| ProbeError::UnknownClass(name.to_string()))
    }

    /// The `classes × dim` weight matrix.
    pub fn weights(&self) -> ArrayView2<'_, f32> {
        self.weights.view()
    }

    /// Per-class intercepts.
    pub fn bias(&self) -> ArrayView1<'_, f32> {
        self.bias.view()
    }

    /// Class probabilities, one row per embedding.
    pub fn predict_proba(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let mut z = self.logits(x)?;
        for mut row in z.outer_iter_mut() {
            let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row.mapv_inplace(|v| v / sum);
        }
        Ok(z)
    }

    /// Most probable class per embedding (ties go to the lower index).
    pub fn predict(&self, x: ArrayView2<f32>) -> Result<Vec<usize>> {
        let z = self.logits(x)?;
        Ok(z.outer_iter().map(argmax).collect())
    }

    /// Share of embeddings whose predicted class equals the label.
    pub fn accuracy(&self, x: ArrayView2<f32>, labels: &[usize]) -> Result<f64> {
        check_labels(labels, x.nrows(), self.classes.len())?;
        Ok(accuracy_of(&self.predict(x)?, labels))
    }

    /// Writes the probe as JSON, atomically (see the crate's save convention).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        save_json_atomic(path.as_ref(), self)
    }

    /// Reads a probe written by [`Self::save`], rejecting other formats and
    /// versions with a precise error.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        load_json(path.as_ref(), FORMAT, VERSION)
    }

    fn logits(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        check_shape(&x, self.dim(), "input")?;
        check_finite(&x, "input")?;
        let z = if self.normalized {
            l2_normalize_rows(x).dot(&self.weights.t())
        } else {
            x.dot(&self.weights.t())
        };
        Ok(z + &self.bias)
    }
}

fn check_not_empty(x: &ArrayView2<f32>) -> Result<()> {
    if x.nrows() == 0 {
        return Err(ProbeError::Empty("training set"));
    }
    if x.ncols() == 0 {
        return Err(ProbeError::Empty("embedding dimension"));
    }
    Ok(())
}

fn check_classes(classes: &[String]) -> Result<()> {
    if classes.len() < 2 {
        return Err(ProbeError::InvalidConfig(format!(
            "a probe needs at least 2 classes, got {}",
            classes.len()
        )));
    }
    check_unique(classes)
}

/// Index of the largest value, the first one on ties.
fn argmax(row: ArrayView1<f32>) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// On-disk form of [`LinearProbe`]: plain nested arrays, readable from any
/// language without an ndarray-specific encoding.
#[derive(Serialize, Deserialize)]
struct LinearProbeFile {
    format: String,
    version: u32,
    dim: usize,
    classes: Vec<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    normalized: bool,
    /// One row of `dim` weights per class.
    weights: Vec<Vec<f32>>,
    bias: Vec<f32>,
}

impl From<LinearProbe> for LinearProbeFile {
    fn from(p: LinearProbe) -> Self {
        Self {
            format: FORMAT.to_string(),
            version: VERSION,
            dim: p.dim(),
            weights: p.weights.outer_iter().map(|r| r.to_vec()).collect(),
            bias: p.bias.to_vec(),
            classes: p.classes,
            model: p.model,
            normalized: p.normalized,
        }
    }
}

impl TryFrom<LinearProbeFile> for LinearProbe {
    type Error = ProbeError;

    fn try_from(f: LinearProbeFile) -> Result<Self> {
        let corrupt = |reason: String| ProbeError::Corrupt {
            format: FORMAT,
            reason,
        };
        if f.format != FORMAT || f.version != VERSION {
            return Err(corrupt(format!(
                "expected {FORMAT} version {VERSION}, found {} version {}",
                f.format, f.version
            )));
        }
        check_classes(&f.classes)?;
        if f.dim == 0 {
            return Err(corrupt("dim is 0".into()));
        }
        if f.weights.len() != f.classes.len() || f.bias.len() != f.classes.len() {
            return Err(corrupt(format!(
                "{} classes but {} weight rows and {} biases",
                f.classes.len(),
                f.weights.len(),
                f.bias.len()
            )));
        }
        if let Some(i) = f.weights.iter().position(|r| r.len() != f.dim) {
            return Err(corrupt(format!(
                "weight row {i} has {} values, expected dim = {}",
                f.weights[i].len(),
                f.dim
            )));
        }
        let flat: Vec<f32> = f.weights.into_iter().flatten().collect();
        let weights = Array2::from_shape_vec((f.classes.len(), f.dim), flat)
            .map_err(|e| corrupt(e.to_string()))?;
        check_finite(&weights.view(), "weights")?;
        let bias = Array1::from(f.bias);
        if bias.iter().any(|v| !v.is_finite()) {
            return Err(corrupt("non-finite bias".into()));
        }
        Ok(Self {
            classes: f.classes,
            weights,
            bias,
            model: f.model,
            normalized: f.normalized,
        })
    }
}
