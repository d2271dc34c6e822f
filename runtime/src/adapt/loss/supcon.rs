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
//!
//! ## Unlabelled anchors: nearest-neighbour positives, false-negative
//! cancellation and a weight ([`SupconParams`])
//!
//! In a semi-supervised run most anchors are unlabelled, and by default
//! each is its own class of one (instance discrimination against the
//! labelled bank). Three knobs change only the unlabelled anchors' terms
//! (labelled anchors keep theirs):
//!
//! - `nn = K`: the anchor's `K` nearest neighbours among its other
//!   candidates become positives besides its own other view (NNCLR's
//!   support-set positives, Dwibedi et al. 2021, added to the own key as in
//!   SupCon's `L_out` rather than replacing it). "Nearest" is cosine
//!   similarity to the anchor's *other view* (the momentum key `k_i` against
//!   a bank, the partner view in the batch), so the choice does not depend
//!   on the anchor being trained; it is a discrete selection, through which
//!   no gradient flows (as NNCLR's `NN(·)`).
//! - `fnc = M`: false-negative elimination (Huynh et al. 2022, "Boosting
//!   Contrastive Self-Supervised Learning with False Negative
//!   Cancellation", the elimination variant): the next `M` nearest (ranks
//!   `K+1 … K+M` in the same order) are taken out of `A(a)`, neither
//!   positive nor negative. Huynh et al. find them by aggregating the
//!   similarity of several support views; here the one other view ranks
//!   them, the same ranking that picks the neighbours.
//! - `uw = W`: every unlabelled anchor's `l_a` is multiplied by `W`, and the
//!   sum is still divided by the number of anchors, so `W = 1` is the plain
//!   mean (today's loss) and `W = 0` trains on the labelled anchors alone
//!   (unlabelled keys stay in the bank as their negatives).
//!
//! Ties in the ranking go to the lower candidate index (batch keys before
//! bank keys). With the defaults (`nn = fnc = 0`, `uw = 1`) the value and
//! gradient are exactly those of plain SupCon. `nn + fnc` must leave an
//! unlabelled anchor at least one negative: with `O` other candidates
//! (`B − 1 + |queue|` against a bank, `2B − 2` in the batch) an unlabelled
//! anchor needs `nn + fnc < O`, else [`LossError::NoNegatives`] (there is no
//! silent clamp: a loss without negatives has nothing to contrast).
//!
//! Measured (shipped Fashion-MNIST split, 10 labels per class and the other
//! 900 train images unlabelled, adapter on the pooled embedding, bank 256,
//! 30 epochs, three seeds; final-epoch 10-shot k-NN): plain SupCon 74.2,
//! `nn=1` 72.9, `nn=1,fnc=4` 72.6, `fnc=4` 73.6, `fnc=32` 71.5, `uw=0.5`
//! 74.7, `uw=0` 72.5. The unlabelled anchors' own-view term helps; neither
//! neighbour positives nor false-negative elimination did, so both default
//! to off. (About one nearest neighbour in five is of another class there,
//! even on clean frozen embeddings.)

use ndarray::{concatenate, s, Array2, ArrayView2, Axis};

use super::{
    check_non_negative, check_positive, normalize_rows_with_jacobian, normalized_pair, to_f32,
    to_f64, GradOutput, LossError, LossOutput, Result,
};

/// SupCon's hyper-parameters (see the module docs for `nn`, `fnc`, `uw`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SupconParams {
    /// Temperature τ (> 0).
    pub tau: f64,
    /// Nearest neighbours added to an unlabelled anchor's positives.
    pub nn: usize,
    /// Next-nearest candidates removed from an unlabelled anchor's
    /// candidates (false-negative elimination).
    pub fnc: usize,
    /// Weight of the unlabelled anchors' terms (≥ 0; 1: plain mean).
    pub uw: f64,
}

impl SupconParams {
    /// Plain SupCon at temperature `tau`: unlabelled anchors are their own
    /// class of one (`nn = fnc = 0`, `uw = 1`).
    pub fn new(tau: f64) -> Self {
        Self {
            tau,
            nn: 0,
            fnc: 0,
            uw: 1.0,
        }
    }

    /// Checks τ > 0 and `uw` finite and ≥ 0.
    pub fn validate(&self) -> Result<()> {
        check_positive("tau", self.tau)?;
        check_non_negative("uw", self.uw)
    }

    /// Whether unlabelled anchors look for neighbours at all.
    fn ranks(&self) -> bool {
        self.nn > 0 || self.fnc > 0
    }
}

/// What an unlabelled anchor's ranking decided for each candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pick {
    /// Untouched: a negative (or the anchor's own positive).
    Keep,
    /// One of the `nn` nearest: a positive.
    Neighbour,
    /// One of the next `fnc`: removed from the candidates.
    Removed,
}

