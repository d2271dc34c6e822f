#!/usr/bin/env python3
"""PyTorch-autograd reference for edgeclr's differentiable engine
(runtime/src/adapt/nn/, runtime/src/adapt/tail.rs), tested by
runtime/tests/nn_torch.rs.

The MobileNetV2 subgraph from the cut tensor 'features.14' to 'embedding'
(blocks features.15, 16, 17, the 1x1 conv features.18 + ReLU6,
GlobalAveragePool, Flatten; BatchNorm is folded, so every conv has a bias) is
rebuilt in torch from the ONNX node list, initialisers and attributes only
(torch.nn.functional.conv2d with groups/stride/padding/dilation, clamp,
residual adds, adaptive_avg_pool2d, flatten): nothing is shared with the
Rust engine. For a cut tensor x [3, 160, 4, 4] (112-px images) and a fixed
upstream gradient g [3, 1280], loss = sum(f(x) * g) is differentiated by
autograd, in float64 (the references are saved as float32).

Writes runtime/tests/data/nn_torch/:
  x.npy  [3,160,4,4]   np.random.default_rng(0).standard_normal * 0.5
  g.npy  [3,1280]      np.random.default_rng(1).standard_normal
  y.npy  [3,1280]      the embedding f(x)
  grad__<init>.npy     d loss / d <init>, for initialisers of <= 20000 elements
  gradsum0__<init>.npy that gradient summed over axis 0 (larger initialisers)
  gradhead4__<init>.npy its first 4 output channels, grad[:4] (larger ones)
  index.json           file -> initialiser name, kind, shape; the checks below

<init> is the initialiser name with every character outside [A-Za-z0-9._-]
replaced by '_'.

Checks (the script exits 1 if one fails):
  * y against onnxruntime on the submodel extracted with
    onnx.utils.extract_model('features.14' -> 'embedding');
  * the same torch interpreter run on the whole graph ('input' ->
    'embedding') for two 112-px images against onnxruntime on the full model;
  * the float32 torch gradients against the float64 ones (how much float32
    noise to expect).

Needs torch, numpy, onnx, onnxruntime (CPU). Run from the repository root:
  python runtime/tests/reference/nn_torch_ref.py [--model PATH] [--out DIR]
"""
import argparse
import json
import os
import re
import sys
import tempfile

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

CUT = "features.14"
OUTPUT = "embedding"
CUT_SHAPE = (3, 160, 4, 4)
FULL_LIMIT = 20_000
HEAD = 4

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))


def sanitize(name):
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def subgraph_nodes(graph, cut, output):
    """Nodes on a path from `cut` to `output`, in graph order."""
    from_cut = {cut}
    for n in graph.node:
        if any(i in from_cut for i in n.input):
            from_cut.update(n.output)
    if output not in from_cut:
        raise SystemExit(f"'{output}' is not computed from '{cut}'")
    needed = {output}
    keep = [False] * len(graph.node)
    for k in range(len(graph.node) - 1, -1, -1):
        n = graph.node[k]
        if any(o in needed for o in n.output) and any(i in from_cut for i in n.input):
            keep[k] = True
            needed.update(n.input)
    return [n for n, k in zip(graph.node, keep) if k]


def all_nodes_to(graph, output):
    """Every node `output` depends on, in graph order."""
    needed = {output}
    keep = [False] * len(graph.node)
    for k in range(len(graph.node) - 1, -1, -1):
        n = graph.node[k]
        if any(o in needed for o in n.output):
            keep[k] = True
            needed.update(n.input)
    return [n for n, k in zip(graph.node, keep) if k]


