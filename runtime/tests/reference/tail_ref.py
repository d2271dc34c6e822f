#!/usr/bin/env python3
"""Independent numpy reference for edgeclr's trainable tail layers
(runtime/src/adapt/tail.rs), tested by runtime/tests/adapt_tail.rs.

Writes runtime/tests/data/tail/:
  tail_tiny.onnx   a tiny graph: input -> Relu (the "trunk") -> Conv 1x1 (+bias)
                   -> Clip(0, 6) -> GlobalAveragePool -> Flatten -> MatMul
                   -> Add (bias) -> Relu -> "embedding"
  tail_ref.json    input x (NCHW, flattened per sample), the trunk output,
                   upstream gradient G, the tail output y and the gradients of
                   L = sum(y * G) w.r.t. every trained initialiser, in float64.

Run from the repository root: python3 runtime/tests/reference/tail_ref.py
"""
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "data", "tail")
B, C, H, W, O, E = 3, 4, 3, 3, 5, 6

rng = np.random.default_rng(20261128)
x = rng.normal(0.0, 2.0, size=(B, C, H, W)).astype(np.float32)
w1 = rng.normal(0.0, 1.5, size=(O, C, 1, 1)).astype(np.float32)
b1 = rng.normal(0.0, 1.0, size=(O,)).astype(np.float32)
w2 = rng.normal(0.0, 0.5, size=(O, E)).astype(np.float32)
b2 = rng.normal(0.0, 0.5, size=(E,)).astype(np.float32)
g = rng.normal(0.0, 1.0, size=(B, E)).astype(np.float32)

# ---- the ONNX graph
inits = [
    numpy_helper.from_array(w1, "conv.weight"),
    numpy_helper.from_array(b1, "conv.bias"),
    numpy_helper.from_array(np.array(0.0, np.float32), "clip.min"),
    numpy_helper.from_array(np.array(6.0, np.float32), "clip.max"),
    numpy_helper.from_array(w2, "fc.weight"),
    numpy_helper.from_array(b2, "fc.bias"),
]
nodes = [
    helper.make_node("Relu", ["input"], ["trunk"], name="trunk_relu"),
    helper.make_node("Conv", ["trunk", "conv.weight", "conv.bias"], ["conv_out"], name="conv",
                     kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0], group=1),
    helper.make_node("Clip", ["conv_out", "clip.min", "clip.max"], ["clip_out"], name="clip"),
    helper.make_node("GlobalAveragePool", ["clip_out"], ["pool_out"], name="pool"),
    helper.make_node("Flatten", ["pool_out"], ["flat"], name="flatten", axis=1),
    helper.make_node("MatMul", ["flat", "fc.weight"], ["mm_out"], name="fc"),
    helper.make_node("Add", ["mm_out", "fc.bias"], ["add_out"], name="fc_bias"),
    helper.make_node("Relu", ["add_out"], ["embedding"], name="out_relu"),
]
graph = helper.make_graph(
    nodes, "edgeclr_tail_tiny",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", C, H, W])],
    [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", E])],
    initializer=inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                          producer_name="edgeclr tail_ref.py")
onnx.checker.check_model(model)

# ---- forward and backward in float64
X = np.maximum(x.astype(np.float64), 0.0)               # the trunk (Relu)
W1 = w1.astype(np.float64)[:, :, 0, 0]
conv = np.einsum("oc,bchw->bohw", W1, X) + b1.astype(np.float64)[None, :, None, None]
clip = np.clip(conv, 0.0, 6.0)
pool = clip.mean(axis=(2, 3))                             # [B, O]
mm = pool @ w2.astype(np.float64)                         # [B, E]
add = mm + b2.astype(np.float64)
y = np.maximum(add, 0.0)
G = g.astype(np.float64)
loss = float((y * G).sum())

d_add = G * (add > 0)
d_b2 = d_add.sum(axis=0)
d_w2 = pool.T @ d_add                                     # [O, E]
d_pool = d_add @ w2.astype(np.float64).T                  # [B, O]
d_clip = np.broadcast_to(d_pool[:, :, None, None] / (H * W), clip.shape)
d_conv = d_clip * ((conv > 0.0) & (conv < 6.0))
d_b1 = d_conv.sum(axis=(0, 2, 3))
d_w1 = np.einsum("bohw,bchw->oc", d_conv, X)[:, :, None, None]

clipped = int(((conv <= 0) | (conv >= 6)).sum())
assert 0 < clipped < conv.size, "the reference must exercise both clip bounds and the linear part"
assert (conv >= 6).any() and (conv <= 0).any()

os.makedirs(OUT, exist_ok=True)
onnx.save(model, os.path.join(OUT, "tail_tiny.onnx"))
ref = {
    "shape": [B, C, H, W],
    "x": x.reshape(B, -1).tolist(),
    "trunk": X.reshape(B, -1).tolist(),
    "upstream": G.tolist(),
    "y": y.tolist(),
    "loss": loss,
    "grads": {
        "tail.conv.weight": d_w1.reshape(-1).tolist(),
        "tail.conv.bias": d_b1.tolist(),
        "tail.fc.weight": d_w2.reshape(-1).tolist(),
        "tail.fc.bias": d_b2.tolist(),
    },
}
with open(os.path.join(OUT, "tail_ref.json"), "w") as f:
    json.dump(ref, f)
print(f"wrote {OUT}: loss {loss:.6f}, {clipped} of {conv.size} conv outputs clipped")
