//! Inference backends: run a frozen ONNX encoder on a batch of input tensors.
//!
//! Everything above this module (embedding, probes, adaptation) sees only the
//! [`Encoder`] trait, so a second runtime (ONNX Runtime, behind a cargo feature)
//! or a trainable head stacked on top plugs in without changing callers.

#[cfg(feature = "ort")]
mod ort;
mod tract;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use ndarray::{Array2, ArrayView4};

#[cfg(feature = "ort")]
pub use self::ort::OrtEncoder;
pub use self::tract::{
    in_guarded_tract_call, infer_output_shape, tensor_shape, tract_panic_error, TractEncoder,
};
use crate::manifest::Manifest;

/// Errors raised while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has sha256 {actual}, but its manifest says {expected}: the file is not the model the manifest describes (re-export it, or fix the manifest)")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path} is not a readable ONNX model: {message}")]
    NotOnnx { path: PathBuf, message: String },
    #[error("the model uses operators this backend cannot run: {}", .0.join(", "))]
    UnsupportedOps(Vec<String>),
    #[error("the model does not match its manifest: {0}")]
    ManifestMismatch(String),
    #[error("backend '{backend}' failed: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
    #[error("input batch has shape {got:?}, the model takes [N, {expected:?}]")]
    InputShape {
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("output '{name}' has shape {got:?}, expected [N, {expected}]")]
    OutputShape {
        name: String,
        got: Vec<usize>,
        expected: usize,
    },
    #[error("output '{0}' contains NaN or infinite values")]
    NonFiniteOutput(String),
    /// The backend cannot be used at all here: not compiled in, its runtime
    /// library is missing or too old, or it lacks the requested accelerator.
    /// The message says what to install or change.
    #[error("backend '{backend}' is unavailable: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },
}

/// Reading and rewriting the file ([`crate::onnx`]) fails with the same
/// kinds a backend reports: I/O, checksum, not ONNX; a graph that lacks a
/// tensor the manifest names does not match its manifest.
impl From<crate::onnx::OnnxError> for ModelError {
    fn from(e: crate::onnx::OnnxError) -> Self {
        use crate::onnx::OnnxError as O;
        match e {
            O::Io { path, source } => ModelError::Io { path, source },
            O::Checksum {
                path,
                expected,
                actual,
            } => ModelError::Checksum {
                path,
                expected,
                actual,
            },
            O::NotOnnx { path, message } => ModelError::NotOnnx { path, message },
            other => ModelError::ManifestMismatch(other.to_string()),
        }
    }
}

/// What one batch through the encoder produces.
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    /// `[N, embedding_dim]`.
    pub embedding: Array2<f32>,
    /// `[N, num_classes]`, when the manifest names a logits output.
    pub logits: Option<Array2<f32>>,
}

/// A loaded, optimised, runnable encoder. Batch size is chosen per call.
pub trait Encoder: Send {
    /// Short backend name, for reports (`"tract"`, `"ort"`).
    fn backend(&self) -> &'static str;
    /// The manifest the model was loaded and checked against.
    fn manifest(&self) -> &Manifest;
    /// Runs a batch shaped `[N, ...manifest.input.shape]`.
    fn run(&mut self, batch: ArrayView4<f32>) -> Result<EncoderOutput, ModelError>;
}

/// Options fixed when a model is loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Threads the backend may use (1 = single-threaded). tract splits a
    /// batch of several images between that many workers and multithreads
    /// its matrix kernels for a single image; ONNX Runtime uses them as
    /// intra-op threads.
    pub threads: usize,
    /// Skip reading the logits output even when the manifest names one.
    pub embedding_only: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            threads: 1,
            embedding_only: false,
        }
    }
}

/// Which runtime executes the encoder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backend {
    /// tract, pure Rust, always compiled in.
    #[default]
    Tract,
    /// ONNX Runtime, loaded from a `libonnxruntime` at run time; needs the
    /// `ort` cargo feature (see [`OrtOptions`]).
    Ort(OrtOptions),
}

impl Backend {
    /// `"tract"` or `"ort"`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Tract => "tract",
            Backend::Ort(_) => "ort",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = String;

    /// `tract`, or `ort` (alias `onnxruntime`) with default [`OrtOptions`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tract" => Ok(Backend::Tract),
            "ort" | "onnxruntime" => Ok(Backend::Ort(OrtOptions::default())),
            other => Err(format!("unknown backend '{other}' (expected tract or ort)")),
        }
    }
}

