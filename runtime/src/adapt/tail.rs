//! Trainable tail layers of the ONNX graph itself (issue 3, trainable scope (c)).
//!
//! The last few nodes before the embedding output are often of kinds whose
//! gradient is a few matrix products: for MobileNetV2 the final 1×1 conv
//! 320→1280 (BatchNorm folded), ReLU6 and global average pooling. Training
//! them moves the representation far more than an adapter on the pooled
//! embedding can, at a modest cost, while the rest of the network stays a
//! frozen trunk run by the backend.
//!
//! [`TailSpec::from_model`] walks back from the embedding output over such
//! nodes and stops at the node the user chose ([`TailChoice`]); everything
//! before that node's data input (the *cut* tensor) is the trunk, cut out of
//! the model by [`trunk_model`] so any backend runs it. The tail's initialisers
//! become trainable [`Params`] named `tail.<initialiser name>` in their ONNX
//! shapes, so export only has to put them back.
//!
//! Supported kinds, and why only these: each is linear in its weights or a
//! pointwise/averaging map, so forward and backward are exact matrix algebra.
//!
//! | ONNX op | condition | forward |
//! | --- | --- | --- |
//! | `Conv` | 1×1 kernel, stride 1, group 1, no pad, dilation 1 | `Y = W·X + b` per pixel |
//! | `Gemm` | `alpha = beta = 1`, `transA = 0`, weight an initialiser | `y = W·x + b` |
//! | `MatMul` | right operand an initialiser `[in, out]` | `y = Wᵀ·x` |
//! | `Add` | one operand an initialiser with one value per channel | `y = x + b` |
//! | `Relu`, `Clip` | bounds constant | pointwise |
//! | `GlobalAveragePool`, `ReduceMean` over `[2, 3]` | | mean over pixels |
//! | `Flatten` (axis 1), `Reshape` to `[N, C]` | after pooling | none |
//!
//! Activations are held channel-major, `[C, B·S]` (`S` pixels per image), so a
//! 1×1 conv over the whole batch is one `[O, C] × [C, B·S]` matrix product.

use std::collections::{HashMap, HashSet};

use ndarray::{Array2, Array3, ArrayD, ArrayView2, Axis, Zip};
use tract_onnx::pb;

use super::params::{Params, ParamsError};

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
}

type Result<T, E = TailError> = std::result::Result<T, E>;

/// Which nodes to train.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailChoice {
    /// The last weighted node before the embedding and everything after it
    /// (MobileNetV2: the 1×1 conv 320→1280, ReLU6, pooling, flatten).
    Auto,
    /// The named node and every node from it to the embedding output.
    Node(String),
}

impl std::str::FromStr for TailChoice {
    type Err = std::convert::Infallible;

    /// `auto`, or any other string as a node name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "auto" {
            TailChoice::Auto
        } else {
            TailChoice::Node(s.to_owned())
        })
    }
}

/// One differentiable tail operation, in forward order.
#[derive(Debug, Clone, PartialEq)]
pub enum TailOp {
    /// `Y = W·X (+ b)`: 1×1 conv, Gemm or MatMul. `weight` is a parameter
    /// name; `transposed` when it is stored `[in, out]` (MatMul, Gemm with
    /// `transB = 0`) rather than `[out, in]` (Conv, Gemm with `transB = 1`).
    Linear {
        weight: String,
        bias: Option<String>,
        inputs: usize,
        outputs: usize,
        transposed: bool,
        spatial: bool,
    },
    /// `Y = X + b`, one bias per channel.
    Bias { bias: String, spatial: bool },
    /// `clamp(x, min, max)` (`Relu` is `min = 0, max = ∞`).
    Clamp { min: f32, max: f32 },
    /// Mean over the pixels of each image and channel.
    Pool,
    /// `[B, C, 1, 1]` → `[B, C]`; the pixel count must already be 1.
    Flatten,
}

/// The tail layers found in a model: where the trunk is cut and what follows.
#[derive(Debug, Clone, PartialEq)]
pub struct TailSpec {
    /// The tensor the trunk outputs and the tail reads.
    pub cut: String,
    /// The ONNX nodes the tail replaces, in forward order.
    pub nodes: Vec<String>,
    pub ops: Vec<TailOp>,
    /// Channels of the cut tensor (its width is `channels · pixels`).
    pub channels: usize,
    /// Width of the tail's output (the embedding).
    pub out_dim: usize,
}

