//! InfoNCE-family objectives: in-batch NT-Xent, memory-bank InfoNCE and the
//! hard-negative (HCL) estimator.
//!
//! Why: InfoNCE is the workhorse contrastive objective. Each anchor must pick
//! out its positive among negatives by cosine similarity divided by a
//! temperature τ; minimising the cross-entropy pulls the two views of an input
//! together and pushes everything else apart (a lower bound on mutual
//! information, van den Oord et al. 2018).
//!
//! - [`nt_xent`]: SimCLR's in-batch form (Chen et al. 2020, "A Simple
//!   Framework for Contrastive Learning of Visual Representations"). The `2B`
//!   views are the anchors; each one's positive is its partner view and the
//!   other `2B − 2` views are its negatives.
//! - [`infonce_bank`]: MoCo's form (He et al. 2020, "Momentum Contrast for
//!   Unsupervised Visual Representation Learning"). Negatives come from a
//!   queue of past keys, so the number of negatives does not depend on the
//!   batch size — the point on an edge device, where batches are small.
//! - [`hcl`]: Robinson et al. 2021, "Contrastive Learning with Hard Negative
//!   Samples" (ICLR). Negatives are importance-reweighted towards the hard
//!   ones (weight `exp(β·sim/τ)`) and the estimate is debiased for false
//!   negatives with the class prior τ⁺ (Chuang et al. 2020).

use ndarray::{concatenate, s, Array2, ArrayView2, Axis};

use super::{
    check_batch, check_non_negative, check_positive, check_same_shape,
    normalize_rows_with_jacobian, normalized_pair, to_f32, to_f64, GradOutput, LossError,
    LossOutput, NormalizedRows, Result,
};

/// The two normalised views stacked as `Z = [u1; u2] ∈ R^{2B×D}`.
fn stack(n1: &NormalizedRows, n2: &NormalizedRows) -> Array2<f64> {
    concatenate![Axis(0), n1.unit(), n2.unit()]
}

/// Index of the partner view of row `a` in the stacked `2B` rows.
fn partner(a: usize, b: usize) -> usize {
    if a < b {
        a + b
    } else {
        a - b
    }
}

/// Given `g[a,k] = ∂L/∂s_ak` for `S = Z Zᵀ` (entries treated as independent),
/// returns `∂L/∂z1` and `∂L/∂z2` through `Z = [u1; u2]` and the
/// normalisation: `∂L/∂Z = (G + Gᵀ) Z`.
fn backprop_gram(
    g: &Array2<f64>,
    z: &Array2<f64>,
    n1: &NormalizedRows,
    n2: &NormalizedRows,
) -> (Array2<f32>, Array2<f32>) {
    let b = n1.unit().nrows();
    let sym = g + &g.t();
    let grad_z = sym.dot(z);
    let g1 = n1.backward(grad_z.slice(s![..b, ..]));
    let g2 = n2.backward(grad_z.slice(s![b.., ..]));
    (to_f32(&g1), to_f32(&g2))
}

