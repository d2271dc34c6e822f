//! Representation diagnostics that need no labels.
//!
//! - *Alignment* and *uniformity* (Wang & Isola, "Understanding Contrastive
//!   Representation Learning through Alignment and Uniformity on the
//!   Hypersphere", ICML 2020): the two properties the contrastive loss
//!   optimises, so they show directly whether an encoder (or its quantised
//!   edge build) still does what it was trained for.
//! - *Effective rank* (RankMe, Garrido et al. 2023): the entropy of the
//!   singular-value distribution, a label-free predictor of downstream
//!   accuracy that exposes dimensional collapse.
//!
//! All reductions run in f64; inputs are validated (shape, NaN/Inf) and
//! problems reported as [`MetricsError`].

use std::fmt;

use ndarray::{s, Array2, ArrayView2, Axis};
use serde::Serialize;

/// Rows converted to f64 per matrix product; bounds the working set to a few
/// `BLOCK × dim` buffers, so 10k × 1280 embeddings never need a full f64 copy
/// or an n × n Gram matrix.
const BLOCK: usize = 512;

/// Temperature of the uniformity loss used by [`Diagnostics`]; `t = 2` is the
/// value Wang & Isola report and recommend.
pub const UNIFORMITY_T: f64 = 2.0;

/// The RankMe smoothing term added to each normalised singular value.
const RANKME_EPS: f64 = 1e-7;

/// Singular values shown by [`Diagnostics`]'s `Display`.
const SHOWN_SINGULAR_VALUES: usize = 8;

/// Everything that can make a diagnostic undefined.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// An input has no rows or no columns.
    #[error("{0} is empty")]
    Empty(&'static str),

    /// Paired inputs must have the same shape, row for row.
    #[error("shape mismatch: {left:?} vs {right:?}; paired embeddings must have the same shape")]
    ShapeMismatch {
        left: (usize, usize),
        right: (usize, usize),
    },

    /// A statistic over pairs needs at least two rows.
    #[error("{what} needs at least {need} rows, got {got}")]
    TooFewRows {
        what: &'static str,
        need: usize,
        got: usize,
    },

    /// NaN or ±Inf in the input would silently turn every statistic into NaN.
    #[error("{what} contains a non-finite value at row {row}, column {col}")]
    NonFinite {
        what: &'static str,
        row: usize,
        col: usize,
    },

    /// The uniformity temperature must be positive and finite.
    #[error("uniformity temperature must be positive and finite, got {0}")]
    InvalidTemperature(f64),
}

/// Result alias for this module.
pub type Result<T, E = MetricsError> = std::result::Result<T, E>;

/// Alignment loss with α = 2: the mean over rows of ‖xᵢ − yᵢ‖², where
/// `(xᵢ, yᵢ)` are embeddings of two views of the same input. Rows are used
/// as given; normalise them first to get the hypersphere quantity (range
/// [0, 4]).
pub fn alignment(x: ArrayView2<f32>, y: ArrayView2<f32>) -> Result<f64> {
    if x.dim() != y.dim() {
        return Err(MetricsError::ShapeMismatch {
            left: x.dim(),
            right: y.dim(),
        });
    }
    check_input(&x, "x")?;
    check_input(&y, "y")?;
    let total: f64 = x
        .iter()
        .zip(y.iter())
        .map(|(&a, &b)| {
            let d = f64::from(a) - f64::from(b);
            d * d
        })
        .sum();
    Ok(total / x.nrows() as f64)
}

