#!/usr/bin/env python3
"""Write the small, balanced Fashion-MNIST sample shipped in data/fashion-mnist/.

The sample is deterministic: for every class 0..9 it takes the FIRST
``--train-per-class`` images of that class (in file order) from the train
split and the first ``--test-per-class`` images of that class from the t10k
split.  The selected images are written in their original file order (sorted
by original index, so classes are interleaved as in the original files).

Output files use exactly the original IDX format, gzipped:

  * images: big-endian u32 magic 0x00000803, u32 n, u32 28, u32 28, then
    n*28*28 unsigned bytes (row-major);
  * labels: big-endian u32 magic 0x00000801, u32 n, then n unsigned bytes.

gzip is written with mtime=0 and no file name in the header, so re-running the
script yields byte-identical files.

Optionally (``--folder-out``) it also writes a tiny class-per-subfolder image
tree (28x28 grayscale PNGs) from the t10k sample, used by the Rust tests of
the image-folder loader.

Usage (from the repository root):

    python3 data/make_fashion_sample.py \
        --src /usr/share/datasets/fashion-mnist \
        --out data/fashion-mnist \
        --folder-out data/fashion-folder
"""

import argparse
import gzip
import io
import os
import struct
import sys

import numpy as np

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 0x00000803:
        raise ValueError(f"{path}: bad image magic {magic:#010x}")
    arr = np.frombuffer(data, dtype=np.uint8, offset=16)
    if arr.size != n * rows * cols:
        raise ValueError(f"{path}: size mismatch")
    return arr.reshape(n, rows, cols)


def read_idx_labels(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic != 0x00000801:
        raise ValueError(f"{path}: bad label magic {magic:#010x}")
    arr = np.frombuffer(data, dtype=np.uint8, offset=8)
    if arr.size != n:
        raise ValueError(f"{path}: size mismatch")
    return arr


def write_gz(path, payload):
    """gzip `payload` deterministically (mtime=0, empty file name)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0,
                       compresslevel=9) as g:
        g.write(payload)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def write_idx_images(path, images):
    n, rows, cols = images.shape
    header = struct.pack(">IIII", 0x00000803, n, rows, cols)
    write_gz(path, header + np.ascontiguousarray(images, dtype=np.uint8).tobytes())


def write_idx_labels(path, labels):
    header = struct.pack(">II", 0x00000801, len(labels))
    write_gz(path, header + np.ascontiguousarray(labels, dtype=np.uint8).tobytes())


def select_balanced(labels, per_class, skip=0):
    """Indices of the first `per_class` items of each class after its first
    `skip` (so skip=100 gives a sample disjoint from the default one), sorted."""
    idx = []
    for c in range(10):
        where = np.flatnonzero(labels == c)
        if where.size < skip + per_class:
            raise ValueError(f"class {c} has only {where.size} items")
        idx.extend(where[skip:skip + per_class].tolist())
    return np.array(sorted(idx), dtype=np.int64)


def write_folder(out_dir, images, labels, classes, per_class):
    from PIL import Image
    for c in classes:
        name = CLASS_NAMES[c]
        d = os.path.join(out_dir, name.replace("/", "-").replace(" ", "-"))
        os.makedirs(d, exist_ok=True)
        where = np.flatnonzero(labels == c)[:per_class]
        for k, i in enumerate(where):
            Image.fromarray(np.ascontiguousarray(images[i], dtype=np.uint8)).save(
                os.path.join(d, f"{k:03d}.png"), optimize=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="/usr/share/datasets/fashion-mnist",
                    help="directory with the full Fashion-MNIST *.gz files")
    ap.add_argument("--out", default="data/fashion-mnist",
                    help="output directory for the sample IDX files")
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=50)
    ap.add_argument("--skip-train-per-class", type=int, default=0,
                    help="skip the first N train images of each class (a disjoint "
                         "second sample: --skip-train-per-class 100 --skip-test-per-class 50)")
    ap.add_argument("--skip-test-per-class", type=int, default=0)
    ap.add_argument("--folder-out", default=None,
                    help="also write a class-per-subfolder PNG tree here "
                         "(from the t10k sample)")
    ap.add_argument("--folder-classes", default="7,8,1",
                    help="class indices for --folder-out (default Sneaker,Bag,Trouser)")
    ap.add_argument("--folder-per-class", type=int, default=5)
    args = ap.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    for split, per_class, skip in (("train", args.train_per_class, args.skip_train_per_class),
                                   ("t10k", args.test_per_class, args.skip_test_per_class)):
        images = read_idx_images(os.path.join(args.src, f"{split}-images-idx3-ubyte.gz"))
        labels = read_idx_labels(os.path.join(args.src, f"{split}-labels-idx1-ubyte.gz"))
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{split}: image/label count mismatch")
        idx = select_balanced(labels, per_class, skip)
        write_idx_images(os.path.join(args.out, f"{split}-images-idx3-ubyte.gz"), images[idx])
        write_idx_labels(os.path.join(args.out, f"{split}-labels-idx1-ubyte.gz"), labels[idx])
        print(f"{split}: {len(idx)} images ({per_class}/class), "
              f"original indices {idx[0]}..{idx[-1]}", file=sys.stderr)
        if split == "t10k" and args.folder_out:
            classes = [int(c) for c in args.folder_classes.split(",")]
            write_folder(args.folder_out, images[idx], labels[idx], classes,
                         args.folder_per_class)
            print(f"folder: {len(classes)} classes x {args.folder_per_class} PNGs "
                  f"-> {args.folder_out}", file=sys.stderr)


if __name__ == "__main__":
    main()