/// In-batch NT-Xent (SimCLR).
///
/// With `u = z/‖z‖`, the stacked views `Z = [u1; u2]` (`2B` rows) and
/// `s_ak = ⟨Z_a, Z_k⟩`:
///
/// `L = (1/2B) Σ_a [ −s_{a,p(a)}/τ + log Σ_{k≠a} exp(s_ak/τ) ]`
///
/// where `p(a)` is the partner view of `a`. Range `[0, ∞)`; with all
/// embeddings identical it equals `log(2B − 1)` (chance level).
///
/// Gradient: `∂L/∂s_ak = (softmax_a(k) − [k = p(a)])/(2Bτ)` for `k ≠ a`, then
/// `∂L/∂Z = (G + Gᵀ) Z` and the normalisation's Jacobian.
///
/// Errors: shape mismatch, `B < 2` (no negatives), non-finite inputs,
/// zero-norm rows, `tau` not finite and positive.
pub fn nt_xent<A: Copy + Into<f64>>(
    z1: ArrayView2<'_, A>,
    z2: ArrayView2<'_, A>,
    tau: f64,
) -> Result<LossOutput> {
    check_positive("tau", tau)?;
    let (n1, n2) = normalized_pair("nt_xent", z1, z2, 2)?;
    let b = n1.unit().nrows();
    let z = stack(&n1, &n2);
    let sim = z.dot(&z.t());
    let rows = 2 * b;
    let inv_rows = 1.0 / rows as f64;

    let mut g = Array2::<f64>::zeros((rows, rows));
    let mut total = 0.0;
    for a in 0..rows {
        let p = partner(a, b);
        let logits = sim.row(a).mapv(|s| s / tau);
        let max = (0..rows)
            .filter(|&k| k != a)
            .map(|k| logits[k])
            .fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = (0..rows)
            .filter(|&k| k != a)
            .map(|k| (logits[k] - max).exp())
            .sum();
        total += max + sum.ln() - logits[p];
        for k in (0..rows).filter(|&k| k != a) {
            g[[a, k]] = (logits[k] - max).exp() / sum * inv_rows / tau;
        }
        g[[a, p]] -= inv_rows / tau;
    }
    let (grad_z1, grad_z2) = backprop_gram(&g, &z, &n1, &n2);
    Ok(LossOutput {
        value: total * inv_rows,
        grad_z1,
        grad_z2,
    })
}

/// Hyper-parameters of [`hcl`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HclParams {
    /// Temperature τ (> 0).
    pub tau: f64,
    /// Concentration β (≥ 0): how strongly negatives similar to the anchor
    /// are up-weighted. `β = 0` weights all negatives equally.
    pub beta: f64,
    /// Class prior τ⁺ ∈ [0, 1): the assumed probability that a "negative" is
    /// actually of the anchor's class (debiasing). `τ⁺ = 0` disables it.
    pub tau_plus: f64,
}

impl Default for HclParams {
    /// The reference code's defaults: τ = 0.5, β = 1, τ⁺ = 0.1.
    fn default() -> Self {
        Self {
            tau: 0.5,
            beta: 1.0,
            tau_plus: 0.1,
        }
    }
}

impl HclParams {
    /// Checks τ > 0, β ≥ 0 and 0 ≤ τ⁺ < 1 (all finite).
    pub fn validate(&self) -> Result<()> {
        check_positive("tau", self.tau)?;
        check_non_negative("beta", self.beta)?;
        if !(self.tau_plus.is_finite() && (0.0..1.0).contains(&self.tau_plus)) {
            return Err(LossError::InvalidParameter {
                name: "tau_plus",
                value: self.tau_plus,
                requirement: "in [0, 1)",
            });
        }
        Ok(())
    }
}

