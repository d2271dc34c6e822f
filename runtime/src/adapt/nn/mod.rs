//! The differentiable engine: any subgraph of an ONNX CNN between a cut
//! tensor and the embedding, run forward and backward on the CPU.
//!
//! Why an engine and not more hand-written layers: the trainable scope used
//! to stop at the last 1×1 conv because every layer kind needed its own
//! forward, backward and export code. Here one executor ([`Graph`]) runs any
//! chain *or DAG* of supported [`ops`] (depthwise k×k convs, residual `Add`s,
//! BatchNorm, pooling), accumulates gradients where a tensor fans out, and
//! keeps the ONNX initialiser name of every parameter, so export only has to
//! write trained values back into the same graph.
//!
//! The layers, as in candle (`candle-core` vs `candle-nn`):
//! - [`ops`]: one file per op family; each op knows its output shape, its
//!   forward, and its backward (input and parameter gradients);
//! - [`import`]: reads the ONNX subgraph once, checks every op and shape, and
//!   resolves each parameter to an index (no string lookups per step);
//!   [`fold`] first turns the exporters' run-time shape computations into
//!   constants;
//! - [`graph`]: the executor (value tape, fan-out accumulation, batch split
//!   over threads in fixed chunks so results do not depend on the thread
//!   count).
//!
//! Tensors are `ndarray::ArrayD<f32>` in standard (row-major) layout, batch
//! first: `[N, C, H, W]` for feature maps, `[N, D]` for vectors.

pub mod fold;
pub mod graph;
pub mod import;
pub mod ops;

pub use graph::{Graph, KeepPlan, ParamSpec, Tape};
pub use import::{import, Imported};
pub use ops::ParamKind;

/// Errors building or running an engine graph.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// A node the engine cannot differentiate, by name and op.
    #[error("cannot train node '{node}': {op} {why}")]
    Unsupported {
        node: String,
        op: String,
        why: String,
    },
    /// The subgraph itself does not fit (missing tensors, skip connections
    /// over the cut, a shape that does not agree).
    #[error("{0}")]
    Graph(String),
    /// A batch whose width or shape is not the cut tensor's.
    #[error("input has shape {got:?}: {why}")]
    Input { got: Vec<usize>, why: String },
}