fn attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_i(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

fn attr_f(node: &pb::NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}

fn attr_ints(node: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

/// An initialiser's values as f32 (raw_data or float_data).
pub(crate) fn tensor_values(t: &pb::TensorProto) -> Result<Vec<f32>> {
    if t.data_type != pb::tensor_proto::DataType::Float as i32 {
        return Err(TailError::Graph(format!(
            "initialiser '{}' is not float32 (data type {})",
            t.name, t.data_type
        )));
    }
    let n: usize = t.dims.iter().map(|&d| d.max(0) as usize).product();
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    if values.len() != n {
        return Err(TailError::Graph(format!(
            "initialiser '{}' holds {} values for dims {:?} (external data is not supported)",
            t.name,
            values.len(),
            t.dims
        )));
    }
    Ok(values)
}

fn tensor_array(t: &pb::TensorProto) -> Result<ArrayD<f32>> {
    let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    ArrayD::from_shape_vec(shape, tensor_values(t)?)
        .map_err(|e| TailError::Graph(format!("initialiser '{}': {e}", t.name)))
}

/// What the walk needs to know about the graph.
struct GraphIndex<'a> {
    producer: HashMap<&'a str, &'a pb::NodeProto>,
    initialisers: HashMap<&'a str, &'a pb::TensorProto>,
}

impl<'a> GraphIndex<'a> {
    fn new(graph: &'a pb::GraphProto) -> Self {
        let mut producer = HashMap::new();
        for node in &graph.node {
            for out in &node.output {
                producer.insert(out.as_str(), node);
            }
        }
        let initialisers = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        Self {
            producer,
            initialisers,
        }
    }

    fn init(&self, name: &str) -> Option<&'a pb::TensorProto> {
        self.initialisers.get(name).copied()
    }
}

fn unsupported(node: &pb::NodeProto, why: impl Into<String>) -> TailError {
    TailError::UnsupportedOp {
        node: node.name.clone(),
        op: node.op_type.clone(),
        why: why.into(),
    }
}

/// A scalar bound of `Clip` given as an input (opset ≥ 11) or attribute.
fn clip_bound(
    node: &pb::NodeProto,
    index: &GraphIndex,
    input: usize,
    attr_name: &str,
    default: f32,
) -> Result<f32> {
    match node.input.get(input).filter(|s| !s.is_empty()) {
        Some(name) => {
            let t = index
                .init(name)
                .ok_or_else(|| unsupported(node, "with a bound that is not a constant"))?;
            match tensor_values(t)?.as_slice() {
                [v] => Ok(*v),
                _ => Err(unsupported(node, "with a bound that is not a scalar")),
            }
        }
        None => Ok(attr_f(node, attr_name, default)),
    }
}