/// Ranks candidates `0..sims.len()` except `skip` (the anchor and its own
/// positive) by `sims`, descending (ties to the lower index), and marks the
/// first `p.nn` as neighbours and the next `p.fnc` as removed. Fails when
/// no negative would be left.
fn pick_neighbours(
    loss: &'static str,
    anchor: usize,
    sims: ndarray::ArrayView1<'_, f64>,
    skip: &[usize],
    p: &SupconParams,
) -> Result<Vec<Pick>> {
    let mut order: Vec<usize> = (0..sims.len()).filter(|k| !skip.contains(k)).collect();
    if p.nn.saturating_add(p.fnc) >= order.len() {
        return Err(LossError::NoNegatives {
            loss,
            anchor,
            nn: p.nn,
            fnc: p.fnc,
            others: order.len(),
        });
    }
    // Stable sort: equal similarities keep index order.
    order.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]));
    let mut picks = vec![Pick::Keep; sims.len()];
    for (rank, &k) in order.iter().take(p.nn + p.fnc).enumerate() {
        picks[k] = if rank < p.nn {
            Pick::Neighbour
        } else {
            Pick::Removed
        };
    }
    Ok(picks)
}

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
    supcon_with(z1, z2, labels, &SupconParams::new(tau))
}

/// [`supcon`] with the unlabelled anchors' knobs (module docs).
///
/// In the batch, an unlabelled view's neighbours are ranked among the
/// `2B − 2` views other than itself and its partner, by cosine similarity to
/// its partner view (both views of one other sample can be picked). The
/// selected views are online outputs, so gradient flows into them as into
/// any positive; only the selection is a constant.
///
/// Errors: those of [`supcon`], `uw` not finite and ≥ 0, and
/// [`LossError::NoNegatives`] when an unlabelled sample exists and
/// `nn + fnc ≥ 2B − 2`.
pub fn supcon_with<A: Copy + Into<f64>>(
    z1: ArrayView2<'_, A>,
    z2: ArrayView2<'_, A>,
    labels: &[Option<usize>],
    params: &SupconParams,
) -> Result<LossOutput> {
    params.validate()?;
    let tau = params.tau;
    let (n1, n2) = normalized_pair("supcon", z1, z2, 2)?;
    let b = n1.unit().nrows();
    check_labels("labels", labels, b)?;
    let z = concatenate![Axis(0), n1.unit(), n2.unit()];
    let gram = z.dot(&z.t());
    let logits = gram.mapv(|s| s / tau);
    let rows = 2 * b;
    let label = |k: usize| labels[k % b];
    let mut g = Array2::<f64>::zeros((rows, rows));
    let mut total = 0.0;
    for a in 0..rows {
        let partner = (a + b) % rows;
        if label(a).is_none() && params.ranks() {
            let picks = pick_neighbours("supcon", a, gram.row(partner), &[a, partner], params)?;
            let term = anchor_term(
                logits.row(a),
                |k| k != a && picks[k] != Pick::Removed,
                |k| k == partner || picks[k] == Pick::Neighbour,
                g.row_mut(a),
            );
            total += weighted(term, params.uw, g.row_mut(a));
        } else {
            let term = anchor_term(
                logits.row(a),
                |k| k != a,
                |k| k % b == a % b || same_class(label(k), label(a)),
                g.row_mut(a),
            );
            total += match label(a) {
                None => weighted(term, params.uw, g.row_mut(a)),
                Some(_) => term,
            };
        }
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

/// Scales an unlabelled anchor's term and its gradient row by `uw` (left
/// untouched at 1, so the defaults are bit-identical to plain SupCon).
fn weighted(term: f64, uw: f64, mut grad: ndarray::ArrayViewMut1<'_, f64>) -> f64 {
    if uw == 1.0 {
        return term;
    }
    grad.mapv_inplace(|x| x * uw);
    term * uw
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
    supcon_bank_with(
        q,
        k_pos,
        labels,
        queue,
        queue_labels,
        &SupconParams::new(tau),
    )
}

/// [`supcon_bank`] with the unlabelled anchors' knobs (module docs).
///
/// An unlabelled query's neighbours are ranked among the `B − 1 + K` keys
/// other than its own (this batch's other keys and the whole queue, the
/// keys the bank holds after this step's enqueue), by cosine similarity to
/// its own key `k_i`: all constants, so the selection is stop-gradient as in
/// NNCLR.
///
/// Errors: those of [`supcon_bank`], `uw` not finite and ≥ 0, and
/// [`LossError::NoNegatives`] when an unlabelled query exists and
/// `nn + fnc ≥ B − 1 + K`.
pub fn supcon_bank_with<A: Copy + Into<f64>>(
    q: ArrayView2<'_, A>,
    k_pos: ArrayView2<'_, A>,
    labels: &[Option<usize>],
    queue: ArrayView2<'_, A>,
    queue_labels: &[Option<usize>],
    params: &SupconParams,
) -> Result<GradOutput> {
    params.validate()?;
    let tau = params.tau;
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
        match own {
            None if params.ranks() => {
                let sims = candidates.dot(&kn.unit().row(i));
                let picks = pick_neighbours("supcon_bank", i, sims.view(), &[i], params)?;
                let term = anchor_term(
                    logits.row(i),
                    |k| picks[k] != Pick::Removed,
                    |k| k == i || picks[k] == Pick::Neighbour,
                    g.row_mut(i),
                );
                total += weighted(term, params.uw, g.row_mut(i));
            }
            _ => {
                let term = anchor_term(
                    logits.row(i),
                    |_| true,
                    |k| k == i || same_class(label(k), own),
                    g.row_mut(i),
                );
                total += match own {
                    None => weighted(term, params.uw, g.row_mut(i)),
                    Some(_) => term,
                };
            }
        }
    }
    let inv = 1.0 / (b as f64 * tau);
    let grad_u = g.dot(&candidates).mapv(|x| x * inv);
    Ok(GradOutput {
        value: total / b as f64,
        grad: to_f32(&qn.backward(grad_u.view())),
    })
}
