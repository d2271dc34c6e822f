//! Where one block of a CNN ends and the next begins, read from the ONNX
//! graph's structure alone: the candidate embeddings of the layer scan
//! (`edgeclr layers`).
//!
//! Why structure and not names: exporters name tensors as they like
//! (`features.13`, `/blocks/blocks.4/Add_output_0`, `Identity:0`), while the
//! shape of the graph says the same thing in every one of them. A tensor is a
//! **cut** when every path from the image input to the embedding passes
//! through it: in the graph's topological order, right after its producer it
//! is the only value still waiting for a consumer. Inside a plain chain every
//! tensor is a cut, so a block's end is the cut that a block's own structure
//! marks:
//!
//! - it fans out to two or more nodes (the input of a residual block, i.e.
//!   the output of the block before);
//! - its producer is a residual `Add` (or `Sum`), or an activation applied to
//!   one (ResNet's `Add → Relu`);
//! - it goes from one convolution straight into the next with no activation
//!   in between (the linear bottleneck that ends a MobileNet or EfficientNet
//!   block; a `BatchNormalization` after the first conv counts as part of it);
//! - it feeds a global pooling (the last feature map).

use std::collections::{HashMap, HashSet};

use tract_onnx::pb;

/// Ops that only rescale or shift a conv's output per channel: a conv
/// followed by one of these is still "linear" for the bottleneck rule.
const LINEAR_AFTER_CONV: &[&str] = &["BatchNormalization", "Add", "Mul"];
/// Elementwise activations (an activation of an `Add` ends a residual block).
const ACTIVATIONS: &[&str] = &[
    "Relu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Tanh",
];
/// Ops that pool a feature map over its whole grid.
const GLOBAL_POOLS: &[&str] = &["GlobalAveragePool", "GlobalMaxPool", "ReduceMean"];

/// The block outputs of `graph` on the way to `target` (a tensor computed
/// from the image input), in graph order; `target` itself is not included.
/// Empty when `target` is not in the graph.
pub fn block_outputs(graph: &pb::GraphProto, target: &str) -> Vec<String> {
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    // Tensors computed from the image (not constants or weights).
    let mut data: HashSet<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !initializers.contains(n))
        .collect();
    for node in &graph.node {
        if node.input.iter().any(|i| data.contains(i.as_str())) {
            data.extend(node.output.iter().map(String::as_str));
        }
    }
    if !data.contains(target) {
        return Vec::new();
    }
    // The nodes `target` depends on, backwards from it.
    let mut needed: HashSet<&str> = HashSet::from([target]);
    let mut on_path = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o.as_str())) {
            on_path[i] = true;
            needed.extend(
                node.input
                    .iter()
                    .map(String::as_str)
                    .filter(|i| data.contains(i)),
            );
        }
    }
    let nodes: Vec<&pb::NodeProto> = graph
        .node
        .iter()
        .zip(&on_path)
        .filter_map(|(n, &keep)| keep.then_some(n))
        .collect();
    let mut producer: HashMap<&str, &pb::NodeProto> = HashMap::new();
    let mut consumers: HashMap<&str, Vec<&pb::NodeProto>> = HashMap::new();
    let mut last_use: HashMap<&str, usize> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for o in &node.output {
            producer.insert(o, node);
        }
        for input in node.input.iter().filter(|t| data.contains(t.as_str())) {
            consumers.entry(input).or_default().push(node);
            last_use.insert(input, i);
        }
    }
    let mut live: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        live.retain(|t| last_use.get(t).is_some_and(|&u| u > i));
        live.extend(
            node.output
                .iter()
                .map(String::as_str)
                .filter(|o| last_use.get(o).is_some_and(|&u| u > i)),
        );
        if live.len() != 1 {
            continue;
        }
        let Some(&tensor) = live.iter().next() else {
            continue;
        };
        if tensor == target || !node.output.iter().any(|o| o == tensor) {
            continue;
        }
        let uses = consumers.get(tensor).map_or(&[][..], Vec::as_slice);
        let op = node.op_type.as_str();
        let input_op = |n: &pb::NodeProto| {
            n.input
                .iter()
                .find_map(|t| producer.get(t.as_str()))
                .map(|p| p.op_type.as_str())
        };
        let fans_out = uses.len() >= 2;
        let residual = matches!(op, "Add" | "Sum") && data_inputs(node, &data) >= 2
            || ACTIVATIONS.contains(&op)
                && input_op(node).is_some_and(|p| p == "Add" || p == "Sum");
        let conv_like = op == "Conv"
            || LINEAR_AFTER_CONV.contains(&op)
                && data_inputs(node, &data) == 1
                && input_op(node) == Some("Conv");
        let linear_bottleneck = conv_like && uses.iter().all(|u| u.op_type == "Conv");
        let pooled = uses
            .iter()
            .any(|u| GLOBAL_POOLS.contains(&u.op_type.as_str()));
        if fans_out || residual || linear_bottleneck || pooled {
            out.push(tensor.to_owned());
        }
    }
    out
}

/// How many of `node`'s inputs are computed from the image.
fn data_inputs(node: &pb::NodeProto, data: &HashSet<&str>) -> usize {
    node.input
        .iter()
        .filter(|i| data.contains(i.as_str()))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn graph(nodes: Vec<pb::NodeProto>) -> pb::GraphProto {
        pb::GraphProto {
            input: vec![pb::ValueInfoProto {
                name: "x".into(),
                ..Default::default()
            }],
            initializer: ["w1", "w2", "w3", "w4", "w5"]
                .iter()
                .map(|n| pb::TensorProto {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
            node: nodes,
            ..Default::default()
        }
    }

    #[test]
    fn finds_residual_and_linear_bottleneck_ends() {
        // stem → [non-residual block: expand, act, project] → [residual block
        // over its output] → pooled head.
        let g = graph(vec![
            node("Conv", &["x", "w1"], "stem"),
            node("Relu", &["stem"], "stem_act"),
            node("Conv", &["stem_act", "w2"], "b1_project"),
            node("Conv", &["b1_project", "w3"], "b2_expand"),
            node("Relu", &["b2_expand"], "b2_act"),
            node("Conv", &["b2_act", "w4"], "b2_project"),
            node("Add", &["b1_project", "b2_project"], "b2_out"),
            node("Conv", &["b2_out", "w5"], "last"),
            node("Relu", &["last"], "last_act"),
            node("GlobalAveragePool", &["last_act"], "pool"),
            node("Flatten", &["pool"], "embedding"),
        ]);
        assert_eq!(
            block_outputs(&g, "embedding"),
            ["b1_project", "b2_out", "last_act"]
        );
        // Only what lies before the target counts.
        assert_eq!(block_outputs(&g, "b2_out"), ["b1_project"]);
        assert!(block_outputs(&g, "no_such_tensor").is_empty());
    }
}
