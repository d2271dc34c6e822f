//! Trainable layers of the ONNX graph itself: the last blocks of the
//! encoder, run forward and backward by the engine ([`super::nn`]).
//!
//! Training the encoder's own last layers moves the representation far more
//! than an adapter on the pooled embedding can, while the rest of the
//! network stays a frozen trunk run by the backend. The scope is every node
//! on a path from a *cut* tensor to the embedding ([`TailChoice`]):
//!
//! - `auto`: the last weighted layer before the embedding and what follows
//!   it (MobileNetV2: the 1×1 conv 320→1280, ReLU6, pooling, flatten);
//! - `blocks:K`: the last K blocks, cut where the graph's structure says a
//!   block ends ([`crate::blocks`]: residual `Add`s, fan-outs, linear
//!   bottlenecks), residual or not;
//! - a node's name: that node and everything from it to the embedding.
//!
//! Everything before the cut is the trunk, cut out of the model by
//! [`trunk_model`] so any backend runs it; the views cache its output. The
//! scope's initialisers become trainable [`Params`] named
//! `tail.<initialiser name>` in their ONNX shapes, so export only has to put
//! them back. [`ParamScope`] trains all of them, or (TinyTL-style) only the
//! biases or only per-channel scales and shifts.

use std::collections::HashSet;
use std::sync::Arc;

use ndarray::{Array2, ArrayD, ArrayView2};
use tract_onnx::pb;

use super::nn::{self, graph::BatchTape, Graph, NnError, ParamKind};
use super::params::{ParamId, Params, ParamsError};

/// Prefix of the tail layers' parameters.
pub const TAIL_PREFIX: &str = "tail.";

/// Errors building or running the trainable tail.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("cannot train node '{node}' as a tail layer: {op} {why}")]
    UnsupportedOp {
        node: String,
        op: String,
        why: String,
    },
    #[error("cannot find the tail layers: {0}")]
    Graph(String),
    #[error("tail input has shape {got:?}: {why}")]
    Input { got: Vec<usize>, why: String },
    #[error(transparent)]
    Params(#[from] ParamsError),
    #[error("cannot find the shape of the cut tensor: {0}")]
    Model(Box<crate::backend::ModelError>),
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
}

impl From<NnError> for TailError {
    fn from(e: NnError) -> Self {
        match e {
            NnError::Unsupported { node, op, why } => TailError::UnsupportedOp { node, op, why },
            NnError::Graph(m) => TailError::Graph(m),
            NnError::Input { got, why } => TailError::Input { got, why },
        }
    }
}

type Result<T, E = TailError> = std::result::Result<T, E>;

/// Which nodes to train.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailChoice {
    /// The last weighted node before the embedding and everything after it
    /// (MobileNetV2: the 1×1 conv 320→1280, ReLU6, pooling, flatten).
    Auto,
    /// The last K blocks before the embedding (and the head after them).
    Blocks(usize),
    /// The named node and every node from it to the embedding output.
    Node(String),
}

impl std::str::FromStr for TailChoice {
    type Err = String;

    /// `auto`, `blocks:K` (K ≥ 1), or any other string as a node name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(TailChoice::Auto);
        }
        if let Some(k) = s.strip_prefix("blocks:") {
            return match k.parse::<usize>() {
                Ok(k) if k >= 1 => Ok(TailChoice::Blocks(k)),
                _ => Err(format!(
                    "'{s}': the number of blocks must be a whole number ≥ 1"
                )),
            };
        }
        Ok(TailChoice::Node(s.to_owned()))
    }
}

impl std::fmt::Display for TailChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TailChoice::Auto => write!(f, "auto"),
            TailChoice::Blocks(k) => write!(f, "blocks:{k}"),
            TailChoice::Node(n) => write!(f, "{n}"),
        }
    }
}

/// Which of the scope's parameters train (the others stay as exported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamScope {
    /// Every weight, bias, scale and shift.
    #[default]
    All,
    /// Biases (and BatchNorm shifts) only: TinyTL's memory-light update.
    Biases,
    /// Per-channel scales and shifts (BatchNorm γ/β, `Mul`, biases).
    Norm,
}

impl ParamScope {
    fn trains(self, kind: ParamKind) -> bool {
        match self {
            ParamScope::All => true,
            ParamScope::Biases => kind == ParamKind::Bias,
            ParamScope::Norm => matches!(kind, ParamKind::Bias | ParamKind::Scale),
        }
    }
}

impl std::str::FromStr for ParamScope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(ParamScope::All),
            "biases" => Ok(ParamScope::Biases),
            "norm" => Ok(ParamScope::Norm),
            _ => Err(format!("unknown parameter scope '{s}' (all, biases, norm)")),
        }
    }
}

