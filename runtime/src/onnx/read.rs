//! Reading an ONNX file: its bytes checked against the manifest's sha256,
//! parsed, and every stored tensor checked before any backend allocates it.

use std::path::Path;

use sha2::{Digest, Sha256};
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

use super::OnnxError;
use crate::manifest::Manifest;

/// Hex sha256 of a byte string, the form manifests store.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads `manifest`'s model file and checks it against the manifest's
/// sha256: the bytes every backend, the trunk cut and the export start from.
pub fn read_verified(manifest: &Manifest) -> Result<Vec<u8>, OnnxError> {
    let path = &manifest.onnx;
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
        path: path.clone(),
        source,
    })?;
    let actual = sha256_hex(&bytes);
    if !actual.eq_ignore_ascii_case(&manifest.sha256) {
        return Err(OnnxError::Checksum {
            path: path.clone(),
            expected: manifest.sha256.clone(),
            actual,
        });
    }
    Ok(bytes)
}

/// [`read_verified`] then [`parse_proto`]: `manifest`'s graph, checked.
pub fn load_verified(manifest: &Manifest) -> Result<pb::ModelProto, OnnxError> {
    let bytes = read_verified(manifest)?;
    parse_proto(&manifest.onnx, &bytes)
}

/// Parses ONNX bytes into the protobuf model; `path` is only used in errors.
pub fn parse_proto(path: &Path, bytes: &[u8]) -> Result<pb::ModelProto, OnnxError> {
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| OnnxError::NotOnnx {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })?;
    if proto.graph.as_ref().is_none_or(|g| g.node.is_empty()) {
        return Err(OnnxError::NotOnnx {
            path: path.to_path_buf(),
            message: "it holds no graph".into(),
        });
    }
    if let Some(graph) = &proto.graph {
        check_graph_tensors(graph).map_err(|message| OnnxError::NotOnnx {
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
