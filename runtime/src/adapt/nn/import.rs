//! Reading the subgraph between a cut tensor and an output out of an ONNX
//! graph, once: which nodes, which of their inputs are values, constants or
//! trainable parameters, and every shape.

use std::collections::{HashMap, HashSet};

use ndarray::ArrayD;
use tract_onnx::pb;

use super::fold;
use super::graph::{Graph, Node, ParamSpec};
use super::ops::{self, Constants};
use super::NnError;

/// An imported subgraph and the initial values of its parameters (by id).
#[derive(Debug)]
pub struct Imported {
    pub graph: Graph,
    pub init: Vec<ArrayD<f32>>,
}

/// The subgraph of `graph` that computes `output` from `cut` (sample shape
/// `cut_shape`): every node on a path from `cut` to `output`. Its weights
/// become parameters; a tensor from below the cut that one of its nodes
/// reads (a skip connection over the cut) is an error, as is any op the
/// engine cannot differentiate.
pub fn import(
    graph: &pb::GraphProto,
    cut: &str,
    cut_shape: &[usize],
    output: &str,
) -> Result<Imported, NnError> {
    let mut constants: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    for node in &graph.node {
        if node.op_type == "Constant" {
            if let (Some(out), Some(t)) = (
                node.output.first(),
                node.attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.as_ref()),
            ) {
                constants.insert(out.as_str(), t);
            }
        }
    }
    // Values computed from the cut.
    let mut from_cut: HashSet<&str> = HashSet::from([cut]);
    for node in &graph.node {
        if node.input.iter().any(|i| from_cut.contains(i.as_str())) {
            from_cut.extend(node.output.iter().map(String::as_str));
        }
    }
    if !from_cut.contains(output) {
        return Err(NnError::Graph(format!(
            "'{output}' is not computed from '{cut}': the cut must lie below the embedding"
        )));
    }
    // Nodes the output needs.
    let mut needed: HashSet<&str> = HashSet::from([output]);
    let mut in_scope = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o.as_str()))
            && node.input.iter().any(|x| from_cut.contains(x.as_str()))
        {
            in_scope[i] = true;
            needed.extend(node.input.iter().map(String::as_str));
        }
    }
    let mut consts = Constants {
        initialisers: constants,
        folded: HashMap::new(),
    };
    // Shape computations that need nothing from the cut (over initialisers
    // and `Constant`s) fold before anything else.
    for node in &graph.node {
        if node.op_type == "Constant" || !fold::FOLDABLE.contains(&node.op_type.as_str()) {
            continue;
        }
        if let Ok(Some(t)) = fold::fold(node, &|n| consts.get(n), &|_| None) {
            consts.folded.insert(t.name.clone(), t);
        }
    }
    let mut value_of: HashMap<&str, usize> = HashMap::from([(cut, 0)]);
    let mut value_shapes: Vec<Vec<usize>> = vec![cut_shape.to_vec()];
    let mut param_of: HashMap<String, usize> = HashMap::new();
    let mut params: Vec<ParamSpec> = Vec::new();
    let mut init: Vec<ArrayD<f32>> = Vec::new();
    let mut nodes: Vec<Node> = Vec::new();
    let with_batch = |s: &[usize]| {
        let mut v = vec![1];
        v.extend(s);
        v
    };
    for (i, node) in graph.node.iter().enumerate() {
        if !in_scope[i] {
            continue;
        }
        for (k, name) in node.input.iter().enumerate() {
            if name.is_empty() || value_of.contains_key(name.as_str()) || consts.contains(name) {
                continue;
            }
            return Err(NnError::Graph(format!(
                "node '{}' ({}) reads '{name}' (input {k}), which is computed below the cut \
                 '{cut}': a skip connection crosses the cut; cut at a block boundary instead \
                 (`edgeclr layers` lists them)",
                node.name, node.op_type
            )));
        }
        if let Some(extra) = node
            .output
            .iter()
            .skip(1)
            .find(|o| !o.is_empty() && needed.contains(o.as_str()))
        {
            return Err(ops::unsupported(
                node,
                format!("whose second output '{extra}' is used (only single-output nodes)"),
            ));
        }
        if fold::FOLDABLE.contains(&node.op_type.as_str()) {
            let shape_of = |n: &str| value_of.get(n).map(|&v| with_batch(&value_shapes[v]));
            match fold::fold(node, &|n| consts.get(n), &shape_of) {
                Ok(Some(t)) => {
                    consts.folded.insert(t.name.clone(), t);
                    continue;
                }
                Ok(None) => {}
                Err(why) => {
                    return Err(ops::unsupported(
                        node,
                        format!("(a shape computation) {why}"),
                    ))
                }
            }
        }
        let is_data = |n: &str| value_of.contains_key(n);
        let parsed = ops::parse(node, &consts, &is_data)?;
        let inputs: Vec<usize> = parsed
            .data
            .iter()
            .map(|&k| {
                value_of
                    .get(node.input[k].as_str())
                    .copied()
                    .ok_or_else(|| {
                        ops::unsupported(node, format!("whose input {k} is not a value"))
                    })
            })
            .collect::<Result<_, _>>()?;
        let kinds = parsed.op.param_kinds();
        let mut pids = Vec::with_capacity(parsed.params.len());
        for (&k, kind) in parsed.params.iter().zip(kinds) {
            let name = node.input[k].clone();
            let id = match param_of.get(&name) {
                Some(&id) => id,
                None => {
                    let value = consts
                        .f32(&name)
                        .ok_or_else(|| {
                            ops::unsupported(
                                node,
                                format!("whose parameter '{name}' is not an initialiser"),
                            )
                        })?
                        .map_err(|e| ops::unsupported(node, e))?;
                    params.push(ParamSpec {
                        name: name.clone(),
                        shape: value.shape().to_vec(),
                        kind,
                    });
                    init.push(value);
                    param_of.insert(name, params.len() - 1);
                    params.len() - 1
                }
            };
            pids.push(id);
        }
        let in_shapes: Vec<Vec<usize>> = inputs
            .iter()
            .map(|&v| with_batch(&value_shapes[v]))
            .collect();
        let in_refs: Vec<&[usize]> = in_shapes.iter().map(Vec::as_slice).collect();
        let p_refs: Vec<&[usize]> = pids.iter().map(|&p| params[p].shape.as_slice()).collect();
        let shape = parsed
            .op
            .output_shape(&in_refs, &p_refs)
            .map_err(|why| ops::unsupported(node, why))?;
        let out = node
            .output
            .first()
            .ok_or_else(|| ops::unsupported(node, "without an output"))?;
        value_of.insert(out.as_str(), nodes.len() + 1);
        value_shapes.push(shape[1..].to_vec());
        nodes.push(Node {
            name: node.name.clone(),
            op: parsed.op,
            inputs,
            params: pids,
        });
    }
    if value_of.get(output) != Some(&nodes.len()) || nodes.is_empty() {
        return Err(NnError::Graph(format!(
            "the subgraph from '{cut}' does not end in '{output}'"
        )));
    }
    let output_shape = value_shapes.last().cloned().unwrap_or_default();
    Ok(Imported {
        graph: Graph {
            nodes,
            params,
            input_shape: cut_shape.to_vec(),
            output_shape,
            value_shapes,
        },
        init,
    })
}