/// One node as a [`TailOp`] (or two, for `ReduceMean` without keepdims),
/// its data input, and the initialisers it trains. `init` collects the
/// trainable tensors as `tail.<name>`.
fn parse_node(
    node: &pb::NodeProto,
    index: &GraphIndex,
    init: &mut Params,
) -> Result<(Vec<TailOp>, String)> {
    let data = |i: usize| -> Result<String> {
        let name = node
            .input
            .get(i)
            .ok_or_else(|| unsupported(node, "with too few inputs"))?;
        if index.init(name).is_some() {
            return Err(unsupported(node, "whose data input is a constant"));
        }
        Ok(name.clone())
    };
    let mut trainable = |name: &str| -> Result<(String, Vec<usize>)> {
        let t = index.init(name).ok_or_else(|| {
            unsupported(node, format!("whose weight '{name}' is not an initialiser"))
        })?;
        let array = tensor_array(t)?;
        let shape = array.shape().to_vec();
        let param = format!("{TAIL_PREFIX}{name}");
        init.insert(param.clone(), array);
        Ok((param, shape))
    };
    let op = node.op_type.as_str();
    let ops = match op {
        "Conv" => {
            let ones = |v: Option<Vec<i64>>| v.is_none_or(|v| v.iter().all(|&x| x == 1));
            let zeros = |v: Option<Vec<i64>>| v.is_none_or(|v| v.iter().all(|&x| x == 0));
            if attr_i(node, "group", 1) != 1 {
                return Err(unsupported(node, "with groups (only group = 1)"));
            }
            if !ones(attr_ints(node, "strides")) || !ones(attr_ints(node, "dilations")) {
                return Err(unsupported(node, "with stride or dilation ≠ 1"));
            }
            if !zeros(attr_ints(node, "pads")) {
                return Err(unsupported(node, "with padding"));
            }
            let auto_pad = attr(node, "auto_pad").map(|a| String::from_utf8_lossy(&a.s));
            if auto_pad.is_some_and(|p| p != "NOTSET" && p != "VALID") {
                return Err(unsupported(node, "with auto_pad"));
            }
            let (weight, shape) = trainable(&node.input[1])?;
            if shape.len() != 4 || shape[2] != 1 || shape[3] != 1 {
                return Err(unsupported(
                    node,
                    format!("with kernel {shape:?} (only 1×1 kernels)"),
                ));
            }
            let bias = match node.input.get(2).filter(|s| !s.is_empty()) {
                Some(b) => Some(trainable(b)?.0),
                None => None,
            };
            vec![TailOp::Linear {
                weight,
                bias,
                inputs: shape[1],
                outputs: shape[0],
                transposed: false,
                spatial: true,
            }]
        }
        "Gemm" => {
            if attr_f(node, "alpha", 1.0) != 1.0 || attr_f(node, "beta", 1.0) != 1.0 {
                return Err(unsupported(node, "with alpha or beta ≠ 1"));
            }
            if attr_i(node, "transA", 0) != 0 {
                return Err(unsupported(node, "with transA = 1"));
            }
            let transposed = attr_i(node, "transB", 0) == 0;
            let (weight, shape) = trainable(
                node.input
                    .get(1)
                    .ok_or_else(|| unsupported(node, "without a weight"))?,
            )?;
            if shape.len() != 2 {
                return Err(unsupported(node, "with a weight that is not 2-D"));
            }
            let (outputs, inputs) = if transposed {
                (shape[1], shape[0])
            } else {
                (shape[0], shape[1])
            };
            let bias = match node.input.get(2).filter(|s| !s.is_empty()) {
                Some(b) => {
                    let (name, shape) = trainable(b)?;
                    if shape.iter().product::<usize>() != outputs {
                        return Err(unsupported(node, "with a bias that is not per output"));
                    }
                    Some(name)
                }
                None => None,
            };
            vec![TailOp::Linear {
                weight,
                bias,
                inputs,
                outputs,
                transposed,
                spatial: false,
            }]
        }
        "MatMul" => {
            let (weight, shape) = trainable(&node.input[1])?;
            if shape.len() != 2 {
                return Err(unsupported(node, "with a weight that is not 2-D"));
            }
            vec![TailOp::Linear {
                weight,
                bias: None,
                inputs: shape[0],
                outputs: shape[1],
                transposed: true,
                spatial: false,
            }]
        }
        "Add" => {
            let (data_ix, bias_ix) = match (
                node.input.first().and_then(|n| index.init(n)),
                node.input.get(1).and_then(|n| index.init(n)),
            ) {
                (None, Some(_)) => (0, 1),
                (Some(_), None) => (1, 0),
                _ => return Err(unsupported(node, "without exactly one constant operand")),
            };
            let (bias, shape) = trainable(&node.input[bias_ix])?;
            let spatial = match shape.as_slice() {
                [_] | [1, _] => false,
                [_, 1, 1] | [1, _, 1, 1] => true,
                _ => {
                    return Err(unsupported(
                        node,
                        format!("with a constant of shape {shape:?} (not one value per channel)"),
                    ))
                }
            };
            return Ok((vec![TailOp::Bias { bias, spatial }], data(data_ix)?));
        }
        "Relu" => vec![TailOp::Clamp {
            min: 0.0,
            max: f32::INFINITY,
        }],
        "Clip" => vec![TailOp::Clamp {
            min: clip_bound(node, index, 1, "min", f32::NEG_INFINITY)?,
            max: clip_bound(node, index, 2, "max", f32::INFINITY)?,
        }],
        "GlobalAveragePool" => vec![TailOp::Pool],
        "ReduceMean" => {
            let axes = match node.input.get(1).filter(|s| !s.is_empty()) {
                Some(name) => index
                    .init(name)
                    .map(|t| {
                        if t.raw_data.is_empty() {
                            t.int64_data.clone()
                        } else {
                            t.raw_data
                                .chunks_exact(8)
                                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                                .collect()
                        }
                    })
                    .ok_or_else(|| unsupported(node, "with axes that are not constant"))?,
                None => attr_ints(node, "axes").unwrap_or_default(),
            };
            let mut sorted = axes.clone();
            sorted.sort_unstable();
            if sorted != [2, 3] && sorted != [-2, -1] {
                return Err(unsupported(
                    node,
                    format!("over axes {axes:?} (only the pixels, [2, 3])"),
                ));
            }
            if attr_i(node, "keepdims", 1) == 0 {
                vec![TailOp::Pool, TailOp::Flatten]
            } else {
                vec![TailOp::Pool]
            }
        }
        "Flatten" => {
            if attr_i(node, "axis", 1) != 1 {
                return Err(unsupported(node, "with axis ≠ 1"));
            }
            vec![TailOp::Flatten]
        }
        "Reshape" => {
            let shape = node
                .input
                .get(1)
                .and_then(|n| index.init(n))
                .map(|t| {
                    if t.raw_data.is_empty() {
                        t.int64_data.len()
                    } else {
                        t.raw_data.len() / 8
                    }
                })
                .ok_or_else(|| unsupported(node, "with a shape that is not constant"))?;
            if shape != 2 {
                return Err(unsupported(node, "to a shape other than [N, C]"));
            }
            vec![TailOp::Flatten]
        }
        _ => {
            return Err(unsupported(
                node,
                "is not a kind edgeclr can differentiate (Gemm, MatMul, 1×1 Conv, Add, Relu, \
                 Clip, GlobalAveragePool, ReduceMean, Flatten, Reshape)",
            ))
        }
    };
    Ok((ops, data(0)?))
}

