//! Static facts about an ONNX file, read from its protobuf without running it:
//! what `edgeclr info` prints, and what the backends check a manifest against.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

use tract_onnx::pb::{self, tensor_shape_proto::dimension, type_proto};
use tract_onnx::prelude::Framework;

use crate::backend::ModelError;

/// Hex sha256 of a byte string, the form manifests store.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A graph output declaration for an f32 tensor of unknown shape: how a
/// tensor inside a graph is made an output (the trunk cut, an intermediate
/// embedding); the runtimes infer its shape.
pub fn float_output(name: &str) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: None,
            })),
        }),
        ..Default::default()
    }
}

/// The five tensor names of `graph` nearest to `name` (edit distance),
/// comma-separated: what an error about a mistyped tensor name suggests.
pub fn nearest_tensor_names(graph: &pb::GraphProto, name: &str) -> String {
    let mut names: Vec<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(graph.output.iter().map(|o| o.name.as_str()))
        .collect();
    names.sort_by_key(|n| strsim::levenshtein(n, name));
    names.dedup();
    names.truncate(5);
    names.join(", ")
}

/// Parses ONNX bytes into the protobuf model; `path` is only used in errors.
pub fn parse_proto(path: &Path, bytes: &[u8]) -> Result<pb::ModelProto, ModelError> {
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| ModelError::NotOnnx {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })?;
    if proto.graph.as_ref().is_none_or(|g| g.node.is_empty()) {
        return Err(ModelError::NotOnnx {
            path: path.to_path_buf(),
            message: "it holds no graph".into(),
        });
    }
    if let Some(graph) = &proto.graph {
        check_graph_tensors(graph).map_err(|message| ModelError::NotOnnx {
            path: path.to_path_buf(),
            message,
        })?;
    }
    Ok(proto)
}

/// Bytes per element of the ONNX element types the backends can hold, `None`
/// for the others (complex, bfloat16, 8- and 4-bit floats) and for strings.
fn element_size(data_type: i32) -> Option<u64> {
    use pb::tensor_proto::DataType as T;
    match T::try_from(data_type).ok()? {
        T::Uint8 | T::Int8 | T::Bool => Some(1),
        T::Uint16 | T::Int16 | T::Float16 => Some(2),
        T::Float | T::Int32 | T::Uint32 => Some(4),
        T::Int64 | T::Uint64 | T::Double => Some(8),
        _ => None,
    }
}

/// Checks every tensor stored in the graph (initialisers and constant
/// attributes, subgraphs included) before a backend turns it into memory: its
/// declared shape must describe exactly the data the file holds. A hostile
/// file can *declare* a 2 GB initialiser in a few bytes; the backends would
/// then fail late, or (for external data) go and read other files. edgeclr
/// models are single files, so external data is refused outright.
fn check_graph_tensors(graph: &pb::GraphProto) -> Result<(), String> {
    check_outputs_defined(graph)?;
    for tensor in &graph.initializer {
        check_tensor(tensor)?;
    }
    for node in &graph.node {
        for attr in &node.attribute {
            for tensor in attr.t.iter().chain(&attr.tensors) {
                check_tensor(tensor)?;
            }
            for sub in attr.g.iter().chain(&attr.graphs) {
                check_graph_tensors(sub)?;
            }
        }
    }
    Ok(())
}

/// Every graph output must name a value the graph defines (an input, an
/// initialiser, or a value a node reads or writes): tract indexes its name
/// table with the output names and panics on a missing one (found by the
/// `onnx_load` fuzz target).
fn check_outputs_defined(graph: &pb::GraphProto) -> Result<(), String> {
    let defined: std::collections::HashSet<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .chain(graph.initializer.iter().map(|t| t.name.as_str()))
        .chain(
            graph
                .node
                .iter()
                .flat_map(|n| n.input.iter().chain(&n.output))
                .map(String::as_str),
        )
        .collect();
    match graph
        .output
        .iter()
        .find(|o| !defined.contains(o.name.as_str()))
    {
        Some(o) => Err(format!(
            "graph output '{}' is not produced by any node, input or initialiser",
            o.name
        )),
        None => Ok(()),
    }
}

fn check_tensor(t: &pb::TensorProto) -> Result<(), String> {
    let name = &t.name;
    if !t.external_data.is_empty()
        || t.data_location == Some(pb::tensor_proto::DataLocation::External as i32)
    {
        return Err(format!(
            "tensor '{name}' keeps its data in an external file, which edgeclr does not load (re-export the model as one file)"
        ));
    }
    if let Some(d) = t.dims.iter().find(|&&d| d < 0) {
        return Err(format!("tensor '{name}' has a negative dimension {d}"));
    }
    let declared = t
        .dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| format!("tensor '{name}' has shape {:?}, which overflows", t.dims))?;
    let is_string = t.data_type == pb::tensor_proto::DataType::String as i32;
    let stored = if is_string && t.raw_data.is_empty() {
        t.string_data.len() as u64
    } else {
        let size = element_size(t.data_type).ok_or_else(|| {
            format!(
                "tensor '{name}' has element type {}, which edgeclr's backends cannot load",
                pb::tensor_proto::DataType::try_from(t.data_type)
                    .map_or_else(|_| t.data_type.to_string(), |d| format!("{d:?}"))
            )
        })?;
        if t.raw_data.is_empty() {
            [
                t.float_data.len(),
                t.int32_data.len(),
                t.int64_data.len(),
                t.double_data.len(),
                t.uint64_data.len(),
            ]
            .iter()
            .sum::<usize>() as u64
        } else if !(t.raw_data.len() as u64).is_multiple_of(size) {
            return Err(format!(
                "tensor '{name}' holds {} bytes, not a whole number of {size}-byte elements",
                t.raw_data.len()
            ));
        } else {
            t.raw_data.len() as u64 / size
        }
    };
    if stored != declared {
        return Err(format!(
            "tensor '{name}' declares shape {:?} ({declared} elements) but the file holds {stored}",
            t.dims
        ));
    }
    Ok(())
}

