//! ONNX plumbing, one place for it: read a model file and verify it
//! against its manifest ([`read_verified`], [`parse_proto`]: sha256, every
//! stored tensor checked before anything allocates it), and rewrite a graph
//! ([`expose_output`], [`cut_at`], [`replace_initializer`]).
//!
//! Why a module of its own: the backends, the static facts of
//! [`crate::inspect`], the trunk cut of [`crate::adapt::tail`], the export of
//! [`crate::adapt::export`] and `model init` all start from these steps.
//! They used to live in `inspect` and `backend`, which then imported each
//! other; now both sit above this module, and it depends on neither.

mod edit;
mod read;

use std::path::PathBuf;

pub use edit::{
    attr_float, attr_int, attr_ints, cut_at, expose_output, f32_initializer, float_output, gemm,
    graph_mut, nearest_tensor_names, node, only_output, replace_initializer, require_tensor,
};
pub use read::{load_verified, parse_proto, read_verified, sha256_hex};

/// Why an ONNX file could not be read, or a graph not rewritten.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
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
    #[error("the model holds no graph")]
    NoGraph,
    #[error("'{name}' is no tensor of the graph (nearest names: {nearest})")]
    NoSuchTensor { name: String, nearest: String },
    #[error("the graph has no initialiser '{0}'")]
    NoSuchInitializer(String),
    #[error("initialiser '{name}' has shape {expected:?} (f32), the new value {got:?}")]
    InitializerShape {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("the new value of initialiser '{0}' holds NaN or infinite values")]
    NonFinite(String),
}