impl std::fmt::Display for ParamScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ParamScope::All => "all",
            ParamScope::Biases => "biases",
            ParamScope::Norm => "norm",
        })
    }
}

/// The tail layers found in a model: where the trunk is cut and what follows.
#[derive(Debug, Clone)]
pub struct TailSpec {
    /// The tensor the trunk outputs and the tail reads.
    pub cut: String,
    /// Its sample shape (batch excluded), e.g. `[160, 7, 7]`.
    pub cut_shape: Vec<usize>,
    /// The ONNX nodes the tail replaces, in forward order.
    pub nodes: Vec<String>,
    /// Channels of the cut tensor (its width is `channels · pixels`).
    pub channels: usize,
    /// Width of the tail's output (the embedding).
    pub out_dim: usize,
    /// Worker threads of the forward and backward (results do not depend
    /// on it: the batch is split in fixed chunks).
    pub threads: usize,
    graph: Arc<Graph>,
    /// `tail.<initialiser>` of every engine parameter, by id.
    keys: Vec<String>,
    /// Their handles, once resolved ([`TailSpec::resolve`]; empty: by name).
    ids: Vec<ParamId>,
    trainable: Vec<bool>,
    /// Which engine values the backward reads (the rest are dropped).
    keep: nn::graph::KeepPlan,
}

/// The cut tensor for `choice` on the way to `embedding`.
fn find_cut(graph: &pb::GraphProto, embedding: &str, choice: &TailChoice) -> Result<String> {
    let initialisers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let producer = |t: &str| graph.node.iter().find(|n| n.output.iter().any(|o| o == t));
    let data_inputs = |n: &pb::NodeProto| -> Vec<String> {
        n.input
            .iter()
            .filter(|i| !i.is_empty() && !initialisers.contains(i.as_str()))
            .filter(|i| producer(i).is_none_or(|p| p.op_type != "Constant"))
            .cloned()
            .collect()
    };
    if producer(embedding).is_none() {
        return Err(TailError::Graph(format!(
            "no node computes the embedding '{embedding}'"
        )));
    }
    match choice {
        TailChoice::Auto => {
            let mut tensor = embedding.to_owned();
            loop {
                let node = producer(&tensor).ok_or_else(|| {
                    TailError::Graph(format!(
                        "no weighted layer between '{tensor}' and '{embedding}'"
                    ))
                })?;
                let inputs = data_inputs(node);
                let [input] = inputs.as_slice() else {
                    return Err(TailError::Graph(format!(
                        "node '{}' ({}) reads {} data tensors before any weighted layer; choose \
                         blocks:K or a node",
                        node.name,
                        node.op_type,
                        inputs.len()
                    )));
                };
                if matches!(node.op_type.as_str(), "Conv" | "Gemm" | "MatMul") {
                    return Ok(input.clone());
                }
                tensor = input.clone();
            }
        }
        TailChoice::Node(name) => {
            // The node must lie on the way back from the embedding.
            let mut upstream = HashSet::from([embedding.to_owned()]);
            let mut found = None;
            for node in graph.node.iter().rev() {
                if node.output.iter().any(|o| upstream.contains(o)) {
                    upstream.extend(node.input.iter().cloned());
                    if &node.name == name {
                        found = Some(node);
                        break;
                    }
                }
            }
            let node = found.ok_or_else(|| {
                TailError::Graph(format!(
                    "walked back from '{embedding}' to the graph input without meeting node '{name}'"
                ))
            })?;
            match data_inputs(node).as_slice() {
                [input] => Ok(input.clone()),
                inputs => Err(TailError::Graph(format!(
                    "node '{name}' ({}) reads {} data tensors; the trainable part must start at a \
                     node with one (a block's first node), e.g. --train-blocks K",
                    node.op_type,
                    inputs.len()
                ))),
            }
        }
        TailChoice::Blocks(k) => {
            let outputs = crate::blocks::block_outputs(graph, embedding);
            if *k >= outputs.len() {
                return Err(TailError::Graph(format!(
                    "the graph has {} block outputs before '{embedding}', so at most {} blocks can \
                     train above a frozen trunk (asked for {k})",
                    outputs.len(),
                    outputs.len().saturating_sub(1)
                )));
            }
            Ok(outputs[outputs.len() - 1 - k].clone())
        }
    }
}

