//! MoCo's memory bank: a FIFO queue of momentum-encoder keys used as negatives.
//!
//! Each training step enqueues the current batch of keys (the momentum
//! branch's outputs) and the oldest ones fall out, so the contrastive loss
//! sees `K` negatives no matter how small the device batch is (He et al.,
//! "Momentum Contrast", 2020). The reference implementation requires `K` to be
//! a multiple of the batch size; this one accepts any batch `≤ K` and wraps
//! around the ring buffer row by row.
//!
//! Rows are stored L2-normalised (as `F.normalize`: a zero row stays zero),
//! so `negatives()` can be fed straight into an InfoNCE dot product.
//!
//! Layout invariants (checked by [`MemoryBank::from_parts`]):
//! - `keys` is `[K, D]`, `ptr < K` is the row the next key goes to;
//! - until the bank is full the filled rows are `0..filled` and `ptr == filled`;
//!   once full, `filled == K` and `ptr` points at the oldest row.
//!
//! Each key may carry the label of the image it came from (SupCon puts
//! same-label keys on the positive side); keys enqueued without one are
//! unlabelled.
//!
//! For checkpoints, [`MemoryBank::to_params`] writes `bank.keys` `[K, D]` and
//! `bank.state` `[2]` = `(ptr, filled)` as `f32` (exact for any `K < 2²⁴`),
//! and `bank.labels` `[K]` (−1 for unlabelled) when any key has a label;
//! [`MemoryBank::from_params`] reads them back.

use ndarray::{s, Array2, ArrayD, ArrayView2, Axis, IxDyn};

use super::params::{Params, ParamsError};

/// Name of the key tensor in a checkpoint.
pub const KEYS_PARAM: &str = "bank.keys";
/// Name of the `[ptr, filled]` tensor in a checkpoint.
pub const STATE_PARAM: &str = "bank.state";
/// Name of the `[K]` key-label tensor in a checkpoint (−1: unlabelled).
pub const LABELS_PARAM: &str = "bank.labels";

/// Errors of the memory bank.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error("memory bank needs a positive capacity and dimension, got K={k}, D={dim}")]
    Empty { k: usize, dim: usize },
    #[error("keys have dimension {got}, the bank holds {expected}")]
    Dim { got: usize, expected: usize },
    #[error("batch of {batch} keys exceeds the bank capacity {capacity}")]
    BatchTooLarge { batch: usize, capacity: usize },
    #[error("{got} labels for a batch of {batch} keys")]
    Labels { got: usize, batch: usize },
    #[error("key row {row} holds NaN or infinite values")]
    NonFinite { row: usize },
    #[error("invalid bank state: {0}")]
    State(String),
    #[error(transparent)]
    Params(#[from] ParamsError),
}

/// A ring buffer of `K` L2-normalised keys of dimension `D`.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryBank {
    keys: Array2<f32>,
    /// The label of each row of `keys` (`None`: unlabelled).
    labels: Vec<Option<usize>>,
    ptr: usize,
    filled: usize,
}

impl MemoryBank {
    /// An empty bank of capacity `k` for keys of dimension `dim`.
    pub fn new(k: usize, dim: usize) -> Result<Self, BankError> {
        if k == 0 || dim == 0 {
            return Err(BankError::Empty { k, dim });
        }
        Ok(Self {
            keys: Array2::zeros((k, dim)),
            labels: vec![None; k],
            ptr: 0,
            filled: 0,
        })
    }

