//! The adapted encoder as a standalone ONNX model with its own manifest.
//!
//! [`export_adapted`] takes the frozen encoder's ONNX graph and appends the
//! residual bottleneck adapter trained on the device, so that any ONNX runtime
//! (tract, ONNX Runtime, ...) computes the adapted embedding without edgeclr:
//!
//! ```text
//! ... ─► <embedding>_frozen ─┬──────────────────────────────────────────────┐
//!                            │                                              ▼
//!                            └► Gemm(down, transB) ─► Relu ─► Gemm(up, transB) ─► Add ─► <embedding>
//!                            └► (original consumers, e.g. the classifier) ─► logits
//! ```
//!
//! When the run trained tail layers of the graph itself (`tail.*` in the
//! parameters, see [`super::tail`]), their trained values replace the original
//! initialisers of the same name (`tail.features.18.0.weight` →
//! `features.18.0.weight`), so the graph's structure is unchanged below the
//! adapter.
//!
//! The graph output keeps the manifest's embedding name and its `[N, D]`
//! shape, so the exported manifest reads it exactly as before. Every node that
//! consumed the original embedding (the ImageNet classifier's `Gemm` in the
//! default model) now reads `<embedding>_frozen`: **the exported logits are
//! those of the original classifier on the frozen embedding**, unchanged by
//! the adapter.
//!
//! The adapter weights become initialisers named after their [`Params`] names
//! (`adapter.down.weight`, ...), stored as little-endian f32 `raw_data`. The
//! nodes are `Gemm`, `Relu` and `Add`, whose semantics here are the same in
//! every opset from 7 on; the model's opset is kept as it is (the default
//! model uses 13). The output is deterministic: the same model and adapter
//! always give the same bytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::pb;

use super::layers::{onnx_nodes, LayerKind, ADAPTER_PREFIX};
use super::params::{Params, ParamsError};
use crate::backend::ModelError;
use crate::manifest::{Manifest, ManifestError, MANIFEST_FILE};
use crate::onnx::{sha256_hex, OnnxError};

/// Names of the adapter parameters, as in [`Params`]' table.
pub const DOWN_WEIGHT: &str = "adapter.down.weight";
pub const DOWN_BIAS: &str = "adapter.down.bias";
pub const UP_WEIGHT: &str = "adapter.up.weight";
pub const UP_BIAS: &str = "adapter.up.bias";

