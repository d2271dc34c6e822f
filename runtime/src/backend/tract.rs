//! The default backend: tract, a pure-Rust ONNX runtime (nothing to install on
//! the board, cross-compiles anywhere rustc does).

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use ndarray::{concatenate, Array2, ArrayView4, Axis};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::unimpl::UnimplementedOp;
use tract_onnx::tract_core::runtime::RunOptions;

use super::{check_output, embedding_output, Encoder, EncoderOutput, LoadOptions, ModelError};
use crate::inspect::{Dim, OnnxSummary};
use crate::manifest::Manifest;
use crate::onnx::{expose_output, parse_proto, read_verified};

const BACKEND: &str = "tract";

/// Images per tract call. Callers may pass any batch; tract's convolution
/// kernels run this model fastest one image at a time (MobileNetV2, 2-core
/// x86, end to end: 25 images/s at 1, 12.5 at 4, 9.3 at 32), so larger
/// batches are split and the outputs joined.
const MICRO_BATCH: usize = 1;

/// An encoder run by tract: parsed, checked and decluttered once at load, then
/// optimised and planned once per batch size it is asked to run.
///
/// Why per batch size: tract's kernels are chosen at optimisation time, and a
/// symbolic batch dimension leaves it with generic, much slower ones (measured
/// on MobileNetV2, 2-core x86: 267 ms/image with a symbolic `N` against 35 ms
/// with `N = 1`). Optimising costs ~0.15 s per new size; a run uses one or two
/// sizes (the batch and the remainder).
///
/// # Threads
///
/// With `threads > 1`, a batch of several images is split between that many
/// worker threads, each running its own state of one single-threaded plan on
/// the next image nobody has taken yet (output order kept). A single image is run by one plan whose
/// matrix kernels are multithreaded instead. Why both: the convolutions of a
/// small CNN at batch 1 give tract's multithreaded matmul little to share
/// (measured on MobileNetV2, 2-core x86: 2 threads 5.8 s against 1 thread
/// 6.0–6.8 s for 200 images, with the second thread mostly spinning), while
/// whole images are independent work that keeps every core busy.
pub struct TractEncoder {
    manifest: Manifest,
    /// The decluttered model with a symbolic batch dimension.
    model: TypedModel,
    batch: Symbol,
    threads: usize,
    /// Plans by batch size, each with multithreaded kernels or not. One
    /// per size: each plan holds its own optimised copy of the weights
    /// (14 MB for MobileNetV2), so switching kind replaces it.
    plans: HashMap<usize, (bool, Arc<TypedRunnableModel>)>,
    read_logits: bool,
}

impl std::fmt::Debug for TractEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractEncoder")
            .field("model", &self.manifest.name)
            .finish()
    }
}

fn backend_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Backend {
        backend: BACKEND,
        message: format!("{e:#}"),
    }
}

