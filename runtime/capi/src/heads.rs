//! Heads on embeddings: the few-shot k-NN head (create, enrol, forget,
//! predict, save, load) and the linear probe `edgeclr probe train` writes
//! (load, predict).
//!
//! Files are the CLI's: a head saved here is read by `edgeclr knn predict`,
//! and a head or probe written by the CLI loads here.

use std::ffi::c_char;

use ndarray::ArrayView2;

use super::args::{copy_string_out, expect_len, opt_out_arg, out_arg, slice_arg, str_arg};
use super::registry;
use super::status::{guard, EdgeclrStatus, FfiError};
use edgeclr::probe::{KnnHead, LinearProbe};

pub(crate) const KNN: &str = "k-NN head";
pub(crate) const PROBE: &str = "linear probe";

/// A k-NN head. Treat as opaque; `id == 0` is the null handle.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeclrKnn {
    pub id: u64,
}

/// A linear probe. Treat as opaque; `id == 0` is the null handle.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeclrProbe {
    pub id: u64,
}

/// One embedding as a 1-row matrix, after checking its length against `dim`.
///
/// # Safety
/// `ptr` is NULL or points to `len` readable floats.
unsafe fn embedding_arg<'a>(
    ptr: *const f32,
    len: usize,
    dim: usize,
) -> Result<ArrayView2<'a, f32>, FfiError> {
    // SAFETY: forwarded contract.
    let values = unsafe { slice_arg(ptr, len, "embedding") }?;
    expect_len("embedding", len, dim)?;
    ArrayView2::from_shape((1, len), values)
        .map_err(|e| FfiError::new(EdgeclrStatus::Internal, e.to_string()))
}

/// Creates an empty k-NN head for `dim`-wide embeddings, voting among `k`
/// neighbours (the CLI's `knn enroll` default is 5).
///
/// # Safety
/// `out` is NULL or points to a writable `EdgeclrKnn`.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_knn_new(
    dim: usize,
    k: usize,
    out: *mut EdgeclrKnn,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let out = unsafe { out_arg(out, "out") }?;
        let head = KnnHead::new(dim, k)
            .map_err(|e| FfiError::new(EdgeclrStatus::InvalidArgument, e.to_string()))?;
        *out = EdgeclrKnn {
            id: registry::insert(KNN, head),
        };
        Ok(())
    })
}

/// Loads a k-NN head file (written by [`edgeclr_knn_save`], `edgeclr knn
/// fit` or `edgeclr knn enroll`).
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or points to a
/// writable `EdgeclrKnn`.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_knn_load(
    path: *const c_char,
    out: *mut EdgeclrKnn,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let out = unsafe { out_arg(out, "out") }?;
        // SAFETY: forwarded contract.
        let path = unsafe { str_arg(path, "path") }?;
        let head = KnnHead::load(path)?;
        *out = EdgeclrKnn {
            id: registry::insert(KNN, head),
        };
        Ok(())
    })
}

/// Saves the head atomically (the old file or the new one, never a torn file).
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_knn_save(knn: EdgeclrKnn, path: *const c_char) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let path = unsafe { str_arg(path, "path") }?;
        registry::with(knn.id, KNN, |head: &mut KnnHead| Ok(head.save(path)?))
    })
}

/// Adds one embedding (`len` = the head's width) as an example of
/// `class_name` (UTF-8), creating the class if it is new. No retraining: the
/// next prediction already uses it.
///
/// # Safety
/// `class_name` is NULL or a NUL-terminated string; `embedding` is NULL or
/// points to `len` readable floats.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_knn_enroll(
    knn: EdgeclrKnn,
    class_name: *const c_char,
    embedding: *const f32,
    len: usize,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let class = unsafe { str_arg(class_name, "class_name") }?;
        registry::with(knn.id, KNN, |head: &mut KnnHead| {
            // SAFETY: forwarded contract.
            let x = unsafe { embedding_arg(embedding, len, head.dim()) }?;
            Ok(head.enroll(class, x)?)
        })
    })
}

/// Removes `class_name` and all its examples; `*removed` (may be NULL) gets
/// how many examples there were. An unknown class is `EDGECLR_STATUS_PROBE`.
///
/// # Safety
/// `class_name` is NULL or a NUL-terminated string; `removed` is NULL or
/// points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_knn_forget(
    knn: EdgeclrKnn,
    class_name: *const c_char,
    removed: *mut usize,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let class = unsafe { str_arg(class_name, "class_name") }?;
        // SAFETY: forwarded contract.
        let removed = unsafe { opt_out_arg(removed, "removed") }?;
        let n = registry::with(knn.id, KNN, |head: &mut KnnHead| Ok(head.forget(class)?))?;
        if let Some(removed) = removed {
            *removed = n;
        }
        Ok(())
    })
}

/// Writes the number of classes the head knows to `*out`.
///
/// # Safety
/// `out` is NULL or points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_knn_num_classes(
    knn: EdgeclrKnn,
    out: *mut usize,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let out = unsafe { out_arg(out, "out") }?;
        *out = registry::with(knn.id, KNN, |head: &mut KnnHead| Ok(head.classes().len()))?;
        Ok(())
    })
}

/// Copies the name of class `index` into `buf` (`buf_len` bytes, NUL
/// included). `*needed` (may be NULL) gets the size the name needs; with
/// `buf == NULL, buf_len == 0` the call only reports that size (and returns
/// `EDGECLR_STATUS_BUFFER_SIZE`).
///
/// # Safety
/// `buf` is NULL or points to `buf_len` writable bytes; `needed` is NULL or
/// points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_knn_class_name(
    knn: EdgeclrKnn,
    index: usize,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> EdgeclrStatus {
    guard(|| {
        let name = registry::with(knn.id, KNN, |head: &mut KnnHead| {
            class_at(head.classes(), index)
        })?;
        // SAFETY: forwarded contract.
        unsafe { copy_string_out(&name, buf, buf_len, needed) }
    })
}