class Interp:
    """Runs ONNX nodes in torch. Constants: initialisers and Constant nodes."""

    def __init__(self, graph, dtype):
        self.dtype = dtype
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant":
                self.consts[n.output[0]] = numpy_helper.to_array(attrs(n)["value"])
        self.params = {}  # trainable initialisers (conv weights and biases)
        self.clip_stats = None  # (share <= min, share >= max, closest |v - bound|) per Clip

    def param(self, name):
        if name not in self.params:
            a = self.consts[name]
            assert a.dtype == np.float32, (name, a.dtype)
            self.params[name] = torch.tensor(a, dtype=self.dtype, requires_grad=True)
        return self.params[name]

    def scalar(self, name):
        if name == "":
            return None
        return float(np.asarray(self.consts[name]).reshape(()))

    def run(self, nodes, inputs, output):
        vals = dict(inputs)
        for n in nodes:
            a = attrs(n)
            op = n.op_type
            if op == "Conv":
                x = vals[n.input[0]]
                w = self.param(n.input[1])
                b = self.param(n.input[2]) if len(n.input) > 2 and n.input[2] else None
                kh, kw = w.shape[2], w.shape[3]
                assert list(a.get("kernel_shape", [kh, kw])) == [kh, kw], n.name
                assert a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"), n.name
                pads = list(a.get("pads", [0, 0, 0, 0]))
                # ONNX pads are [top, left, bottom, right]; conv2d takes symmetric ones.
                if pads[0] != pads[2] or pads[1] != pads[3]:
                    x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
                    pads = [0, 0, 0, 0]
                y = F.conv2d(
                    x, w, b,
                    stride=tuple(a.get("strides", [1, 1])),
                    padding=(pads[0], pads[1]),
                    dilation=tuple(a.get("dilations", [1, 1])),
                    groups=int(a.get("group", 1)),
                )
            elif op == "Clip":
                lo = self.scalar(n.input[1]) if len(n.input) > 1 else a.get("min")
                hi = self.scalar(n.input[2]) if len(n.input) > 2 else a.get("max")
                v = vals[n.input[0]]
                y = torch.clamp(v, min=lo, max=hi)
                if self.clip_stats is not None:
                    d = v.detach()
                    self.clip_stats.append((
                        float((d <= lo).double().mean()), float((d >= hi).double().mean()),
                        float(torch.minimum((d - lo).abs(), (d - hi).abs()).min()),
                    ))
            elif op == "Relu":
                y = torch.relu(vals[n.input[0]])
            elif op == "Add":
                y = vals[n.input[0]] + vals[n.input[1]]
            elif op == "GlobalAveragePool":
                y = F.adaptive_avg_pool2d(vals[n.input[0]], 1)
            elif op == "Flatten":
                y = torch.flatten(vals[n.input[0]], start_dim=int(a.get("axis", 1)))
            else:
                raise SystemExit(f"node '{n.name}': op {op} not rebuilt in torch")
            vals[n.output[0]] = y
        return vals[output]


def free_hw(m):
    """The model's bytes with the spatial dims of its inputs left free (the
    export fixes them at 224 px) and the stored intermediate shapes dropped."""
    del m.graph.value_info[:]
    for vi in m.graph.input:
        dims = vi.type.tensor_type.shape.dim
        for k, name in ((2, "height"), (3, "width")):
            dims[k].Clear()
            dims[k].dim_param = name
    return m.SerializeToString()