/// Checks the graph's declared inputs/outputs against the manifest.
pub(crate) fn check_against_manifest(
    summary: &OnnxSummary,
    manifest: &Manifest,
) -> Result<(), ModelError> {
    let mismatch = ModelError::ManifestMismatch;
    let input = summary.input(&manifest.input.name).ok_or_else(|| {
        let names: Vec<&str> = summary.inputs.iter().map(|i| i.name.as_str()).collect();
        mismatch(format!(
            "manifest input '{}' is not a graph input (graph inputs: {})",
            manifest.input.name,
            names.join(", ")
        ))
    })?;
    if let Some(dims) = &input.dims {
        let sample = &manifest.input.shape;
        let ok = dims.len() == sample.len() + 1
            && dims[1..].iter().zip(sample).all(|(d, &m)| match d {
                Dim::Fixed(v) => *v == m as i64,
                _ => true,
            });
        if !ok {
            return Err(mismatch(format!(
                "graph input {input} does not take [N, {}] as the manifest says",
                sample
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let outputs = std::iter::once((&manifest.outputs.embedding, manifest.outputs.embedding_dim))
        .chain(
            manifest
                .outputs
                .logits
                .iter()
                .map(|l| (l, manifest.outputs.num_classes.unwrap_or(0))),
        );
    for (name, dim) in outputs {
        let out = summary
            .output(name)
            .ok_or_else(|| mismatch(format!("manifest output '{name}' is not a graph output")))?;
        let pooled = name == &manifest.outputs.embedding && !manifest.outputs.pool.is_none();
        if let Some(Some(Dim::Fixed(last))) = out.dims.as_ref().map(|d| d.last().cloned()) {
            if dim != 0 && last != dim as i64 && !pooled {
                return Err(mismatch(format!(
                    "graph output {out} does not have the manifest's width {dim}"
                )));
            }
        }
    }
    Ok(())
}

impl TractEncoder {
    /// Loads, verifies (sha256, shapes, operators), optimises and plans a model.
    ///
    /// tract asserts on some malformed graphs (found by fuzzing, e.g. a
    /// Flatten node without inputs) instead of returning an error; such a
    /// panic is caught here and returned as [`ModelError::Backend`], so a
    /// hostile model file cannot take the process down.
    pub fn load(manifest: &Manifest, options: &LoadOptions) -> Result<Self, ModelError> {
        catch_tract_panic(|| Self::load_unguarded(manifest, options))
    }

    fn load_unguarded(manifest: &Manifest, options: &LoadOptions) -> Result<Self, ModelError> {
        let bytes = read_verified(manifest)?;
        let mut proto = parse_proto(&manifest.onnx, &bytes)?;
        drop(bytes);
        expose_output(&mut proto, &manifest.outputs.embedding)?;
        check_against_manifest(&OnnxSummary::from_proto(&proto), manifest)?;

        let mut model = tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .map_err(backend_err)?;
        drop(proto);
        let unsupported: Vec<String> = model
            .nodes()
            .iter()
            .filter(|n| n.op_as::<UnimplementedOp>().is_some())
            .map(|n| format!("{} (node '{}')", n.op.name(), n.name))
            .collect();
        if !unsupported.is_empty() {
            return Err(ModelError::UnsupportedOps(unsupported));
        }

        let read_logits = manifest.outputs.logits.is_some() && !options.embedding_only;
        let mut outputs = vec![manifest.outputs.embedding.as_str()];
        if read_logits {
            outputs.extend(manifest.outputs.logits.as_deref());
        }
        model
            .select_outputs_by_name(&outputs)
            .map_err(backend_err)?;
        let input_ix = model
            .input_outlets()
            .map_err(backend_err)?
            .iter()
            .position(|o| model.node(o.node).name == manifest.input.name)
            .ok_or_else(|| {
                ModelError::ManifestMismatch(format!("no input named '{}'", manifest.input.name))
            })?;
        if model.input_outlets().map_err(backend_err)?.len() != 1 {
            return Err(ModelError::ManifestMismatch(
                "edgeclr encoders take exactly one input tensor".into(),
            ));
        }
        let batch = model.symbols.sym("N");
        let mut shape: TVec<TDim> = tvec![batch.clone().into()];
        shape.extend(manifest.input.shape.iter().map(|&d| TDim::from(d)));
        model
            .set_input_fact(input_ix, InferenceFact::dt_shape(f32::datum_type(), shape))
            .map_err(backend_err)?;

        let model = model
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .map_err(backend_err)?;
        let mut encoder = Self {
            manifest: manifest.clone(),
            model,
            batch,
            threads: options.threads.max(1),
            plans: HashMap::new(),
            read_logits,
        };
        // Plan batch 1 now, so a model tract cannot run fails at load, not
        // later; with workers, the single-threaded plan they run.
        encoder.plan(1, false)?;
        Ok(encoder)
    }

    /// The plan for batch size `n`, with multithreaded matrix kernels or
    /// not, optimised on first use.
    fn plan(
        &mut self,
        n: usize,
        multithreaded: bool,
    ) -> Result<Arc<TypedRunnableModel>, ModelError> {
        if let Some((kind, plan)) = self.plans.get(&n) {
            if *kind == multithreaded {
                return Ok(plan.clone());
            }
        }
        let subs = HashMap::from([(self.batch.clone(), TDim::Val(n as i64))]);
        let run_options = RunOptions {
            executor: multithreaded
                .then(|| tract_linalg::multithread::Executor::multithread(self.threads)),
            ..Default::default()
        };
        let plan = catch_tract_panic(|| {
            self.model
                .set_symbols(&subs)
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable_with_options(&run_options))
                .map_err(backend_err)
        })?;
        self.plans.insert(n, (multithreaded, plan.clone()));
        Ok(plan)
    }

    /// Runs the micro-batches of `batch` on `workers` threads and returns
    /// their outputs in batch order.
    fn run_parallel(
        &mut self,
        batch: ArrayView4<f32>,
        workers: usize,
    ) -> Result<Vec<EncoderOutput>, ModelError> {
        let chunks: Vec<ArrayView4<f32>> = batch.axis_chunks_iter(Axis(0), MICRO_BATCH).collect();
        // Plans for every chunk size, made here: optimising needs `&mut self`.
        let mut plans = HashMap::new();
        for chunk in &chunks {
            let n = chunk.shape()[0];
            if let std::collections::hash_map::Entry::Vacant(e) = plans.entry(n) {
                e.insert(self.plan(n, false)?);
            }
        }
        // Each worker takes the next unclaimed micro-batch until none is
        // left: a worker slowed by another thread (the decoder, the OS)
        // does fewer, instead of the others waiting for its fixed share.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let (manifest, read_logits) = (&self.manifest, self.read_logits);
        let (plans, chunks_ref, next) = (&plans, &chunks, &next);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(move || {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(chunk) = chunks_ref.get(i) else {
                                break;
                            };
                            let plan = &plans[&chunk.shape()[0]];
                            done.push((i, run_plan(plan, manifest, read_logits, *chunk)?));
                        }
                        Ok::<_, ModelError>(done)
                    })
                })
                .collect();
            let mut outputs: Vec<Option<EncoderOutput>> = (0..chunks.len()).map(|_| None).collect();
            for handle in handles {
                let done = handle
                    .join()
                    .map_err(|payload| tract_panic_error(panic_message(&*payload)))??;
                for (i, out) in done {
                    outputs[i] = Some(out);
                }
            }
            outputs
                .into_iter()
                .map(|o| o.ok_or_else(|| backend_err("a worker returned no output")))
                .collect()
        })
    }
}

