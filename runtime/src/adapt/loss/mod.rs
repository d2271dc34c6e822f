//! Contrastive objectives with hand-derived gradients.
//!
//! The adaptation loop feeds two augmented views of a batch of `B` inputs
//! through the frozen encoder and the trainable head, giving raw head outputs
//! `z1, z2 ∈ R^{B×D}`. Each function here returns the loss value *and* the
//! gradient of that value with respect to its (differentiable) inputs, so the
//! loop can backpropagate into the head without an autodiff framework.
//!
//! | objective | module | paper |
//! | --- | --- | --- |
//! | NT-Xent (SimCLR), memory-bank InfoNCE (MoCo), hard negatives (HCL) | [`infonce`] | Chen et al. 2020; He et al. 2020; Robinson et al. 2021 |
//! | alignment + uniformity | [`align_uniform`] | Wang & Isola 2020 |
//! | spectral contrastive loss | [`spectral`] | HaoChen et al. 2021 |
//! | pairwise sigmoid (SigLIP) | [`sigmoid`] | Zhai et al. 2023 |
//! | BYOL regression | [`byol`] | Grill et al. 2020 |
//! | supervised contrastive (SupCon), in-batch and with a labelled bank | [`supcon`] | Khosla et al. 2020 |
//! | cross-entropy through a linear classifier (the supervised baseline) | [`cross_entropy`] | — |
//!
//! Conventions shared by every objective:
//!
//! - Inputs are 2-D views of any element type convertible to `f64` (in
//!   practice `f32` head outputs; `f64` is accepted so that finite-difference
//!   checks can perturb inputs without `f32` rounding). All arithmetic runs in
//!   `f64`; gradients are returned as `Array2<f32>`, the head's precision.
//! - Inputs are the *raw* head outputs. Objectives defined on the hypersphere
//!   L2-normalise rows internally and the returned gradient includes the
//!   normalisation's Jacobian (see [`normalize_rows_with_jacobian`]).
//! - Every input is validated: shapes, empty or too-small batches, NaN/±Inf,
//!   zero-norm rows that cannot be normalised and out-of-range
//!   hyper-parameters are reported as [`LossError`] instead of silently
//!   producing NaN gradients that would corrupt the head.
//! - Log-sum-exp style reductions subtract their maximum first, so small
//!   temperatures do not overflow.

pub mod align_uniform;
pub mod byol;
pub mod cross_entropy;
pub mod infonce;
pub mod sigmoid;
pub mod spectral;
pub mod supcon;

use std::fmt;
use std::str::FromStr;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Zip};

pub use align_uniform::align_uniform;
pub use byol::{byol, byol_symmetric, ByolOutput};
pub use cross_entropy::{cross_entropy, CrossEntropyOutput};
pub use infonce::{hcl, infonce_bank, nt_xent, HclParams};
pub use sigmoid::{sigmoid_loss, SigmoidOutput, SigmoidParams};
pub use spectral::spectral;
pub use supcon::{supcon, supcon_bank, supcon_bank_with, supcon_with, SupconParams};

