//! The engine's ops, one family per file, and [`parse`], which turns an ONNX
//! node into one of them.
//!
//! | ONNX op | engine op | trainable parameters |
//! | --- | --- | --- |
//! | `Conv` (any kernel, strides, pads; dilation 1; groups 1, depthwise or any) | [`conv::Conv`] | weight, bias |
//! | `Gemm` (`alpha = beta = 1`, `transA = 0`), `MatMul` by an initialiser | [`linear::Linear`] | weight, bias |
//! | `Add` of a per-channel constant | [`elementwise::AddBias`] | bias |
//! | `Add` of two data tensors (residual) | [`elementwise::AddData`] | — |
//! | `Mul` by a per-channel constant | [`elementwise::MulScale`] | scale |
//! | `Relu`, `Clip` (constant bounds) | [`elementwise::Clamp`] | — |
//! | `BatchNormalization` (inference form) | [`norm::BatchNorm`] | scale, shift |
//! | `GlobalAveragePool`, `ReduceMean` over the pixels | [`pool::GlobalMean`] | — |
//! | `MaxPool` (2-D kernel, strides, pads, `ceil_mode`; dilation 1, `storage_order` 0, no `Indices`) | [`pool::MaxPool`] | — |
//! | `AveragePool` (2-D kernel, strides, pads, `count_include_pad`; dilation 1, `ceil_mode` 0) | [`pool::AveragePool`] | — |
//! | `Pad` (constant mode, pads ≥ 0 as inputs or attributes, not on the batch axis) | [`shape::Pad`] | — |
//! | `Concat` of data tensors (any axis but the batch) | [`shape::Concat`] | — |
//! | `Flatten` (axis 1), `Reshape` that keeps the batch | [`shape::Reshape`] | — |
//!
//! Each op's forward is checked against tract and its backward against
//! central finite differences in `runtime/tests/nn_ops.rs` (and the whole scope against PyTorch
//! autograd in `runtime/tests/nn_torch.rs`).

pub mod conv;
pub mod elementwise;
pub mod linear;
pub mod norm;
pub mod pool;
pub mod shape;

use std::collections::HashMap;

use ndarray::ArrayD;
use tract_onnx::pb;

use super::NnError;

/// A tensor of the engine: f32, standard layout, batch first.
pub type Tensor = ArrayD<f32>;

/// What a parameter holds. `--train-params` chooses by kind (TinyTL trains
/// biases only; "norm" trains per-channel scales and shifts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// A conv or linear weight (`[O, C/g, kh, kw]`, `[O, K]`, `[K, O]`).
    Weight,
    /// A per-channel additive term (conv/linear bias, `Add`, BN shift).
    Bias,
    /// A per-channel multiplicative term (`Mul`, BN scale).
    Scale,
}

/// What an op's backward reads from its forward.
pub struct Saved<'a> {
    /// The op's data inputs, in its order. An input the op does not ask
    /// for ([`Op::keeps`]) may have been dropped from the tape: it is then
    /// an empty tensor, and only its shape (below) is known.
    pub inputs: &'a [&'a Tensor],
    /// The shapes of the data inputs (batch first), always known.
    pub input_shapes: &'a [&'a [usize]],
    /// Its parameters (trainable or frozen), in its order.
    pub params: &'a [&'a Tensor],
    /// Its output (empty unless [`Op::keeps`] asks for it).
    pub output: &'a Tensor,
    /// `min < y < max` per output element, when [`Keeps::output_mask`]
    /// asked for it and the output itself was not kept.
    pub output_mask: Option<&'a [bool]>,
}

/// Which of its forward's tensors an op's backward reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Keeps {
    /// One flag per data input.
    pub inputs: Vec<bool>,
    pub output: bool,
    /// Enough of the output: whether each element lies strictly inside
    /// these bounds (a clamp's gradient mask, one byte instead of four).
    pub output_mask: Option<(f32, f32)>,
}

impl Keeps {
    /// The inputs flagged (one per data input), nothing of the output.
    pub fn inputs(inputs: Vec<bool>) -> Self {
        Keeps {
            inputs,
            output: false,
            output_mask: None,
        }
    }
}

