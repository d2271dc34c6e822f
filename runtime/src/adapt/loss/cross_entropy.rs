//! Cross-entropy through a linear softmax classifier (`--loss ce`): the
//! supervised fine-tuning baseline.
//!
//! Why it is here: when the device has labels, the obvious alternative to a
//! label-aware contrastive objective ([`super::supcon`]) is to train the
//! same scope as a classifier. Running both in one run, on one split, is the
//! only fair way to say whether the contrastive machinery (bank, EMA keys,
//! views) earns its keep; the classifier itself is thrown away, as the
//! projection head is, and k-NN and probes read the adapted embedding.
//!
//! For the rows `z_i` whose label `y_i` is known (unlabelled rows take no
//! part), logits `l_i = W z_i + b` (`W: [C, D]`, `b: [C]`) and
//!
//! `L = (1/n) Σ_i [log Σ_c exp(l_ic) − l_{i,y_i}]`, `n` the labelled rows.
//!
//! With `G_i = (softmax(l_i) − onehot(y_i)) / n` (zero for unlabelled rows):
//! `∂L/∂z = G W`, `∂L/∂W = Gᵀ Z`, `∂L/∂b = Σ_i G_i`. A batch without a
//! labelled row has loss 0 and zero gradients (it carries no signal).

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use super::{check_batch, to_f64, LossError, Result};

/// Value and gradients of [`cross_entropy`].
#[derive(Debug, Clone)]
pub struct CrossEntropyOutput {
    /// Mean cross-entropy over the labelled rows (0 when there are none).
    pub value: f64,
    /// ∂value/∂z, shaped like `z`.
    pub grad_z: Array2<f32>,
    /// ∂value/∂W, `[C, D]`.
    pub grad_weight: Array2<f32>,
    /// ∂value/∂b, `[C]`.
    pub grad_bias: Array1<f32>,
    /// Labelled rows whose arg-max logit is their label (a training
    /// accuracy for progress reports).
    pub correct: usize,
    /// Rows that took part (labels known).
    pub labelled: usize,
}

/// Softmax cross-entropy of `W z + b` against `labels` (see the module docs).
///
/// Errors: an empty batch; `labels`, `weight` or `bias` not matching `z`
/// (one label per row, `weight` `[C, D]` for `D`-wide rows, `bias` `[C]`);
/// a label `≥ C` or `C < 2`; non-finite values in any input.
pub fn cross_entropy<A: Copy + Into<f64>>(
    z: ArrayView2<'_, A>,
    labels: &[Option<usize>],
    weight: ArrayView2<'_, A>,
    bias: ArrayView1<'_, A>,
) -> Result<CrossEntropyOutput> {
    check_batch("ce", "z", &z, 1)?;
    let (rows, dim) = z.dim();
    let classes = weight.nrows();
    let mismatch = |left, left_shape, right, right_shape| LossError::ShapeMismatch {
        left,
        left_shape,
        right,
        right_shape,
    };
    if labels.len() != rows {
        return Err(mismatch("labels", [labels.len(), 1], "z", [rows, dim]));
    }
    if weight.ncols() != dim {
        return Err(mismatch(
            "weight",
            [classes, weight.ncols()],
            "z",
            [rows, dim],
        ));
    }
    if bias.len() != classes {
        return Err(mismatch("bias", [bias.len(), 1], "weight", [classes, dim]));
    }
    if classes < 2 {
        return Err(LossError::InvalidParameter {
            name: "classes",
            value: classes as f64,
            requirement: "at least 2",
        });
    }
    if let Some(&label) = labels.iter().flatten().find(|&&y| y >= classes) {
        return Err(LossError::InvalidParameter {
            name: "label",
            value: label as f64,
            requirement: "below the classifier's number of classes",
        });
    }
    let z = to_f64(z, "z")?;
    let w = to_f64(weight, "weight")?;
    let b = to_f64(bias.insert_axis(Axis(0)), "bias")?.remove_axis(Axis(0));
    let labelled = labels.iter().flatten().count();
    let mut g = Array2::<f64>::zeros((rows, classes));
    let mut total = 0.0;
    let mut correct = 0;
    if labelled > 0 {
        let logits = z.dot(&w.t()) + &b;
        let inv = 1.0 / labelled as f64;
        for ((logit, mut grad), label) in logits.rows().into_iter().zip(g.rows_mut()).zip(labels) {
            let Some(y) = *label else { continue };
            let max = logit.fold(f64::NEG_INFINITY, |m, &x| m.max(x));
            let sum: f64 = logit.iter().map(|&x| (x - max).exp()).sum();
            total += max + sum.ln() - logit[y];
            // The label wins only if no other class's logit is higher.
            if logit.iter().all(|&x| x <= logit[y]) {
                correct += 1;
            }
            for (gc, &x) in grad.iter_mut().zip(logit) {
                *gc = (x - max).exp() / sum * inv;
            }
            grad[y] -= inv;
        }
        total *= inv;
    }
    Ok(CrossEntropyOutput {
        value: total,
        grad_z: g.dot(&w).mapv(|v| v as f32),
        grad_weight: g.t().dot(&z).mapv(|v| v as f32),
        grad_bias: g.sum_axis(Axis(0)).mapv(|v| v as f32),
        correct,
        labelled,
    })
}
