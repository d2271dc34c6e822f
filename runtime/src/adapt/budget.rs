//! `--memory-budget`: an estimate of an adaptation run's peak memory, and the
//! settings that make it fit.
//!
//! Edge boards have 1–4 GiB shared with everything else, and an adaptation run
//! that is killed by the OOM killer half-way loses its work. The estimate
//! adds up the big buffers the run holds at its peak (all sizes in bytes):
//!
//! | part | size |
//! | --- | --- |
//! | encoder | `model_overhead × model file` + `runtime_base` (tract keeps the weights, an optimised copy and per-call activations; the export decodes and re-encodes the graph), + `worker × (threads − 1)` (each extra encoder thread's activations and allocator arena) |
//! | view cache | `images × views × dim × 4` (f32) or `× 2` (f16) |
//! | cache build | one view of `images × dim × 4` in f32 parts, concatenated at the end |
//! | diagnostics | four `images × dim × 4` copies (two adapted views, their L2-normalised copies) |
//! | validation | `val_images × dim × 4 × 3` (frozen, adapted train/test) |
//! | parameters | adapter + head (+ predictor) + trained encoder layers × 5 copies: weights, EMA, gradient, two AdamW moments (counted on their engine graphs) |
//! | bank | `bank × head_out × 4`, plus the logits `batch × (bank + 1) × 4 × 3` |
//! | step | `batch × 2` views × (what the backward of the trained encoder layers, adapter, head and predictor keeps per view, read from their engine graphs: [`crate::adapt::tail::TailSpec::activation_bytes_per_sample`], [`crate::adapt::layers::RunLayers::kept_bytes_per_sample`]; + the view, the embedding and the keys with their gradients, `(view + 2·embedding + 2·head_out) × 4`) |
//!
//! The planner first tries the requested settings; if they do not fit it
//! runs the encoder on one thread (slower, same results), then switches the cache to f16 (when the caller can store one), then halves the
//! bank (keeping it a multiple of the batch, down to `min_bank`), then halves
//! the batch (down to `min_batch`, halving the bank along with it so it stays
//! a multiple). If nothing fits it refuses with the smallest estimate it
//! reached, so the user knows how much memory the run needs.

use super::views::Precision;
use std::fmt;

/// Bytes in a MiB, the unit of `--memory-budget`.
pub const MIB: u64 = 1 << 20;

/// What the run will hold, as the CLI's flags and data say.
#[derive(Debug, Clone, PartialEq)]
pub struct RunShape {
    pub images: usize,
    pub views: usize,
    /// Width of what the view cache stores per view: the frozen embedding,
    /// or with trained encoder layers the cut tensor below them.
    pub dim: usize,
    /// Width of the embedding the adapter, diagnostics and validation see
    /// (`dim`, or the trained layers' output); 0 means `dim`.
    pub embed_dim: usize,
    /// Labelled evaluation images (train + test), 0 without `--val`.
    pub val_images: usize,
    pub bank: usize,
    pub batch: usize,
    /// Width of the keys the bank stores (the head's output, or the
    /// embedding without a head).
    pub head_out: usize,
    /// Parameters of the adapter, head and predictor
    /// ([`crate::adapt::layers::RunLayers::numel`]).
    pub layer_params: usize,
    /// Bytes of activations their backward keeps per view.
    pub layer_kept_bytes: usize,
    /// Size of the ONNX file on disk.
    pub model_file_bytes: u64,
    pub precision: Precision,
    /// Encoder threads (`--threads`).
    pub threads: usize,
    /// Parameters of the trained encoder layers (0 without a tail).
    pub tail_params: usize,
    /// Bytes of activations their backward keeps per view.
    pub tail_kept_bytes: usize,
}

/// Calibration of the parts that are not plain buffers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Encoder memory per byte of ONNX file.
    pub model_overhead: f64,
    /// Process, runtime and one image's activations, independent of the model file.
    pub runtime_base: u64,
    /// Each encoder thread beyond the first.
    pub worker: u64,
}

