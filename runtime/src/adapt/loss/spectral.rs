//! Spectral contrastive loss (HaoChen et al. 2021).
//!
//! Why: HaoChen, Wei, Gaidon & Ma, "Provable Guarantees for Self-Supervised
//! Deep Learning with Spectral Contrastive Loss" (NeurIPS 2021), show that
//! `−2·E⟨f(x), f(x⁺)⟩ + E[⟨f(x), f(x⁻)⟩²]` is a low-rank factorisation of the
//! augmentation graph's normalised adjacency matrix, so its minimiser is the
//! graph's top eigenvectors, with provable linear-probe guarantees. It needs
//! no softmax, no temperature and no large batch of negatives.
//!
//! # The `μ` of the reference code
//!
//! The brief for this module described μ as a feature scaling
//! (`z ← z·√μ`). The reference implementation does something else: function
//! `D(z1, z2, mu=1.0)` in `models/spectral.py` of
//! github.com/jhaochenz96/spectral_contrastive_learning (commit `ee745a2`)
//!
//! 1. **projects each row onto the ball of radius √μ**: rows with
//!    `‖z‖ < √μ` are kept, longer rows are rescaled to length √μ
//!    (`mask·z + (1 − mask)·normalize(z)·√μ`);
//! 2. computes `part1 = −2·mean(z1 ⊙ z2)·D = −2·mean_i⟨z1_i, z2_i⟩` and
//!    `part2 = mean(offdiag((z1 z2ᵀ)²))·B/(B−1) = mean_{i≠j}⟨z1_i, z2_j⟩²`;
//! 3. returns `(part1 + part2)/μ`.
//!
//! This module implements exactly that. With `w = ẑ/√μ` (rows in the unit
//! ball) the loss reads `−2·mean⟨w1, w2⟩ + μ·mean_{i≠j}⟨w1_i, w2_j⟩²`: μ
//! weights the repulsive term relative to the attractive one. There is no L2
//! normalisation otherwise; rows shorter than √μ are used as is.
//!
//! The projection is not differentiable at `‖z‖ = √μ`; as in the reference
//! (strict `<` in the mask), a row exactly on the sphere takes the projected
//! branch, whose Jacobian is `√μ·(I − u uᵀ)/‖z‖`.

use ndarray::{Array1, Array2, ArrayView2, Zip};

use super::{
    check_batch, check_positive, check_same_shape, row_norm, to_f32, to_f64, LossOutput, Result,
};

/// Rows projected onto the ball of radius `radius`, with what the backward
/// pass needs (`None` for rows left unchanged, else the original norm).
struct BallProjection {
    rows: Array2<f64>,
    norms: Array1<Option<f64>>,
    radius: f64,
}

impl BallProjection {
    fn new(z: Array2<f64>, radius: f64) -> Self {
        let mut rows = z;
        let mut norms = Array1::from_elem(rows.nrows(), None);
        Zip::from(rows.rows_mut())
            .and(&mut norms)
            .for_each(|mut row, norm| {
                let n = row_norm(row.view());
                if n >= radius {
                    row.mapv_inplace(|x| x * radius / n);
                    *norm = Some(n);
                }
            });
        Self {
            rows,
            norms,
            radius,
        }
    }

    /// Pulls `∂L/∂ẑ` back to `∂L/∂z`: identity inside the ball,
    /// `√μ·(g − u(uᵀg))/‖z‖` for projected rows (`u = ẑ/√μ`).
    fn backward(&self, grad: Array2<f64>) -> Array2<f64> {
        let mut out = grad;
        Zip::from(out.rows_mut())
            .and(self.rows.rows())
            .and(&self.norms)
            .for_each(|mut g, zhat, norm| {
                if let Some(n) = *norm {
                    let u = zhat.mapv(|x| x / self.radius);
                    let radial = g.dot(&u);
                    g.scaled_add(-radial, &u);
                    g.mapv_inplace(|x| x * self.radius / n);
                }
            });
        out
    }
}

/// Spectral contrastive loss with the reference code's `mu` (see the module
/// docs):
///
/// `L = (−2·mean_i⟨ẑ1_i, ẑ2_i⟩ + mean_{i≠j}⟨ẑ1_i, ẑ2_j⟩²) / μ`,
/// `ẑ = z` if `‖z‖ < √μ`, else `√μ·z/‖z‖`.
///
/// Gradient: with `S = ẑ1 ẑ2ᵀ`, `∂L/∂S_ii = −2/(Bμ)` and
/// `∂L/∂S_ij = 2S_ij/(B(B−1)μ)` for `i ≠ j`; `∂L/∂ẑ1 = G ẑ2`,
/// `∂L/∂ẑ2 = Gᵀ ẑ1`; then the projection's Jacobian.
///
/// Errors: shape mismatch, `B < 2` (the `i ≠ j` mean is empty), non-finite
/// inputs, `mu` not finite and > 0.
pub fn spectral<A: Copy + Into<f64>>(
    z1: ArrayView2<'_, A>,
    z2: ArrayView2<'_, A>,
    mu: f64,
) -> Result<LossOutput> {
    check_positive("mu", mu)?;
    check_same_shape("z1", &z1, "z2", &z2)?;
    check_batch("spectral", "z1", &z1, 2)?;
    let radius = mu.sqrt();
    let p1 = BallProjection::new(to_f64(z1, "z1")?, radius);
    let p2 = BallProjection::new(to_f64(z2, "z2")?, radius);
    let b = p1.rows.nrows();
    let bf = b as f64;

    let s = p1.rows.dot(&p2.rows.t());
    let mut g = Array2::<f64>::zeros((b, b));
    let (mut diag, mut off) = (0.0, 0.0);
    for ((i, j), &sij) in s.indexed_iter() {
        if i == j {
            diag += sij;
            g[[i, j]] = -2.0 / (bf * mu);
        } else {
            off += sij * sij;
            g[[i, j]] = 2.0 * sij / (bf * (bf - 1.0) * mu);
        }
    }
    let value = (-2.0 * diag / bf + off / (bf * (bf - 1.0))) / mu;
    let grad1 = p1.backward(g.dot(&p2.rows));
    let grad2 = p2.backward(g.t().dot(&p1.rows));
    Ok(LossOutput {
        value,
        grad_z1: to_f32(&grad1),
        grad_z2: to_f32(&grad2),
    })
}
