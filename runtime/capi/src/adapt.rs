//! On-device adaptation: a [`Trainer`] (adapter + projection head on frozen
//! embeddings) stepped from C, adapted embeddings out, checkpoints in and out.
//!
//! The caller produces the two views of each batch (e.g. two augmentations
//! of the same frames, embedded with `edgeclr_model_embed_rgb8`); one call is
//! one optimisation step. Checkpoints are the CLI's (`edgeclr adapt`'s
//! `checkpoint.safetensors` format).

use std::ffi::c_char;
use std::path::Path;

use ndarray::ArrayView2;

use super::args::{
    expect_len, matrix_len, opt_out_arg, opt_str_arg, out_arg, slice_arg, slice_mut_arg, str_arg,
};
use super::model::{manifest_of, EdgeclrModel};
use super::registry;
use super::status::{guard, EdgeclrStatus, FfiError};
use edgeclr::adapt::config::AdaptConfig;
use edgeclr::adapt::resume;
use edgeclr::adapt::trainer::Trainer;
use edgeclr::Manifest;

pub(crate) const KIND: &str = "trainer";

/// An adaptation run. Treat as opaque; `id == 0` is the null handle.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeclrTrainer {
    pub id: u64,
}

/// What one [`edgeclr_trainer_step`] did.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EdgeclrStepReport {
    /// Steps taken so far, this one included.
    pub step: u64,
    /// The objective's value on this batch (before the update).
    pub loss: f64,
    /// Learning rate the step used (cosine schedule with warm-up).
    pub lr: f32,
    /// Global L2 norm of the gradient.
    pub grad_norm: f64,
}

/// What a trainer handle owns: the trainer and what its checkpoints need.
pub(crate) struct TrainerState {
    trainer: Trainer,
    manifest: Manifest,
    dim: usize,
    steps_per_epoch: usize,
}

fn invalid(message: impl Into<String>) -> FfiError {
    FfiError::new(EdgeclrStatus::InvalidArgument, message)
}

/// [`AdaptConfig::default`] with the keys of `json` (an object) replacing
/// the defaults; an unknown key is an error that lists the known ones
/// (`AdaptConfig` refuses unknown fields), so typos do not go unnoticed.
fn config_from_json(json: Option<&str>) -> Result<AdaptConfig, FfiError> {
    let Some(json) = json else {
        return Ok(AdaptConfig::default());
    };
    let bad = |e: serde_json::Error| invalid(format!("config_json: {e}"));
    let mut config = serde_json::to_value(AdaptConfig::default()).map_err(bad)?;
    let overrides: serde_json::Value = serde_json::from_str(json).map_err(bad)?;
    let (Some(fields), Some(overrides)) = (config.as_object_mut(), overrides.as_object()) else {
        return Err(invalid("config_json must be a JSON object"));
    };
    // Settings stored only when set (`anchor`, `train_tail`, ...) are absent
    // from the defaults' object but are keys all the same.
    fields.extend(overrides.clone());
    serde_json::from_value(config).map_err(bad)
}

fn new_state(
    model: EdgeclrModel,
    config: AdaptConfig,
    steps_per_epoch: usize,
) -> Result<TrainerState, FfiError> {
    if steps_per_epoch == 0 {
        return Err(invalid("steps_per_epoch must be positive"));
    }
    let manifest = manifest_of(model)?;
    let dim = manifest.outputs.embedding_dim;
    let trainer = Trainer::new(config, dim, steps_per_epoch)?;
    Ok(TrainerState {
        trainer,
        manifest,
        dim,
        steps_per_epoch,
    })
}