impl Default for Calibration {
    /// Measured with tract on MobileNetV2 (14 MB file): the embed bench's
    /// tract-only process peaks at 66 MB, and `edgeclr adapt` on 64 images at
    /// 118 MiB, the export adding a decoded and a re-encoded copy of the
    /// graph (≈ 2 × file). 5 × file + 32 MiB keeps the estimate above what
    /// was measured; see docs/notes-diag.md. A second encoder thread added
    /// 64 MiB to that run and a third 33 (its own activations and glibc
    /// malloc arena): 64 MiB each keeps above it.
    fn default() -> Self {
        Self {
            model_overhead: 5.0,
            runtime_base: 32 * MIB,
            worker: 64 * MIB,
        }
    }
}

/// The estimate, part by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    pub encoder: u64,
    pub cache: u64,
    pub cache_build: u64,
    pub diagnostics: u64,
    pub validation: u64,
    pub parameters: u64,
    pub bank: u64,
    pub step: u64,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.encoder
            + self.cache
            + self.cache_build
            + self.diagnostics
            + self.validation
            + self.parameters
            + self.bank
            + self.step
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

impl fmt::Display for Estimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.0} MiB (encoder {:.0}, view cache {:.0}, cache build {:.0}, diagnostics {:.0}, \
             validation {:.0}, parameters {:.1}, bank {:.1}, step {:.1})",
            mib(self.total()),
            mib(self.encoder),
            mib(self.cache),
            mib(self.cache_build),
            mib(self.diagnostics),
            mib(self.validation),
            mib(self.parameters),
            mib(self.bank),
            mib(self.step)
        )
    }
}

/// Peak memory of a run of `shape`.
pub fn estimate(shape: &RunShape, cal: &Calibration) -> Estimate {
    let u = |v: usize| v as u64;
    let f32b = 4u64;
    let (n, w) = (u(shape.images), u(shape.dim));
    let d = if shape.embed_dim == 0 {
        w
    } else {
        u(shape.embed_dim)
    };
    let (b, k) = (u(shape.batch), u(shape.bank));
    let o = u(shape.head_out);
    Estimate {
        encoder: (cal.model_overhead * shape.model_file_bytes as f64) as u64
            + cal.runtime_base
            + cal.worker * u(shape.threads.saturating_sub(1)),
        cache: n * u(shape.views) * w * shape.precision.bytes() as u64,
        cache_build: n * w * f32b,
        diagnostics: 4 * n * d * f32b,
        validation: 3 * u(shape.val_images) * d * f32b,
        parameters: 5 * (u(shape.layer_params) + u(shape.tail_params)) * f32b,
        bank: k * o * f32b + 3 * b * (k + 1) * f32b,
        step: 2
            * b
            * (u(shape.layer_kept_bytes) + u(shape.tail_kept_bytes) + (w + 2 * d + 2 * o) * f32b),
    }
}

/// Limits of what the planner may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Whether the caller can store an f16 view cache.
    pub allow_f16: bool,
    /// The bank is not shrunk below this (0 keeps a disabled bank disabled).
    pub min_bank: usize,
    /// The batch is not shrunk below this.
    pub min_batch: usize,
}

impl Default for PlanLimits {
    fn default() -> Self {
        Self {
            allow_f16: true,
            min_bank: 512,
            min_batch: 16,
        }
    }
}

/// Settings that fit, with their estimate and what was changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub shape: RunShape,
    pub estimate: Estimate,
    pub budget: u64,
    /// Human-readable changes from the requested settings, in order.
    pub changes: Vec<String>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "memory plan: {} of a {:.0} MiB budget; cache {}, bank {}, batch {}",
            self.estimate,
            mib(self.budget),
            self.shape.precision,
            self.shape.bank,
            self.shape.batch
        )?;
        if self.changes.is_empty() {
            write!(f, " (as requested)")
        } else {
            write!(f, " ({})", self.changes.join("; "))
        }
    }
}

