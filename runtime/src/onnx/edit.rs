//! Rewriting an ONNX graph: exposing an inner tensor as an output, cutting
//! the graph at a tensor (the frozen trunk), and replacing initialisers
//! (trained weights written back). Every name is checked against the graph;
//! a mistyped one is an error that suggests the nearest names.

use std::collections::HashSet;

use ndarray::ArrayD;
use tract_onnx::pb::{self, type_proto};

use super::OnnxError;

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

/// Fails unless a node of `graph` computes `name` (or it is a graph
/// output); the error lists the nearest tensor names.
pub fn require_tensor(graph: &pb::GraphProto, name: &str) -> Result<(), OnnxError> {
    let computed = graph
        .node
        .iter()
        .any(|n| n.output.iter().any(|o| o == name))
        || graph.output.iter().any(|o| o.name == name);
    if computed {
        Ok(())
    } else {
        Err(OnnxError::NoSuchTensor {
            name: name.to_owned(),
            nearest: nearest_tensor_names(graph, name),
        })
    }
}

/// The graph of `proto`, or an error saying it has none.
pub fn graph_mut(proto: &mut pb::ModelProto) -> Result<&mut pb::GraphProto, OnnxError> {
    proto.graph.as_mut().ok_or(OnnxError::NoGraph)
}

/// Makes `name` (a tensor inside the graph: a classifier's penultimate
/// layer, an earlier block) the first graph output, keeping the others:
/// ONNX Runtime only returns graph outputs, and tract's output selection
/// reads them too. Returns whether `proto` changed.
pub fn expose_output(proto: &mut pb::ModelProto, name: &str) -> Result<bool, OnnxError> {
    let graph = graph_mut(proto)?;
    if graph.output.iter().any(|o| o.name == name) {
        return Ok(false);
    }
    require_tensor(graph, name)?;
    graph.output.insert(0, float_output(name));
    Ok(true)
}

/// Makes `name` the graph's only output, nodes unchanged (a probe for its
/// shape; see [`cut_at`] to also drop what no longer feeds it).
pub fn only_output(proto: &mut pb::ModelProto, name: &str) -> Result<(), OnnxError> {
    let graph = graph_mut(proto)?;
    require_tensor(graph, name)?;
    graph.output = vec![float_output(name)];
    Ok(())
}

/// `proto` cut at tensor `cut`: only the nodes, initialisers and value
/// infos `cut` depends on, with `cut` as the only output. How the frozen
/// trunk below a trained scope is made.
pub fn cut_at(proto: &pb::ModelProto, cut: &str) -> Result<pb::ModelProto, OnnxError> {
    let mut out = proto.clone();
    let graph = graph_mut(&mut out)?;
    require_tensor(graph, cut)?;
    let mut needed: HashSet<String> = HashSet::from([cut.to_owned()]);
    let mut keep = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(node.input.iter().filter(|s| !s.is_empty()).cloned());
        }
    }
    let mut k = keep.iter();
    graph.node.retain(|_| *k.next().unwrap_or(&false));
    graph.initializer.retain(|t| needed.contains(&t.name));
    graph.value_info.retain(|v| needed.contains(&v.name));
    graph.output = vec![float_output(cut)];
    Ok(out)
}

/// An f32 initialiser holding `array` (logical row-major order, little
/// endian, as ONNX `raw_data` requires).
pub fn f32_initializer(name: &str, array: &ArrayD<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_owned(),
        dims: array.shape().iter().map(|&d| d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: array.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// Replaces the f32 initialiser `name` with `value`, which must have its
/// shape and be finite (trained weights written back into the graph).
pub fn replace_initializer(
    graph: &mut pb::GraphProto,
    name: &str,
    value: &ArrayD<f32>,
) -> Result<(), OnnxError> {
    let init = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == name)
        .ok_or_else(|| OnnxError::NoSuchInitializer(name.to_owned()))?;
    let dims: Vec<i64> = value.shape().iter().map(|&d| d as i64).collect();
    if init.dims != dims || init.data_type != pb::tensor_proto::DataType::Float as i32 {
        return Err(OnnxError::InitializerShape {
            name: name.to_owned(),
            got: value.shape().to_vec(),
            expected: init.dims.iter().map(|&d| d.max(0) as usize).collect(),
        });
    }
    if value.iter().any(|v| !v.is_finite()) {
        return Err(OnnxError::NonFinite(name.to_owned()));
    }
    *init = f32_initializer(name, value);
    Ok(())
}

/// One node with a single output.
pub fn node(
    name: &str,
    op_type: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        name: name.to_owned(),
        op_type: op_type.to_owned(),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![output.to_owned()],
        attribute,
        ..Default::default()
    }
}

/// `output = input · weightᵀ + bias` (`Gemm`, `transB = 1`: the weight is
/// `[out, in]`, as PyTorch stores a linear layer's).
pub fn gemm(name: &str, input: &str, weight: &str, bias: &str, output: &str) -> pb::NodeProto {
    node(
        name,
        "Gemm",
        &[input, weight, bias],
        output,
        vec![
            attr_float("alpha", 1.0),
            attr_float("beta", 1.0),
            attr_int("transA", 0),
            attr_int("transB", 1),
        ],
    )
}

/// A float attribute.
pub fn attr_float(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_owned(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

/// An int attribute.
pub fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_owned(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

/// An ints attribute.
pub fn attr_ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_owned(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}