/// Runs one micro-batch through `plan` (made for its size) and checks the outputs.
fn run_plan(
    plan: &Arc<TypedRunnableModel>,
    manifest: &Manifest,
    read_logits: bool,
    batch: ArrayView4<f32>,
) -> Result<EncoderOutput, ModelError> {
    let n = batch.shape()[0];
    let input: Tensor = batch.to_owned().into_dyn().into();
    let outputs = plan.run(tvec!(input.into_tvalue())).map_err(backend_err)?;
    let view = |ix: usize| {
        outputs[ix]
            .to_plain_array_view::<f32>()
            .map_err(backend_err)
    };
    let embedding = embedding_output(manifest, view(0)?, n)?;
    let logits = match (&manifest.outputs.logits, read_logits) {
        (Some(name), true) => {
            let classes = manifest
                .outputs
                .num_classes
                .unwrap_or(outputs[1].shape().last().copied().unwrap_or(0));
            Some(check_output(name, view(1)?, n, classes)?)
        }
        _ => None,
    };
    Ok(EncoderOutput { embedding, logits })
}

impl Encoder for TractEncoder {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn run(&mut self, batch: ArrayView4<f32>) -> Result<EncoderOutput, ModelError> {
        let expected = &self.manifest.input.shape;
        if &batch.shape()[1..] != expected.as_slice() || batch.shape()[0] == 0 {
            return Err(ModelError::InputShape {
                got: batch.shape().to_vec(),
                expected: expected.clone(),
            });
        }
        let chunks = batch.shape()[0].div_ceil(MICRO_BATCH);
        let outputs = if self.threads > 1 && chunks > 1 {
            self.run_parallel(batch, self.threads.min(chunks))?
        } else {
            let multithreaded = self.threads > 1;
            let mut outputs = Vec::with_capacity(chunks);
            for chunk in batch.axis_chunks_iter(Axis(0), MICRO_BATCH) {
                let plan = self.plan(chunk.shape()[0], multithreaded)?;
                outputs.push(run_plan(&plan, &self.manifest, self.read_logits, chunk)?);
            }
            outputs
        };
        let mut embeddings = Vec::new();
        let mut logits = Vec::new();
        for out in outputs {
            embeddings.push(out.embedding);
            logits.extend(out.logits);
        }
        let stack = |parts: &[Array2<f32>]| {
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            concatenate(Axis(0), &views).map_err(backend_err)
        };
        Ok(EncoderOutput {
            embedding: stack(&embeddings)?,
            logits: if logits.is_empty() {
                None
            } else {
                Some(stack(&logits)?)
            },
        })
    }
}