/// Creates a trainer for `model`'s embeddings. `config_json` (may be NULL for
/// the defaults of `edgeclr adapt`) is a JSON object overriding any of the
/// keys `loss`, `epochs`, `batch_size`, `lr`, `optimizer`, `weight_decay`,
/// `warmup_epochs`, `bottleneck`, `head_hidden`, `head_out`, `bank_size`,
/// `momentum`, `seed`, `anchor`, e.g. `{"loss": "align-uniform", "bank_size": 0}`.
/// `steps_per_epoch` sets the learning-rate schedule's length
/// (`epochs * steps_per_epoch` steps).
///
/// # Safety
/// `config_json` is NULL or a NUL-terminated string; `out` is NULL or points
/// to a writable `EdgeclrTrainer`.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_trainer_new(
    model: EdgeclrModel,
    config_json: *const c_char,
    steps_per_epoch: usize,
    out: *mut EdgeclrTrainer,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let out = unsafe { out_arg(out, "out") }?;
        // SAFETY: forwarded contract.
        let json = unsafe { opt_str_arg(config_json, "config_json") }?;
        let state = new_state(model, config_from_json(json)?, steps_per_epoch)?;
        *out = EdgeclrTrainer {
            id: registry::insert(KIND, state),
        };
        Ok(())
    })
}

/// Resumes a run from a checkpoint (written by [`edgeclr_trainer_save`] or
/// `edgeclr adapt`) made for `model` (checked by the ONNX file's sha256),
/// under the settings the checkpoint stores. Pass the `steps_per_epoch` the
/// run was created with, so the schedule continues where it was. Same as
/// [`edgeclr_trainer_resume`] with a NULL `config_json`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or points to a
/// writable `EdgeclrTrainer`.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_trainer_load(
    model: EdgeclrModel,
    path: *const c_char,
    steps_per_epoch: usize,
    out: *mut EdgeclrTrainer,
) -> EdgeclrStatus {
    // SAFETY: forwarded contract (a NULL config states no settings).
    unsafe { edgeclr_trainer_resume(model, path, std::ptr::null(), steps_per_epoch, out) }
}

/// Resumes a run from a checkpoint under edgeclr's one resume policy (the
/// CLI's `--resume` and `camera-adapt --resume` follow it too): the
/// checkpoint must be `model`'s, and its stored settings are the run's. With
/// `config_json` (the same keys as [`edgeclr_trainer_new`]), the settings it
/// gives must be the checkpoint's: a difference fails with
/// `EDGECLR_STATUS_CHECKPOINT`, and the last error names every differing
/// setting. NULL states none.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `config_json` is NULL or a
/// NUL-terminated string; `out` is NULL or points to a writable
/// `EdgeclrTrainer`.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_trainer_resume(
    model: EdgeclrModel,
    path: *const c_char,
    config_json: *const c_char,
    steps_per_epoch: usize,
    out: *mut EdgeclrTrainer,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let out = unsafe { out_arg(out, "out") }?;
        // SAFETY: forwarded contract.
        let path = unsafe { str_arg(path, "path") }?;
        // SAFETY: forwarded contract.
        let json = unsafe { opt_str_arg(config_json, "config_json") }?;
        let requested = json.map(|j| config_from_json(Some(j))).transpose()?;
        let run = resume::open(Path::new(path), &manifest_of(model)?, requested.as_ref())?;
        let mut state = new_state(model, run.config, steps_per_epoch)?;
        state.trainer.restore_from(&run.checkpoint)?;
        *out = EdgeclrTrainer {
            id: registry::insert(KIND, state),
        };
        Ok(())
    })
}

/// Writes the run's full state (parameters, EMA copy, optimiser, memory
/// bank, RNG, step) to `path` atomically; a state holding NaN is refused.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_trainer_save(
    trainer: EdgeclrTrainer,
    path: *const c_char,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let path = unsafe { str_arg(path, "path") }?;
        registry::with(trainer.id, KIND, |s: &mut TrainerState| {
            let epoch = s.trainer.step / s.steps_per_epoch as u64;
            let config = s.trainer.config.clone();
            let ckpt = s.trainer.checkpoint(&s.manifest, &config, epoch)?;
            Ok(ckpt.save(Path::new(path))?)
        })
    })
}

