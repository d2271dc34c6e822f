#!/usr/bin/env python3
"""The peer of the engine rows of benches/adapt.rs: forward + backward of an
ONNX subgraph (cut tensor -> embedding) in PyTorch on CPU.

The subgraph is rebuilt node by node from the ONNX file with
torch.nn.functional (Conv with groups/strides/pads, Clip, Relu, Add, global
average pooling, Flatten), its initialisers as torch parameters: the same
math edgeclr's engine (runtime/src/adapt/nn) runs. One step: y = f(x) for a
batch of cut tensors, loss = sum(y * g) for a fixed g, backward into the
parameters (all, or only the biases with --params biases). Prints one JSON
line: views/s (batch / step time) and peak RSS.
"""
import argparse, json, resource, time

import numpy as np
import onnx
from onnx import numpy_helper
import torch
import torch.nn.functional as F


def scope_nodes(graph, cut, output):
    from_cut = {cut}
    for n in graph.node:
        if any(i in from_cut for i in n.input):
            from_cut.update(n.output)
    needed, keep = {output}, []
    for n in reversed(graph.node):
        if any(o in needed for o in n.output) and any(i in from_cut for i in n.input):
            keep.append(n)
            needed.update(n.input)
    return list(reversed(keep))


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--cut", required=True)
    ap.add_argument("--output", default="embedding")
    ap.add_argument("--shape", required=True, help="cut tensor sample shape, e.g. 160,4,4")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--params", choices=["all", "biases"], default="all")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    model = onnx.load(a.onnx)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = scope_nodes(model.graph, a.cut, a.output)
    params = {}

    def param(name, bias):
        if name not in params:
            p = torch.tensor(np.array(inits[name], dtype=np.float32))
            p.requires_grad_(a.params == "all" or bias)
            params[name] = p
        return params[name]

    def run(x):
        v = {a.cut: x}
        for n in nodes:
            op, at = n.op_type, attrs(n)
            if op == "Conv":
                w = param(n.input[1], False)
                b = param(n.input[2], True) if len(n.input) > 2 else None
                pads = at.get("pads", [0, 0, 0, 0])
                assert pads[0] == pads[2] and pads[1] == pads[3]
                y = F.conv2d(v[n.input[0]], w, b, stride=tuple(at.get("strides", [1, 1])),
                             padding=(pads[0], pads[1]), groups=at.get("group", 1))
            elif op == "Clip":
                lo = float(inits[n.input[1]]) if len(n.input) > 1 and n.input[1] else None
                hi = float(inits[n.input[2]]) if len(n.input) > 2 and n.input[2] else None
                y = v[n.input[0]].clamp(lo, hi)
            elif op == "Relu":
                y = F.relu(v[n.input[0]])
            elif op == "Add":
                y = v[n.input[0]] + v[n.input[1]]
            elif op == "GlobalAveragePool":
                y = v[n.input[0]].mean((2, 3), keepdim=True)
            elif op == "Flatten":
                y = v[n.input[0]].flatten(1)
            else:
                raise SystemExit(f"peer: op {op} not supported")
            v[n.output[0]] = y
        return v[a.output]

    shape = [int(s) for s in a.shape.split(",")]
    x = torch.randn(a.batch, *shape)
    g = None

    def step():
        nonlocal g
        y = run(x)
        if g is None:
            g = torch.randn_like(y)
        for p in params.values():
            p.grad = None
        (y * g).sum().backward()

    for _ in range(a.warmup):
        step()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    dt = time.perf_counter() - t
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    trained = sum(p.numel() for p in params.values() if p.requires_grad)
    print(json.dumps({"views_per_sec": a.batch * a.steps / dt, "peak_rss_mb": rss_mb,
                      "threads": a.threads, "nodes": len(nodes), "trained_params": trained,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