/// Where ONNX Runtime runs the graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExecutionProvider {
    #[default]
    Cpu,
    /// NVIDIA CUDA; needs a GPU build of ONNX Runtime (`onnxruntime-gpu`).
    Cuda,
    /// NVIDIA TensorRT (CUDA for the nodes TensorRT does not take).
    TensorRt,
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::TensorRt => "tensorrt",
        })
    }
}

impl FromStr for ExecutionProvider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(ExecutionProvider::Cpu),
            "cuda" | "gpu" => Ok(ExecutionProvider::Cuda),
            "tensorrt" | "trt" => Ok(ExecutionProvider::TensorRt),
            other => Err(format!(
                "unknown execution provider '{other}' (expected cpu, cuda or tensorrt)"
            )),
        }
    }
}

/// Settings only the ONNX Runtime backend reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrtOptions {
    /// The `libonnxruntime.so.1.*` to load. `None`: the `ORT_DYLIB_PATH`
    /// environment variable. There is no search: without either, loading fails
    /// with an error that says what to install.
    pub library: Option<PathBuf>,
    pub execution_provider: ExecutionProvider,
}

/// Loads `manifest`'s model with the chosen backend.
///
/// Asking for [`Backend::Ort`] in a build without the `ort` feature is a
/// [`ModelError::Unavailable`], not a panic.
pub fn load_encoder(
    backend: &Backend,
    manifest: &Manifest,
    options: &LoadOptions,
) -> Result<Box<dyn Encoder>, ModelError> {
    match backend {
        Backend::Tract => Ok(Box::new(TractEncoder::load(manifest, options)?)),
        #[cfg(feature = "ort")]
        Backend::Ort(ort) => Ok(Box::new(OrtEncoder::load(manifest, options, ort)?)),
        #[cfg(not(feature = "ort"))]
        Backend::Ort(_) => Err(ModelError::Unavailable {
            backend: "ort",
            message:
                "this edgeclr was built without ONNX Runtime support; rebuild with --features ort"
                    .into(),
        }),
    }
}

/// The embedding of a batch: the raw output pooled as the manifest says
/// ([`crate::manifest::Pool`]), checked to be `[N, embedding_dim]` and finite.
pub(crate) fn embedding_output(
    manifest: &Manifest,
    data: ndarray::ArrayViewD<f32>,
    batch: usize,
) -> Result<Array2<f32>, ModelError> {
    let name = &manifest.outputs.embedding;
    let pooled = manifest
        .outputs
        .pool
        .apply(data)
        .map_err(|e| ModelError::ManifestMismatch(format!("embedding '{name}': {e}")))?;
    check_output(
        name,
        pooled.into_dyn().view(),
        batch,
        manifest.outputs.embedding_dim,
    )
}

/// Checks a `[N, D]` output and returns it as a 2-D array.
pub(crate) fn check_output(
    name: &str,
    data: ndarray::ArrayViewD<f32>,
    batch: usize,
    dim: usize,
) -> Result<Array2<f32>, ModelError> {
    let shape = data.shape().to_vec();
    let flat_dim: usize = shape.iter().skip(1).product();
    if shape.first() != Some(&batch) || flat_dim != dim {
        return Err(ModelError::OutputShape {
            name: name.to_owned(),
            got: shape,
            expected: dim,
        });
    }
    let out = data
        .to_shape((batch, dim))
        .map_err(|e| ModelError::Backend {
            backend: "ndarray",
            message: e.to_string(),
        })?
        .to_owned();
    if out.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::NonFiniteOutput(name.to_owned()));
    }
    Ok(out)
}

#[cfg(all(test, not(feature = "ort")))]
mod tests {
    use super::*;

    #[test]
    fn ort_without_the_feature_is_a_clear_error() {
        let manifest = Manifest::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad/tiny.toml"),
        )
        .unwrap();
        let err = load_encoder(&"ort".parse().unwrap(), &manifest, &LoadOptions::default())
            .err()
            .expect("ort is not compiled in");
        assert!(
            matches!(err, ModelError::Unavailable { backend: "ort", .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("rebuild with --features ort"),
            "{err}"
        );
    }
}