impl TailSpec {
    /// Finds the tail layers of `proto` that end at `embedding`, and their
    /// initial parameters (`tail.<initialiser>`).
    pub fn from_model(
        proto: &pb::ModelProto,
        embedding: &str,
        choice: &TailChoice,
    ) -> Result<(TailSpec, Params)> {
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| TailError::Graph("the model holds no graph".into()))?;
        let index = GraphIndex::new(graph);
        let mut init = Params::new();
        let mut ops_rev: Vec<TailOp> = Vec::new();
        let mut nodes_rev: Vec<String> = Vec::new();
        let mut tensor = embedding.to_owned();
        loop {
            let node = index
                .producer
                .get(tensor.as_str())
                .copied()
                .ok_or_else(|| {
                    TailError::Graph(match choice {
                        TailChoice::Node(n) => format!(
                            "walked back from '{embedding}' to the graph input '{tensor}' without \
                         meeting node '{n}'"
                        ),
                        TailChoice::Auto => {
                            format!("no weighted layer between '{tensor}' and '{embedding}'")
                        }
                    })
                })?;
            let (ops, input) = parse_node(node, &index, &mut init)?;
            let weighted = ops.iter().any(|o| matches!(o, TailOp::Linear { .. }));
            ops_rev.extend(ops.into_iter().rev());
            nodes_rev.push(node.name.clone());
            tensor = input;
            let done = match choice {
                TailChoice::Auto => weighted,
                TailChoice::Node(n) => &node.name == n,
            };
            if done {
                break;
            }
        }
        if !index.producer.contains_key(tensor.as_str()) {
            return Err(TailError::Graph(format!(
                "the tail starts at the graph input '{tensor}': nothing would be left to the \
                 frozen trunk; choose a later node"
            )));
        }
        let ops: Vec<TailOp> = ops_rev.into_iter().rev().collect();
        let nodes: Vec<String> = nodes_rev.into_iter().rev().collect();
        // A trained initialiser used outside the tail would silently change the trunk.
        let tail_nodes: HashSet<&str> = nodes.iter().map(String::as_str).collect();
        for n in &graph.node {
            if tail_nodes.contains(n.name.as_str()) {
                continue;
            }
            for i in &n.input {
                if init.contains(&format!("{TAIL_PREFIX}{i}")) {
                    return Err(TailError::Graph(format!(
                        "initialiser '{i}' is also used by node '{}' outside the tail",
                        n.name
                    )));
                }
            }
        }
        let spec = Self::check(tensor, nodes, ops)?;
        Ok((spec, init))
    }

    /// Checks the op sequence shape by shape and finds its input channels and
    /// output width.
    fn check(cut: String, nodes: Vec<String>, ops: Vec<TailOp>) -> Result<TailSpec> {
        let bad = |why: String| TailError::Graph(why);
        let first_state = ops.iter().find_map(|o| match o {
            TailOp::Linear { spatial, .. } | TailOp::Bias { spatial, .. } => Some(*spatial),
            TailOp::Pool | TailOp::Flatten => Some(true),
            TailOp::Clamp { .. } => None,
        });
        let mut spatial = first_state.unwrap_or(false);
        let mut channels: Option<usize> = None;
        let mut width: Option<usize> = None;
        for op in &ops {
            match op {
                TailOp::Linear {
                    inputs,
                    outputs,
                    spatial: s,
                    ..
                } => {
                    if *s != spatial {
                        return Err(bad(format!(
                            "a {} layer follows a {} tensor",
                            if *s { "1×1 conv" } else { "Gemm/MatMul" },
                            if spatial { "[N, C, H, W]" } else { "[N, C]" }
                        )));
                    }
                    if width.is_some_and(|w| w != *inputs) {
                        return Err(bad(format!(
                            "a layer takes {inputs} channels, gets {width:?}"
                        )));
                    }
                    channels.get_or_insert(*inputs);
                    width = Some(*outputs);
                }
                TailOp::Bias { spatial: s, .. } => {
                    if *s != spatial {
                        return Err(bad("a bias Add broadcasts over the wrong axis".into()));
                    }
                }
                TailOp::Pool => {
                    if !spatial {
                        return Err(bad("pooling follows a flat [N, C] tensor".into()));
                    }
                }
                TailOp::Flatten => spatial = false,
                TailOp::Clamp { .. } => {}
            }
        }
        let (Some(channels), Some(out_dim)) = (channels, width) else {
            return Err(bad("the tail has no weighted layer to train".into()));
        };
        if spatial {
            return Err(bad(
                "the tail does not end in a flat [N, C] embedding (pool and flatten)".into(),
            ));
        }
        Ok(TailSpec {
            cut,
            nodes,
            ops,
            channels,
            out_dim,
        })
    }

    /// Names of the trainable parameters (`tail.*`).
    pub fn param_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for op in &self.ops {
            match op {
                TailOp::Linear { weight, bias, .. } => {
                    names.push(weight.clone());
                    names.extend(bias.clone());
                }
                TailOp::Bias { bias, .. } => names.push(bias.clone()),
                _ => {}
            }
        }
        names
    }
}