/// Everything that makes a loss (or its gradient) undefined.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LossError {
    /// Inputs that must agree in shape do not.
    #[error("shape mismatch: {left} is {left_shape:?} but {right} is {right_shape:?}")]
    ShapeMismatch {
        left: &'static str,
        left_shape: [usize; 2],
        right: &'static str,
        right_shape: [usize; 2],
    },

    /// An input has no rows or no columns.
    #[error("{input} is empty (shape {shape:?})")]
    EmptyBatch {
        input: &'static str,
        shape: [usize; 2],
    },

    /// The objective needs more rows than it got (e.g. in-batch negatives
    /// need at least two samples).
    #[error("{loss} needs at least {min} rows, got {got}")]
    BatchTooSmall {
        loss: &'static str,
        min: usize,
        got: usize,
    },

    /// NaN or ±Inf in an input.
    #[error("{input} has a non-finite value ({value}) at row {row}, column {col}")]
    NonFinite {
        input: &'static str,
        row: usize,
        col: usize,
        value: f64,
    },

    /// A row that must be L2-normalised has norm zero: its direction (and the
    /// normalisation's Jacobian) is undefined.
    #[error("{input} row {row} has zero norm and cannot be L2-normalised")]
    ZeroNorm { input: &'static str, row: usize },

    /// A hyper-parameter is outside its domain (τ ≤ 0, τ⁺ ≥ 1, NaN, …).
    #[error("invalid parameter {name} = {value}: must be {requirement}")]
    InvalidParameter {
        name: &'static str,
        value: f64,
        requirement: &'static str,
    },

    /// SupCon's `nn` nearest neighbours and `fnc` cancelled candidates of
    /// an unlabelled anchor would leave it no negative (see
    /// [`supcon::SupconParams`]).
    #[error(
        "{loss}: nn={nn} neighbours + fnc={fnc} cancelled leave unlabelled anchor {anchor} no \
         negative among its {others} other candidates (need nn + fnc < {others}: a larger \
         batch or bank, or smaller nn/fnc)"
    )]
    NoNegatives {
        loss: &'static str,
        anchor: usize,
        nn: usize,
        fnc: usize,
        others: usize,
    },

    /// A `--loss` specification could not be parsed (see [`Objective`]).
    #[error("invalid loss specification {spec:?}: {reason}")]
    InvalidObjective { spec: String, reason: String },
}

/// Result alias for this module.
pub type Result<T, E = LossError> = std::result::Result<T, E>;

/// Value and gradients of a two-view loss whose two inputs are both
/// differentiable (NT-Xent, HCL, align-uniform, spectral).
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The loss value (mean over the batch, see each objective).
    pub value: f64,
    /// ∂value/∂z1, same shape as `z1`.
    pub grad_z1: Array2<f32>,
    /// ∂value/∂z2, same shape as `z2`.
    pub grad_z2: Array2<f32>,
}

/// Value and gradient of a loss with a single differentiable input; the other
/// inputs are constants (MoCo keys and queue, BYOL targets).
#[derive(Debug, Clone)]
pub struct GradOutput {
    /// The loss value.
    pub value: f64,
    /// Gradient with respect to the differentiable input, same shape.
    pub grad: Array2<f32>,
}

/// Rows `u_i = z_i / ‖z_i‖` together with what the backward pass needs.
///
/// For `u = z/‖z‖` the Jacobian is `∂u/∂z = (I − u uᵀ)/‖z‖` (symmetric), so
/// an upstream gradient `g = ∂L/∂u` pulls back to
/// `∂L/∂z = (g − u (uᵀg)) / ‖z‖`: the radial component is removed (scaling a
/// row does not change its direction) and the rest is divided by the norm.
#[derive(Debug, Clone)]
pub struct NormalizedRows {
    unit: Array2<f64>,
    norms: Array1<f64>,
}

impl NormalizedRows {
    /// The unit rows `u`.
    pub fn unit(&self) -> ArrayView2<'_, f64> {
        self.unit.view()
    }

    /// The original row norms `‖z_i‖`.
    pub fn norms(&self) -> ArrayView1<'_, f64> {
        self.norms.view()
    }

    /// Pulls `grad_unit = ∂L/∂u` back to `∂L/∂z` (see the type's docs).
    ///
    /// # Panics
    /// If `grad_unit` does not have the shape of [`Self::unit`].
    pub fn backward(&self, grad_unit: ArrayView2<'_, f64>) -> Array2<f64> {
        assert_eq!(grad_unit.dim(), self.unit.dim(), "gradient shape");
        let mut out = grad_unit.to_owned();
        Zip::from(out.rows_mut())
            .and(self.unit.rows())
            .and(&self.norms)
            .for_each(|mut g, u, &norm| {
                let radial = g.dot(&u);
                g.scaled_add(-radial, &u);
                g.mapv_inplace(|x| x / norm);
            });
        out
    }
}

