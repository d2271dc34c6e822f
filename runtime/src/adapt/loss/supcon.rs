//! Supervised contrastive loss (SupCon), in-batch and against a labelled
//! memory bank.
//!
//! Why: with few classes, instance discrimination (InfoNCE) treats every
//! other image as a negative, so about one "negative" in ten is an image of
//! the anchor's own class, and the loss pushes it away. SupCon (Khosla et
//! al. 2020, "Supervised Contrastive Learning", NeurIPS; the `L^sup_out`
//! form, their eq. 2) moves every sample that shares the anchor's label to
//! the positive side. The labels a device already has (the shots enrolled in
//! a k-NN head, a small labelled folder) are enough to use it.
//!
//! Labels are `Option<usize>`: `None` marks an unlabelled sample, whose only
//! positive is its own other view. With no label known anywhere, [`supcon`]
//! is exactly [`super::nt_xent`].
//!
//! For an anchor `a` with candidates `A(a)` (everything it is contrasted
//! with) and positives `P(a) ⊆ A(a)`:
//!
//! `l_a = log Σ_{k∈A(a)} exp(s_ak/τ) − (1/|P(a)|) Σ_{p∈P(a)} s_ap/τ`
//!
//! and the loss is the mean of `l_a` over the anchors. Its gradient with
//! respect to the logits is `softmax_a(k) − [k∈P(a)]/|P(a)|`, divided by `τ`
//! and the number of anchors.

use ndarray::{concatenate, s, Array2, ArrayView2, Axis};

use super::{
    check_positive, normalize_rows_with_jacobian, normalized_pair, to_f32, to_f64, GradOutput,
    LossError, LossOutput, Result,
};

/// The per-anchor term and its logit gradient: `l` (see the module docs)
/// for one row of `logits` (already divided by τ), candidates `k` with
/// `candidate(k)`, positives with `positive(k)`. Writes
/// `softmax(k) − [positive]/|P|` into `grad` (zero outside the candidates).
fn anchor_term(
    logits: ndarray::ArrayView1<'_, f64>,
    candidate: impl Fn(usize) -> bool,
    positive: impl Fn(usize) -> bool,
    mut grad: ndarray::ArrayViewMut1<'_, f64>,
) -> f64 {
    let n = logits.len();
    let max = (0..n)
        .filter(|&k| candidate(k))
        .map(|k| logits[k])
        .fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = (0..n)
        .filter(|&k| candidate(k))
        .map(|k| (logits[k] - max).exp())
        .sum();
    let positives: Vec<usize> = (0..n).filter(|&k| candidate(k) && positive(k)).collect();
    let inv_p = 1.0 / positives.len() as f64;
    let mean_pos: f64 = positives.iter().map(|&k| logits[k]).sum::<f64>() * inv_p;
    for k in (0..n).filter(|&k| candidate(k)) {
        grad[k] = (logits[k] - max).exp() / sum;
    }
    for &k in &positives {
        grad[k] -= inv_p;
    }
    max + sum.ln() - mean_pos
}

/// Fails unless there is one label per row of `x`.
fn check_labels(what: &'static str, labels: &[Option<usize>], rows: usize) -> Result<()> {
    if labels.len() == rows {
        Ok(())
    } else {
        Err(LossError::ShapeMismatch {
            left: what,
            left_shape: [labels.len(), 1],
            right: "the rows they label",
            right_shape: [rows, 1],
        })
    }
}

/// Whether two samples share a known label.
fn same_class(a: Option<usize>, b: Option<usize>) -> bool {
    matches!((a, b), (Some(x), Some(y)) if x == y)
}