/// `model` with its graph cut at `cut`: the only output is `cut`, and the
/// nodes and initialisers it does not need are dropped. Any ONNX runtime runs
/// it as the frozen trunk.
pub fn trunk_model(proto: &pb::ModelProto, cut: &str) -> Result<pb::ModelProto> {
    let mut out = proto.clone();
    let graph = out
        .graph
        .as_mut()
        .ok_or_else(|| TailError::Graph("the model holds no graph".into()))?;
    let mut needed: HashSet<String> = HashSet::from([cut.to_owned()]);
    let mut keep = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(node.input.iter().filter(|s| !s.is_empty()).cloned());
        }
    }
    if !keep.iter().any(|&k| k) {
        return Err(TailError::Graph(format!("no node computes '{cut}'")));
    }
    let mut k = keep.iter();
    graph.node.retain(|_| *k.next().unwrap_or(&false));
    graph.initializer.retain(|t| needed.contains(&t.name));
    graph.value_info.retain(|v| needed.contains(&v.name));
    graph.output = vec![crate::inspect::float_output(cut)];
    Ok(out)
}

/// What [`backward`] needs from [`forward`]: the input of every op.
#[derive(Debug, Clone)]
pub struct TailCache {
    inputs: Vec<Array2<f32>>,
    batch: usize,
    pixels: usize,
}

fn param2<'a>(p: &'a Params, name: &str, rows: usize, cols: usize) -> Result<ArrayView2<'a, f32>> {
    let t = p.get(name)?;
    t.view().into_shape_with_order((rows, cols)).map_err(|_| {
        ParamsError::Shape {
            name: name.to_owned(),
            got: t.shape().to_vec(),
            expected: vec![rows, cols],
        }
        .into()
    })
}

/// `W` as `[out, in]` (a transposed view when it is stored `[in, out]`).
fn weight_oi<'a>(
    p: &'a Params,
    name: &str,
    inputs: usize,
    outputs: usize,
    transposed: bool,
) -> Result<ArrayView2<'a, f32>> {
    Ok(if transposed {
        param2(p, name, inputs, outputs)?.reversed_axes()
    } else {
        param2(p, name, outputs, inputs)?
    })
}