/// Euclidean norm of a row, scaled so huge `f64` entries cannot overflow.
pub(crate) fn row_norm(row: ArrayView1<'_, f64>) -> f64 {
    let scale = row.iter().fold(0.0_f64, |m, x| m.max(x.abs()));
    if scale == 0.0 || !scale.is_finite() {
        return scale;
    }
    scale * row.iter().map(|x| (x / scale).powi(2)).sum::<f64>().sqrt()
}

/// Forward pass of row-wise L2 normalisation, keeping what
/// [`NormalizedRows::backward`] needs for the Jacobian.
///
/// `input` names the matrix in error messages. Fails with
/// [`LossError::ZeroNorm`] on an all-zero row (no `ε` fudge: a zero head
/// output is a bug upstream, and `g/ε` would blow up the head's weights).
pub fn normalize_rows_with_jacobian(
    z: ArrayView2<'_, f64>,
    input: &'static str,
) -> Result<NormalizedRows> {
    let mut unit = z.to_owned();
    let mut norms = Array1::zeros(z.nrows());
    for (row_index, (mut row, norm)) in unit.rows_mut().into_iter().zip(&mut norms).enumerate() {
        let n = row_norm(row.view());
        if n == 0.0 {
            return Err(LossError::ZeroNorm {
                input,
                row: row_index,
            });
        }
        row.mapv_inplace(|x| x / n);
        *norm = n;
    }
    Ok(NormalizedRows { unit, norms })
}

/// Copies an input to `f64`, rejecting NaN/±Inf.
pub(crate) fn to_f64<A: Copy + Into<f64>>(
    x: ArrayView2<'_, A>,
    input: &'static str,
) -> Result<Array2<f64>> {
    let out = x.mapv(Into::into);
    if let Some(((row, col), &value)) = out.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(LossError::NonFinite {
            input,
            row,
            col,
            value,
        });
    }
    Ok(out)
}

/// Converts a gradient to the head's precision.
pub(crate) fn to_f32(x: &Array2<f64>) -> Array2<f32> {
    x.mapv(|v| v as f32)
}

/// Fails unless `a` and `b` have the same shape.
pub(crate) fn check_same_shape<A, B>(
    left: &'static str,
    a: &ArrayView2<'_, A>,
    right: &'static str,
    b: &ArrayView2<'_, B>,
) -> Result<()> {
    if a.dim() != b.dim() {
        let (ar, ac) = a.dim();
        let (br, bc) = b.dim();
        return Err(LossError::ShapeMismatch {
            left,
            left_shape: [ar, ac],
            right,
            right_shape: [br, bc],
        });
    }
    Ok(())
}

/// Fails if `x` has no rows or columns, or fewer than `min_rows` rows.
pub(crate) fn check_batch<A>(
    loss: &'static str,
    input: &'static str,
    x: &ArrayView2<'_, A>,
    min_rows: usize,
) -> Result<()> {
    let (rows, cols) = x.dim();
    if rows == 0 || cols == 0 {
        return Err(LossError::EmptyBatch {
            input,
            shape: [rows, cols],
        });
    }
    if rows < min_rows {
        return Err(LossError::BatchTooSmall {
            loss,
            min: min_rows,
            got: rows,
        });
    }
    Ok(())
}

/// Validates a two-view pair (same shape, at least `min_rows` rows, finite)
/// and L2-normalises both.
pub(crate) fn normalized_pair<A: Copy + Into<f64>>(
    loss: &'static str,
    z1: ArrayView2<'_, A>,
    z2: ArrayView2<'_, A>,
    min_rows: usize,
) -> Result<(NormalizedRows, NormalizedRows)> {
    check_same_shape("z1", &z1, "z2", &z2)?;
    check_batch(loss, "z1", &z1, min_rows)?;
    let n1 = normalize_rows_with_jacobian(to_f64(z1, "z1")?.view(), "z1")?;
    let n2 = normalize_rows_with_jacobian(to_f64(z2, "z2")?.view(), "z2")?;
    Ok((n1, n2))
}