/// Why no plan fits.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum BudgetError {
    #[error(
        "the run needs at least {need_mib:.0} MiB ({smallest}) but --memory-budget is \
         {budget_mib:.0} MiB; raise the budget, or use fewer images (--limit) or views"
    )]
    TooSmall {
        need_mib: f64,
        budget_mib: f64,
        smallest: String,
    },
    #[error("--memory-budget must be positive")]
    Zero,
}

/// The requested settings if they fit `budget` bytes, else the nearest
/// cheaper ones (see the module docs for the order), else an error with the
/// memory the smallest settings need.
pub fn plan(
    requested: &RunShape,
    budget: u64,
    limits: &PlanLimits,
    cal: &Calibration,
) -> Result<Plan, BudgetError> {
    if budget == 0 {
        return Err(BudgetError::Zero);
    }
    let mut shape = requested.clone();
    let mut changes = Vec::new();
    let fits = |s: &RunShape| estimate(s, cal).total() <= budget;
    if !fits(&shape) && shape.threads > 1 {
        changes.push(format!("encoder threads {} → 1", shape.threads));
        shape.threads = 1;
    }
    if !fits(&shape) && limits.allow_f16 && shape.precision == Precision::F32 {
        shape.precision = Precision::F16;
        changes.push("view cache f32 → f16".to_string());
    }
    let bank_before = shape.bank;
    while !fits(&shape) && shape.bank > limits.min_bank.max(shape.batch) {
        let half = (shape.bank / 2 / shape.batch).max(1) * shape.batch;
        shape.bank = half.max(limits.min_bank.next_multiple_of(shape.batch));
        if shape.bank >= bank_before && half < shape.bank {
            break;
        }
    }
    if shape.bank != bank_before {
        changes.push(format!("bank {bank_before} → {}", shape.bank));
    }
    let batch_before = shape.batch;
    while !fits(&shape) && shape.batch / 2 >= limits.min_batch.max(2) {
        shape.batch /= 2;
        if shape.bank > 0 {
            shape.bank = shape.bank.div_ceil(shape.batch) * shape.batch;
        }
    }
    if shape.batch != batch_before {
        changes.push(format!("batch {batch_before} → {}", shape.batch));
    }
    let est = estimate(&shape, cal);
    if est.total() > budget {
        return Err(BudgetError::TooSmall {
            need_mib: mib(est.total()),
            budget_mib: mib(budget),
            smallest: est.to_string(),
        });
    }
    Ok(Plan {
        shape,
        estimate: est,
        budget,
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fashion-MNIST train on MobileNetV2 with the CLI's defaults.
    fn shape(images: usize) -> RunShape {
        RunShape {
            images,
            views: 2,
            dim: 1280,
            val_images: 0,
            bank: 4096,
            batch: 64,
            head_out: 128,
            // The default adapter (r = 128) and head (512, 128) on 1280-d.
            layer_params: 2 * 1280 * 128 + 128 + 1280 + 1280 * 512 + 512 + 512 * 128 + 128,
            layer_kept_bytes: 4 * (1280 + 128 + 1280 + 512),
            model_file_bytes: 14 * MIB,
            precision: Precision::F32,
            threads: 1,
            tail_params: 0,
            tail_kept_bytes: 0,
            embed_dim: 0,
        }
    }

    fn cal() -> Calibration {
        Calibration::default()
    }

    #[test]
    fn estimate_counts_the_cache_exactly() {
        let e32 = estimate(&shape(1000), &cal());
        assert_eq!(e32.cache, 1000 * 2 * 1280 * 4);
        let mut s = shape(1000);
        s.precision = Precision::F16;
        let e16 = estimate(&s, &cal());
        assert_eq!(e16.cache * 2, e32.cache);
        assert_eq!(e32.total() - e16.total(), e16.cache);
        assert_eq!(e32.bank, 4096 * 128 * 4 + 3 * 64 * 4097 * 4);
    }

    #[test]
    fn a_generous_budget_keeps_the_request() {
        let p = plan(&shape(1000), 4096 * MIB, &PlanLimits::default(), &cal()).unwrap();
        assert_eq!(p.shape, shape(1000));
        assert!(p.changes.is_empty());
        assert!(p.to_string().contains("as requested"));
    }

    #[test]
    fn the_cache_goes_to_f16_first() {
        let s = shape(60_000);
        let full = estimate(&s, &cal()).total();
        // Just below the f32 estimate: halving the cache alone is enough.
        let p = plan(&s, full - MIB, &PlanLimits::default(), &cal()).unwrap();
        assert_eq!(p.shape.precision, Precision::F16);
        assert_eq!((p.shape.bank, p.shape.batch), (4096, 64));
        assert!(p.estimate.total() <= full - MIB);
    }

    #[test]
    fn without_f16_the_bank_then_the_batch_shrink() {
        let limits = PlanLimits {
            allow_f16: false,
            ..PlanLimits::default()
        };
        let s = shape(1000);
        let full = estimate(&s, &cal()).total();
        let mut smaller_bank = s.clone();
        smaller_bank.bank = 1024;
        let budget = estimate(&smaller_bank, &cal()).total();
        assert!(budget < full);
        let p = plan(&s, budget, &limits, &cal()).unwrap();
        assert_eq!(p.shape.precision, Precision::F32);
        assert_eq!(p.shape.bank, 1024);
        assert_eq!(p.shape.batch, 64);
        assert_eq!(p.shape.bank % p.shape.batch, 0);

        let mut floor = s.clone();
        floor.bank = 512;
        floor.batch = 32;
        let p = plan(&s, estimate(&floor, &cal()).total(), &limits, &cal()).unwrap();
        assert_eq!((p.shape.bank, p.shape.batch), (512, 32));
        assert_eq!(p.changes.len(), 2, "{:?}", p.changes);
    }

    #[test]
    fn too_small_a_budget_is_refused_with_the_need() {
        let err = plan(&shape(60_000), 64 * MIB, &PlanLimits::default(), &cal()).unwrap_err();
        let BudgetError::TooSmall { need_mib, .. } = &err else {
            panic!("{err}");
        };
        assert!(*need_mib > 64.0);
        assert!(err.to_string().contains("needs at least"));
        assert_eq!(
            plan(&shape(10), 0, &PlanLimits::default(), &cal()),
            Err(BudgetError::Zero)
        );
    }

    #[test]
    fn a_disabled_bank_stays_disabled() {
        let mut s = shape(1000);
        s.bank = 0;
        let mut small = s.clone();
        small.batch = 16;
        let budget = estimate(&small, &cal()).total();
        let limits = PlanLimits {
            allow_f16: false,
            ..PlanLimits::default()
        };
        let p = plan(&s, budget, &limits, &cal()).unwrap();
        assert_eq!(p.shape.bank, 0);
        assert!(p.shape.batch < 64);
    }

    #[test]
    fn extra_encoder_threads_are_counted_and_dropped_first() {
        let one = shape(1000);
        let two = RunShape {
            threads: 2,
            ..one.clone()
        };
        let (e1, e2) = (estimate(&one, &cal()), estimate(&two, &cal()));
        assert_eq!(e2.encoder - e1.encoder, cal().worker);
        // A budget that fits one thread but not two: threads go first, the
        // cache, bank and batch stay as requested.
        let budget = e1.total() + cal().worker / 2;
        let plan = plan(&two, budget, &PlanLimits::default(), &cal()).unwrap();
        assert_eq!(plan.shape, one);
        assert_eq!(plan.changes, ["encoder threads 2 → 1"]);
    }
}