fn class_at(classes: &[String], index: usize) -> Result<String, FfiError> {
    classes.get(index).cloned().ok_or_else(|| {
        FfiError::new(
            EdgeclrStatus::InvalidArgument,
            format!(
                "class index {index} is out of range ({} classes)",
                classes.len()
            ),
        )
    })
}

/// Predicts the class of one embedding: `*class_index` gets the winner (an
/// index for [`edgeclr_knn_class_name`]) and `*score` (may be NULL) its share
/// of the similarity-weighted vote, in (0, 1]. A head with no examples yet is
/// `EDGECLR_STATUS_PROBE`.
///
/// # Safety
/// `embedding` is NULL or points to `len` readable floats; `class_index` and
/// `score` are NULL or point to writable values.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_knn_predict(
    knn: EdgeclrKnn,
    embedding: *const f32,
    len: usize,
    class_index: *mut usize,
    score: *mut f32,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let class_index = unsafe { out_arg(class_index, "class_index") }?;
        // SAFETY: forwarded contract.
        let score = unsafe { opt_out_arg(score, "score") }?;
        let best = registry::with(knn.id, KNN, |head: &mut KnnHead| {
            if head.num_keys() == 0 {
                return Err(FfiError::new(
                    EdgeclrStatus::Probe,
                    "the k-NN head has no examples yet: enrol some first",
                ));
            }
            // SAFETY: forwarded contract.
            let x = unsafe { embedding_arg(embedding, len, head.dim()) }?;
            let prediction = head.predict(x)?.into_iter().next();
            prediction.ok_or_else(|| FfiError::new(EdgeclrStatus::Internal, "no prediction"))
        })?;
        *class_index = best.class;
        if let Some(score) = score {
            *score = best.score;
        }
        Ok(())
    })
}

/// Frees a k-NN head handle (see [`edgeclr_model_free`](super::model::edgeclr_model_free)
/// for what is guaranteed afterwards).
#[no_mangle]
pub extern "C" fn edgeclr_knn_free(knn: EdgeclrKnn) -> EdgeclrStatus {
    guard(|| registry::remove(knn.id, KNN))
}

/// Loads a linear probe file (written by `edgeclr probe train`).
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or points to a
/// writable `EdgeclrProbe`.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_probe_load(
    path: *const c_char,
    out: *mut EdgeclrProbe,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let out = unsafe { out_arg(out, "out") }?;
        // SAFETY: forwarded contract.
        let path = unsafe { str_arg(path, "path") }?;
        let probe = LinearProbe::load(path)?;
        *out = EdgeclrProbe {
            id: registry::insert(PROBE, probe),
        };
        Ok(())
    })
}

/// Writes the number of classes of the probe to `*out`.
///
/// # Safety
/// `out` is NULL or points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_probe_num_classes(
    probe: EdgeclrProbe,
    out: *mut usize,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let out = unsafe { out_arg(out, "out") }?;
        *out = registry::with(probe.id, PROBE, |p: &mut LinearProbe| Ok(p.classes().len()))?;
        Ok(())
    })
}

/// Copies the name of class `index`; as [`edgeclr_knn_class_name`].
///
/// # Safety
/// As [`edgeclr_knn_class_name`].
#[no_mangle]
pub unsafe extern "C" fn edgeclr_probe_class_name(
    probe: EdgeclrProbe,
    index: usize,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> EdgeclrStatus {
    guard(|| {
        let name = registry::with(probe.id, PROBE, |p: &mut LinearProbe| {
            class_at(p.classes(), index)
        })?;
        // SAFETY: forwarded contract.
        unsafe { copy_string_out(&name, buf, buf_len, needed) }
    })
}

/// Predicts the class of one embedding: `*class_index` gets the most probable
/// class; when `proba` is not NULL it receives every class's probability and
/// `proba_len` must equal the number of classes. The probe normalises the
/// embedding itself if it was trained on normalised ones.
///
/// # Safety
/// `embedding` is NULL or points to `len` readable floats; `class_index` is
/// NULL or points to a writable `size_t`; `proba` is NULL or points to
/// `proba_len` writable floats.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_probe_predict(
    probe: EdgeclrProbe,
    embedding: *const f32,
    len: usize,
    class_index: *mut usize,
    proba: *mut f32,
    proba_len: usize,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let class_index = unsafe { out_arg(class_index, "class_index") }?;
        let proba = if proba.is_null() {
            None
        } else {
            // SAFETY: forwarded contract.
            Some(unsafe { super::args::slice_mut_arg(proba, proba_len, "proba") }?)
        };
        registry::with(probe.id, PROBE, |p: &mut LinearProbe| {
            // SAFETY: forwarded contract.
            let x = unsafe { embedding_arg(embedding, len, p.dim()) }?;
            let probabilities = p.predict_proba(x)?;
            let row = probabilities.row(0);
            if let Some(out) = &proba {
                expect_len("proba", out.len(), row.len())?;
            }
            let best = p.predict(x)?.first().copied().unwrap_or(0);
            if let Some(out) = proba {
                for (dst, src) in out.iter_mut().zip(row.iter()) {
                    *dst = *src;
                }
            }
            *class_index = best;
            Ok(())
        })
    })
}

/// Frees a probe handle (see [`edgeclr_model_free`](super::model::edgeclr_model_free)
/// for what is guaranteed afterwards).
#[no_mangle]
pub extern "C" fn edgeclr_probe_free(probe: EdgeclrProbe) -> EdgeclrStatus {
    guard(|| registry::remove(probe.id, PROBE))
}
