#!/usr/bin/env python3
"""Write scikit-learn's bundled 8x8 handwritten digits as a class-per-subfolder
PNG tree: a second, different labelled data set for checks such as
`edgeclr layers` (nothing is downloaded: the images ship inside scikit-learn).

    python3 data/make_sklearn_digits.py --out /tmp/digits [--n 1000] [--seed 0]

writes OUT/train/<digit>/<index>.png (8x8 grayscale, 0..16 scaled to 0..255)
for a seeded random `--n` of the 1797 images.
"""

import argparse
import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    digits = load_digits()
    order = np.random.default_rng(args.seed).permutation(len(digits.target))
    for i in order[: args.n]:
        folder = os.path.join(args.out, "train", str(digits.target[i]))
        os.makedirs(folder, exist_ok=True)
        pixels = (digits.images[i] * (255 / 16)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels, "L").save(os.path.join(folder, f"{i:04d}.png"))
    print(f"wrote {min(args.n, len(order))} images under {args.out}/train")


if __name__ == "__main__":
    main()