/// Fails unless `value` is finite and `> 0`.
pub(crate) fn check_positive(name: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(LossError::InvalidParameter {
            name,
            value,
            requirement: "finite and > 0",
        })
    }
}

/// Fails unless `value` is finite and `≥ 0`.
pub(crate) fn check_non_negative(name: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(LossError::InvalidParameter {
            name,
            value,
            requirement: "finite and >= 0",
        })
    }
}

/// Fails unless `value` is finite.
pub(crate) fn check_finite(name: &'static str, value: f64) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(LossError::InvalidParameter {
            name,
            value,
            requirement: "finite",
        })
    }
}

/// The objective selected by the `--loss` flag, with its hyper-parameters.
///
/// Specification syntax (what [`FromStr`] accepts and [`fmt::Display`]
/// writes): a name, optionally followed by `:` and comma-separated
/// `key=value` overrides, e.g. `infonce`, `infonce:tau=0.2`,
/// `align-uniform:lambda=1,t=2`, `spectral:mu=1`, `sigmoid`, `byol`,
/// `supcon:tau=0.1`, `supcon:tau=0.1,nn=1,fnc=4,uw=0.5`, `ce`.
/// Omitted parameters take the defaults below; [`fmt::Display`] leaves out
/// SupCon's `nn`, `fnc` and `uw` at their defaults, so a spec written
/// before they existed reads and prints as it did.
///
/// `Sigmoid` has no hyper-parameters: its temperature and bias are learned
/// ([`SigmoidParams`]). `Byol` needs a predictor head and a momentum target
/// network in the training loop ([`Objective::needs_predictor`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// In-batch NT-Xent ([`nt_xent`]) with temperature `tau`.
    Infonce { tau: f64 },
    /// Alignment + `lambda` × uniformity ([`align_uniform`]) with uniformity
    /// temperature `t`.
    AlignUniform { lambda: f64, t: f64 },
    /// Spectral contrastive loss ([`spectral`]) with the reference code's `mu`.
    Spectral { mu: f64 },
    /// Pairwise sigmoid loss ([`sigmoid_loss`]).
    Sigmoid,
    /// BYOL regression loss ([`byol_symmetric`]).
    Byol,
    /// Supervised contrastive loss ([`supcon_with`], [`supcon_bank_with`])
    /// with temperature `tau`: samples that share a label are positives.
    /// An unlabelled sample's positives are its other view and its `nn`
    /// nearest neighbours (default 0: its own class of one); the `fnc`
    /// next-nearest are dropped from its candidates (false-negative
    /// elimination, default 0); its term weighs `uw` (default 1). See
    /// [`supcon`](mod@supcon).
    Supcon {
        tau: f64,
        nn: usize,
        fnc: usize,
        uw: f64,
    },
    /// Cross-entropy of a linear softmax classifier on the adapted
    /// embedding ([`cross_entropy`]): the supervised fine-tuning baseline.
    /// Unlabelled samples take no part; the classifier is dropped at export.
    Ce,
}

impl Objective {
    /// The names accepted by [`FromStr`], in declaration order.
    pub const NAMES: [&'static str; 7] = [
        "infonce",
        "align-uniform",
        "spectral",
        "sigmoid",
        "byol",
        "supcon",
        "ce",
    ];

    /// Default InfoNCE temperature: 0.1, the default of the SimCLR reference
    /// implementation (0.5 was used for CIFAR-10 in some of its ablations).
    pub const DEFAULT_TAU: f64 = 0.1;
    /// Default uniformity weight (Wang & Isola use λ = 1).
    pub const DEFAULT_LAMBDA: f64 = 1.0;
    /// Default uniformity temperature (Wang & Isola recommend t = 2).
    pub const DEFAULT_T: f64 = 2.0;
    /// Default spectral `mu` (the reference code's default, 1).
    pub const DEFAULT_MU: f64 = 1.0;
    /// Default SupCon temperature: 0.1, the paper's (Khosla et al. 2020).
    pub const DEFAULT_SUPCON_TAU: f64 = 0.1;
    /// Largest `nn` / `fnc` a spec may ask for (a guard against typos such
    /// as `nn=1e9`; the loss itself refuses more than a batch can give).
    pub const MAX_SUPCON_COUNT: usize = 1 << 20;

