//! Pairwise sigmoid loss (SigLIP, Zhai et al. 2023).
//!
//! Why: Zhai, Mustafa, Kolesnikov & Beyer, "Sigmoid Loss for Language Image
//! Pre-Training" (ICCV 2023), replace the batch-wide softmax of InfoNCE with
//! an independent binary classification per pair (positive on the diagonal,
//! negative elsewhere). No normalisation over the batch is needed, which
//! makes the loss well behaved at the small batch sizes of on-device
//! adaptation. The paper uses it across modalities; here both sides are two
//! views from the same head.

use ndarray::{Array2, ArrayView2};

use super::{check_finite, normalized_pair, to_f32, LossError, Result};

/// The learnable temperature and bias of the sigmoid loss.
///
/// The training loop owns them and updates them with
/// [`SigmoidOutput::grad_t_prime`] / [`SigmoidOutput::grad_bias`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SigmoidParams {
    /// Log-temperature `t'`; the logit scale is `t = exp(t')`.
    pub t_prime: f64,
    /// Bias `b` added to every logit.
    pub bias: f64,
}

impl Default for SigmoidParams {
    /// The paper's initialisation: `t' = ln 10`, `b = −10`. The negative bias
    /// counters the `B² − B` negatives vs `B` positives imbalance so the
    /// initial loss is not dominated by the negatives.
    fn default() -> Self {
        Self {
            t_prime: 10f64.ln(),
            bias: -10.0,
        }
    }
}

/// Value and gradients of [`sigmoid_loss`].
#[derive(Debug, Clone)]
pub struct SigmoidOutput {
    /// The loss value.
    pub value: f64,
    /// ∂value/∂z1.
    pub grad_z1: Array2<f32>,
    /// ∂value/∂z2.
    pub grad_z2: Array2<f32>,
    /// ∂value/∂t'.
    pub grad_t_prime: f64,
    /// ∂value/∂b.
    pub grad_bias: f64,
}

/// `log σ(x)`, stable for any `x` (`= −softplus(−x)`).
fn log_sigmoid(x: f64) -> f64 {
    -((-x).max(0.0) + (-x.abs()).exp().ln_1p())
}

/// `σ(x)`, stable for any `x`.
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// SigLIP's pairwise sigmoid loss on L2-normalised rows.
///
/// `logits_ij = t·⟨u1_i, u2_j⟩ + b` with `t = exp(t')`, labels `y_ii = +1`,
/// `y_ij = −1` (`i ≠ j`), and
///
/// `L = −(1/B) Σ_i Σ_j log σ(y_ij · logits_ij)`
///
/// (normalised by the batch size, not by the `B²` pairs, as in the paper).
///
/// Gradient: `G_ij = ∂L/∂logits_ij = −y_ij·σ(−y_ij·logits_ij)/B`;
/// `∂L/∂u1 = t·G u2`, `∂L/∂u2 = t·Gᵀ u1`, `∂L/∂t' = Σ G_ij·t⟨u1_i, u2_j⟩`,
/// `∂L/∂b = Σ G_ij`; then the normalisation's Jacobian for `z1`, `z2`.
///
/// Errors: shape mismatch, empty batch, non-finite inputs, zero-norm rows,
/// non-finite parameters or `exp(t')` overflowing.
pub fn sigmoid_loss<A: Copy + Into<f64>>(
    z1: ArrayView2<'_, A>,
    z2: ArrayView2<'_, A>,
    params: SigmoidParams,
) -> Result<SigmoidOutput> {
    check_finite("t_prime", params.t_prime)?;
    check_finite("bias", params.bias)?;
    let t = params.t_prime.exp();
    if !t.is_finite() {
        return Err(LossError::InvalidParameter {
            name: "t_prime",
            value: params.t_prime,
            requirement: "small enough that exp(t_prime) is finite",
        });
    }
    let (n1, n2) = normalized_pair("sigmoid_loss", z1, z2, 1)?;
    let (u1, u2) = (n1.unit(), n2.unit());
    let b = u1.nrows();
    let inv_b = 1.0 / b as f64;

    let cos = u1.dot(&u2.t());
    let mut g = Array2::<f64>::zeros((b, b));
    let (mut total, mut grad_t_prime, mut grad_bias) = (0.0, 0.0, 0.0);
    for ((i, j), &c) in cos.indexed_iter() {
        let y = if i == j { 1.0 } else { -1.0 };
        let logit = t * c + params.bias;
        total -= log_sigmoid(y * logit);
        let gij = -y * sigmoid(-y * logit) * inv_b;
        g[[i, j]] = gij;
        grad_t_prime += gij * t * c;
        grad_bias += gij;
    }
    let grad_u1 = g.dot(&u2).mapv(|x| x * t);
    let grad_u2 = g.t().dot(&u1).mapv(|x| x * t);
    Ok(SigmoidOutput {
        value: total * inv_b,
        grad_z1: to_f32(&n1.backward(grad_u1.view())),
        grad_z2: to_f32(&n2.backward(grad_u2.view())),
        grad_t_prime,
        grad_bias,
    })
}
