//! The adapted encoder's trained part, for inference only: the trained
//! layers of the ONNX graph (if the run trained any) and the adapter, with
//! their weights, and nothing else.
//!
//! Why not a [`Trainer`](super::trainer::Trainer): a camera app, a k-NN head
//! re-keyed with each new adapter, or a program that loads a finished run
//! only needs `embedding → adapted embedding`. A trainer also builds the
//! projection head, the momentum copy, the optimiser's moments and the memory
//! bank (megabytes, and settings to get right) that embedding never reads.
//! [`Trainer::adapt`](super::trainer::Trainer::adapt) runs the same code.
//!
//! ```no_run
//! use edgeclr::adapt::adapted::AdaptedModel;
//! use edgeclr::adapt::checkpoint::Checkpoint;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ckpt = Checkpoint::load("run/checkpoint.safetensors".as_ref())?;
//! let model = AdaptedModel::from_checkpoint(&ckpt, None)?;
//! let frozen = ndarray::Array2::<f32>::zeros((4, 1280)); // the frozen encoder's embeddings
//! let adapted = model.embed(frozen.view())?;
//! # Ok(()) }
//! ```

use ndarray::{Array2, ArrayView2, Axis};

use super::checkpoint::Checkpoint;
use super::layers::{Layer, ADAPTER_PREFIX as ADAPTER};
use super::params::Params;
use super::tail::{self, TailSpec, TAIL_PREFIX};
use super::trainer::TrainError;

/// Prefix of the adapter's tensors.
pub const ADAPTER_PREFIX: &str = "adapter.";

/// Rows embedded per call of the trained layers: bounds the activations one
/// call holds, whatever the batch.
const CHUNK: usize = 256;

/// The trained layers and the adapter, weights included, forward only.
#[derive(Debug, Clone)]
pub struct AdaptedModel {
    /// `adapter.*` and `tail.*` tensors only.
    params: Params,
    tail: Option<TailSpec>,
    /// The adapter's engine graph, when the parameters hold one.
    adapter: Option<Layer>,
}

impl AdaptedModel {
    /// The frozen encoder: no trained layers and no adapter, so
    /// [`AdaptedModel::embed`] returns its input (the state of a run before
    /// its first step, whose adapter is the identity).
    pub fn frozen() -> Self {
        Self {
            params: Params::new(),
            tail: None,
            adapter: None,
        }
    }

    /// From a run's parameters (a trainer's, a checkpoint's): keeps the
    /// adapter's and the trained layers' tensors, drops the rest (projection
    /// head, momentum copy, optimiser state, bank). `tail` is the scope the
    /// run trained (from [`tail::load_tail`]), `None` for an adapter alone.
    pub fn new(params: &Params, mut tail: Option<TailSpec>) -> Result<Self, TrainError> {
        let mut kept = params.with_prefix(ADAPTER_PREFIX);
        let has_tail = params.names().any(|n| n.starts_with(TAIL_PREFIX));
        if has_tail != tail.is_some() {
            return Err(TrainError::Config(if has_tail {
                "the parameters include trained layers of the graph (tail.*); pass their scope"
                    .into()
            } else {
                "a scope of trained layers was given, but the parameters hold none (tail.*)".into()
            }));
        }
        kept.extend(params.with_prefix(TAIL_PREFIX));
        let adapter = kept
            .names()
            .any(|n| n.starts_with(ADAPTER_PREFIX))
            .then(|| Layer::from_params(&kept, ADAPTER, false)?.resolved(&kept))
            .transpose()?;
        if let Some(spec) = tail.as_mut() {
            spec.resolve(&kept)?;
        }
        Ok(Self {
            params: kept,
            tail,
            adapter,
        })
    }

    /// From a checkpoint (`edgeclr adapt`'s, a C program's, camera-adapt's).
    pub fn from_checkpoint(ckpt: &Checkpoint, tail: Option<TailSpec>) -> Result<Self, TrainError> {
        Self::new(&ckpt.tensors, tail)
    }

    /// Replaces the weights with those in `params` (same rules as
    /// [`AdaptedModel::new`]); the scope stays.
    pub fn set_params(&mut self, params: &Params) -> Result<(), TrainError> {
        *self = Self::new(params, self.tail.take())?;
        Ok(())
    }

    /// The adapter's and trained layers' tensors (what an export writes).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Adapted embeddings of `x` (`[N, W]`: the frozen encoder's embeddings,
    /// or the flattened cut tensor when layers of the graph were trained).
    pub fn embed(&self, x: ArrayView2<f32>) -> Result<Array2<f32>, TrainError> {
        embed_chunked(self.tail.as_ref(), self.adapter.as_ref(), &self.params, x)
    }
}

/// The adapted embedding of `x` with the weights in `p`: the trained layers
/// (if any), then the adapter (if any), in chunks of rows. Shared
/// with the trainer, whose online and momentum copies are two `p`.
pub(crate) fn embed_chunked(
    tail: Option<&TailSpec>,
    adapter: Option<&Layer>,
    p: &Params,
    x: ArrayView2<f32>,
) -> Result<Array2<f32>, TrainError> {
    chunked(x, |c| embed_rows(tail, adapter, p, c))
}

/// [`embed_chunked`] on one chunk.
pub(crate) fn embed_rows(
    tail: Option<&TailSpec>,
    adapter: Option<&Layer>,
    p: &Params,
    x: ArrayView2<f32>,
) -> Result<Array2<f32>, TrainError> {
    let e = match tail {
        Some(spec) => tail::embed(spec, p, x)?,
        None => x.to_owned(),
    };
    match adapter {
        Some(adapter) => Ok(adapter.embed(p, e.view())?),
        None => Ok(e),
    }
}

/// `f` applied to row chunks of `x`, results stacked.
pub(crate) fn chunked(
    x: ArrayView2<f32>,
    mut f: impl FnMut(ArrayView2<f32>) -> Result<Array2<f32>, TrainError>,
) -> Result<Array2<f32>, TrainError> {
    let parts = x
        .axis_chunks_iter(Axis(0), CHUNK)
        .map(&mut f)
        .collect::<Result<Vec<_>, _>>()?;
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(Axis(0), &views)
        .map_err(|e| TrainError::Config(format!("empty batch: {e}")))
}
