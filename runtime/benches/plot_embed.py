#!/usr/bin/env python3
"""Plots the embed benchmark (target/bench-embed.json, written by
`cargo bench -p edgeclr --features ort --bench embed`) as a PNG: images/s of
edgeclr/tract, edgeclr/ort and Python onnxruntime+PIL per (threads, batch).

    python3 runtime/benches/plot_embed.py [--json F] [--out docs/bench-embed.png]
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default="target/bench-embed.json")
    ap.add_argument("--out", default="docs/bench-embed.png")
    args = ap.parse_args()
    data = json.load(open(args.json))
    configs = sorted({(r["threads"], r["batch"]) for r in data["rows"]})
    series = {}
    for r in data["rows"]:
        series.setdefault(r["runtime"], {})[(r["threads"], r["batch"])] = r["images_per_sec"]
    for r in (data.get("peer") or {}).get("embed", []):
        series.setdefault("python onnxruntime+PIL", {})[(r["threads"], r["batch"])] = r["images_per_sec"]
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [c + i * width for c in range(len(configs))]
        ax.bar(xs, [values.get(c, 0) for c in configs], width, label=name)
    ax.set_xticks([c + width * (len(series) - 1) / 2 for c in range(len(configs))])
    ax.set_xticklabels([f"{t} thread{'s' if t > 1 else ''}, batch {b}" for t, b in configs])
    ax.set_ylabel("images / s (decode + preprocess + encode)")
    ax.set_title(f"{data['model']}: {data['images']} Fashion-MNIST images, 2-core x86_64")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