    /// Rebuilds a bank from its parts (a checkpoint), checking the invariants
    /// listed in the module documentation; filled rows must be finite and of
    /// unit norm (or zero) within 1e-3.
    pub fn from_parts(keys: Array2<f32>, ptr: usize, filled: usize) -> Result<Self, BankError> {
        let (k, dim) = keys.dim();
        if k == 0 || dim == 0 {
            return Err(BankError::Empty { k, dim });
        }
        if filled > k {
            return Err(BankError::State(format!(
                "filled = {filled} exceeds capacity {k}"
            )));
        }
        if ptr >= k {
            return Err(BankError::State(format!(
                "ptr = {ptr} out of range for capacity {k}"
            )));
        }
        if filled < k && ptr != filled {
            return Err(BankError::State(format!(
                "a bank that is not full must have ptr == filled, got ptr = {ptr}, filled = {filled}"
            )));
        }
        for (row, key) in keys.slice(s![..filled, ..]).outer_iter().enumerate() {
            if key.iter().any(|x| !x.is_finite()) {
                return Err(BankError::NonFinite { row });
            }
            let norm = key.iter().map(|&x| x * x).sum::<f32>().sqrt();
            if norm != 0.0 && (norm - 1.0).abs() > 1e-3 {
                return Err(BankError::State(format!(
                    "row {row} has norm {norm}, stored keys must be L2-normalised"
                )));
            }
        }
        Ok(Self {
            labels: vec![None; k],
            keys,
            ptr,
            filled,
        })
    }

    /// Appends a batch `[B, D]` of keys (B ≤ K), overwriting the oldest ones.
    /// Rows are L2-normalised on the way in. The batch is rejected as a whole
    /// (nothing is written) if any value is NaN or infinite.
    pub fn enqueue(&mut self, keys: ArrayView2<f32>) -> Result<(), BankError> {
        self.enqueue_labelled(keys, None)
    }

    /// [`enqueue`](Self::enqueue) with the label of each key (`labels[i]`
    /// for row `i`; `None` for the whole batch: all unlabelled).
    pub fn enqueue_labelled(
        &mut self,
        keys: ArrayView2<f32>,
        labels: Option<&[Option<usize>]>,
    ) -> Result<(), BankError> {
        let (batch, dim) = keys.dim();
        if let Some(l) = labels {
            if l.len() != batch {
                return Err(BankError::Labels {
                    got: l.len(),
                    batch,
                });
            }
        }
        if dim != self.dim() {
            return Err(BankError::Dim {
                got: dim,
                expected: self.dim(),
            });
        }
        if batch > self.capacity() {
            return Err(BankError::BatchTooLarge {
                batch,
                capacity: self.capacity(),
            });
        }
        if let Some(row) = keys
            .outer_iter()
            .position(|r| r.iter().any(|x| !x.is_finite()))
        {
            return Err(BankError::NonFinite { row });
        }
        let k = self.capacity();
        for (i, key) in keys.outer_iter().enumerate() {
            self.labels[self.ptr] = labels.and_then(|l| l[i]);
            // f64 accumulation: a large but finite key must not overflow to inf.
            let norm = key
                .iter()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            let mut dst = self.keys.row_mut(self.ptr);
            for (d, &x) in dst.iter_mut().zip(key.iter()) {
                *d = (f64::from(x) / norm) as f32;
            }
            self.ptr = (self.ptr + 1) % k;
        }
        self.filled = (self.filled + batch).min(k);
        Ok(())
    }

