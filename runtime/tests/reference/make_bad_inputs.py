#!/usr/bin/env python3
"""Writes the deliberately broken inputs the Rust error-path tests load.

Each file exercises one way a user's input can be wrong; the tests assert that
edgeclr names the problem instead of panicking or producing garbage. The files
are tiny and committed; this script documents exactly how they were made.

    python3 runtime/tests/reference/make_bad_inputs.py
"""
import argparse
import gzip
import hashlib
import os
import struct

import numpy as np
import onnx
from onnx import TensorProto, helper


def save_model(graph, path, opsets=(("", 13),)):
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
        producer_name="edgeclr-tests",
        producer_version="1",
    )
    model.ir_version = 8
    onnx.save(model, path)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def manifest(name, onnx_file, sha, shape=(3, 8, 8), crop=8):
    return f"""name = "{name}"
onnx = "{onnx_file}"
sha256 = "{sha}"
licence = "CC0-1.0"
source = "runtime/tests/reference/make_bad_inputs.py"

[input]
name = "input"
shape = {list(shape)}
layout = "nchw"
channels = "rgb"

[preprocess]
resize_short_side = {crop}
filter = "bilinear"
crop = [{crop}, {crop}]
scale = 0.00392156862745098
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]

[outputs]
embedding = "embedding"
embedding_dim = 3
"""


def tiny_pool_graph(op_type="GlobalAveragePool", domain=None, in_shape=("N", 3, 8, 8)):
    """input [N,3,8,8] -> <op> -> Flatten -> embedding [N,3]."""
    node = helper.make_node(op_type, ["input"], ["pooled"], name="pool", domain=domain)
    flat = helper.make_node("Flatten", ["pooled"], ["embedding"], name="flatten")
    return helper.make_graph(
        [node, flat],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3])],
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "bad"))
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    w = lambda name, data, mode="w": open(os.path.join(out, name), mode).write(data)

    # A valid tiny encoder, the control for the broken variants below.
    sha = save_model(tiny_pool_graph(), os.path.join(out, "tiny.onnx"))
    w("tiny.toml", manifest("tiny", "tiny.onnx", sha))
    # Same model, manifest with the wrong checksum.
    w("wrong_sha.toml", manifest("wrong_sha", "tiny.onnx", "0" * 64))
    # Manifest says [3,16,16], the graph takes [3,8,8].
    w("wrong_shape.toml", manifest("wrong_shape", "tiny.onnx", sha, shape=(3, 16, 16), crop=16))
    # Manifest with wrong types (a string where a number belongs).
    w("wrong_types.toml", manifest("wrong_types", "tiny.onnx", sha).replace("embedding_dim = 3", 'embedding_dim = "three"'))
    # An operator no runtime knows.
    sha = save_model(tiny_pool_graph("FancyPool", "com.example"), os.path.join(out, "unsupported_op.onnx"),
                     opsets=(("", 13), ("com.example", 1)))
    w("unsupported_op.toml", manifest("unsupported_op", "unsupported_op.onnx", sha))
    # Not ONNX at all: text with an .onnx name.
    w("not_onnx.onnx", "this is not a protobuf model\n")
    sha = hashlib.sha256(b"this is not a protobuf model\n").hexdigest()
    w("not_onnx.toml", manifest("not_onnx", "not_onnx.onnx", sha))

    # Images: a truncated PNG, a zero-byte file, a text file named .png.
    png = open(os.path.join(os.path.dirname(__file__), "..", "..", "..", "data", "photos", "chelsea.png"), "rb").read()
    w("truncated.png", png[: len(png) // 3], "wb")
    w("empty.png", b"", "wb")
    w("text.png", "not an image\n")
    # IDX with a wrong magic, and one whose header promises more than it holds.
    w("wrong_magic-images-idx3-ubyte", struct.pack(">IIII", 0x00000903, 1, 28, 28) + bytes(784), "wb")
    w("truncated-images-idx3-ubyte", struct.pack(">IIII", 0x00000803, 10, 28, 28) + bytes(784), "wb")
    # Embeddings and labels that disagree in count; a NaN-filled array.
    np.save(os.path.join(out, "emb_mismatch.npy"), np.zeros((4, 3), np.float32))
    np.save(os.path.join(out, "emb_mismatch.labels.npy"), np.zeros(3, np.int64))
    np.save(os.path.join(out, "emb_nan.npy"), np.full((4, 3), np.nan, np.float32))
    print("wrote", sorted(os.listdir(out)))


if __name__ == "__main__":
    main()
