//! Static facts about an ONNX file, read from its protobuf without running it:
//! what `edgeclr info` prints, and what the backends check a manifest against.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use tract_onnx::pb::{self, tensor_shape_proto::dimension, type_proto};

use crate::onnx::{parse_proto, OnnxError};

/// Parses and summarises an ONNX file's bytes.
pub fn summarize(path: &Path, bytes: &[u8]) -> Result<OnnxSummary, OnnxError> {
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