impl TailSpec {
    /// Finds the tail layers of `proto` that end at `embedding` for images
    /// of `sample_shape` (the model input, batch excluded), and their
    /// initial parameters (`tail.<initialiser>`), of which `scope` train.
    pub fn from_model(
        proto: &pb::ModelProto,
        embedding: &str,
        choice: &TailChoice,
        sample_shape: &[usize],
        scope: ParamScope,
    ) -> Result<(TailSpec, Params)> {
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| TailError::Graph("the model holds no graph".into()))?;
        let cut = find_cut(graph, embedding, choice)?;
        if !graph.node.iter().any(|n| n.output.contains(&cut)) {
            return Err(TailError::Graph(format!(
                "the tail starts at the graph input '{cut}': nothing would be left to the \
                 frozen trunk; choose a later node"
            )));
        }
        let trunk = crate::onnx::cut_at(proto, &cut)?;
        let cut_shape = crate::backend::infer_output_shape(&trunk, sample_shape)
            .map_err(|e| TailError::Model(Box::new(e)))?;
        drop(trunk);
        let imported = nn::import(graph, &cut, &cut_shape, embedding)?;
        let g = imported.graph;
        let out_dim = match g.output_shape() {
            [d] => *d,
            s => {
                return Err(TailError::Graph(format!(
                    "the tail does not end in a flat [N, D] embedding (its output is [N, {s:?}])"
                )))
            }
        };
        let keys: Vec<String> = g
            .params()
            .iter()
            .map(|p| format!("{TAIL_PREFIX}{}", p.name))
            .collect();
        let trainable: Vec<bool> = g.params().iter().map(|p| scope.trains(p.kind)).collect();
        if !trainable.iter().any(|&t| t) {
            return Err(TailError::Graph(format!(
                "the tail has no {scope} parameters to train"
            )));
        }
        let nodes: Vec<String> = g.node_names().map(str::to_owned).collect();
        // A trained initialiser used outside the tail would silently change the trunk.
        let tail_nodes: HashSet<&str> = nodes.iter().map(String::as_str).collect();
        let params: HashSet<&str> = g.params().iter().map(|p| p.name.as_str()).collect();
        for n in &graph.node {
            if tail_nodes.contains(n.name.as_str()) {
                continue;
            }
            if let Some(i) = n.input.iter().find(|i| params.contains(i.as_str())) {
                return Err(TailError::Graph(format!(
                    "initialiser '{i}' is also used by node '{}' outside the tail",
                    n.name
                )));
            }
        }
        let mut init = Params::new();
        for (key, value) in keys.iter().zip(imported.init) {
            init.insert(key.clone(), value);
        }
        let keep = g.keep_plan(&trainable);
        let spec = TailSpec {
            keep,
            channels: cut_shape.first().copied().unwrap_or(0),
            cut,
            cut_shape,
            nodes,
            out_dim,
            threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(4),
            graph: Arc::new(g),
            keys,
            ids: Vec::new(),
            trainable,
        };
        Ok((spec, init))
    }

    /// Names of the trainable parameters (`tail.*`); the others are in
    /// the initial parameters too, but get no gradient.
    pub fn param_names(&self) -> Vec<String> {
        self.keys
            .iter()
            .zip(&self.trainable)
            .filter(|(_, &t)| t)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Bytes of activations per sample the backward keeps, and what it
    /// would keep if every value stayed on the tape.
    pub fn activation_bytes_per_sample(&self) -> (usize, usize) {
        (
            self.graph.kept_bytes_per_sample(&self.trainable),
            self.graph.activation_bytes_per_sample(),
        )
    }

    /// The engine graph the tail runs on.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Resolves the tail's parameters in `p` once (the trainer's store):
    /// its passes then reach them by handle in `p` and every store made
    /// from it, with no name looked up; another store still works by name.
    pub fn resolve(&mut self, p: &Params) -> Result<()> {
        self.ids = self
            .keys
            .iter()
            .map(|k| p.id(k))
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    fn bind<'a>(&self, p: &'a Params) -> Result<Vec<&'a ArrayD<f32>>> {
        let tensors = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| p.get_resolved(self.ids.get(i).copied(), k))
            .collect::<Result<_, _>>()?;
        Ok(tensors)
    }
}

/// What [`backward`] needs from [`forward`]: every value of the pass.
#[derive(Debug, Clone)]
pub struct TailCache {
    tape: BatchTape,
}

impl TailCache {
    /// Bytes of activations the pass keeps for its backward.
    pub fn bytes(&self) -> usize {
        self.tape.bytes()
    }
}

/// The tail's output `[B, out_dim]` for trunk outputs `x` `[B, C·H·W]`.
pub fn forward(
    spec: &TailSpec,
    p: &Params,
    x: ArrayView2<f32>,
) -> Result<(Array2<f32>, TailCache)> {
    let params = spec.bind(p)?;
    let (y, tape) = spec
        .graph
        .forward_rows_keeping(&params, x, spec.threads, Some(&spec.keep))?;
    Ok((y, TailCache { tape }))
}

