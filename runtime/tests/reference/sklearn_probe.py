#!/usr/bin/env python3
"""scikit-learn linear-probe reference for the Rust logistic-regression probe.

Fits ``sklearn.linear_model.LogisticRegression(C=C, solver="lbfgs",
max_iter=2000)`` (multinomial softmax with an L2 penalty 0.5*||W||^2 on the
weights, intercept not penalised, loss summed -- not averaged -- over samples,
i.e. sklearn's objective ``C * sum_i CE_i + 0.5 * ||W||_F^2``) on the given
features and prints JSON ``{"train_acc": ..., "test_acc": ...}`` (fractions in
[0, 1]).  Features are used RAW: no standardisation, no centring, no L2
normalisation -- the Rust probe's reference behaviour is the same.

Embedding mode:

    python3 runtime/tests/reference/sklearn_probe.py \
        --train-emb A.npy --train-labels A_labels.npy \
        --test-emb B.npy --test-labels B_labels.npy --C 1.0 \
        [--expect 84.2 --tol 0.5]

  *.npy embeddings are 2-D float arrays [n, d]; labels are 1-D int64 [n].
  With ``--expect ACC`` the script exits with status 1 when
  ``|test_acc*100 - ACC| > tol`` (percentage points, default tol 0.5).

Raw-pixel baseline mode (the baseline the demo compares against):

    python3 runtime/tests/reference/sklearn_probe.py \
        --raw-pixels data/fashion-mnist --C 1.0

  reads ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` from the directory,
  uses pixels/255 flattened to 784 features, trains on train, tests on t10k.
"""

import argparse
import gzip
import json
import os
import struct
import sys
import warnings

import numpy as np


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 0x00000803:
        raise ValueError(f"{path}: bad image magic {magic:#010x}")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows * cols)


def read_idx_labels(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic != 0x00000801:
        raise ValueError(f"{path}: bad label magic {magic:#010x}")
    return np.frombuffer(data, dtype=np.uint8, offset=8)[:n].astype(np.int64)


def load_raw_pixels(d):
    xs = {}
    for split in ("train", "t10k"):
        x = read_idx_images(os.path.join(d, f"{split}-images-idx3-ubyte.gz"))
        y = read_idx_labels(os.path.join(d, f"{split}-labels-idx1-ubyte.gz"))
        xs[split] = (x.astype(np.float64) / 255.0, y)
    return xs["train"], xs["t10k"]


def fit_and_score(xtr, ytr, xte, yte, C, max_iter):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(xtr, ytr)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return {
        "train_acc": float(np.mean(clf.predict(xtr) == ytr)),
        "test_acc": float(np.mean(clf.predict(xte) == yte)),
        "n_train": int(xtr.shape[0]),
        "n_test": int(xte.shape[0]),
        "dim": int(xtr.shape[1]),
        "C": C,
        "n_iter": int(np.max(clf.n_iter_)),
        "converged": converged,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-emb")
    ap.add_argument("--train-labels")
    ap.add_argument("--test-emb")
    ap.add_argument("--test-labels")
    ap.add_argument("--raw-pixels", metavar="IDX_DIR",
                    help="fit on raw Fashion-MNIST pixels (/255, 784-d) from IDX_DIR")
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--max-iter", type=int, default=2000)
    ap.add_argument("--expect", type=float, default=None,
                    help="expected test accuracy in percent")
    ap.add_argument("--tol", type=float, default=0.5,
                    help="tolerance for --expect in percentage points")
    args = ap.parse_args(argv)

    if args.raw_pixels:
        (xtr, ytr), (xte, yte) = load_raw_pixels(args.raw_pixels)
        mode = "raw-pixels"
    else:
        missing = [n for n in ("train_emb", "train_labels", "test_emb", "test_labels")
                   if getattr(args, n) is None]
        if missing:
            ap.error("missing " + ", ".join("--" + m.replace("_", "-") for m in missing)
                     + " (or use --raw-pixels)")
        xtr = np.load(args.train_emb).astype(np.float64)
        ytr = np.load(args.train_labels).astype(np.int64).ravel()
        xte = np.load(args.test_emb).astype(np.float64)
        yte = np.load(args.test_labels).astype(np.int64).ravel()
        mode = "embeddings"
        for nm, x, y in (("train", xtr, ytr), ("test", xte, yte)):
            if x.ndim != 2 or x.shape[0] != y.shape[0]:
                ap.error(f"{nm}: features {x.shape} / labels {y.shape} mismatch")

    res = fit_and_score(xtr, ytr, xte, yte, args.C, args.max_iter)
    res["mode"] = mode
    print(json.dumps(res))

    if args.expect is not None:
        diff = abs(res["test_acc"] * 100.0 - args.expect)
        if diff > args.tol:
            print(f"FAIL: test_acc {res['test_acc'] * 100:.2f}% vs expected "
                  f"{args.expect:.2f}% (|diff| {diff:.2f} > tol {args.tol})",
                  file=sys.stderr)
            return 1
        print(f"OK: test_acc {res['test_acc'] * 100:.2f}% within {args.tol} pp of "
              f"{args.expect:.2f}%", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