    /// The canonical name (one of [`Self::NAMES`]).
    pub fn name(&self) -> &'static str {
        match self {
            Objective::Infonce { .. } => "infonce",
            Objective::AlignUniform { .. } => "align-uniform",
            Objective::Spectral { .. } => "spectral",
            Objective::Sigmoid => "sigmoid",
            Objective::Byol => "byol",
            Objective::Supcon { .. } => "supcon",
            Objective::Ce => "ce",
        }
    }

    /// The objective called `name`, with default hyper-parameters.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "infonce" => Objective::Infonce {
                tau: Self::DEFAULT_TAU,
            },
            "align-uniform" => Objective::AlignUniform {
                lambda: Self::DEFAULT_LAMBDA,
                t: Self::DEFAULT_T,
            },
            "spectral" => Objective::Spectral {
                mu: Self::DEFAULT_MU,
            },
            "sigmoid" => Objective::Sigmoid,
            "byol" => Objective::Byol,
            "ce" => Objective::Ce,
            "supcon" => Objective::Supcon {
                tau: Self::DEFAULT_SUPCON_TAU,
                nn: 0,
                fnc: 0,
                uw: 1.0,
            },
            _ => return None,
        })
    }

    /// SupCon's hyper-parameters, `None` for the other objectives.
    pub fn supcon_params(&self) -> Option<SupconParams> {
        match *self {
            Objective::Supcon { tau, nn, fnc, uw } => Some(SupconParams { tau, nn, fnc, uw }),
            _ => None,
        }
    }

    /// Checks the hyper-parameters' domains (τ > 0, λ ≥ 0, t > 0, μ > 0,
    /// `uw` ≥ 0).
    pub fn validate(&self) -> Result<()> {
        match *self {
            Objective::Infonce { tau } => check_positive("tau", tau),
            Objective::Supcon { tau, nn, fnc, uw } => SupconParams { tau, nn, fnc, uw }.validate(),
            Objective::AlignUniform { lambda, t } => {
                check_non_negative("lambda", lambda)?;
                check_positive("t", t)
            }
            Objective::Spectral { mu } => check_positive("mu", mu),
            Objective::Sigmoid | Objective::Byol | Objective::Ce => Ok(()),
        }
    }

    /// Whether the objective needs a predictor head on the online branch and a
    /// stop-gradient (momentum) target branch, as BYOL does.
    pub fn needs_predictor(&self) -> bool {
        matches!(self, Objective::Byol)
    }

    /// Whether the objective reads labels (with `supcon`, unlabelled
    /// samples still take part, as their own class of one; `ce` skips them).
    pub fn uses_labels(&self) -> bool {
        matches!(self, Objective::Supcon { .. } | Objective::Ce)
    }

    /// Whether the objective trains a classifier over the labels' classes
    /// (`ce`), so the run must know how many classes there are.
    pub fn needs_classes(&self) -> bool {
        matches!(self, Objective::Ce)
    }

    /// Whether the objective draws negatives from a memory bank of momentum
    /// keys when the run has one (`bank_size > 0`).
    pub fn uses_bank(&self) -> bool {
        matches!(self, Objective::Infonce { .. } | Objective::Supcon { .. })
    }

    /// The parameter names [`FromStr`] accepts, in spec order.
    fn keys(&self) -> &'static [&'static str] {
        match self {
            Objective::Infonce { .. } => &["tau"],
            Objective::Supcon { .. } => &["tau", "nn", "fnc", "uw"],
            Objective::AlignUniform { .. } => &["lambda", "t"],
            Objective::Spectral { .. } => &["mu"],
            Objective::Sigmoid | Objective::Byol | Objective::Ce => &[],
        }
    }

    /// The hyper-parameters as `(key, value)` pairs in spec order, as
    /// [`fmt::Display`] writes them: SupCon's `nn`, `fnc`, `uw` only when
    /// they differ from their defaults.
    fn params(&self) -> Vec<(&'static str, String)> {
        match *self {
            Objective::Infonce { tau } => vec![("tau", tau.to_string())],
            Objective::Supcon { tau, nn, fnc, uw } => {
                let mut out = vec![("tau", tau.to_string())];
                if nn != 0 {
                    out.push(("nn", nn.to_string()));
                }
                if fnc != 0 {
                    out.push(("fnc", fnc.to_string()));
                }
                if uw != 1.0 {
                    out.push(("uw", uw.to_string()));
                }
                out
            }
            Objective::AlignUniform { lambda, t } => {
                vec![("lambda", lambda.to_string()), ("t", t.to_string())]
            }
            Objective::Spectral { mu } => vec![("mu", mu.to_string())],
            Objective::Sigmoid | Objective::Byol | Objective::Ce => Vec::new(),
        }
    }

    /// Sets parameter `key` to the number `value`; `Ok(false)` if the
    /// objective has no such parameter. Counts (`nn`, `fnc`) must be
    /// non-negative integers of at most [`Self::MAX_SUPCON_COUNT`].
    fn set_param(&mut self, key: &str, value: f64) -> Result<bool> {
        let count = |name: &'static str| {
            if value.is_finite()
                && value >= 0.0
                && value.fract() == 0.0
                && value <= Self::MAX_SUPCON_COUNT as f64
            {
                Ok(value as usize)
            } else {
                Err(LossError::InvalidParameter {
                    name,
                    value,
                    requirement: "an integer from 0 to 1048576",
                })
            }
        };
        let slot = match (self, key) {
            (Objective::Infonce { tau } | Objective::Supcon { tau, .. }, "tau") => tau,
            (Objective::Supcon { nn, .. }, "nn") => {
                *nn = count("nn")?;
                return Ok(true);
            }
            (Objective::Supcon { fnc, .. }, "fnc") => {
                *fnc = count("fnc")?;
                return Ok(true);
            }
            (Objective::Supcon { uw, .. }, "uw") => uw,
            (Objective::AlignUniform { lambda, .. }, "lambda") => lambda,
            (Objective::AlignUniform { t, .. }, "t") => t,
            (Objective::Spectral { mu }, "mu") => mu,
            _ => return Ok(false),
        };
        *slot = value;
        Ok(true)
    }
}