/// The tail's output for `x` with no tape kept: what evaluation, the
/// momentum copy's keys and exports need (a training forward of 256 rows at
/// 224 px would hold hundreds of MiB of activations for nothing).
pub fn embed(spec: &TailSpec, p: &Params, x: ArrayView2<f32>) -> Result<Array2<f32>> {
    let params = spec.bind(p)?;
    let nothing = nn::graph::KeepPlan::nothing(spec.keep.values.len());
    let (y, _) = spec
        .graph
        .forward_rows_keeping(&params, x, spec.threads, Some(&nothing))?;
    Ok(y)
}

/// Adds the gradients of the trainable tail parameters for upstream
/// gradient `dy` `[B, out_dim]` into `grads` (by handle when `grads` was
/// made from the store the tail was resolved in, else by name).
pub fn backward(
    spec: &TailSpec,
    p: &Params,
    cache: &TailCache,
    dy: ArrayView2<f32>,
    grads: &mut Params,
) -> Result<()> {
    let params = spec.bind(p)?;
    let param_grads =
        spec.graph
            .backward_rows(&params, &cache.tape, dy, &spec.trainable, spec.threads)?;
    super::layers::add_grads(grads, &spec.keys, &spec.ids, param_grads)?;
    Ok(())
}

/// Errors preparing the frozen trunk for a tail.
#[derive(Debug, thiserror::Error)]
pub enum TrunkError {
    #[error(transparent)]
    Tail(#[from] TailError),
    #[error(transparent)]
    Model(#[from] crate::backend::ModelError),
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    /// The manifest's pooling could not be written as ONNX nodes.
    #[error("pooling the tap for training: {0}")]
    Pool(#[from] Box<super::export::ExportError>),
    #[error("cannot write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Reads `manifest`'s model (checking its sha256) and finds its tail layers.
///
/// A manifest that pools a feature map (`pool = "mean"`, a grid, `flatten`)
/// gets that pooling appended as the ONNX nodes export writes for it
/// (`AveragePool` + `Flatten`), so the tail ends in the flat embedding the
/// manifest promises and the blocks *below* a pooled tap can train: the
/// engine differentiates those nodes like any others, and export puts the
/// trained initialisers back into the same graph. Block counting is
/// unchanged: the tap is still the last block output.
pub fn load_tail(
    manifest: &crate::Manifest,
    choice: &TailChoice,
    scope: ParamScope,
) -> Result<(TailSpec, Params), TrunkError> {
    let mut proto = crate::onnx::load_verified(manifest)?;
    let embedding = super::export::append_pooling(&mut proto, manifest).map_err(Box::new)?;
    Ok(TailSpec::from_model(
        &proto,
        &embedding,
        choice,
        &manifest.input.shape,
        scope,
    )?)
}

/// Writes the frozen trunk (the model cut at `spec.cut`) to `dir/trunk.onnx`
/// and returns a manifest for it whose "embedding" is the cut tensor,
/// flattened (`[N, C·H·W]`), so every backend loads and runs it unchanged.
pub fn write_trunk(
    manifest: &crate::Manifest,
    spec: &TailSpec,
    dir: &std::path::Path,
) -> Result<crate::Manifest, TrunkError> {
    use prost::Message;
    use std::io::Write;
    let proto = crate::onnx::load_verified(manifest)?;
    let trunk = crate::onnx::cut_at(&proto, &spec.cut)?;
    drop(proto);
    // Found by TailSpec::from_model with this manifest's input shape.
    let shape = &spec.cut_shape;
    let trunk_bytes = trunk.encode_to_vec();
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| TrunkError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join("trunk.onnx");
    crate::atomic::write_atomic(&path, |f| f.write_all(&trunk_bytes)).map_err(io(&path))?;
    let mut out = manifest.clone();
    out.name = format!("{}-trunk", manifest.name);
    out.onnx = path;
    out.sha256 = crate::onnx::sha256_hex(&trunk_bytes);
    out.description = Some(format!(
        "{} cut at '{}' (the frozen trunk below its trainable tail)",
        manifest.name, spec.cut
    ));
    out.classes = None;
    out.outputs.embedding = spec.cut.clone();
    out.outputs.embedding_dim = shape.iter().product();
    // The model's pooling belongs to the tail (see `load_tail`), never to
    // the cut tensor, which is passed on whole (`none` flattens any rank).
    out.outputs.pool = crate::manifest::Pool::None;
    out.outputs.logits = None;
    out.outputs.num_classes = None;
    Ok(out)
}
