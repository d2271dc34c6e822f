//! Crash-safe training state, stored as a safetensors file.
//!
//! A [`Checkpoint`] holds every tensor a run needs to resume (parameters, the
//! `ema.` momentum copy, optimiser buffers, the memory bank, RNG state encoded
//! as tensors) in one [`Params`] map, plus a few facts in the safetensors
//! `__metadata__` string map:
//!
//! | key | value |
//! | --- | --- |
//! | `format` | `edgeclr-checkpoint-1` |
//! | `step`, `epoch` | decimal integers |
//! | `model`, `model_sha256` | the manifest's name and the ONNX file's sha256 |
//! | `config` | the run's configuration, opaque JSON text |
//!
//! Saving goes through [`crate::atomic::write_atomic`], so a crash mid-save
//! leaves the previous checkpoint in place, and a tensor holding NaN or ±Inf
//! is refused before anything is written: a diverged step can never overwrite
//! a good checkpoint.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use safetensors::tensor::{Dtype, SafeTensors, View};

use super::params::Params;
use crate::manifest::Manifest;

/// Value of the `format` metadata key this version writes and reads.
pub const FORMAT: &str = "edgeclr-checkpoint-1";

const KEY_FORMAT: &str = "format";
const KEY_STEP: &str = "step";
const KEY_EPOCH: &str = "epoch";
const KEY_MODEL: &str = "model";
const KEY_SHA: &str = "model_sha256";
const KEY_CONFIG: &str = "config";

/// Errors saving, loading or matching a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot access checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a readable safetensors checkpoint (truncated or corrupt?): {message}")]
    Format { path: PathBuf, message: String },
    #[error("checkpoint {path} lacks metadata key '{key}' (not written by edgeclr?)")]
    MissingMetadata { path: PathBuf, key: &'static str },
    #[error("checkpoint {path} has metadata {key} = '{value}', which is not valid")]
    BadMetadata {
        path: PathBuf,
        key: &'static str,
        value: String,
    },
    #[error("checkpoint {path}: tensor '{name}' is {dtype}, edgeclr checkpoints hold only F32")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("refusing to save a checkpoint: tensor '{0}' holds NaN or infinite values")]
    NonFinite(String),
    #[error("the checkpoint was made for model {found}, but the model loaded is {expected}")]
    WrongModel { expected: String, found: String },
}

/// Everything needed to resume a training run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Checkpoint {
    /// Optimiser steps taken.
    pub step: u64,
    /// Completed epochs.
    pub epoch: u64,
    /// Name of the model manifest the run used.
    pub model: String,
    /// sha256 of the frozen encoder's ONNX file (what [`Checkpoint::check_model`] compares).
    pub model_sha256: String,
    /// The run's configuration, stored verbatim.
    pub config_json: String,
    /// All tensors: parameters, `ema.*`, optimiser state, bank, RNG state.
    pub tensors: Params,
}

/// One tensor as little-endian f32 bytes, the form safetensors writes.
struct F32Bytes {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl F32Bytes {
    fn new(array: &ArrayD<f32>) -> Self {
        // `iter` walks in logical (row-major) order whatever the memory layout.
        let bytes = array.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self {
            shape: array.shape().to_vec(),
            bytes,
        }
    }
}

impl View for &F32Bytes {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

impl Checkpoint {
    /// Writes the checkpoint to `path` atomically (old file or new, never a mix).
    ///
    /// Fails with [`CheckpointError::NonFinite`] before touching the disk when
    /// any tensor holds NaN or ±Inf.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        if let Some(name) = self.tensors.first_non_finite() {
            return Err(CheckpointError::NonFinite(name.to_owned()));
        }
        let tensors: Vec<(String, F32Bytes)> = self
            .tensors
            .iter()
            .map(|(name, array)| (name.to_owned(), F32Bytes::new(array)))
            .collect();
        let metadata = HashMap::from([
            (KEY_FORMAT.to_owned(), FORMAT.to_owned()),
            (KEY_STEP.to_owned(), self.step.to_string()),
            (KEY_EPOCH.to_owned(), self.epoch.to_string()),
            (KEY_MODEL.to_owned(), self.model.clone()),
            (KEY_SHA.to_owned(), self.model_sha256.clone()),
            (KEY_CONFIG.to_owned(), self.config_json.clone()),
        ]);
        let bytes = safetensors::tensor::serialize(
            tensors.iter().map(|(name, t)| (name.as_str(), t)),
            Some(metadata),
        )
        .map_err(|e| CheckpointError::Format {
            path: path.to_path_buf(),
            message: format!("cannot serialise: {e}"),
        })?;
        crate::atomic::write_atomic(path, |file| file.write_all(&bytes)).map_err(|source| {
            CheckpointError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// Reads and validates a checkpoint written by [`Checkpoint::save`].
    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let format_err = |e: safetensors::SafeTensorError| CheckpointError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(format_err)?;
        let st = SafeTensors::deserialize(&bytes).map_err(format_err)?;
        let empty = HashMap::new();
        let meta = header.metadata().as_ref().unwrap_or(&empty);
        let get = |key: &'static str| {
            meta.get(key)
                .cloned()
                .ok_or_else(|| CheckpointError::MissingMetadata {
                    path: path.to_path_buf(),
                    key,
                })
        };
        let format = get(KEY_FORMAT)?;
        if format != FORMAT {
            return Err(CheckpointError::BadMetadata {
                path: path.to_path_buf(),
                key: KEY_FORMAT,
                value: format,
            });
        }
        let number = |key: &'static str| -> Result<u64, CheckpointError> {
            let value = get(key)?;
            value.parse().map_err(|_| CheckpointError::BadMetadata {
                path: path.to_path_buf(),
                key,
                value,
            })
        };
        let step = number(KEY_STEP)?;
        let epoch = number(KEY_EPOCH)?;

        let mut tensors = Params::new();
        for (name, view) in st.iter() {
            if view.dtype() != Dtype::F32 {
                return Err(CheckpointError::Dtype {
                    path: path.to_path_buf(),
                    name: name.to_owned(),
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let array = ArrayD::from_shape_vec(view.shape().to_vec(), values).map_err(|e| {
                CheckpointError::Format {
                    path: path.to_path_buf(),
                    message: format!("tensor '{name}': {e}"),
                }
            })?;
            tensors.insert(name, array);
        }
        Ok(Checkpoint {
            step,
            epoch,
            model: get(KEY_MODEL)?,
            model_sha256: get(KEY_SHA)?,
            config_json: get(KEY_CONFIG)?,
            tensors,
        })
    }

    /// Checks that this checkpoint was made for `manifest`'s model (same ONNX
    /// sha256; the name alone may differ between copies of one model).
    pub fn check_model(&self, manifest: &Manifest) -> Result<(), CheckpointError> {
        if self.model_sha256.eq_ignore_ascii_case(&manifest.sha256) {
            return Ok(());
        }
        Err(CheckpointError::WrongModel {
            expected: format!("'{}' (sha256 {})", manifest.name, manifest.sha256),
            found: format!("'{}' (sha256 {})", self.model, self.model_sha256),
        })
    }
}
