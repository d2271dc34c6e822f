//! Trainable heads on top of frozen embeddings.
//!
//! A representation is only as good as what a cheap head can do with it, so
//! this module provides the two standard read-outs:
//!
//! - [`LinearProbe`]: multinomial logistic regression, the linear-evaluation
//!   protocol of SimCLR/MoCo/DINO, with the exact objective of scikit-learn's
//!   `LogisticRegression(solver="lbfgs")` so numbers are comparable.
//! - [`KnnHead`]: a cosine k-NN head that learns new classes from a handful of
//!   shots on the device, without retraining anything.
//!
//! Both validate their inputs (shapes, labels, NaN/Inf) and report problems as
//! [`ProbeError`] instead of panicking, and both persist as versioned JSON.

pub mod knn;
pub mod lbfgs;
pub mod linear;

pub use knn::{KnnHead, KnnPrediction};
pub use lbfgs::{LbfgsConfig, LbfgsReport, Termination};
pub use linear::{FitReport, LinearProbe, LinearProbeConfig, SoftmaxObjective};

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{ArrayView1, ArrayView2};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Everything that can go wrong when training, using or persisting a head.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// An input that must contain data has none (no rows, no columns, no keys).
    #[error("{0} is empty")]
    Empty(&'static str),

    /// An embedding's width differs from the head's.
    #[error("dimension mismatch: expected {expected}-dimensional embeddings, got {found}")]
    DimMismatch { expected: usize, found: usize },

    /// A parameter (or gradient) vector of the wrong length for the objective.
    #[error("expected {expected} parameters, got {found}")]
    ParamCount { expected: usize, found: usize },

    /// The number of labels differs from the number of embeddings.
    #[error("got {labels} labels for {rows} embeddings")]
    LabelCountMismatch { labels: usize, rows: usize },

    /// A label does not index into the class list.
    #[error("label {label} at row {row} is out of range for {classes} classes")]
    LabelOutOfRange {
        row: usize,
        label: usize,
        classes: usize,
    },

    /// An input contains NaN or ±Inf, which would silently poison the result.
    #[error("{what} contains a non-finite value at row {row}, column {col}")]
    NonFinite {
        what: &'static str,
        row: usize,
        col: usize,
    },

    /// A zero vector has no direction, so it cannot take part in cosine similarity.
    #[error("{what} row {row} has zero norm; cosine similarity is undefined for it")]
    ZeroNorm { what: &'static str, row: usize },

    /// A class name that the head does not know.
    #[error("unknown class {0:?}")]
    UnknownClass(String),

    /// The same class name appears twice, which would make labels ambiguous.
    #[error("duplicate class name {0:?}")]
    DuplicateClass(String),

    /// A class has no training examples, so its logit has no finite optimum.
    #[error("class {0:?} has no training examples")]
    EmptyClass(String),

    /// A configuration value outside its meaningful range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// Reading or writing a head's file failed.
    #[error("I/O error on {path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A head's file is not valid JSON, or does not match the expected schema.
    #[error("cannot parse {path}: {source}", path = .path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// The file is JSON but holds something other than the requested head.
    #[error("{path} is not an {expected} file (format is {found:?})", path = .path.display())]
    WrongFormat {
        path: PathBuf,
        expected: &'static str,
        found: String,
    },

    /// The file was written by an incompatible version of this crate.
    #[error(
        "{path} is {format} version {found}, but this build reads only version {supported}",
        path = .path.display(),
        found = .found.map_or_else(|| "<missing>".to_string(), |v| v.to_string())
    )]
    UnsupportedVersion {
        path: PathBuf,
        format: &'static str,
        /// `None` when the file has no `version` field at all.
        found: Option<u64>,
        supported: u32,
    },

    /// A deserialised head violates its own invariants (e.g. ragged weights).
    #[error("corrupt {format} data: {reason}")]
    Corrupt {
        format: &'static str,
        reason: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = ProbeError> = std::result::Result<T, E>;

/// The `format`/`version` envelope shared by every persisted head; read first so
/// a wrong or future file gets a precise error instead of "missing field".
#[derive(Deserialize)]
struct Header {
    format: Option<String>,
    version: Option<u64>,
}

/// Rejects empty inputs and inputs of the wrong width.
pub(crate) fn check_shape(x: &ArrayView2<f32>, dim: usize, what: &'static str) -> Result<()> {
    if x.nrows() == 0 {
        return Err(ProbeError::Empty(what));
    }
    if x.ncols() != dim {
        return Err(ProbeError::DimMismatch {
            expected: dim,
            found: x.ncols(),
        });
    }
    Ok(())
}

/// Rejects NaN/±Inf, naming the first offending cell.
pub(crate) fn check_finite(x: &ArrayView2<f32>, what: &'static str) -> Result<()> {
    for (row, values) in x.outer_iter().enumerate() {
        if let Some(col) = values.iter().position(|v| !v.is_finite()) {
            return Err(ProbeError::NonFinite { what, row, col });
        }
    }
    Ok(())
}

/// Checks that there is one label per row and each indexes into `n_classes`.
pub(crate) fn check_labels(labels: &[usize], rows: usize, n_classes: usize) -> Result<()> {
    if labels.len() != rows {
        return Err(ProbeError::LabelCountMismatch {
            labels: labels.len(),
            rows,
        });
    }
    match labels.iter().enumerate().find(|&(_, &l)| l >= n_classes) {
        Some((row, &label)) => Err(ProbeError::LabelOutOfRange {
            row,
            label,
            classes: n_classes,
        }),
        None => Ok(()),
    }
}

/// Class names index labels, so they must be unique.
pub(crate) fn check_unique(classes: &[String]) -> Result<()> {
    let mut seen = HashSet::with_capacity(classes.len());
    match classes.iter().find(|c| !seen.insert(c.as_str())) {
        Some(dup) => Err(ProbeError::DuplicateClass(dup.clone())),
        None => Ok(()),
    }
}

/// Euclidean norm accumulated in f64, so large or tiny f32 values neither
/// overflow nor lose precision.
pub(crate) fn l2_norm(row: ArrayView1<f32>) -> f32 {
    row.iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt() as f32
}

/// Share of correct predictions; shared by both heads.
pub(crate) fn accuracy_of(predicted: &[usize], labels: &[usize]) -> f64 {
    let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    correct as f64 / labels.len() as f64
}

/// Writes `value` as JSON so that `path` holds either the old or the new file,
/// never a torn one: write `path.tmp`, fsync it, then rename over `path`. A
/// crash or power cut mid-save (common on edge devices) must not destroy a
/// previously trained head.
pub(crate) fn save_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_vec(value).map_err(|source| ProbeError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    crate::atomic::write_atomic(path, |f| f.write_all(&json)).map_err(|source| ProbeError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a versioned JSON head, checking the envelope before the body so the
/// error says "wrong format"/"unsupported version" rather than a schema detail.
pub(crate) fn load_json<T: DeserializeOwned>(
    path: &Path,
    format: &'static str,
    version: u32,
) -> Result<T> {
    let text = fs::read_to_string(path).map_err(|source| ProbeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let json_err = |source| ProbeError::Json {
        path: path.to_path_buf(),
        source,
    };
    let header: Header = serde_json::from_str(&text).map_err(json_err)?;
    match header.format.as_deref() {
        Some(found) if found == format => {}
        found => {
            return Err(ProbeError::WrongFormat {
                path: path.to_path_buf(),
                expected: format,
                found: found.unwrap_or("<missing>").to_string(),
            })
        }
    }
    match header.version {
        Some(found) if found == u64::from(version) => {}
        found => {
            return Err(ProbeError::UnsupportedVersion {
                path: path.to_path_buf(),
                format,
                found,
                supported: version,
            })
        }
    }
    serde_json::from_str(&text).map_err(json_err)
}