fn vector<'a>(p: &'a Params, name: &str, n: usize) -> Result<ndarray::ArrayView1<'a, f32>> {
    let t = p.get(name)?;
    if t.len() != n {
        return Err(ParamsError::Shape {
            name: name.to_owned(),
            got: t.shape().to_vec(),
            expected: vec![n],
        }
        .into());
    }
    Ok(param2(p, name, 1, n)?.index_axis_move(Axis(0), 0))
}

/// `[B, C·S]` rows (NCHW flattened) → channel-major `[C, B·S]`.
fn to_channel_major(x: ArrayView2<f32>, channels: usize) -> Result<(Array2<f32>, usize)> {
    let (b, width) = x.dim();
    if channels == 0 || width % channels != 0 || b == 0 {
        return Err(TailError::Input {
            got: vec![b, width],
            why: format!("expected [N, {channels}·H·W] (the cut tensor, flattened)"),
        });
    }
    let s = width / channels;
    let x3 = x
        .into_shape_with_order((b, channels, s))
        .map_err(|e| TailError::Input {
            got: vec![b, width],
            why: e.to_string(),
        })?;
    let mut out = Array3::<f32>::zeros((channels, b, s));
    out.assign(&x3.permuted_axes([1, 0, 2]));
    let out = out
        .into_shape_with_order((channels, b * s))
        .map_err(|e| TailError::Input {
            got: vec![b, width],
            why: e.to_string(),
        })?;
    Ok((out, s))
}

/// The tail's output `[B, out_dim]` for trunk outputs `x` `[B, C·S]`.
pub fn forward(
    spec: &TailSpec,
    p: &Params,
    x: ArrayView2<f32>,
) -> Result<(Array2<f32>, TailCache)> {
    let batch = x.nrows();
    let (mut h, s0) = to_channel_major(x, spec.channels)?;
    let mut pixels = s0;
    let mut inputs = Vec::with_capacity(spec.ops.len());
    for op in &spec.ops {
        let next = match op {
            TailOp::Linear {
                weight,
                bias,
                inputs: i,
                outputs: o,
                transposed,
                ..
            } => {
                let w = weight_oi(p, weight, *i, *o, *transposed)?;
                let mut y = w.dot(&h);
                if let Some(b) = bias {
                    let b = vector(p, b, *o)?;
                    y += &b.insert_axis(Axis(1));
                }
                y
            }
            TailOp::Bias { bias, spatial } => {
                if !spatial && pixels != 1 {
                    return Err(TailError::Input {
                        got: vec![batch, h.nrows() * pixels],
                        why: "a per-channel bias on a flat tensor needs pooled input".into(),
                    });
                }
                let b = vector(p, bias, h.nrows())?;
                &h + &b.insert_axis(Axis(1))
            }
            TailOp::Clamp { min, max } => h.mapv(|v| v.max(*min).min(*max)),
            TailOp::Pool => {
                let c = h.nrows();
                let pooled = h
                    .view()
                    .into_shape_with_order((c, batch, pixels))
                    .map_err(|e| TailError::Input {
                        got: vec![c, batch * pixels],
                        why: e.to_string(),
                    })?
                    .mean_axis(Axis(2))
                    .ok_or_else(|| TailError::Input {
                        got: vec![c, batch * pixels],
                        why: "no pixels to pool".into(),
                    })?;
                pixels = 1;
                pooled
            }
            TailOp::Flatten => {
                if pixels != 1 {
                    return Err(TailError::Input {
                        got: vec![batch, h.nrows() * pixels],
                        why: "flattening more than one pixel per channel is not supported".into(),
                    });
                }
                h.clone()
            }
        };
        inputs.push(std::mem::replace(&mut h, next));
    }
    Ok((
        h.reversed_axes().as_standard_layout().to_owned(),
        TailCache {
            inputs,
            batch,
            pixels: s0,
        },
    ))
}