thread_local! {
    /// How deep this thread is in [`catch_tract_panic`] calls.
    static GUARDED_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Whether the current thread is inside a call into tract that edgeclr
/// guards against tract's own panics (loading, optimising and planning a
/// model, shape inference).
///
/// With `panic = "unwind"` such a panic is caught and returned as
/// [`ModelError::Backend`]. A `panic = "abort"` build (the size-optimised
/// board artefact, `dist` profile) cannot catch it, so its panic hook asks
/// this and, when true, reports [`tract_panic_error`] and exits with an error
/// instead of aborting: a hostile model still gets a clear error.
pub fn in_guarded_tract_call() -> bool {
    GUARDED_DEPTH.with(|d| d.get() > 0)
}

/// The error a panic inside a guarded tract call stands for; `what` is the
/// panic's message, when it has one.
pub fn tract_panic_error(what: Option<&str>) -> ModelError {
    let what = what.unwrap_or("unknown panic");
    backend_err(format!(
        "tract failed on this model (internal assertion: {what})"
    ))
}

/// Runs `f`, turning a panic inside tract into [`ModelError::Backend`].
fn catch_tract_panic<T>(f: impl FnOnce() -> Result<T, ModelError>) -> Result<T, ModelError> {
    // catch_unwind always returns here (or, with panic = "abort", the process
    // ends in the panic hook), so the depth is restored on every path.
    GUARDED_DEPTH.with(|d| d.set(d.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED_DEPTH.with(|d| d.set(d.get() - 1));
    result.unwrap_or_else(|payload| Err(tract_panic_error(panic_message(&*payload))))
}

/// The text of a panic's payload, when it has one (`panic!` with a literal
/// or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

/// The shape of one sample of `proto`'s first output, by tract's shape
/// inference: ONNX files rarely declare the shapes of inner tensors, and the
/// trainable tail needs the width of the tensor the trunk is cut at.
pub fn infer_output_shape(
    proto: &tract_onnx::pb::ModelProto,
    sample_shape: &[usize],
) -> Result<Vec<usize>, ModelError> {
    catch_tract_panic(|| infer_output_shape_unguarded(proto, sample_shape))
}

/// The shape of one sample of any tensor `tensor` of `proto` (an inner one
/// too): the graph with that tensor as its only output, through
/// [`infer_output_shape`]. A name no node computes is an error that lists
/// the nearest tensor names.
pub fn tensor_shape(
    proto: &tract_onnx::pb::ModelProto,
    tensor: &str,
    sample_shape: &[usize],
) -> Result<Vec<usize>, ModelError> {
    let mut probe = proto.clone();
    crate::onnx::only_output(&mut probe, tensor)?;
    infer_output_shape(&probe, sample_shape)
}

fn infer_output_shape_unguarded(
    proto: &tract_onnx::pb::ModelProto,
    sample_shape: &[usize],
) -> Result<Vec<usize>, ModelError> {
    let mut model = tract_onnx::onnx()
        .model_for_proto_model(proto)
        .map_err(backend_err)?;
    let mut shape: TVec<usize> = tvec![1];
    shape.extend(sample_shape.iter().copied());
    model
        .set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))
        .map_err(backend_err)?;
    let model = model.into_typed().map_err(backend_err)?;
    let outlet = *model
        .output_outlets()
        .map_err(backend_err)?
        .first()
        .ok_or_else(|| backend_err("the model has no output"))?;
    let fact = model.outlet_fact(outlet).map_err(backend_err)?;
    let dims = fact
        .shape
        .as_concrete()
        .ok_or_else(|| backend_err(format!("output shape {:?} is not concrete", fact.shape)))?;
    Ok(dims.iter().skip(1).copied().collect())
}
