//! Alignment + uniformity loss (Wang & Isola 2020).
//!
//! Why: Wang & Isola, "Understanding Contrastive Representation Learning
//! through Alignment and Uniformity on the Hypersphere" (ICML 2020), show that
//! the contrastive loss asymptotically optimises two properties — positive
//! pairs close together (*alignment*) and features spread uniformly over the
//! sphere (*uniformity*) — and that optimising them directly works as well as
//! InfoNCE. Both terms are cheap, need no temperature-sensitive softmax over
//! negatives and degrade gracefully with small batches, which suits edge
//! adaptation. The same quantities are reported as diagnostics by
//! `crate::metrics`.

use ndarray::{Array2, ArrayView2};

use super::{check_non_negative, check_positive, normalized_pair, to_f32, LossOutput, Result};

/// `L = L_align + λ·(L_uniform(u1) + L_uniform(u2))/2` on `u = z/‖z‖`.
///
/// - `L_align = mean_i ‖u1_i − u2_i‖²` (the paper's α = 2), range `[0, 4]`.
/// - `L_uniform(u) = log mean_{i<j} exp(−t‖u_i − u_j‖²)` (Gaussian potential,
///   the paper uses t = 2), range `[−4t, 0]`; 0 for a collapsed batch. It is
///   evaluated as a log-sum-exp over the `B(B−1)/2` pairs.
///
/// This is the combination of the paper's reference code:
/// `align_loss(x, y) + lam * (uniform_loss(x) + uniform_loss(y)) / 2`.
///
/// Gradient: `∂L_align/∂u1_i = 2(u1_i − u2_i)/B` (and its negative for u2);
/// `∂L_uniform/∂u_i = −2t Σ_{j≠i} w_ij (u_i − u_j)` with `w` the softmax of
/// `−t‖u_i − u_j‖²` over the pairs; then the normalisation's Jacobian.
///
/// Errors: shape mismatch, `B < 2` (no pairs), non-finite inputs, zero-norm
/// rows, `lambda` not finite and ≥ 0, `t` not finite and > 0.
pub fn align_uniform<A: Copy + Into<f64>>(
    z1: ArrayView2<'_, A>,
    z2: ArrayView2<'_, A>,
    lambda: f64,
    t: f64,
) -> Result<LossOutput> {
    check_non_negative("lambda", lambda)?;
    check_positive("t", t)?;
    let (n1, n2) = normalized_pair("align_uniform", z1, z2, 2)?;
    let (u1, u2) = (n1.unit(), n2.unit());
    let b = u1.nrows() as f64;

    let diff = &u1 - &u2;
    let align = diff.iter().map(|x| x * x).sum::<f64>() / b;
    let (unif1, mut grad_u1) = uniformity(u1, t);
    let (unif2, mut grad_u2) = uniformity(u2, t);

    grad_u1.mapv_inplace(|x| x * lambda / 2.0);
    grad_u2.mapv_inplace(|x| x * lambda / 2.0);
    grad_u1.scaled_add(2.0 / b, &diff);
    grad_u2.scaled_add(-2.0 / b, &diff);

    Ok(LossOutput {
        value: align + lambda * (unif1 + unif2) / 2.0,
        grad_z1: to_f32(&n1.backward(grad_u1.view())),
        grad_z2: to_f32(&n2.backward(grad_u2.view())),
    })
}

/// `log mean_{i<j} exp(−t‖u_i − u_j‖²)` and its gradient with respect to `u`
/// (`u` has at least two rows).
fn uniformity(u: ArrayView2<'_, f64>, t: f64) -> (f64, Array2<f64>) {
    let b = u.nrows();
    let mut pairs = Vec::with_capacity(b * (b - 1) / 2);
    for i in 0..b {
        for j in i + 1..b {
            let d = &u.row(i) - &u.row(j);
            pairs.push((i, j, -t * d.dot(&d)));
        }
    }
    let max = pairs.iter().map(|p| p.2).fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = pairs.iter().map(|p| (p.2 - max).exp()).sum();
    let value = max + sum.ln() - (pairs.len() as f64).ln();

    let mut grad = Array2::<f64>::zeros(u.dim());
    for &(i, j, x) in &pairs {
        let w = (x - max).exp() / sum;
        let d = &u.row(i) - &u.row(j);
        grad.row_mut(i).scaled_add(-2.0 * t * w, &d);
        grad.row_mut(j).scaled_add(2.0 * t * w, &d);
    }
    (value, grad)
}