/// One differentiable op with its constant attributes baked in.
///
/// Shapes are checked once, by [`Op::output_shape`], when the graph is
/// imported; forward and backward then trust them (the executor checks the
/// batch it is given against the cut's shape).
pub trait Op: std::fmt::Debug + Send + Sync {
    /// The output's shape (batch first) for data inputs and parameters of
    /// these shapes, or why they do not fit.
    fn output_shape(&self, inputs: &[&[usize]], params: &[&[usize]]) -> Result<Vec<usize>, String>;

    /// The output for these data inputs and parameters.
    fn forward(&self, inputs: &[&Tensor], params: &[&Tensor]) -> Tensor;

    /// Gradients for upstream gradient `dy` (owned, so that pointwise ops
    /// reuse its buffer): returns one entry per data
    /// input (`None` where `want_input` is false) and *adds* each trainable
    /// parameter's gradient into `param_grads` (`None`: frozen, skip it).
    fn backward(
        &self,
        saved: &Saved,
        dy: Tensor,
        want_input: &[bool],
        param_grads: &mut [Option<Tensor>],
    ) -> Vec<Option<Tensor>>;

    /// The parameter kinds, in the op's parameter order.
    fn param_kinds(&self) -> Vec<ParamKind>;

    /// What the backward reads when the parameters flagged in `trainable`
    /// (the op's own, in its order) are trained: the executor drops every
    /// other value from the tape. E.g. a conv needs its input only for its
    /// weight gradient, a clamp only its output's mask: with biases alone
    /// trained (TinyTL) most activations need not be kept.
    fn keeps(&self, trainable: &[bool]) -> Keeps;
}

/// Constant tensors a node may read: initialisers, outputs of `Constant`
/// nodes, and shape computations folded to constants ([`super::fold`]).
pub struct Constants<'a> {
    pub initialisers: HashMap<&'a str, &'a pb::TensorProto>,
    pub folded: HashMap<String, pb::TensorProto>,
}

