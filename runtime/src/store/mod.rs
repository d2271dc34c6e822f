//! Embedding files on disk: `NAME.npy` (f32 `[n, d]`, loads in numpy as is),
//! `NAME.labels.npy` (i64 `[n]`, when labelled) and `NAME.json` (provenance:
//! model, normalisation, class names, skipped inputs). Every file is written
//! atomically, so an interrupted run never leaves a half-written array.
//!
//! For data tools, the same set can be written as one Parquet table (a row per
//! image: index, path, label, embedding; `parquet_file.rs`) or one
//! safetensors file (`safetensors_file.rs`), with the provenance inside.

#[cfg(feature = "parquet")]
mod parquet_file;
mod safetensors_file;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use ndarray_npy::npy::header::Header;
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use serde::{Deserialize, Serialize};

/// Errors reading or writing embedding files.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a readable .npy array of the expected type and rank: {message}")]
    Npy { path: PathBuf, message: String },
    #[error("{path}: invalid metadata: {message}")]
    Meta { path: PathBuf, message: String },
    #[error("{embeddings} embeddings but {labels} labels")]
    CountMismatch { embeddings: usize, labels: usize },
    #[error("{path}: row {row} holds NaN or infinite values")]
    NonFinite { path: PathBuf, row: usize },
    #[error("{0}: no labels file beside it ({1} expected); labelled input is needed here")]
    NoLabels(PathBuf, PathBuf),
}

/// Provenance stored beside an embedding array.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EmbeddingMeta {
    pub model: String,
    pub backend: String,
    pub normalized: bool,
    pub source: String,
    #[serde(default)]
    pub class_names: Option<Vec<String>>,
    #[serde(default)]
    pub skipped: Vec<String>,
    /// `I/N` when this file holds one shard of a job (`embed --shard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// For a shard: the dataset index of its first row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_index: Option<usize>,
    /// Hex sha256 of the ONNX file that made the embeddings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
}

/// The file formats an embedding set can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `NAME.npy` + `NAME.labels.npy` + `NAME.json`.
    #[default]
    Npy,
    /// One Parquet table, a row per image.
    Parquet,
    /// One safetensors file.
    Safetensors,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "npy" => Ok(Format::Npy),
            "parquet" => Ok(Format::Parquet),
            "safetensors" => Ok(Format::Safetensors),
            _ => Err(format!("unknown format '{s}' (npy, parquet, safetensors)")),
        }
    }
}

/// What each row of an embedding set came from, for the formats that keep it
/// beside the embedding: its dataset index and its path (or `file[i]` for an
/// image inside an IDX file).
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    pub indices: &'a [usize],
    pub paths: &'a [String],
}

/// Embeddings with optional labels and their metadata.
#[derive(Debug, Clone)]
pub struct EmbeddingSet {
    pub embeddings: Array2<f32>,
    pub labels: Option<Vec<usize>>,
    pub meta: EmbeddingMeta,
}

/// The labels file that goes with an embeddings file.
pub fn labels_path(npy: &Path) -> PathBuf {
    npy.with_extension("labels.npy")
}

/// The metadata file that goes with an embeddings file.
pub fn meta_path(npy: &Path) -> PathBuf {
    npy.with_extension("json")
}

/// Writes a file atomically (see [`crate::atomic`]), as a [`StoreError`].
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), StoreError> {
    crate::atomic::write_atomic(path, write).map_err(|source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn npy_err(path: &Path) -> impl Fn(String) -> StoreError + '_ {
    move |message| StoreError::Npy {
        path: path.to_path_buf(),
        message,
    }
}

/// Refuses a `.npy` header that nests brackets, before ndarray-npy parses it:
/// its Python-literal parser takes time exponential in the nesting depth (the
/// fuzzer found a 45-deep `{{{…` header that ran for minutes). The arrays
/// edgeclr reads have one dict and one shape tuple, nothing nested.
fn check_header_nesting(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Ok(()); // not an npy at all: the parser reports that
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        _ if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Ok(()),
    };
    let header = &bytes[start..bytes.len().min(start.saturating_add(len))];
    let count = |c: u8| header.iter().filter(|&&b| b == c).count();
    if count(b'{') > 1 || count(b'(') > 1 || count(b'[') > 0 {
        return Err(
            "the header is not a plain {'descr', 'fortran_order', 'shape'} dict \
             (nested brackets): not an array edgeclr reads"
                .into(),
        );
    }
    Ok(())
}