/// In-batch SupCon over two views.
///
/// The `2B` views `Z = [u1; u2]` are the anchors; each anchor's candidates
/// are the other `2B − 1` views, its positives its partner view and every
/// view of another sample with the same known label (`labels[i]` labels row
/// `i` of both `z1` and `z2`). Gradient through the Gram matrix and the
/// normalisation, as [`super::nt_xent`].
///
/// Errors: shape mismatch (also between `labels` and the batch), `B < 2`,
/// non-finite inputs, zero-norm rows, `tau` not finite and positive.
pub fn supcon<A: Copy + Into<f64>>(
    z1: ArrayView2<'_, A>,
    z2: ArrayView2<'_, A>,
    labels: &[Option<usize>],
    tau: f64,
) -> Result<LossOutput> {
    check_positive("tau", tau)?;
    let (n1, n2) = normalized_pair("supcon", z1, z2, 2)?;
    let b = n1.unit().nrows();
    check_labels("labels", labels, b)?;
    let z = concatenate![Axis(0), n1.unit(), n2.unit()];
    let logits = z.dot(&z.t()).mapv(|s| s / tau);
    let rows = 2 * b;
    let label = |k: usize| labels[k % b];
    let mut g = Array2::<f64>::zeros((rows, rows));
    let mut total = 0.0;
    for a in 0..rows {
        total += anchor_term(
            logits.row(a),
            |k| k != a,
            |k| k % b == a % b || same_class(label(k), label(a)),
            g.row_mut(a),
        );
    }
    let inv = 1.0 / (rows as f64 * tau);
    g.mapv_inplace(|x| x * inv);
    // s_ak = ⟨Z_a, Z_k⟩: ∂L/∂Z = (G + Gᵀ) Z.
    let grad_z = (&g + &g.t()).dot(&z);
    Ok(LossOutput {
        value: total / rows as f64,
        grad_z1: to_f32(&n1.backward(grad_z.slice(s![..b, ..]))),
        grad_z2: to_f32(&n2.backward(grad_z.slice(s![b.., ..]))),
    })
}

/// SupCon against a momentum encoder's keys and a labelled memory bank
/// (MoCo's queue with a label per key).
///
/// Queries `q` (online branch, the only differentiable input) are the
/// anchors. Each query's candidates are the `B` keys of this batch `k_pos`
/// (the momentum encoder's other view, normalised here) and the `K` keys of
/// `queue` (assumed unit-norm, as the bank stores them); its positives are
/// its own key and every candidate with the same known label. Keys are
/// constants (stop-gradient).
///
/// With no label known, the query's only positive is its own key, and the
/// other keys of the batch are negatives besides the queue.
///
/// Errors: shape mismatches (also of `labels` / `queue_labels`), an empty
/// batch or queue, non-finite inputs, zero-norm rows, `tau` not finite and
/// positive.
pub fn supcon_bank<A: Copy + Into<f64>>(
    q: ArrayView2<'_, A>,
    k_pos: ArrayView2<'_, A>,
    labels: &[Option<usize>],
    queue: ArrayView2<'_, A>,
    queue_labels: &[Option<usize>],
    tau: f64,
) -> Result<GradOutput> {
    super::infonce::check_bank_inputs("supcon_bank", &q, &k_pos, &queue, tau)?;
    let b = q.nrows();
    check_labels("labels", labels, b)?;
    check_labels("queue_labels", queue_labels, queue.nrows())?;
    let qn = normalize_rows_with_jacobian(to_f64(q, "q")?.view(), "q")?;
    let kn = normalize_rows_with_jacobian(to_f64(k_pos, "k_pos")?.view(), "k_pos")?;
    let candidates = concatenate![Axis(0), kn.unit(), to_f64(queue, "queue")?];
    let logits = qn.unit().dot(&candidates.t()).mapv(|s| s / tau);
    let label = |k: usize| {
        if k < b {
            labels[k]
        } else {
            queue_labels[k - b]
        }
    };
    let mut g = Array2::<f64>::zeros(logits.dim());
    let mut total = 0.0;
    for (i, &own) in labels.iter().enumerate() {
        total += anchor_term(
            logits.row(i),
            |_| true,
            |k| k == i || same_class(label(k), own),
            g.row_mut(i),
        );
    }
    let inv = 1.0 / (b as f64 * tau);
    let grad_u = g.dot(&candidates).mapv(|x| x * inv);
    Ok(GradOutput {
        value: total / b as f64,
        grad: to_f32(&qn.backward(grad_u.view())),
    })
}