/// Errors exporting an adapted encoder.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot export: {0}")]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("adapter: {0}")]
    Adapter(#[from] ParamsError),
    #[error("adapter: {0}")]
    AdapterShape(String),
    #[error("cannot export: the ONNX graph {0}")]
    Graph(String),
    #[error("invalid export name '{0}': use a non-empty file stem without path separators")]
    InvalidName(String),
    #[error("refusing to export into {0}: it holds the original model, whose manifest would be overwritten")]
    WouldOverwriteOriginal(PathBuf),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The adapter's width `r` after checking all four tensors against the
/// embedding width `d`: `down.weight [r, d]`, `down.bias [r]`,
/// `up.weight [d, r]`, `up.bias [d]`, all finite.
pub fn adapter_rank(adapter: &Params, d: usize) -> Result<usize, ExportError> {
    let down = adapter.get(DOWN_WEIGHT)?;
    if down.ndim() != 2 || down.shape()[1] != d || down.shape()[0] == 0 {
        return Err(ExportError::AdapterShape(format!(
            "{DOWN_WEIGHT} has shape {:?}, expected [r, {d}] with r > 0",
            down.shape()
        )));
    }
    let r = down.shape()[0];
    for (name, expected) in [
        (DOWN_BIAS, vec![r]),
        (UP_WEIGHT, vec![d, r]),
        (UP_BIAS, vec![d]),
    ] {
        let got = adapter.get(name)?.shape().to_vec();
        if got != expected {
            return Err(ParamsError::Shape {
                name: name.to_owned(),
                got,
                expected,
            }
            .into());
        }
    }
    for name in [DOWN_WEIGHT, DOWN_BIAS, UP_WEIGHT, UP_BIAS] {
        if adapter.get(name)?.iter().any(|v| !v.is_finite()) {
            return Err(ParamsError::NonFinite(name.to_owned()).into());
        }
    }
    Ok(r)
}

/// Writes `<out_dir>/<name>.onnx` (the frozen encoder plus `adapter`) and
/// `<out_dir>/manifest.toml`, and returns the new manifest as
/// [`Manifest::load`] reads it back.
///
/// The original ONNX file is checked against `manifest.sha256` first. The
/// class-name file, if any, is copied into `out_dir` so the new manifest is
/// self-contained. `out_dir` is created if needed and must not be the original
/// model's directory.
pub fn export_adapted(
    manifest: &Manifest,
    adapter: &Params,
    out_dir: &Path,
    name: &str,
) -> Result<Manifest, ExportError> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control)
    {
        return Err(ExportError::InvalidName(name.to_owned()));
    }
    let d = manifest.outputs.embedding_dim;
    let r = adapter_rank(adapter, d)?;

    // Read errors are the model's (as when a backend loads it).
    let mut proto = crate::onnx::load_verified(manifest).map_err(ModelError::from)?;
    let tail = replace_tail_initialisers(&mut proto, adapter)?;
    // A pooled tap (`pool = ...`): the pooling becomes ONNX nodes, and the
    // adapter reads their flat output.
    let embedding = append_pooling(&mut proto, manifest)?;
    append_adapter(
        &mut proto,
        &embedding,
        adapter,
        LayerKind::Adapter {
            dim: d,
            bottleneck: r,
        },
    )?;
    proto.metadata_props.extend([
        entry("edgeclr.adapted_from", &manifest.name),
        entry("edgeclr.adapted_from_sha256", &manifest.sha256),
        entry("edgeclr.adapter_rank", &r.to_string()),
    ]);
    if !tail.is_empty() {
        proto
            .metadata_props
            .push(entry("edgeclr.trained_initialisers", &tail.join(",")));
    }
    let onnx_bytes = proto.encode_to_vec();
    drop(proto);

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, source }
    };
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    if let Some(original_dir) = manifest.onnx.parent() {
        let original_dir = if original_dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            original_dir
        };
        if let (Ok(a), Ok(b)) = (original_dir.canonicalize(), out_dir.canonicalize()) {
            if a == b {
                return Err(ExportError::WouldOverwriteOriginal(out_dir.to_path_buf()));
            }
        }
    }

    let onnx_file = format!("{name}.onnx");
    let onnx_path = out_dir.join(&onnx_file);
    crate::atomic::write_atomic(&onnx_path, |f| f.write_all(&onnx_bytes))
        .map_err(io(&onnx_path))?;

    let mut out = manifest.clone();
    out.outputs.embedding = embedding;
    out.outputs.pool = crate::manifest::Pool::None;
    out.name = name.to_owned();
    out.onnx = PathBuf::from(&onnx_file);
    out.sha256 = sha256_hex(&onnx_bytes);
    out.description = Some(format!(
        "{} adapted on device by edgeclr: {}residual bottleneck adapter (r = {r}) on its \
         '{}' output; logits, if any, are the original classifier's on the {} embedding",
        manifest.name,
        if tail.is_empty() {
            String::new()
        } else {
            format!("trained tail layers ({}), ", tail.join(", "))
        },
        manifest.outputs.embedding,
        if tail.is_empty() {
            "frozen"
        } else {
            "pre-adapter"
        }
    ));
    out.source = format!(
        "edgeclr export of '{}' (sha256 {}) with an adapter; original source: {}",
        manifest.name, manifest.sha256, manifest.source
    );
    if let Some(classes) = &manifest.classes {
        let file_name = classes.file_name().ok_or_else(|| {
            ExportError::Graph(format!("class file {} has no file name", classes.display()))
        })?;
        let text = std::fs::read(classes).map_err(io(classes))?;
        let dst = out_dir.join(file_name);
        crate::atomic::write_atomic(&dst, |f| f.write_all(&text)).map_err(io(&dst))?;
        out.classes = Some(PathBuf::from(file_name));
    }
    let toml_text = toml::to_string(&out).map_err(|e| ExportError::Io {
        path: out_dir.join(MANIFEST_FILE),
        source: std::io::Error::other(e),
    })?;
    let manifest_path = out_dir.join(MANIFEST_FILE);
    crate::atomic::write_atomic(&manifest_path, |f| {
        writeln!(
            f,
            "# edgeclr model manifest, written by edgeclr's adapter export. Paths are relative to this file."
        )?;
        f.write_all(toml_text.as_bytes())
    })
    .map_err(io(&manifest_path))?;
    Ok(Manifest::load(&manifest_path)?)
}