/// Reads a whole `.npy` file, refusing one whose header declares more data
/// than the file holds. ndarray-npy allocates what the header declares before
/// it reads, so without this a 100-byte file declaring a 10⁹ × 10⁶ shape
/// aborts the process on a 4 PB allocation.
fn read_npy_bytes(path: &Path, element_size: usize) -> Result<Vec<u8>, StoreError> {
    let bytes = std::fs::read(path).map_err(|source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    check_header_nesting(&bytes).map_err(npy_err(path))?;
    let mut data = &bytes[..];
    let header = Header::from_reader(&mut data).map_err(|e| npy_err(path)(e.to_string()))?;
    let declared = header
        .shape
        .iter()
        .try_fold(element_size, |acc, &d| acc.checked_mul(d));
    match declared {
        Some(n) if n <= data.len() => Ok(bytes),
        _ => Err(npy_err(path)(format!(
            "the header declares shape {:?}, more than the {} data bytes the file holds",
            header.shape,
            data.len()
        ))),
    }
}

/// Reads a 2-D f32 `.npy` and rejects non-finite rows.
pub fn read_matrix(path: &Path) -> Result<Array2<f32>, StoreError> {
    let bytes = read_npy_bytes(path, std::mem::size_of::<f32>())?;
    let x = Array2::<f32>::read_npy(&bytes[..]).map_err(|e| npy_err(path)(e.to_string()))?;
    if let Some(row) = x
        .rows()
        .into_iter()
        .position(|r| r.iter().any(|v| !v.is_finite()))
    {
        return Err(StoreError::NonFinite {
            path: path.to_path_buf(),
            row,
        });
    }
    Ok(x)
}

/// Writes a 2-D f32 `.npy` atomically.
pub fn write_matrix(path: &Path, x: &Array2<f32>) -> Result<(), StoreError> {
    write_atomic(path, |f| {
        x.write_npy(std::io::BufWriter::new(f))
            .map_err(std::io::Error::other)
    })
}

impl EmbeddingSet {
    /// Writes the array, labels (if any) and metadata.
    pub fn save(&self, npy: &Path) -> Result<(), StoreError> {
        if let Some(labels) = &self.labels {
            if labels.len() != self.embeddings.nrows() {
                return Err(StoreError::CountMismatch {
                    embeddings: self.embeddings.nrows(),
                    labels: labels.len(),
                });
            }
            let arr: Array1<i64> = labels.iter().map(|&l| l as i64).collect();
            write_atomic(&labels_path(npy), |f| {
                arr.write_npy(std::io::BufWriter::new(f))
                    .map_err(std::io::Error::other)
            })?;
        }
        write_matrix(npy, &self.embeddings)?;
        let meta = serde_json::to_vec_pretty(&self.meta).map_err(|e| StoreError::Meta {
            path: meta_path(npy),
            message: e.to_string(),
        })?;
        write_atomic(&meta_path(npy), |f| f.write_all(&meta))
    }

    /// Writes the set in `format`; `rows` (one entry per embedding) is kept
    /// by Parquet and safetensors, and ignored by `.npy`.
    pub fn save_as(&self, path: &Path, format: Format, rows: &Rows) -> Result<(), StoreError> {
        let n = self.embeddings.nrows();
        if let Some(labels) = &self.labels {
            if labels.len() != n {
                return Err(StoreError::CountMismatch {
                    embeddings: n,
                    labels: labels.len(),
                });
            }
        }
        if format != Format::Npy && (rows.indices.len() != n || rows.paths.len() != n) {
            return Err(StoreError::Meta {
                path: path.to_path_buf(),
                message: format!(
                    "{n} embeddings but {} indices and {} paths",
                    rows.indices.len(),
                    rows.paths.len()
                ),
            });
        }
        let meta = serde_json::to_string(&self.meta).map_err(|e| StoreError::Meta {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut metadata = vec![
            ("edgeclr.meta".to_owned(), meta),
            ("model".to_owned(), self.meta.model.clone()),
            (
                "embedding_dim".to_owned(),
                self.embeddings.ncols().to_string(),
            ),
        ];
        if let Some(sha) = &self.meta.model_sha256 {
            metadata.push(("model_sha256".to_owned(), sha.clone()));
        }
        match format {
            Format::Npy => self.save(path),
            #[cfg(feature = "parquet")]
            Format::Parquet => parquet_file::write(path, self, rows, metadata),
            #[cfg(not(feature = "parquet"))]
            Format::Parquet => Err(StoreError::Meta {
                path: path.to_path_buf(),
                message: format!(
                    "this edgeclr was built without Parquet support ({} metadata fields unused); \
                     rebuild with the `parquet` feature",
                    metadata.len()
                ),
            }),
            Format::Safetensors => safetensors_file::write(path, self, rows, metadata),
        }
    }

    /// Reads an embeddings file with its labels and metadata when present.
    pub fn load(npy: &Path) -> Result<Self, StoreError> {
        let embeddings = read_matrix(npy)?;
        let lp = labels_path(npy);
        let labels = if lp.is_file() {
            let bytes = read_npy_bytes(&lp, std::mem::size_of::<i64>())?;
            let arr =
                Array1::<i64>::read_npy(&bytes[..]).map_err(|e| npy_err(&lp)(e.to_string()))?;
            if arr.len() != embeddings.nrows() {
                return Err(StoreError::CountMismatch {
                    embeddings: embeddings.nrows(),
                    labels: arr.len(),
                });
            }
            let labels = arr
                .iter()
                .map(|&v| {
                    usize::try_from(v).map_err(|_| npy_err(&lp)(format!("negative label {v}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(labels)
        } else {
            None
        };
        let mp = meta_path(npy);
        let meta = if mp.is_file() {
            let text = std::fs::read_to_string(&mp).map_err(|source| StoreError::Io {
                path: mp.clone(),
                source,
            })?;
            serde_json::from_str(&text).map_err(|e| StoreError::Meta {
                path: mp.clone(),
                message: e.to_string(),
            })?
        } else {
            EmbeddingMeta::default()
        };
        Ok(Self {
            embeddings,
            labels,
            meta,
        })
    }

    /// Labels, or an error saying where they were expected.
    pub fn require_labels(&self, npy: &Path) -> Result<&[usize], StoreError> {
        self.labels
            .as_deref()
            .ok_or_else(|| StoreError::NoLabels(npy.to_path_buf(), labels_path(npy)))
    }
}
