//! The default backend: tract, a pure-Rust ONNX runtime (nothing to install on
//! the board, cross-compiles anywhere rustc does).

use std::sync::Arc;

use ndarray::ArrayView4;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::unimpl::UnimplementedOp;
use tract_onnx::tract_core::runtime::RunOptions;

use super::{check_output, read_verified, Encoder, EncoderOutput, LoadOptions, ModelError};
use crate::inspect::{parse_proto, Dim, OnnxSummary};
use crate::manifest::Manifest;

const BACKEND: &str = "tract";

/// An encoder run by tract: parsed, checked, optimised for a symbolic batch
/// size and planned once at load.
pub struct TractEncoder {
    manifest: Manifest,
    plan: Arc<TypedRunnableModel>,
    read_logits: bool,
}

impl std::fmt::Debug for TractEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractEncoder").field("model", &self.manifest.name).finish()
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
                sample.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let outputs = std::iter::once((&manifest.outputs.embedding, manifest.outputs.embedding_dim))
        .chain(manifest.outputs.logits.iter().map(|l| (l, manifest.outputs.num_classes.unwrap_or(0))));
    for (name, dim) in outputs {
        let out = summary.output(name).ok_or_else(|| {
            mismatch(format!("manifest output '{name}' is not a graph output"))
        })?;
        if let Some(Some(Dim::Fixed(last))) = out.dims.as_ref().map(|d| d.last().cloned()) {
            if dim != 0 && last != dim as i64 {
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
    pub fn load(manifest: &Manifest, options: &LoadOptions) -> Result<Self, ModelError> {
        let bytes = read_verified(manifest)?;
        let proto = parse_proto(&manifest.onnx, &bytes)?;
        drop(bytes);
        check_against_manifest(&OnnxSummary::from_proto(&proto), manifest)?;

        let mut model = tract_onnx::onnx().model_for_proto_model(&proto).map_err(backend_err)?;
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
        model.select_outputs_by_name(&outputs).map_err(backend_err)?;
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
        let mut shape: TVec<TDim> = tvec![batch.into()];
        shape.extend(manifest.input.shape.iter().map(|&d| TDim::from(d)));
        model
            .set_input_fact(input_ix, InferenceFact::dt_shape(f32::datum_type(), shape))
            .map_err(backend_err)?;

        let typed = model.into_optimized().map_err(backend_err)?;
        let run_options = RunOptions {
            executor: (options.threads > 1)
                .then(|| tract_linalg::multithread::Executor::multithread(options.threads)),
            ..Default::default()
        };
        let plan = typed.into_runnable_with_options(&run_options).map_err(backend_err)?;
        Ok(Self {
            manifest: manifest.clone(),
            plan,
            read_logits,
        })
    }
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
        let n = batch.shape()[0];
        let input: Tensor = batch.to_owned().into_dyn().into();
        let outputs = self.plan.run(tvec!(input.into_tvalue())).map_err(backend_err)?;
        let view = |ix: usize| outputs[ix].to_plain_array_view::<f32>().map_err(backend_err);
        let embedding =
            check_output(&self.manifest.outputs.embedding, view(0)?, n, self.manifest.outputs.embedding_dim)?;
        let logits = match (&self.manifest.outputs.logits, self.read_logits) {
            (Some(name), true) => {
                let classes = self.manifest.outputs.num_classes.unwrap_or(outputs[1].shape().last().copied().unwrap_or(0));
                Some(check_output(name, view(1)?, n, classes)?)
            }
            _ => None,
        };
        Ok(EncoderOutput { embedding, logits })
    }
}