def ort_run(model_path_or_bytes, feeds, output):
    import onnxruntime as ort

    sess = ort.InferenceSession(model_path_or_bytes, providers=["CPUExecutionProvider"])
    return sess.run([output], feeds)[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models/mobilenet_v2/mobilenet_v2.onnx"))
    ap.add_argument("--out", default=os.path.join(ROOT, "runtime/tests/data/nn_torch"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # deterministic reductions
    os.makedirs(args.out, exist_ok=True)

    model = onnx.load(args.model)
    graph = model.graph
    nodes = subgraph_nodes(graph, CUT, OUTPUT)
    print(f"{len(nodes)} nodes from '{CUT}' to '{OUTPUT}': "
          f"{nodes[0].name} .. {nodes[-1].name}")

    x = (np.random.default_rng(0).standard_normal(CUT_SHAPE) * 0.5).astype(np.float32)
    g = np.random.default_rng(1).standard_normal((CUT_SHAPE[0], 1280)).astype(np.float32)

    results = {}
    for dtype in (torch.float64, torch.float32):
        interp = Interp(graph, dtype)
        interp.clip_stats = []
        y = interp.run(nodes, {CUT: torch.tensor(x, dtype=dtype)}, OUTPUT)
        loss = (y * torch.tensor(g, dtype=dtype)).sum()
        loss.backward()
        results[dtype] = (y.detach().numpy(), {k: p.grad.numpy() for k, p in interp.params.items()})
        if dtype == torch.float64:
            clip_stats = interp.clip_stats
    y64, grads64 = results[torch.float64]
    y32, grads32 = results[torch.float32]
    assert y64.shape == (CUT_SHAPE[0], 1280), y64.shape
    failures = []
    low = [c[0] for c in clip_stats]
    high = [c[1] for c in clip_stats]
    margin = min(c[2] for c in clip_stats)
    print(f"{len(clip_stats)} ReLU6: share clamped at 0 {min(low):.2f}..{max(low):.2f}, "
          f"at 6 {min(high):.3f}..{max(high):.3f}; closest pre-activation to a bound "
          f"{margin:.2e}")

    # ---- float32 vs float64 torch: the noise a float32 engine should show
    y_f32_noise = float(np.abs(y32 - y64).max())
    grad_f32_noise = max(
        float(np.abs(grads32[k] - grads64[k]).max() / (1.0 + np.abs(grads64[k]).max()))
        for k in grads64
    )
    print(f"torch f32 vs f64: y max|d| = {y_f32_noise:.3e}, "
          f"grads worst max|d|/(1+max|ref|) = {grad_f32_noise:.3e}")

    # ---- y against onnxruntime on the extracted submodel
    with tempfile.TemporaryDirectory() as tmp:
        sub = os.path.join(tmp, "sub.onnx")
        onnx.utils.extract_model(args.model, sub, [CUT], [OUTPUT])
        y_ort = ort_run(free_hw(onnx.load(sub)), {CUT: x}, OUTPUT)
    y_sub_err = float(np.abs(y_ort - y64).max())
    print(f"y vs onnxruntime (extracted '{CUT}' -> '{OUTPUT}'): max|d| = {y_sub_err:.3e}")
    if y_sub_err > 1e-4:
        failures.append(f"y differs from onnxruntime on the submodel by {y_sub_err}")

    # ---- the same interpreter on the whole graph against onnxruntime
    imgs = np.random.default_rng(2).standard_normal((2, 3, 112, 112)).astype(np.float32)
    full_nodes = all_nodes_to(graph, OUTPUT)
    with torch.no_grad():
        emb = Interp(graph, torch.float64).run(
            full_nodes, {"input": torch.tensor(imgs, dtype=torch.float64)}, OUTPUT).numpy()
    emb_ort = ort_run(free_hw(onnx.load(args.model)), {"input": imgs}, OUTPUT)
    full_err = float(np.abs(emb_ort - emb).max())
    print(f"whole graph ({len(full_nodes)} nodes, 2 images of 112 px) vs onnxruntime: "
          f"max|d| = {full_err:.3e} (max|emb| = {np.abs(emb_ort).max():.3f})")
    if full_err > 1e-3:
        failures.append(f"whole-graph embedding differs from onnxruntime by {full_err}")

    # ---- write
    for f in os.listdir(args.out):
        if f.endswith(".npy") or f == "index.json":
            os.remove(os.path.join(args.out, f))
    files = {}

    def save(name, arr, **meta):
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        np.save(os.path.join(args.out, name), arr)
        files[name] = dict(meta, shape=list(arr.shape))

    save("x.npy", x, kind="input")
    save("g.npy", g, kind="upstream")
    save("y.npy", y64, kind="output")
    params = []
    for node in nodes:  # graph order, as the engine numbers them
        for name in node.input:
            if name in grads64 and name not in params:
                params.append(name)
    for name in params:
        gr = grads64[name]
        s = sanitize(name)
        if gr.size <= FULL_LIMIT:
            save(f"grad__{s}.npy", gr, kind="grad", init=name, param_shape=list(gr.shape))
        else:
            save(f"gradsum0__{s}.npy", gr.sum(axis=0), kind="gradsum0", init=name,
                 param_shape=list(gr.shape))
            save(f"gradhead4__{s}.npy", gr[:HEAD], kind="gradhead4", init=name,
                 param_shape=list(gr.shape))
    index = {
        "cut": CUT,
        "output": OUTPUT,
        "cut_shape": list(CUT_SHAPE[1:]),
        "loss": "sum(y * g)",
        "params": params,
        "files": files,
        "checks": {
            "y_vs_ort_submodel_max_abs": y_sub_err,
            "embedding_vs_ort_full_model_112px_max_abs": full_err,
            "torch_f32_vs_f64_y_max_abs": y_f32_noise,
            "torch_f32_vs_f64_grad_worst_rel": grad_f32_noise,
            "relu6_share_clamped_at_0": low,
            "relu6_share_clamped_at_6": high,
            "relu6_closest_to_bound": margin,
        },
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "onnx": onnx.__version__,
        },
    }
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"{len(params)} parameters, {len(files)} arrays; "
          f"{args.out}: {total} bytes ({total / 1e6:.3f} MB)")
    if failures:
        for f in failures:
            print("FAIL:", f, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