impl Constants<'_> {
    /// The constant tensor `name`, if it is one.
    pub fn get(&self, name: &str) -> Option<&pb::TensorProto> {
        self.initialisers
            .get(name)
            .copied()
            .or_else(|| self.folded.get(name))
    }

    /// `name` as float values with its dims, if it is a constant.
    pub fn f32(&self, name: &str) -> Option<Result<ArrayD<f32>, String>> {
        self.get(name).map(tensor_f32)
    }

    /// `name` as integers, if it is a constant int64/int32 tensor.
    pub fn ints(&self, name: &str) -> Option<Result<Vec<i64>, String>> {
        self.get(name).map(tensor_ints)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// A float initialiser as an array (raw_data or float_data).
pub fn tensor_f32(t: &pb::TensorProto) -> Result<ArrayD<f32>, String> {
    if t.data_type != pb::tensor_proto::DataType::Float as i32 {
        return Err(format!(
            "initialiser '{}' is not float32 (data type {})",
            t.name, t.data_type
        ));
    }
    let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    let n: usize = shape.iter().product();
    if values.len() != n {
        return Err(format!(
            "initialiser '{}' holds {} values for dims {:?} (external data is not supported)",
            t.name,
            values.len(),
            t.dims
        ));
    }
    ArrayD::from_shape_vec(shape, values).map_err(|e| format!("initialiser '{}': {e}", t.name))
}

/// An int64 or int32 initialiser's values.
pub fn tensor_ints(t: &pb::TensorProto) -> Result<Vec<i64>, String> {
    use pb::tensor_proto::DataType;
    let raw = !t.raw_data.is_empty();
    if t.data_type == DataType::Int64 as i32 {
        Ok(if raw {
            t.raw_data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()
        } else {
            t.int64_data.clone()
        })
    } else if t.data_type == DataType::Int32 as i32 {
        Ok(if raw {
            t.raw_data
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        } else {
            t.int32_data.iter().map(|&v| i64::from(v)).collect()
        })
    } else {
        Err(format!(
            "initialiser '{}' is not an integer tensor (data type {})",
            t.name, t.data_type
        ))
    }
}

/// An ONNX node as an engine op: which of the node's inputs are data and
/// which are trainable parameters (by input index).
pub struct Parsed {
    pub op: Box<dyn Op>,
    pub data: Vec<usize>,
    pub params: Vec<usize>,
}

pub(crate) fn attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

pub(crate) fn attr_i(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

pub(crate) fn attr_f(node: &pb::NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}

pub(crate) fn attr_ints(node: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

pub(crate) fn attr_s(node: &pb::NodeProto, name: &str) -> Option<String> {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

/// The error for `node`, naming it and its op.
pub(crate) fn unsupported(node: &pb::NodeProto, why: impl Into<String>) -> NnError {
    NnError::Unsupported {
        node: node.name.clone(),
        op: node.op_type.clone(),
        why: why.into(),
    }
}

/// Ops the engine differentiates, for the refusal message.
pub const SUPPORTED: &str = "Conv, Gemm, MatMul, Add, Mul, Relu, Clip, BatchNormalization, \
                             GlobalAveragePool, ReduceMean, MaxPool, AveragePool, Pad, \
                             Concat, Flatten, Reshape";

/// `node` as an engine op. `is_data(name)` says whether an input is a value
/// computed in the scope (or the cut itself) rather than a constant.
pub fn parse(
    node: &pb::NodeProto,
    consts: &Constants,
    is_data: &dyn Fn(&str) -> bool,
) -> Result<Parsed, NnError> {
    match node.op_type.as_str() {
        "Conv" => conv::parse(node, consts),
        "Gemm" | "MatMul" => linear::parse(node, consts),
        "Add" | "Mul" => elementwise::parse_binary(node, consts, is_data),
        "Relu" | "Clip" => elementwise::parse_clamp(node, consts),
        "BatchNormalization" => norm::parse(node, consts),
        "GlobalAveragePool" | "ReduceMean" => pool::parse(node, consts),
        "MaxPool" | "AveragePool" => pool::parse_window(node, consts),
        "Flatten" | "Reshape" => shape::parse(node, consts),
        "Pad" => shape::parse_pad(node, consts),
        "Concat" if node.input.iter().any(|i| is_data(i)) => {
            shape::parse_concat(node, consts, is_data)
        }
        "Shape" | "Gather" | "Slice" | "Cast" | "ConstantOfShape" | "Unsqueeze" | "Concat" => {
            Err(unsupported(
                node,
                "computes shapes at run time; the engine does not fold shape subgraphs yet \
                 (export the model with a fixed input shape and constant folding)",
            ))
        }
        _ => Err(unsupported(
            node,
            format!("is not an op the engine differentiates ({SUPPORTED})"),
        )),
    }
}

/// The single data input of a node whose other inputs are constants.
pub(crate) fn data_input(node: &pb::NodeProto, consts: &Constants) -> Result<usize, NnError> {
    match node.input.first() {
        Some(name) if !consts.contains(name) => Ok(0),
        _ => Err(unsupported(node, "whose data input is a constant")),
    }
}

/// A trainable initialiser input (`index`), or an error naming it.
pub(crate) fn weight_input(
    node: &pb::NodeProto,
    consts: &Constants,
    index: usize,
) -> Result<usize, NnError> {
    match node.input.get(index).filter(|s| !s.is_empty()) {
        Some(name) if consts.contains(name) => Ok(index),
        Some(name) => Err(unsupported(
            node,
            format!("whose parameter '{name}' is not an initialiser"),
        )),
        None => Err(unsupported(node, format!("without input {index}"))),
    }
}

/// A constant input's float values or an error naming the node.
pub(crate) fn const_f32(
    node: &pb::NodeProto,
    consts: &Constants,
    index: usize,
) -> Result<Option<ArrayD<f32>>, NnError> {
    match node.input.get(index).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(name) => match consts.f32(name) {
            Some(r) => r.map(Some).map_err(|e| unsupported(node, e)),
            None => Err(unsupported(
                node,
                format!("whose input '{name}' is not a constant"),
            )),
        },
    }
}

/// Channels of a batch-first shape (`[N, C, ...]`).
pub(crate) fn channels(shape: &[usize]) -> Result<usize, String> {
    shape
        .get(1)
        .copied()
        .ok_or_else(|| format!("input of rank {} has no channel axis", shape.len()))
}

/// `f` over every `[.., C, S]` lane: `x` viewed as `[N, C, S]` (`S` = the
/// product of the axes after the channels, 1 for `[N, C]`).
pub(crate) fn as_ncs(x: &Tensor) -> ndarray::ArrayView3<'_, f32> {
    let shape = x.shape();
    let (n, c) = (shape[0], shape[1]);
    let s: usize = shape[2..].iter().product();
    x.view()
        .into_shape_with_order((n, c, s))
        .expect("engine tensors are in standard layout")
}
