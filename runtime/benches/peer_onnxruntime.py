#!/usr/bin/env python3
"""The peer edgeclr's benchmark compares against: the pipeline a user would
otherwise write in Python (PIL for decode/resize/crop, numpy to normalise,
onnxruntime to run the same ONNX file), on the same images.

Prints one JSON object on stdout; `cargo bench --bench embed` runs this in the
same session as the Rust measurements and prints both side by side.
"""
import argparse
import gzip
import json
import resource
import struct
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def read_idx_images(path, n):
    with gzip.open(path, "rb") as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 0x803, "not an IDX image file"
        count = min(count, n)
        data = np.frombuffer(f.read(count * rows * cols), np.uint8)
    return data.reshape(count, rows, cols)


def preprocess(gray):
    """torchvision's Resize(256) + CenterCrop(224) + ToTensor + Normalize."""
    img = Image.fromarray(gray).convert("RGB")
    w, h = img.size
    if w <= h:
        size = (256, int(256 * h / w))
    else:
        size = (int(256 * w / h), 256)
    img = img.resize(size, Image.BILINEAR)
    left = int(round((size[0] - 224) / 2.0))
    top = int(round((size[1] - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    x = np.asarray(img, np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def session(model, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True, help="IDX images file (.gz)")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    args = ap.parse_args()

    raw = read_idx_images(args.images, args.n)
    t0 = time.perf_counter()
    tensors = np.stack([preprocess(g) for g in raw])
    pre_s = time.perf_counter() - t0

    result = {
        "onnxruntime": ort.__version__,
        "images": len(raw),
        "preprocess_images_per_sec": len(raw) / pre_s,
        "embed": [],
        "encoder_only": [],
    }
    for threads in args.threads:
        sess = session(args.model, threads)
        for batch in args.batches:
            sess.run(["embedding"], {"input": tensors[:batch]})  # warm-up
            lat = []
            t0 = time.perf_counter()
            for start in range(0, len(tensors), batch):
                t1 = time.perf_counter()
                # The full pipeline: preprocessing is part of what a user pays.
                chunk = np.stack([preprocess(g) for g in raw[start:start + batch]])
                sess.run(["embedding"], {"input": chunk})
                lat.append(time.perf_counter() - t1)
            total = time.perf_counter() - t0
            lat_ms = np.array(lat) * 1e3
            result["embed"].append({
                "threads": threads,
                "batch": batch,
                "images_per_sec": len(tensors) / total,
                "p50_ms": float(np.percentile(lat_ms, 50)),
                "p99_ms": float(np.percentile(lat_ms, 99)),
            })
        # The encoder alone on the already preprocessed tensors: the ceiling
        # any pipeline around this ONNX Runtime session can reach.
        batch = 32
        t0 = time.perf_counter()
        for start in range(0, len(tensors), batch):
            sess.run(["embedding"], {"input": tensors[start:start + batch]})
        result["encoder_only"].append({
            "threads": threads,
            "batch": batch,
            "images_per_sec": len(tensors) / (time.perf_counter() - t0),
        })
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


if __name__ == "__main__":
    main()