    /// The stored keys `[len(), D]`. Row order is storage order, not age:
    /// once the bank has wrapped, the oldest row is at [`ptr`](Self::ptr).
    /// InfoNCE does not care about the order of its negatives.
    pub fn negatives(&self) -> ArrayView2<'_, f32> {
        self.keys.slice(s![..self.filled, ..])
    }

    /// The label of each row of [`negatives`](Self::negatives), same order.
    pub fn labels(&self) -> &[Option<usize>] {
        &self.labels[..self.filled]
    }

    /// The keys from oldest to newest (a copy; for inspection and tests).
    pub fn chronological(&self) -> Array2<f32> {
        if self.filled < self.capacity() {
            return self.negatives().to_owned();
        }
        let (newer, older) = self.keys.view().split_at(Axis(0), self.ptr);
        ndarray::concatenate(Axis(0), &[older, newer]).expect("same width")
    }

    /// Number of keys held (grows to `K`, then stays there).
    pub fn len(&self) -> usize {
        self.filled
    }

    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    pub fn is_full(&self) -> bool {
        self.filled == self.capacity()
    }

    /// `K`.
    pub fn capacity(&self) -> usize {
        self.keys.nrows()
    }

    /// `D`.
    pub fn dim(&self) -> usize {
        self.keys.ncols()
    }

    /// The row the next key is written to.
    pub fn ptr(&self) -> usize {
        self.ptr
    }

    /// The whole `[K, D]` buffer, unfilled rows (zeros) included.
    pub fn keys(&self) -> ArrayView2<'_, f32> {
        self.keys.view()
    }

    /// Bytes of key storage: `K · D · 4` (the struct's few words aside).
    pub fn memory_bytes(&self) -> usize {
        self.keys.len() * std::mem::size_of::<f32>()
    }

    /// Empties the bank, keeping its capacity.
    pub fn clear(&mut self) {
        self.keys.fill(0.0);
        self.labels.fill(None);
        self.ptr = 0;
        self.filled = 0;
    }

    /// The checkpoint tensors: `bank.keys` `[K, D]` and `bank.state` `[2]` =
    /// `[ptr, filled]` as `f32`.
    pub fn to_params(&self) -> Params {
        let mut p = Params::new();
        p.insert(KEYS_PARAM, self.keys.clone().into_dyn());
        p.insert(
            STATE_PARAM,
            ArrayD::from_shape_vec(IxDyn(&[2]), vec![self.ptr as f32, self.filled as f32])
                .expect("shape [2]"),
        );
        if self.labels.iter().any(Option::is_some) {
            let labels = self
                .labels
                .iter()
                .map(|l| l.map_or(-1.0, |c| c as f32))
                .collect::<Vec<_>>();
            p.insert(
                LABELS_PARAM,
                ArrayD::from_shape_vec(IxDyn(&[labels.len()]), labels).expect("shape [K]"),
            );
        }
        p
    }

    /// Reads a bank back from the tensors [`to_params`](Self::to_params) wrote
    /// (other names in `params` are ignored).
    pub fn from_params(params: &Params) -> Result<Self, BankError> {
        let keys = params.get(KEYS_PARAM)?;
        let state = params.get(STATE_PARAM)?;
        if state.shape() != [2] {
            return Err(ParamsError::Shape {
                name: STATE_PARAM.to_owned(),
                got: state.shape().to_vec(),
                expected: vec![2],
            }
            .into());
        }
        let keys = keys
            .clone()
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|_| {
                BankError::Params(ParamsError::Shape {
                    name: KEYS_PARAM.to_owned(),
                    got: keys.shape().to_vec(),
                    expected: vec![0, 0],
                })
            })?;
        let as_index = |v: f32, what: &str| {
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 {
                Ok(v as usize)
            } else {
                Err(BankError::State(format!(
                    "{what} = {v} is not a non-negative integer"
                )))
            }
        };
        let ptr = as_index(state[0], "ptr")?;
        let filled = as_index(state[1], "filled")?;
        let mut bank = Self::from_parts(keys, ptr, filled)?;
        // Absent in checkpoints of runs without labels: all unlabelled.
        if params.contains(LABELS_PARAM) {
            let stored = params.get(LABELS_PARAM)?;
            if stored.shape() != [bank.capacity()] {
                return Err(ParamsError::Shape {
                    name: LABELS_PARAM.to_owned(),
                    got: stored.shape().to_vec(),
                    expected: vec![bank.capacity()],
                }
                .into());
            }
            for (slot, &v) in bank.labels.iter_mut().zip(stored.iter()) {
                *slot = if v == -1.0 {
                    None
                } else {
                    Some(as_index(v, "a key label")?)
                };
            }
        }
        Ok(bank)
    }
}
