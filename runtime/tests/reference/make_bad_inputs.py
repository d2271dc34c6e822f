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
import io
import json
import os
import struct
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image


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
    hardening(out, w)
    print("wrote", sorted(os.listdir(out)))


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width, height, rows):
    """An 8-bit RGB PNG whose header declares width x height, holding `rows` (raw scanlines)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows, 9))
            + png_chunk(b"IEND", b""))


def safetensors_bytes(tensors, metadata):
    """A safetensors file by hand (8-byte LE header length, JSON header, data)."""
    header, data = {}, b""
    for name, (dtype, shape, payload) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def hardening(out, w):
    """The broken inputs of the hardening issue (runtime/tests/bad_inputs.rs)."""
    here = os.path.dirname(__file__)
    photos = os.path.join(here, "..", "..", "..", "data", "photos")
    # JPEG: a real photo (shrunk to 32x32 to keep the file small) cut to a third, a zero-byte .jpg, and a "bomb": the
    # same photo with its frame header (SOF0) patched to 65000x65000 pixels.
    buf = io.BytesIO()
    Image.open(os.path.join(photos, "rocket.jpg")).convert("RGB").resize((32, 32)).save(buf, "JPEG", quality=90)
    jpg = buf.getvalue()
    w("truncated.jpg", jpg[: len(jpg) // 3], "wb")
    w("empty.jpg", b"", "wb")
    sof = jpg.index(b"\xff\xc0")
    w("bomb.jpg", jpg[: sof + 5] + struct.pack(">HH", 65000, 65000) + jpg[sof + 9:], "wb")
    # PNG bomb: declares 100000 x 100000 (30 GB of RGB) in a 100-byte file.
    w("bomb.png", png(100_000, 100_000, bytes(1 + 3 * 16)), "wb")
    # A 1 x 60000 PNG: small and under the decode limit, but resizing its short
    # side to 256 (mobilenet's preprocessing) would make a 256 x 15.4M image.
    w("thin.png", png(1, 60_000, bytes(4 * 60_000)), "wb")

    # ONNX: an empty file; a model declaring a 2 GiB initialiser in raw_data
    # of 4 bytes; one whose initialiser lives in a 2 GiB "external" file; one
    # whose raw_data length field claims 2 GiB (the file is cut short); and a
    # complex64 initialiser (an element type the backends cannot hold).
    w("empty.onnx", b"", "wb")

    def with_initializer(name, tensor):
        graph = tiny_pool_graph()
        graph.initializer.append(tensor)
        sha = save_model(graph, os.path.join(out, name + ".onnx"))
        w(name + ".toml", manifest(name, name + ".onnx", sha))

    huge = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[1 << 29], raw_data=b"\0\0\0\0")
    with_initializer("declared_2gb", huge)
    ext = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[1 << 29],
                      data_location=TensorProto.EXTERNAL)
    for k, v in (("location", "huge.bin"), ("offset", "0"), ("length", str(1 << 31))):
        ext.external_data.add(key=k, value=v)
    with_initializer("external_2gb", ext)
    w("huge.bin", b"\0" * 16, "wb")
    cplx = helper.make_tensor("c", TensorProto.COMPLEX64, [1], b"\0" * 8, raw=True)
    with_initializer("complex_init", cplx)
    # raw_data's length prefix (field 9: tag 0x4a, then a varint) patched from
    # 4 to 2^31; the bytes after it are what the file really holds.
    model = open(os.path.join(out, "declared_2gb.onnx"), "rb").read()
    at = model.index(b"\x4a\x04\0\0\0\0")
    w("raw_len_2gb.onnx", model[:at] + b"\x4a\x80\x80\x80\x80\x08" + model[at + 2:], "wb")

    # Manifests: a negative shape, a zero crop, a NaN std, an unknown key, and
    # bytes that are not UTF-8.
    good = manifest("m", "tiny.onnx", hashlib.sha256(open(os.path.join(out, "tiny.onnx"), "rb").read()).hexdigest())
    w("negative_shape.toml", good.replace("shape = [3, 8, 8]", "shape = [-3, 8, 8]"))
    w("zero_crop.toml", good.replace("shape = [3, 8, 8]", "shape = [3, 0, 0]").replace("crop = [8, 8]", "crop = [0, 0]"))
    w("nan_std.toml", good.replace("std = [0.5, 0.5, 0.5]", "std = [nan, 0.5, 0.5]"))
    w("unknown_key.toml", good.replace("[input]", "colour = \"blue\"\n\n[input]"))
    w("binary.toml", bytes(range(256)), "wb")

    # Embedding arrays: Inf in row 2, f64, 3-D, truncated, a header declaring
    # 10^15 floats, and a negative label.
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = np.inf
    np.save(os.path.join(out, "emb_inf.npy"), x)
    np.save(os.path.join(out, "emb_f64.npy"), np.zeros((4, 3), np.float64))
    np.save(os.path.join(out, "emb_3d.npy"), np.zeros((2, 2, 3), np.float32))
    np.save(os.path.join(out, "emb_ok.npy"), np.ones((4, 3), np.float32))
    full = open(os.path.join(out, "emb_ok.npy"), "rb").read()
    os.remove(os.path.join(out, "emb_ok.npy"))
    w("emb_truncated.npy", full[: len(full) - 10], "wb")
    head = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 1000000), }"
    head += b" " * (-(10 + len(head) + 1) % 64) + b"\n"
    w("emb_huge_shape.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + bytes(12), "wb")
    np.save(os.path.join(out, "emb_neglabel.npy"), np.ones((2, 3), np.float32))
    np.save(os.path.join(out, "emb_neglabel.labels.npy"), np.array([0, -1], np.int64))

    # Checkpoints: a valid one (the control), then truncated, a header length
    # of 2^40, an f64 tensor, no metadata, a bad step and a foreign format.
    meta = {"format": "edgeclr-checkpoint-1", "step": "3", "epoch": "1", "model": "tiny",
            "model_sha256": "0" * 64, "config": "{}"}
    f32 = ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4))
    good = safetensors_bytes({"w": f32}, meta)
    w("ckpt_good.safetensors", good, "wb")
    w("ckpt_truncated.safetensors", good[: len(good) - 5], "wb")
    w("ckpt_huge_header.safetensors", struct.pack("<Q", 1 << 40) + good[8:], "wb")
    w("ckpt_f64.safetensors", safetensors_bytes({"w": ("F64", [2], struct.pack("<2d", 1, 2))}, meta), "wb")
    w("ckpt_no_meta.safetensors", safetensors_bytes({"w": f32}, None), "wb")
    w("ckpt_bad_step.safetensors", safetensors_bytes({"w": f32}, dict(meta, step="-1")), "wb")
    w("ckpt_foreign.safetensors", safetensors_bytes({"w": f32}, dict(meta, format="other-trainer-7")), "wb")

    # Probe / k-NN heads: a ragged weight row, a bias of the wrong length, a
    # k-NN key label out of range, a key that is not unit-norm, a k-NN file
    # given as a linear probe, and a future version.
    lin = {"format": "edgeclr-linear-probe", "version": 1, "dim": 3, "classes": ["a", "b"],
           "weights": [[1, 0, 0], [0, 1, 0]], "bias": [0, 0]}
    knn = {"format": "edgeclr-knn", "version": 1, "dim": 2, "k": 1, "classes": ["a", "b"],
           "labels": [0, 1], "keys": [[1, 0], [0, 1]]}
    js = lambda name, obj: w(name, json.dumps(obj))
    js("probe_good.json", lin)
    js("probe_ragged.json", dict(lin, weights=[[1, 0, 0], [0, 1]]))
    js("probe_bias.json", dict(lin, bias=[0]))
    js("knn_good.json", knn)
    js("knn_label_range.json", dict(knn, labels=[0, 5]))
    js("knn_not_unit.json", dict(knn, keys=[[3, 0], [0, 1]]))
    js("probe_version.json", dict(lin, version=99))
    # Numerical faults: a model whose embedding is NaN (sqrt of a negative).
    def fault_model(name, nodes, inits):
        pool = helper.make_node("GlobalAveragePool", ["y"], ["pooled"], name="pool")
        flat = helper.make_node("Flatten", ["pooled"], ["embedding"], name="flatten")
        graph = helper.make_graph(
            nodes + [pool, flat], name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
            [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3])],
            initializer=inits)
        sha = save_model(graph, os.path.join(out, name + ".onnx"))
        w(name + ".toml", manifest(name, name + ".onnx", sha))

    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    fault_model("nan_model", [
        helper.make_node("Abs", ["input"], ["a"]),
        helper.make_node("Add", ["a", "one"], ["b"]),
        helper.make_node("Neg", ["b"], ["c"]),
        helper.make_node("Sqrt", ["c"], ["y"]),
    ], [one])

    # IDX: a header declaring 65535^3 bytes, rank 0, zero bytes, gzip garbage.
    w("huge-images-idx3-ubyte", struct.pack(">IIII", 0x00000803, 65535, 65535, 65535), "wb")
    w("rank0-images-idx3-ubyte", struct.pack(">I", 0x00000800), "wb")
    w("empty-images-idx3-ubyte", b"", "wb")
    w("garbage-images-idx3-ubyte.gz", b"\x1f\x8b\x08\x00" + bytes(range(40)), "wb")


if __name__ == "__main__":
    main()