impl fmt::Display for Objective {
    /// Writes the canonical spec, e.g. `infonce:tau=0.1`; parsing it back
    /// gives the same objective.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        for (i, (key, value)) in self.params().into_iter().enumerate() {
            let sep = if i == 0 { ':' } else { ',' };
            write!(f, "{sep}{key}={value}")?;
        }
        Ok(())
    }
}

impl FromStr for Objective {
    type Err = LossError;

    /// Parses `name[:key=value[,key=value…]]` and validates the result.
    fn from_str(spec: &str) -> Result<Self> {
        let invalid = |reason: String| LossError::InvalidObjective {
            spec: spec.to_string(),
            reason,
        };
        let (name, params) = match spec.trim().split_once(':') {
            Some((name, params)) => (name.trim(), Some(params)),
            None => (spec.trim(), None),
        };
        let mut objective = Self::from_name(name).ok_or_else(|| {
            invalid(format!(
                "unknown loss {name:?}; expected one of {}",
                Self::NAMES.join(", ")
            ))
        })?;
        for item in params.into_iter().flat_map(|p| p.split(',')) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| invalid(format!("expected key=value, got {item:?}")))?;
            let (key, value) = (key.trim(), value.trim());
            let parsed: f64 = value
                .parse()
                .map_err(|_| invalid(format!("{key}: {value:?} is not a number")))?;
            let known = objective.keys();
            if !objective.set_param(key, parsed)? {
                return Err(invalid(format!(
                    "{name} has no parameter {key:?} (parameters: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
        objective.validate()?;
        Ok(objective)
    }
}