/// Parses and summarises an ONNX file's bytes.
pub fn summarize(path: &Path, bytes: &[u8]) -> Result<OnnxSummary, ModelError> {
    Ok(OnnxSummary::from_proto(&parse_proto(path, bytes)?))
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    /// A named dynamic dimension, e.g. the batch `N`.
    Symbol(String),
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(v) => write!(f, "{v}"),
            Dim::Symbol(s) => write!(f, "{s}"),
            Dim::Unknown => write!(f, "?"),
        }
    }
}

/// A graph input or output.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ONNX element type name (`float`, `int64`, ...).
    pub dtype: String,
    /// `None` when the graph does not declare a shape.
    pub dims: Option<Vec<Dim>>,
}

/// Summary of an ONNX model.
#[derive(Debug, Clone)]
pub struct OnnxSummary {
    pub producer: String,
    pub opsets: Vec<(String, i64)>,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    /// Operator type → number of nodes.
    pub op_counts: BTreeMap<String, usize>,
    pub nodes: usize,
    /// Number of scalar parameters held in initialisers.
    pub parameters: u64,
}

impl OnnxSummary {
    pub fn from_proto(model: &pb::ModelProto) -> Self {
        let graph = model.graph.clone().unwrap_or_default();
        let initialisers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let mut op_counts = BTreeMap::new();
        for node in &graph.node {
            *op_counts.entry(node.op_type.clone()).or_insert(0) += 1;
        }
        let parameters = graph
            .initializer
            .iter()
            .map(|t| {
                t.dims
                    .iter()
                    .fold(1u64, |acc, &d| acc.saturating_mul(d.max(0) as u64))
            })
            .fold(0u64, u64::saturating_add);
        Self {
            producer: format!("{} {}", model.producer_name, model.producer_version)
                .trim()
                .to_owned(),
            opsets: model
                .opset_import
                .iter()
                .map(|o| {
                    (
                        if o.domain.is_empty() {
                            "ai.onnx".into()
                        } else {
                            o.domain.clone()
                        },
                        o.version,
                    )
                })
                .collect(),
            inputs: graph
                .input
                .iter()
                .filter(|i| !initialisers.contains(i.name.as_str()))
                .map(tensor_info)
                .collect(),
            outputs: graph.output.iter().map(tensor_info).collect(),
            op_counts,
            nodes: graph.node.len(),
            parameters,
        }
    }

    pub fn input(&self, name: &str) -> Option<&TensorInfo> {
        self.inputs.iter().find(|t| t.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&TensorInfo> {
        self.outputs.iter().find(|t| t.name == name)
    }
}

fn tensor_info(value: &pb::ValueInfoProto) -> TensorInfo {
    let tensor = match value.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => Some(t),
        _ => None,
    };
    let dtype = tensor
        .and_then(|t| pb::tensor_proto::DataType::try_from(t.elem_type).ok())
        .map(|d| format!("{d:?}").to_lowercase())
        .unwrap_or_else(|| "?".into());
    let dims = tensor.and_then(|t| t.shape.as_ref()).map(|shape| {
        shape
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(dimension::Value::DimValue(v)) => Dim::Fixed(*v),
                Some(dimension::Value::DimParam(s)) if !s.is_empty() => Dim::Symbol(s.clone()),
                _ => Dim::Unknown,
            })
            .collect()
    });
    TensorInfo {
        name: value.name.clone(),
        dtype,
        dims,
    }
}

impl fmt::Display for TensorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.dims {
            Some(d) => {
                let dims: Vec<String> = d.iter().map(Dim::to_string).collect();
                write!(f, "{} {} [{}]", self.name, self.dtype, dims.join(", "))
            }
            None => write!(f, "{} {} [shape not declared]", self.name, self.dtype),
        }
    }
}

impl fmt::Display for OnnxSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "producer:    {}", self.producer)?;
        let opsets: Vec<String> = self
            .opsets
            .iter()
            .map(|(d, v)| format!("{d} {v}"))
            .collect();
        writeln!(f, "opsets:      {}", opsets.join(", "))?;
        for i in &self.inputs {
            writeln!(f, "input:       {i}")?;
        }
        for o in &self.outputs {
            writeln!(f, "output:      {o}")?;
        }
        writeln!(
            f,
            "parameters:  {} ({:.1} MB as f32)",
            self.parameters,
            self.parameters as f64 * 4.0 / 1e6
        )?;
        let ops: Vec<String> = self
            .op_counts
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect();
        write!(f, "nodes:       {} ({})", self.nodes, ops.join(", "))
    }
}