/// Gradients of the tail parameters for upstream gradient `dy` `[B, out_dim]`.
pub fn backward(
    spec: &TailSpec,
    p: &Params,
    cache: &TailCache,
    dy: ArrayView2<f32>,
) -> Result<Params> {
    let mut grads = Params::new();
    let mut g: Array2<f32> = dy.t().to_owned();
    // Pixels per image of the tensor each op reads, replayed forward.
    let mut pix = Vec::with_capacity(spec.ops.len());
    let mut s = cache.pixels;
    for op in &spec.ops {
        pix.push(s);
        if matches!(op, TailOp::Pool) {
            s = 1;
        }
    }
    for (k, op) in spec.ops.iter().enumerate().rev() {
        let x = &cache.inputs[k];
        match op {
            TailOp::Linear {
                weight,
                bias,
                inputs: i,
                outputs: o,
                transposed,
                ..
            } => {
                let w = weight_oi(p, weight, *i, *o, *transposed)?;
                let dw = g.dot(&x.t()); // [out, in]
                let stored = p.get(weight)?;
                let dw = if *transposed {
                    dw.reversed_axes().as_standard_layout().to_owned()
                } else {
                    dw
                };
                let dw = dw
                    .into_dyn()
                    .into_shape_with_order(stored.shape())
                    .map_err(|_| ParamsError::Missing(weight.clone()))?;
                grads.insert(weight.clone(), dw);
                if let Some(b) = bias {
                    let db = g.sum_axis(Axis(1));
                    let shape = p.get(b)?.shape().to_vec();
                    let db = db
                        .into_dyn()
                        .into_shape_with_order(shape)
                        .map_err(|_| ParamsError::Missing(b.clone()))?;
                    grads.insert(b.clone(), db);
                }
                if k > 0 {
                    g = w.t().dot(&g);
                }
            }
            TailOp::Bias { bias, .. } => {
                let db = g.sum_axis(Axis(1));
                let shape = p.get(bias)?.shape().to_vec();
                let db = db
                    .into_dyn()
                    .into_shape_with_order(shape)
                    .map_err(|_| ParamsError::Missing(bias.clone()))?;
                grads.insert(bias.clone(), db);
            }
            TailOp::Clamp { min, max } => {
                Zip::from(&mut g).and(x).for_each(|d, &v| {
                    if !(v > *min && v < *max) {
                        *d = 0.0;
                    }
                });
            }
            TailOp::Pool => {
                let s = pix[k];
                let c = g.nrows();
                let scale = 1.0 / s as f32;
                let mut up = Array3::<f32>::zeros((c, cache.batch, s));
                Zip::from(up.lanes_mut(Axis(2)))
                    .and(&g)
                    .for_each(|mut lane, &v| lane.fill(v * scale));
                g = up
                    .into_shape_with_order((c, cache.batch * s))
                    .map_err(|e| TailError::Input {
                        got: vec![c, cache.batch * s],
                        why: e.to_string(),
                    })?;
            }
            TailOp::Flatten => {}
        }
    }
    Ok(grads)
}

/// Errors preparing the frozen trunk for a tail.
#[derive(Debug, thiserror::Error)]
pub enum TrunkError {
    #[error(transparent)]
    Tail(#[from] TailError),
    #[error(transparent)]
    Model(#[from] crate::backend::ModelError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Reads `manifest`'s model (checking its sha256) and finds its tail layers.
pub fn load_tail(
    manifest: &crate::Manifest,
    choice: &TailChoice,
) -> Result<(TailSpec, Params), TrunkError> {
    let bytes = crate::backend::read_verified(manifest)?;
    let proto = crate::inspect::parse_proto(&manifest.onnx, &bytes)?;
    Ok(TailSpec::from_model(
        &proto,
        &manifest.outputs.embedding,
        choice,
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
    let bytes = crate::backend::read_verified(manifest)?;
    let proto = crate::inspect::parse_proto(&manifest.onnx, &bytes)?;
    drop(bytes);
    let trunk = trunk_model(&proto, &spec.cut)?;
    drop(proto);
    let shape = crate::backend::infer_output_shape(&trunk, &manifest.input.shape)?;
    if shape.first() != Some(&spec.channels) {
        return Err(TailError::Graph(format!(
            "the cut tensor '{}' has shape {shape:?}, but the tail takes {} channels",
            spec.cut, spec.channels
        ))
        .into());
    }
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
    out.sha256 = crate::inspect::sha256_hex(&trunk_bytes);
    out.description = Some(format!(
        "{} cut at '{}' (the frozen trunk below its trainable tail)",
        manifest.name, spec.cut
    ));
    out.classes = None;
    out.outputs.embedding = spec.cut.clone();
    out.outputs.embedding_dim = shape.iter().product();
    out.outputs.logits = None;
    out.outputs.num_classes = None;
    Ok(out)
}