/// Hard-negative contrastive loss (HCL, Robinson et al. 2021), in-batch.
///
/// This follows the authors' reference implementation (`criterion` with
/// `estimator='hard'` in `image/main.py` of github.com/joshr17/HCL)
/// literally. For each of the `2B` anchors `a`, with `s_ak` the cosine
/// similarity, `pos = exp(s_{a,p(a)}/τ)`, the `N = 2B − 2` negatives
/// `neg_k = exp(s_ak/τ)` (every view except `a` and its partner) and
/// importance weights `imp_k = exp(β s_ak/τ)` (`= neg_k^β`):
///
/// ```text
/// Ng     = (−τ⁺·N·pos + Σ_k imp_k·neg_k / mean_k(imp_k)) / (1 − τ⁺)
/// Ng     = max(Ng, N·e^{−1/τ})           // the reference's clamp
/// loss_a = −log(pos / (pos + Ng))
/// L      = mean_a loss_a
/// ```
///
/// With β = 0 and τ⁺ = 0, `Ng = Σ neg_k ≥ N·e^{−1/τ}` (the clamp cannot bind)
/// and this is exactly [`nt_xent`].
///
/// Gradient: the full gradient, as autograd computes it on the reference
/// (nothing is detached — the weights `imp` are differentiated too). With
/// `R = Σ imp·neg / mean(imp)`:
/// `∂R/∂s_ak = [(1+β)·imp_k·neg_k/M − β·R·imp_k/(N·M)]/τ`, `M = mean(imp)`;
/// `∂loss/∂pos = 1/(pos+Ng) − 1/pos`, `∂loss/∂Ng = 1/(pos+Ng)`,
/// `∂Ng/∂pos = −τ⁺N/(1−τ⁺)`, `∂Ng/∂R = 1/(1−τ⁺)`. When the clamp binds
/// (`Ng` below the floor) `Ng` is a constant and only `pos` carries gradient,
/// as with `torch.clamp`. The loss is therefore piecewise smooth; at the
/// clamp boundary the gradient is one-sided.
///
/// Numerics: `pos`, `neg` and the floor are all rescaled by `exp(−m)` with
/// `m` the anchor's largest logit, and `imp` by its own maximum. The loss is
/// invariant to both rescalings (`Ng` is homogeneous of degree 1 in
/// `(pos, neg, floor)`; `imp` only enters as `imp/mean(imp)`), so small τ or
/// large β cannot overflow.
pub fn hcl<A: Copy + Into<f64>>(
    z1: ArrayView2<'_, A>,
    z2: ArrayView2<'_, A>,
    params: HclParams,
) -> Result<LossOutput> {
    params.validate()?;
    let HclParams {
        tau,
        beta,
        tau_plus,
    } = params;
    let (n1, n2) = normalized_pair("hcl", z1, z2, 2)?;
    let b = n1.unit().nrows();
    let z = stack(&n1, &n2);
    let sim = z.dot(&z.t());
    let rows = 2 * b;
    let inv_rows = 1.0 / rows as f64;
    let n = (rows - 2) as f64;

    let mut g = Array2::<f64>::zeros((rows, rows));
    let mut total = 0.0;
    for a in 0..rows {
        let p = partner(a, b);
        let negs: Vec<usize> = (0..rows).filter(|&k| k != a && k != p).collect();
        let s_pos = sim[[a, p]];
        let s_neg_max = negs
            .iter()
            .map(|&k| sim[[a, k]])
            .fold(f64::NEG_INFINITY, f64::max);
        let m = s_pos.max(s_neg_max) / tau;

        let pos = (s_pos / tau - m).exp();
        let neg: Vec<f64> = negs
            .iter()
            .map(|&k| (sim[[a, k]] / tau - m).exp())
            .collect();
        let imp: Vec<f64> = negs
            .iter()
            .map(|&k| (beta * (sim[[a, k]] - s_neg_max) / tau).exp())
            .collect();
        let mean_imp = imp.iter().sum::<f64>() / n;
        let weighted: f64 = imp.iter().zip(&neg).map(|(i, e)| i * e).sum();
        let r = weighted / mean_imp;
        let ng_raw = (-tau_plus * n * pos + r) / (1.0 - tau_plus);
        let floor = n * (-1.0 / tau - m).exp();
        let clamped = ng_raw < floor;
        let ng = if clamped { floor } else { ng_raw };

        total += (ng / pos).ln_1p();

        let d_ng = 1.0 / (pos + ng);
        let mut d_pos = d_ng - 1.0 / pos;
        let mut d_r = 0.0;
        if !clamped {
            d_pos += d_ng * (-tau_plus * n / (1.0 - tau_plus));
            d_r = d_ng / (1.0 - tau_plus);
        }
        g[[a, p]] = d_pos * pos / tau * inv_rows;
        if d_r != 0.0 {
            for ((&k, &i), &e) in negs.iter().zip(&imp).zip(&neg) {
                let dr_ds = ((1.0 + beta) * i * e / mean_imp - beta * r * i / (n * mean_imp)) / tau;
                g[[a, k]] = d_r * dr_ds * inv_rows;
            }
        }
    }
    let (grad_z1, grad_z2) = backprop_gram(&g, &z, &n1, &n2);
    Ok(LossOutput {
        value: total * inv_rows,
        grad_z1,
        grad_z2,
    })
}