/// A `rows x cols` matrix argument whose width must be the trainer's.
///
/// # Safety
/// `ptr` is NULL or points to `rows * cols` readable floats.
unsafe fn batch_arg<'a>(
    ptr: *const f32,
    rows: usize,
    cols: usize,
    dim: usize,
    what: &str,
) -> Result<ArrayView2<'a, f32>, FfiError> {
    expect_len(&format!("{what}'s row"), cols, dim)?;
    let len = matrix_len(rows, cols, what)?;
    // SAFETY: forwarded contract.
    let values = unsafe { slice_arg(ptr, len, what) }?;
    ArrayView2::from_shape((rows, cols), values)
        .map_err(|e| FfiError::new(EdgeclrStatus::Internal, e.to_string()))
}

/// One optimisation step on two views of a batch: `x1` and `x2` each hold
/// `rows` frozen embeddings of width `cols` (the model's embedding width),
/// row-major, row `i` of both from the same image. `rows` must be at least 2
/// (the objectives contrast the rows of a batch). `*report` (may be NULL)
/// gets the step's loss, learning rate and gradient norm. A step whose loss,
/// gradient or update is not finite is not applied and returns
/// `EDGECLR_STATUS_TRAIN`.
///
/// # Safety
/// `x1` and `x2` are NULL or point to `rows * cols` readable floats;
/// `report` is NULL or points to a writable `EdgeclrStepReport`.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_trainer_step(
    trainer: EdgeclrTrainer,
    x1: *const f32,
    x2: *const f32,
    rows: usize,
    cols: usize,
    report: *mut EdgeclrStepReport,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let report = unsafe { opt_out_arg(report, "report") }?;
        if rows < 2 {
            return Err(invalid(format!("a step needs at least 2 rows, got {rows}")));
        }
        let done = registry::with(trainer.id, KIND, |s: &mut TrainerState| {
            // SAFETY: forwarded contract.
            let a = unsafe { batch_arg(x1, rows, cols, s.dim, "x1") }?;
            // SAFETY: forwarded contract.
            let b = unsafe { batch_arg(x2, rows, cols, s.dim, "x2") }?;
            Ok(s.trainer.train_step(a, b)?)
        })?;
        if let Some(report) = report {
            *report = EdgeclrStepReport {
                step: done.step,
                loss: done.loss,
                lr: done.lr,
                grad_norm: done.grad_norm,
            };
        }
        Ok(())
    })
}

/// Adapted embeddings: runs the trained adapter on `rows` frozen embeddings
/// `x` (width `cols`) and writes `rows * cols` floats to `out` (`out_len`
/// must equal `rows * cols`). Feed these to a k-NN head or probe.
///
/// # Safety
/// `x` is NULL or points to `rows * cols` readable floats; `out` is NULL or
/// points to `out_len` writable floats not overlapping `x`.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_trainer_adapt(
    trainer: EdgeclrTrainer,
    x: *const f32,
    rows: usize,
    cols: usize,
    out: *mut f32,
    out_len: usize,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let out = unsafe { slice_mut_arg(out, out_len, "out") }?;
        registry::with(trainer.id, KIND, |s: &mut TrainerState| {
            // SAFETY: forwarded contract.
            let x = unsafe { batch_arg(x, rows, cols, s.dim, "x") }?;
            expect_len("out", out.len(), x.len())?;
            let adapted = s.trainer.adapt(x)?;
            for (dst, src) in out.iter_mut().zip(adapted.iter()) {
                *dst = *src;
            }
            Ok(())
        })
    })
}

/// Frees a trainer handle (see [`edgeclr_model_free`](super::model::edgeclr_model_free)
/// for what is guaranteed afterwards).
#[no_mangle]
pub extern "C" fn edgeclr_trainer_free(trainer: EdgeclrTrainer) -> EdgeclrStatus {
    guard(|| registry::remove(trainer.id, KIND))
}
