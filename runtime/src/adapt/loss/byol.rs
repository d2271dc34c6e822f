//! BYOL regression loss (Grill et al. 2020).
//!
//! Why: Grill et al., "Bootstrap Your Own Latent: A New Approach to
//! Self-Supervised Learning" (NeurIPS 2020), need no negatives at all: an
//! online branch with an extra predictor regresses the output of a slowly
//! moving (momentum) target branch. Without negatives the loss is independent
//! of the batch size, which suits tiny on-device batches. Collapse is avoided
//! by the predictor and the stop-gradient on the target, so the target is a
//! constant here and only the prediction receives a gradient.

use ndarray::{Array2, ArrayView2, Zip};

use super::{
    check_batch, check_same_shape, normalize_rows_with_jacobian, to_f32, to_f64, GradOutput, Result,
};

/// Value and gradients of [`byol_symmetric`].
#[derive(Debug, Clone)]
pub struct ByolOutput {
    /// `L(p1, z2) + L(p2, z1)`.
    pub value: f64,
    /// ∂value/∂p1.
    pub grad_p1: Array2<f32>,
    /// ∂value/∂p2.
    pub grad_p2: Array2<f32>,
}

/// One direction of the BYOL loss, value and `∂L/∂p` in f64.
fn byol_f64<A: Copy + Into<f64>>(
    p: ArrayView2<'_, A>,
    p_name: &'static str,
    z: ArrayView2<'_, A>,
    z_name: &'static str,
) -> Result<(f64, Array2<f64>)> {
    check_same_shape(p_name, &p, z_name, &z)?;
    check_batch("byol", p_name, &p, 1)?;
    let pn = normalize_rows_with_jacobian(to_f64(p, p_name)?.view(), p_name)?;
    let zn = normalize_rows_with_jacobian(to_f64(z, z_name)?.view(), z_name)?;
    let b = p.nrows() as f64;
    let mut cos_sum = 0.0;
    Zip::from(pn.unit().rows())
        .and(zn.unit().rows())
        .for_each(|pu, zu| cos_sum += pu.dot(&zu));
    let value = 2.0 - 2.0 * cos_sum / b;
    let grad_unit = zn.unit().mapv(|x| -2.0 * x / b);
    Ok((value, pn.backward(grad_unit.view())))
}

/// BYOL loss of predictions `p` against stop-gradient targets `z`:
///
/// `L = mean_i ‖p̂_i − ẑ_i‖² = mean_i (2 − 2⟨p̂_i, ẑ_i⟩)`, `x̂ = x/‖x‖`,
/// range `[0, 4]`.
///
/// `p` is the online branch's predictor output; `z` the target (momentum)
/// branch's projection of the *other* view, treated as a constant. Returns
/// the gradient with respect to `p` only:
/// `∂L/∂p_i = −(2/B)·(ẑ_i − p̂_i⟨p̂_i, ẑ_i⟩)/‖p_i‖`.
///
/// Errors: shape mismatch, empty batch, non-finite inputs, zero-norm rows.
pub fn byol<A: Copy + Into<f64>>(p: ArrayView2<'_, A>, z: ArrayView2<'_, A>) -> Result<GradOutput> {
    let (value, grad) = byol_f64(p, "p", z, "z")?;
    Ok(GradOutput {
        value,
        grad: to_f32(&grad),
    })
}

/// The symmetrised BYOL loss: `L(p1, z2) + L(p2, z1)`.
///
/// `p1`, `p2` are the online predictions for views 1 and 2; `z1_target`,
/// `z2_target` the target branch's projections of views 1 and 2
/// (stop-gradient). Each prediction regresses the target of the *other* view.
/// As in the paper (`L^BYOL = L + L̃`) the two directions are summed, not
/// averaged, so the range is `[0, 8]`.
pub fn byol_symmetric<A: Copy + Into<f64>>(
    p1: ArrayView2<'_, A>,
    p2: ArrayView2<'_, A>,
    z1_target: ArrayView2<'_, A>,
    z2_target: ArrayView2<'_, A>,
) -> Result<ByolOutput> {
    let (v1, g1) = byol_f64(p1, "p1", z2_target, "z2_target")?;
    let (v2, g2) = byol_f64(p2, "p2", z1_target, "z1_target")?;
    Ok(ByolOutput {
        value: v1 + v2,
        grad_p1: to_f32(&g1),
        grad_p2: to_f32(&g2),
    })
}