/// The checks every bank loss makes: τ > 0, `q` and `k_pos` of one shape
/// with at least one row, a non-empty queue as wide as `q`.
pub(crate) fn check_bank_inputs<A>(
    loss: &'static str,
    q: &ArrayView2<'_, A>,
    k_pos: &ArrayView2<'_, A>,
    queue: &ArrayView2<'_, A>,
    tau: f64,
) -> Result<()> {
    check_positive("tau", tau)?;
    check_same_shape("q", q, "k_pos", k_pos)?;
    check_batch(loss, "q", q, 1)?;
    check_batch(loss, "queue", queue, 1)?;
    if queue.ncols() != q.ncols() {
        return Err(LossError::ShapeMismatch {
            left: "q",
            left_shape: [q.nrows(), q.ncols()],
            right: "queue",
            right_shape: [queue.nrows(), queue.ncols()],
        });
    }
    Ok(())
}

/// Memory-bank InfoNCE (MoCo): queries against their keys and a queue.
///
/// For each of the `B` queries, with `q̂ = q/‖q‖`, `k̂ = k⁺/‖k⁺‖`:
///
/// `logits_i = [⟨q̂_i, k̂_i⟩, ⟨q̂_i, queue_1⟩, …, ⟨q̂_i, queue_K⟩] / τ`,
/// `L = mean_i CE(logits_i, 0) = mean_i [−logits_i0 + log Σ_j exp(logits_ij)]`.
///
/// - `q: [B, D]` — raw head outputs of the online (trainable) branch; the
///   only differentiable input, normalised here.
/// - `k_pos: [B, D]` — the positive keys from the momentum encoder, treated
///   as constants (stop-gradient, as in MoCo); normalised here, so raw
///   momentum-head outputs may be passed.
/// - `queue: [K, D]` — past keys, also constants. They are **assumed to be
///   unit-norm already** (the queue stores normalised keys, as in MoCo) and
///   are used as given; only finiteness and shape are checked. `K ≥ 1`.
///
/// Gradient: `∂L/∂q̂_i = [(p_i0 − 1)·k̂_i + Σ_j p_ij·queue_j] / (Bτ)` with
/// `p_i = softmax(logits_i)`, then the normalisation's Jacobian. Returns the
/// gradient with respect to `q` only.
pub fn infonce_bank<A: Copy + Into<f64>>(
    q: ArrayView2<'_, A>,
    k_pos: ArrayView2<'_, A>,
    queue: ArrayView2<'_, A>,
    tau: f64,
) -> Result<GradOutput> {
    check_bank_inputs("infonce_bank", &q, &k_pos, &queue, tau)?;
    let qn = normalize_rows_with_jacobian(to_f64(q, "q")?.view(), "q")?;
    let kn = normalize_rows_with_jacobian(to_f64(k_pos, "k_pos")?.view(), "k_pos")?;
    let queue = to_f64(queue, "queue")?;

    let b = q.nrows();
    let scale = 1.0 / (b as f64 * tau);
    let l_neg = qn.unit().dot(&queue.t()).mapv(|s| s / tau);
    let mut p_neg = Array2::<f64>::zeros(l_neg.dim());
    let mut grad_u = Array2::<f64>::zeros(qn.unit().dim());
    let mut total = 0.0;
    for i in 0..b {
        let l_pos = qn.unit().row(i).dot(&kn.unit().row(i)) / tau;
        let row = l_neg.row(i);
        let max = row.fold(l_pos, |m, &x| m.max(x));
        let sum = (l_pos - max).exp() + row.iter().map(|&x| (x - max).exp()).sum::<f64>();
        total += max + sum.ln() - l_pos;
        let p0 = (l_pos - max).exp() / sum;
        p_neg
            .row_mut(i)
            .assign(&row.mapv(|x| (x - max).exp() / sum * scale));
        grad_u
            .row_mut(i)
            .scaled_add((p0 - 1.0) * scale, &kn.unit().row(i));
    }
    grad_u += &p_neg.dot(&queue);
    let grad = qn.backward(grad_u.view());
    Ok(GradOutput {
        value: total / b as f64,
        grad: to_f32(&grad),
    })
}
