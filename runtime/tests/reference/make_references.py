#!/usr/bin/env python3
"""Generate the Python reference files that the Rust tests compare against.

Every file written into ``runtime/tests/data/`` by this script is an
independent reference computed with numpy / Pillow / onnxruntime, i.e. with
no code shared with the Rust runtime.  Each Rust test loads one of them and
compares its own result against it:

  preprocess_<photo>.npy        [3,224,224] f32  torchvision-style preprocessing
                                                 of data/photos/<photo>.png
  preprocess_fmnist_first<K>.npy [K,3,224,224] f32 same pipeline on the first K
                                                 images of the shipped t10k sample
  fmnist_first<K>_labels.npy    [K] i64          their labels
  embedding_ort_<photo>.npy     [1,1280] f32     onnxruntime (CPU) `embedding`
  logits_ort_<photo>.npy        [1,1000] f32     onnxruntime (CPU) `logits`
  embedding_ort_fmnist_first<K>.npy [K,1280] f32 onnxruntime on the fmnist tensors
  metrics_x.npy, metrics_y.npy  [64,16] f32      inputs of the diagnostics tests
  metrics_ref.json              float64 values   align / uniformity / RankMe /
                                                 singular spectrum of those inputs
  MANIFEST.json                                  shapes, dtypes, sha256, versions

Preprocessing (the torchvision ImageNet eval transform
``Resize(256) -> CenterCrop(224) -> ToTensor() -> Normalize(mean, std)``
with PIL images), reimplemented here step by step:

  1. ``Image.open(path).convert("RGB")``
  2. resize so the SHORT side is 256 with ``Image.BILINEAR`` (Pillow's
     resampling: separable triangle filter whose support is scaled by the
     downscale factor, i.e. antialiased; 8-bit fixed-point intermediate);
     the long side is ``int(256 * long / short)`` (truncation, torchvision rule)
  3. centre crop 224: ``top = int(round((h - 224) / 2.0))``,
     ``left = int(round((w - 224) / 2.0))`` (Python round = half to even)
  4. ``float32(u8) / 255``, then ``(x - mean) / std`` per channel in float32,
     mean = (0.485, 0.456, 0.406), std = (0.229, 0.224, 0.225)
  5. HWC -> CHW

Fashion-MNIST images are 28x28 grayscale: ``Image.fromarray(u8).convert("RGB")``
(channel replication), then the same steps (28 -> 256x256, crop 224).

The ORT outputs are computed on exactly the float32 tensors that are saved.

Usage (from the repository root):

    python3 runtime/tests/reference/make_references.py \
        --model models/mobilenet_v2/mobilenet_v2.onnx --wait-model 2400
"""

import argparse
import gzip
import hashlib
import json
import os
import struct
import sys
import time

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
RESIZE = 256
CROP = 224
PHOTOS = ["coffee", "chelsea", "astronaut", "rocket"]