/// Uniformity loss: `log mean_{i<j} exp(−t‖xᵢ − xⱼ‖²)`, lower is more uniform.
///
/// Computed over all pairs in row blocks (distances from the Gram matrix,
/// clamped at 0) with a streaming log-sum-exp in f64, so it neither
/// underflows for spread-out inputs nor needs n² memory.
pub fn uniformity(x: ArrayView2<f32>, t: f64) -> Result<f64> {
    if !(t.is_finite() && t > 0.0) {
        return Err(MetricsError::InvalidTemperature(t));
    }
    check_input(&x, "x")?;
    let n = x.nrows();
    if n < 2 {
        return Err(MetricsError::TooFewRows {
            what: "uniformity",
            need: 2,
            got: n,
        });
    }
    let sq_norms: Vec<f64> = x
        .outer_iter()
        .map(|r| r.iter().map(|&v| f64::from(v) * f64::from(v)).sum())
        .collect();
    let mut lse = LogSumExp::default();
    for i0 in (0..n).step_by(BLOCK) {
        let xi = to_f64(x.slice(s![i0..(i0 + BLOCK).min(n), ..]));
        for j0 in (i0..n).step_by(BLOCK) {
            let xj = to_f64(x.slice(s![j0..(j0 + BLOCK).min(n), ..]));
            let gram = xi.dot(&xj.t());
            for ((a, b), &dot) in gram.indexed_iter() {
                let (i, j) = (i0 + a, j0 + b);
                if j > i {
                    let d2 = (sq_norms[i] + sq_norms[j] - 2.0 * dot).max(0.0);
                    lse.add(-t * d2);
                }
            }
        }
    }
    let pairs = n as f64 * (n as f64 - 1.0) / 2.0;
    Ok(lse.value() - pairs.ln())
}

/// Singular values of `x` as given (not centred), in descending order;
/// `min(n, dim)` of them.
///
/// Computed as the square roots of the eigenvalues of the smaller Gram
/// matrix (`xᵀx` or `xxᵀ`, in f64), which costs O(n·d·min(n,d)) instead of a
/// full SVD. The price is absolute accuracy of about 1e-8·σ₁ on the smallest
/// values, which is irrelevant for spectra and effective rank.
pub fn singular_values(x: ArrayView2<f32>) -> Result<Vec<f64>> {
    check_input(&x, "x")?;
    let gram = if x.ncols() <= x.nrows() {
        // xᵀx accumulated over row blocks: d × d, never an n × d f64 copy.
        let mut g = Array2::<f64>::zeros((x.ncols(), x.ncols()));
        for block in x.axis_chunks_iter(Axis(0), BLOCK) {
            let b = to_f64(block);
            ndarray::linalg::general_mat_mul(1.0, &b.t(), &b, 1.0, &mut g);
        }
        g
    } else {
        let b = to_f64(x);
        b.dot(&b.t())
    };
    let m = gram.nrows();
    // Symmetric, so filling column-major from row-major order is a no-op.
    let gram = nalgebra::DMatrix::from_iterator(m, m, gram.iter().copied());
    // Finite input (checked above) gives a finite Gram matrix, for which the
    // symmetric QR iteration always converges.
    let mut values: Vec<f64> = gram
        .symmetric_eigenvalues()
        .iter()
        .map(|&e| e.max(0.0).sqrt())
        .collect();
    values.sort_by(|a, b| b.total_cmp(a));
    Ok(values)
}

/// RankMe effective rank: `exp(−Σ pₖ log pₖ)` with `pₖ = σₖ/‖σ‖₁ + 1e−7`.
///
/// Ranges from ≈1 (all energy in one direction: collapse) to the number of
/// singular values (isotropic). Returns 0 for an empty or all-zero spectrum,
/// which spans no direction. Expects non-negative finite values, as returned
/// by [`singular_values`]; NaN in gives NaN out.
pub fn effective_rank(singular_values: &[f64]) -> f64 {
    let total: f64 = singular_values.iter().sum();
    if singular_values.is_empty() || total == 0.0 {
        return 0.0;
    }
    let entropy: f64 = singular_values
        .iter()
        .map(|&s| {
            let p = s / total + RANKME_EPS;
            -p * p.ln()
        })
        .sum();
    entropy.exp()
}

/// Scales every row to unit Euclidean norm, projecting embeddings onto the
/// hypersphere that cosine similarity and contrastive losses work on. Zero
/// rows have no direction and stay zero. Norms are accumulated in f64.
pub fn l2_normalize_rows(x: ArrayView2<f32>) -> Array2<f32> {
    let mut out = x.to_owned();
    for mut row in out.outer_iter_mut() {
        let norm = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            row.mapv_inplace(|v| (f64::from(v) / norm) as f32);
        }
    }
    out
}