/// Puts every `tail.<name>` tensor of `params` into the initialiser `<name>`
/// (same shape, finite), and returns the names replaced.
fn replace_tail_initialisers(
    proto: &mut pb::ModelProto,
    params: &Params,
) -> Result<Vec<String>, ExportError> {
    let graph = crate::onnx::graph_mut(proto)?;
    let mut replaced = Vec::new();
    for (name, value) in params.iter() {
        if let Some(original) = name.strip_prefix(super::tail::TAIL_PREFIX) {
            crate::onnx::replace_initializer(graph, original, value)?;
            replaced.push(original.to_owned());
        }
    }
    Ok(replaced)
}

fn entry(key: &str, value: &str) -> pb::StringStringEntryProto {
    pb::StringStringEntryProto {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

/// Rewires `proto` so `embedding` is computed by the adapter on top of the
/// renamed `<embedding>_frozen` tensor.
/// For a manifest that pools its embedding ([`Pool`]), appends the pooling
/// as ONNX nodes after the feature map and makes their `[N, D]` result a
/// graph output; returns its name (`<embedding>_pooled`), or the embedding
/// itself when nothing is pooled. A grid becomes one `AveragePool` whose
/// windows are exactly PyTorch's adaptive bins, so only grids that divide
/// the map are exported; others are refused.
pub(super) fn append_pooling(
    proto: &mut pb::ModelProto,
    manifest: &Manifest,
) -> Result<String, ExportError> {
    use crate::manifest::Pool;
    let embedding = &manifest.outputs.embedding;
    let pool = manifest.outputs.pool;
    if pool.is_none() {
        return Ok(embedding.clone());
    }
    // The feature map's shape, from tract's shape inference.
    let shape = crate::backend::tensor_shape(proto, embedding, &manifest.input.shape)?;
    let &[_, h, w] = shape.as_slice() else {
        return Err(ExportError::Graph(format!(
            "pools '{embedding}', whose shape {shape:?} is not [C, H, W]"
        )));
    };
    let graph = crate::onnx::graph_mut(proto)?;
    let map = format!("{embedding}_pool_map");
    let pooled = format!("{embedding}_pooled");
    let step = |op: &str, input: &str, output: &str, attribute| {
        crate::onnx::node(
            &format!("edgeclr_{output}"),
            op,
            &[input],
            output,
            attribute,
        )
    };
    match pool {
        Pool::Mean => {
            graph
                .node
                .push(step("GlobalAveragePool", embedding, &map, vec![]));
            graph.node.push(step(
                "Flatten",
                &map,
                &pooled,
                vec![crate::onnx::attr_int("axis", 1)],
            ));
        }
        Pool::Grid(g) if h % g == 0 && w % g == 0 => {
            let k = [(h / g) as i64, (w / g) as i64];
            graph.node.push(step(
                "AveragePool",
                embedding,
                &map,
                vec![
                    crate::onnx::attr_ints("kernel_shape", &k),
                    crate::onnx::attr_ints("strides", &k),
                ],
            ));
            graph.node.push(step(
                "Flatten",
                &map,
                &pooled,
                vec![crate::onnx::attr_int("axis", 1)],
            ));
        }
        Pool::Grid(g) => {
            return Err(ExportError::Graph(format!(
                "pools its {h}x{w} map '{embedding}' to a {g}x{g} grid, whose bins are not all \
                 the same size; export writes grid pooling as one AveragePool, so it needs a grid \
                 that divides the map"
            )))
        }
        Pool::Flatten => graph.node.push(step(
            "Flatten",
            embedding,
            &pooled,
            vec![crate::onnx::attr_int("axis", 1)],
        )),
        Pool::None => return Ok(embedding.clone()),
    }
    graph.output.insert(0, crate::onnx::float_output(&pooled));
    Ok(pooled)
}

fn append_adapter(
    proto: &mut pb::ModelProto,
    embedding: &str,
    adapter: &Params,
    kind: LayerKind,
) -> Result<(), ExportError> {
    let graph = crate::onnx::graph_mut(proto)?;
    let frozen = format!("{embedding}_frozen");
    // The nodes the adapter was trained as (`Layer` imports the same ones).
    let nodes = onnx_nodes(kind, ADAPTER_PREFIX, &frozen, embedding, embedding);

    let output = graph
        .output
        .iter()
        .find(|o| o.name == embedding)
        .cloned()
        .ok_or_else(|| ExportError::Graph(format!("has no output named '{embedding}'")))?;
    if graph.input.iter().any(|i| i.name == embedding)
        || graph.initializer.iter().any(|i| i.name == embedding)
    {
        return Err(ExportError::Graph(format!(
            "takes '{embedding}' as an input or initialiser, not a computed output"
        )));
    }
    let producers = graph
        .node
        .iter()
        .filter(|n| n.output.iter().any(|o| o == embedding))
        .count();
    if producers != 1 {
        return Err(ExportError::Graph(format!(
            "has {producers} nodes producing '{embedding}', expected exactly one"
        )));
    }

    // Every name we add must be new to the graph.
    let params = [DOWN_WEIGHT, DOWN_BIAS, UP_WEIGHT, UP_BIAS];
    let new_names: Vec<&str> = std::iter::once(frozen.as_str())
        .chain(
            nodes
                .iter()
                .flat_map(|n| n.output.iter())
                .map(String::as_str)
                .filter(|o| *o != embedding),
        )
        .chain(params)
        .collect();
    let existing = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().chain(n.output.iter()))
        .map(String::as_str)
        .chain(graph.initializer.iter().map(|i| i.name.as_str()))
        .chain(graph.input.iter().map(|i| i.name.as_str()))
        .chain(graph.output.iter().map(|o| o.name.as_str()))
        .chain(graph.value_info.iter().map(|v| v.name.as_str()));
    for name in existing {
        if new_names.contains(&name) {
            return Err(ExportError::Graph(format!(
                "already has a tensor named '{name}'"
            )));
        }
    }

    for node in &mut graph.node {
        for tensor in node.input.iter_mut().chain(node.output.iter_mut()) {
            if tensor == embedding {
                frozen.clone_into(tensor);
            }
        }
    }
    for info in &mut graph.value_info {
        if info.name == embedding {
            frozen.clone_into(&mut info.name);
        }
    }
    // Keep the frozen tensor's declared type and shape for runtimes that use it.
    graph.value_info.push(pb::ValueInfoProto {
        name: frozen.clone(),
        ..output
    });

    for name in params {
        graph
            .initializer
            .push(crate::onnx::f32_initializer(name, adapter.get(name)?));
    }
    graph.node.extend(nodes);
    Ok(())
}