# --------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------
def resized_size(w, h, size=RESIZE):
    """torchvision `_compute_resized_output_size` for an int size (no max_size)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def preprocess_pil(img):
    """PIL RGB image -> float32 [3,224,224] exactly like torchvision's eval transform."""
    img = img.convert("RGB")
    w, h = img.size
    nw, nh = resized_size(w, h)
    img = img.resize((nw, nh), Image.BILINEAR)
    top = int(round((nh - CROP) / 2.0))
    left = int(round((nw - CROP) / 2.0))
    img = img.crop((left, top, left + CROP, top + CROP))
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32), \
        dict(orig_wh=[w, h], resized_wh=[nw, nh], crop_top=top, crop_left=left)


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    assert magic == 0x00000803, f"{path}: bad magic {magic:#x}"
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def read_idx_labels(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    assert magic == 0x00000801, f"{path}: bad magic {magic:#x}"
    return np.frombuffer(data, dtype=np.uint8, offset=8)[:n]


# --------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------
def l2_normalise(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def align(x, y, alpha=2):
    """Wang & Isola alignment: mean_i ||x_i - y_i||_2^alpha."""
    return float(np.mean(np.linalg.norm(x - y, axis=1) ** alpha))


def uniformity(x, t=2.0):
    """Wang & Isola uniformity: log mean_{i<j} exp(-t ||x_i - x_j||^2)."""
    n = x.shape[0]
    d2 = np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    iu = np.triu_indices(n, k=1)
    return float(np.log(np.mean(np.exp(-t * d2[iu]))))


def rankme(x, eps=1e-7):
    """RankMe (Garrido et al. 2023): exp(entropy(sigma/||sigma||_1 + eps)), x NOT centred."""
    s = np.linalg.svd(x, compute_uv=False)
    p = s / np.sum(np.abs(s)) + eps
    return float(np.exp(-np.sum(p * np.log(p)))), s


def make_metrics(out, seed, n=64, d=16, noise=0.3):
    rng = np.random.default_rng(seed)
    x = l2_normalise(rng.standard_normal((n, d)))
    y = l2_normalise(x + noise * rng.standard_normal((n, d)))
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    y32 = np.ascontiguousarray(y, dtype=np.float32)
    np.save(os.path.join(out, "metrics_x.npy"), x32)
    np.save(os.path.join(out, "metrics_y.npy"), y32)
    # References are computed in float64 from the float32 values actually
    # saved (so the Rust side, reading the .npy, sees the same inputs).
    xs, ys = x32.astype(np.float64), y32.astype(np.float64)
    rx, sx = rankme(xs)
    ry, sy = rankme(ys)
    ref = {
        "description": "numpy float64 references computed from metrics_x.npy / "
                       "metrics_y.npy (float32 as saved, upcast to float64)",
        "seed": seed, "n": n, "d": d, "noise": noise,
        "generation": "rng=np.random.default_rng(seed); x=normalise(rng.standard_normal((n,d))); "
                      "y=normalise(x + noise*rng.standard_normal((n,d))); saved as float32",
        "align": align(xs, ys, 2),
        "align_alpha": 2,
        "uniform_t": 2.0,
        "uniform_x": uniformity(xs, 2.0),
        "uniform_y": uniformity(ys, 2.0),
        "rankme_eps": 1e-7,
        "rankme_x": rx,
        "rankme_y": ry,
        "spectrum_x": [float(v) for v in sx],
        "spectrum_y": [float(v) for v in sy],
    }
    with open(os.path.join(out, "metrics_ref.json"), "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")
    return ref


# --------------------------------------------------------------------------
# ORT
# --------------------------------------------------------------------------
def ort_session(model):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=so,
                                providers=["CPUExecutionProvider"])


def ort_run(sess, batch):
    emb, logits = sess.run(["embedding", "logits"], {"input": batch})
    return (np.ascontiguousarray(emb, dtype=np.float32),
            np.ascontiguousarray(logits, dtype=np.float32))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default="data/photos")
    ap.add_argument("--fashion", default="data/fashion-mnist",
                    help="directory with the shipped Fashion-MNIST sample")
    ap.add_argument("--model", default="models/mobilenet_v2/mobilenet_v2.onnx")
    ap.add_argument("--out", default="runtime/tests/data")
    ap.add_argument("--fmnist-count", type=int, default=2,
                    help="how many t10k-sample images to preprocess "
                         "(each is 602 KB; 2 keeps the directory < 4 MB)")
    ap.add_argument("--wait-model", type=float, default=0.0,
                    help="seconds to wait for --model to appear (polls every 30 s)")
    ap.add_argument("--skip-ort", action="store_true")
    ap.add_argument("--seed", type=int, default=20240607)
    args = ap.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    manifest = {"versions": {"numpy": np.__version__, "Pillow": Image.__version__}}
    meta = {}

    # (a) photos
    tensors = {}
    for name in PHOTOS:
        path = os.path.join(args.photos, f"{name}.png")
        with Image.open(path) as img:
            x, info = preprocess_pil(img)
        info["source"] = path
        meta[f"preprocess_{name}.npy"] = info
        tensors[name] = x
        np.save(os.path.join(args.out, f"preprocess_{name}.npy"), x)

    # (b) Fashion-MNIST
    k = args.fmnist_count
    imgs = read_idx_images(os.path.join(args.fashion, "t10k-images-idx3-ubyte.gz"))[:k]
    labels = read_idx_labels(os.path.join(args.fashion, "t10k-labels-idx1-ubyte.gz"))[:k]
    fm = []
    for im in imgs:
        x, info = preprocess_pil(Image.fromarray(np.ascontiguousarray(im)))
        fm.append(x)
    fm = np.ascontiguousarray(np.stack(fm), dtype=np.float32)
    np.save(os.path.join(args.out, f"preprocess_fmnist_first{k}.npy"), fm)
    np.save(os.path.join(args.out, f"fmnist_first{k}_labels.npy"), labels.astype(np.int64))
    info["source"] = os.path.join(args.fashion, "t10k-images-idx3-ubyte.gz") + f" [0:{k}]"
    info["labels"] = labels.tolist()
    meta[f"preprocess_fmnist_first{k}.npy"] = info

    # (d) metrics
    ref = make_metrics(args.out, args.seed)
    print(json.dumps({kk: ref[kk] for kk in
                      ("align", "uniform_x", "uniform_y", "rankme_x", "rankme_y")}))

    # (c) ORT
    if not args.skip_ort:
        deadline = time.time() + args.wait_model
        while not os.path.exists(args.model) and time.time() < deadline:
            print(f"waiting for {args.model} ...", file=sys.stderr)
            time.sleep(30)
        if not os.path.exists(args.model):
            print(f"{args.model} not found; skipping ORT references", file=sys.stderr)
        else:
            import onnxruntime as ort
            manifest["versions"]["onnxruntime"] = ort.__version__
            manifest["model"] = {"path": args.model, "sha256": sha256(args.model)}
            sess = ort_session(args.model)
            top1 = {}
            for name in PHOTOS:
                emb, logits = ort_run(sess, tensors[name][None])
                np.save(os.path.join(args.out, f"embedding_ort_{name}.npy"), emb)
                np.save(os.path.join(args.out, f"logits_ort_{name}.npy"), logits)
                order = np.argsort(-logits[0])
                top1[name] = {"top1": int(order[0]), "top5": [int(i) for i in order[:5]],
                              "top1_logit": float(logits[0, order[0]])}
            emb, logits = ort_run(sess, fm)
            np.save(os.path.join(args.out, f"embedding_ort_fmnist_first{k}.npy"), emb)
            manifest["ort_top1"] = top1
            print(json.dumps(top1))

    files = {}
    for fn in sorted(os.listdir(args.out)):
        p = os.path.join(args.out, fn)
        if fn == "MANIFEST.json" or not os.path.isfile(p):
            continue
        entry = {"bytes": os.path.getsize(p), "sha256": sha256(p)}
        if fn.endswith(".npy"):
            a = np.load(p)
            entry.update(shape=list(a.shape), dtype=str(a.dtype))
        if fn in meta:
            entry.update(meta[fn])
        files[fn] = entry
    manifest["files"] = files
    with open(os.path.join(args.out, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    total = sum(e["bytes"] for e in files.values())
    print(f"wrote {len(files)} files, {total} bytes, into {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