/// A label-free health report of an embedding set.
///
/// Every statistic is computed on L2-normalised rows: alignment and
/// uniformity are defined on the hypersphere, and computing the spectrum
/// there too makes the effective rank measure the spread of *directions*
/// (what cosine heads see) rather than being dominated by a few large-norm
/// embeddings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostics {
    /// Number of embeddings.
    pub n: usize,
    /// Embedding width.
    pub dim: usize,
    /// Mean squared distance between positive pairs, if pairs were given.
    pub alignment: Option<f64>,
    /// Uniformity loss at `t = 2`.
    pub uniformity: f64,
    /// RankMe effective rank, out of `min(n, dim)`.
    pub effective_rank: f64,
    /// All singular values of the normalised embeddings, descending.
    pub spectrum: Vec<f64>,
}

impl Diagnostics {
    /// Computes every diagnostic of `x`; `pairs`, if given, holds the
    /// embedding of a second view of each row of `x` (same shape).
    pub fn compute(x: ArrayView2<f32>, pairs: Option<ArrayView2<f32>>) -> Result<Self> {
        check_input(&x, "embeddings")?;
        let x = l2_normalize_rows(x);
        let alignment = match pairs {
            Some(p) => {
                if p.dim() != x.dim() {
                    return Err(MetricsError::ShapeMismatch {
                        left: x.dim(),
                        right: p.dim(),
                    });
                }
                check_input(&p, "paired embeddings")?;
                Some(alignment(x.view(), l2_normalize_rows(p).view())?)
            }
            None => None,
        };
        let uniformity = uniformity(x.view(), UNIFORMITY_T)?;
        let spectrum = singular_values(x.view())?;
        Ok(Self {
            n: x.nrows(),
            dim: x.ncols(),
            alignment,
            uniformity,
            effective_rank: effective_rank(&spectrum),
            spectrum,
        })
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "embeddings:      {} × {} (rows L2-normalised)",
            self.n, self.dim
        )?;
        match self.alignment {
            Some(a) => writeln!(
                f,
                "alignment:       {a:.4}  (mean ‖x − x⁺‖²; 0 = views identical, 4 = opposite)"
            )?,
            None => writeln!(f, "alignment:       n/a (no positive pairs given)")?,
        }
        writeln!(
            f,
            "uniformity:      {:.4}  (t = {UNIFORMITY_T}; population minimum ≈ −4 for large dim; 0 = collapsed)",
            self.uniformity
        )?;
        writeln!(
            f,
            "effective rank:  {:.1} of {}  (RankMe)",
            self.effective_rank,
            self.n.min(self.dim)
        )?;
        let top: Vec<String> = self
            .spectrum
            .iter()
            .take(SHOWN_SINGULAR_VALUES)
            .map(|s| format!("{s:.3}"))
            .collect();
        write!(f, "top singular values: {}", top.join(", "))
    }
}

/// Rejects empty inputs and NaN/Inf, naming the first offending cell.
fn check_input(x: &ArrayView2<f32>, what: &'static str) -> Result<()> {
    if x.is_empty() {
        return Err(MetricsError::Empty(what));
    }
    for (row, values) in x.outer_iter().enumerate() {
        if let Some(col) = values.iter().position(|v| !v.is_finite()) {
            return Err(MetricsError::NonFinite { what, row, col });
        }
    }
    Ok(())
}

fn to_f64(x: ArrayView2<f32>) -> Array2<f64> {
    x.mapv(f64::from)
}

/// `log Σ exp(vᵢ)` accumulated one term at a time, rescaling whenever a new
/// maximum arrives so no term under- or overflows.
#[derive(Default)]
struct LogSumExp {
    max: f64,
    sum: f64,
}

impl LogSumExp {
    fn add(&mut self, v: f64) {
        if self.sum == 0.0 {
            (self.max, self.sum) = (v, 1.0);
        } else if v > self.max {
            self.sum = self.sum * (self.max - v).exp() + 1.0;
            self.max = v;
        } else {
            self.sum += (v - self.max).exp();
        }
    }

    fn value(&self) -> f64 {
        self.max + self.sum.ln()
    }
}
