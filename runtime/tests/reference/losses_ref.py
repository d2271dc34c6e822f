#!/usr/bin/env python3
"""Independent numpy references for the contrastive losses in
``runtime/src/adapt/loss/`` (tested by ``runtime/tests/losses.rs``).

Every loss is written here as the literal formula from its paper / reference
code, in float64, sharing no code or structure with the Rust implementation
(no log-sum-exp tricks where the inputs make them unnecessary, explicit loops
where that is the most readable).

Inputs are seeded random float32 arrays (the Rust side reads exactly these
values and converts them to f64, as numpy does here):

  z1.npy, z2.npy      [B, D]  two "views": raw head outputs with row norms in
                              [0.5, 3] (so the L2 normalisation matters);
                              z2 = z1 direction + noise
  queue.npy           [K, D]  MoCo queue, rows L2-normalised in float64 then
                              stored as float32 (used as given, not
                              renormalised, on both sides)
  p1.npy, p2.npy      [B, D]  BYOL online predictions (targets are z1, z2)
  sp1.npy, sp2.npy    [B, D]  spectral-loss inputs with row norms chosen away
                              from sqrt(mu) for every mu used, so that both
                              branches of the ball projection are exercised
                              and finite differences never straddle it

``losses_ref.json`` holds, for every case, the parameters and the float64
value. The HCL cases also record how many anchors hit the reference's clamp
and the smallest relative distance to it (``clamp_margin``).

Formulas (u = z / ||z||, row-wise):

  nt_xent      views Z = [u1; u2] (2B rows); anchor a, partner p(a);
               l_a = -log( exp(Z_a.Z_p/tau) / sum_{k != a} exp(Z_a.Z_k/tau) )
               L = mean_a l_a
  hcl          Robinson et al. 2021, `criterion(estimator='hard')` of the
               reference code github.com/joshr17/HCL image/main.py:
               neg = exp(Z Z^T / tau) minus self and partner (N = 2B-2),
               pos = exp(u1.u2 / tau) for both halves,
               imp = exp(beta * log(neg)),
               Ng = (-tau_plus*N*pos + sum(imp*neg)/mean(imp)) / (1-tau_plus),
               Ng = max(Ng, N * e^(-1/tau)),  L = mean(-log(pos/(pos+Ng)))
  infonce_bank logits = [q.k, q.queue^T] / tau (q, k normalised),
               L = mean cross-entropy with target 0
  align_uniform  mean ||u1-u2||^2 + lam*(U(u1)+U(u2))/2,
               U(u) = log mean_{i<j} exp(-t ||u_i-u_j||^2)
  spectral     jhaochenz96/spectral_contrastive_learning models/spectral.py D():
               rows with norm >= sqrt(mu) are rescaled to norm sqrt(mu), then
               (-2 mean_i z1_i.z2_i + mean_{i!=j} (z1_i.z2_j)^2) / mu
  sigmoid      SigLIP: logits = exp(t') u1 u2^T + b, y = 2I - 1,
               L = -(1/B) sum_ij log sigmoid(y_ij logits_ij)
  byol         mean_i (2 - 2 p_i.z_i / (|p_i| |z_i|));
               symmetric = byol(p1, z2) + byol(p2, z1)
  supcon       Khosla et al. 2020 eq. 2 (L^sup_out) over Z = [u1; u2] with
               labels y (None: unlabelled, positive only with its partner):
               l_a = -(1/|P(a)|) sum_{p in P(a)} log( exp(Z_a.Z_p/tau)
                      / sum_{k != a} exp(Z_a.Z_k/tau) ),  L = mean_a l_a
  ce           cross-entropy of logits W z_i + b over the rows with a known
               label: mean_i [logsumexp(l_i) - l_{i,y_i}] (0 without one)
  supcon_bank  queries q against C = [k (this batch's keys); queue] with
               labels [y; queue_labels]; P(i) = {k_i} + same known label:
               l_i = -(1/|P(i)|) sum_{p in P(i)} log softmax(q_i.C^T/tau)_p
  supcon_bank_nn, supcon_nn
               the same with nn / fnc / uw for the unlabelled anchors
               (labelled ones unchanged). An unlabelled anchor ranks the
               candidates other than itself and its own positive (bank: C
               minus k_i; batch: Z minus the anchor and its partner) by cosine
               similarity to its own positive (k_i; the partner view),
               highest first, ties to the lower index; the first nn join its
               positives (NNCLR, Dwibedi et al. 2021), the next fnc leave its
               denominator (false-negative elimination, Huynh et al. 2022):
               l = -(1/|P|) sum_{p in P} log( exp(s_p/tau)
                      / sum_{k in A} exp(s_k/tau) ),
               L = (sum_labelled l + uw * sum_unlabelled l) / #anchors.
               Each case records rank_margin: the smallest similarity gap
               at a cut of any unlabelled anchor's ranking (after nn, after
               nn + fnc), so a test knows how far its inputs may move
               before the selection changes.

Usage (from the repository root; deterministic, rewrites the files):

    python3 runtime/tests/reference/losses_ref.py \
        [--out runtime/tests/data/losses] [--seed 20240611] [--batch 8] \
        [--dim 16] [--queue 32]
"""

import argparse
import json
import math
import os

import numpy as np


def normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def nt_xent(z1, z2, tau):
    u = np.concatenate([normalize(z1), normalize(z2)], axis=0)
    n = u.shape[0]
    b = n // 2
    losses = []
    for a in range(n):
        p = a + b if a < b else a - b
        num = math.exp(u[a] @ u[p] / tau)
        den = sum(math.exp(u[a] @ u[k] / tau) for k in range(n) if k != a)
        losses.append(-math.log(num / den))
    return float(np.mean(losses))


def hcl(z1, z2, tau, beta, tau_plus):
    """Returns (loss, #clamped anchors, min relative distance to the clamp)."""
    out_1, out_2 = normalize(z1), normalize(z2)
    b = out_1.shape[0]
    out = np.concatenate([out_1, out_2], axis=0)
    neg_full = np.exp(out @ out.T / tau)
    mask = np.ones((2 * b, 2 * b), dtype=bool)
    for i in range(b):
        mask[i, i] = mask[i, i + b] = False
        mask[i + b, i + b] = mask[i + b, i] = False
    neg = neg_full[mask].reshape(2 * b, -1)
    pos = np.exp(np.sum(out_1 * out_2, axis=-1) / tau)
    pos = np.concatenate([pos, pos], axis=0)
    n = 2 * b - 2
    imp = np.exp(beta * np.log(neg))
    reweight_neg = (imp * neg).sum(axis=-1) / imp.mean(axis=-1)
    ng = (-tau_plus * n * pos + reweight_neg) / (1 - tau_plus)
    floor = n * math.e ** (-1 / tau)
    clamped = int(np.sum(ng < floor))
    margin = float(np.min(np.abs(ng - floor) / floor))
    ng = np.maximum(ng, floor)
    loss = float(np.mean(-np.log(pos / (pos + ng))))
    return loss, clamped, margin


def infonce_bank(q, k, queue, tau):
    qn, kn = normalize(q), normalize(k)
    losses = []
    for i in range(q.shape[0]):
        logits = [qn[i] @ kn[i] / tau] + [qn[i] @ queue[j] / tau for j in range(queue.shape[0])]
        logits = np.array(logits)
        log_softmax0 = logits[0] - math.log(np.sum(np.exp(logits)))
        losses.append(-log_softmax0)
    return float(np.mean(losses))


def supcon(z1, z2, labels, tau):
    u = np.concatenate([normalize(z1), normalize(z2)], axis=0)
    n = u.shape[0]
    b = n // 2
    y = list(labels) + list(labels)
    losses = []
    for a in range(n):
        den = sum(math.exp(u[a] @ u[k] / tau) for k in range(n) if k != a)
        pos = [p for p in range(n) if p != a and
               (p % b == a % b or (y[a] is not None and y[p] == y[a]))]
        losses.append(-np.mean([math.log(math.exp(u[a] @ u[p] / tau) / den) for p in pos]))
    return float(np.mean(losses))


def supcon_bank(q, k, labels, queue, queue_labels, tau):
    qn, kn = normalize(q), normalize(k)
    cands = np.concatenate([kn, queue], axis=0)
    y = list(labels) + list(queue_labels)
    losses = []
    for i in range(q.shape[0]):
        den = sum(math.exp(qn[i] @ c / tau) for c in cands)
        pos = [p for p in range(len(cands)) if p == i or
               (labels[i] is not None and y[p] == labels[i])]
        losses.append(-np.mean([math.log(math.exp(qn[i] @ cands[p] / tau) / den) for p in pos]))
    return float(np.mean(losses))


def nn_ranking(sims, exclude):
    """Candidate indices except `exclude`, most similar first (ties: lower
    index first)."""
    rest = [k for k in range(len(sims)) if k not in exclude]
    return sorted(rest, key=lambda k: (-sims[k], k))


def cut_margin(sims, order, cuts):
    """Smallest gap between the similarities on either side of each cut."""
    gaps = [sims[order[c - 1]] - sims[order[c]] for c in cuts if 0 < c < len(order)]
    return min(gaps) if gaps else math.inf


def contrast_term(s, cands, pos, tau):
    den = sum(math.exp(s[k] / tau) for k in cands)
    return -np.mean([math.log(math.exp(s[p] / tau) / den) for p in pos])


def supcon_bank_nn(q, k, labels, queue, queue_labels, tau, nn, fnc, uw):
    """Returns (loss, rank_margin)."""
    qn, kn = normalize(q), normalize(k)
    cands = np.concatenate([kn, queue], axis=0)
    y = list(labels) + list(queue_labels)
    n, b = len(cands), q.shape[0]
    total, margin = 0.0, math.inf
    for i in range(b):
        s = [float(qn[i] @ cands[c]) for c in range(n)]
        if labels[i] is not None:
            pos = [p for p in range(n) if p == i or y[p] == labels[i]]
            total += contrast_term(s, range(n), pos, tau)
            continue
        sim_key = [float(kn[i] @ cands[c]) for c in range(n)]
        order = nn_ranking(sim_key, {i})
        if nn + fnc > 0:
            margin = min(margin, cut_margin(sim_key, order, [nn, nn + fnc]))
        neighbours, removed = order[:nn], order[nn:nn + fnc]
        assert len(order) - nn - fnc >= 1, "no negative left"
        kept = [c for c in range(n) if c not in removed]
        total += uw * contrast_term(s, kept, [i] + neighbours, tau)
    return total / b, margin


def supcon_nn(z1, z2, labels, tau, nn, fnc, uw):
    """Returns (loss, rank_margin)."""
    u = np.concatenate([normalize(z1), normalize(z2)], axis=0)
    n = u.shape[0]
    b = n // 2
    y = list(labels) + list(labels)
    total, margin = 0.0, math.inf
    for a in range(n):
        partner = a + b if a < b else a - b
        s = [float(u[a] @ u[c]) for c in range(n)]
        others = [c for c in range(n) if c != a]
        if y[a] is not None:
            pos = [p for p in others if p == partner or y[p] == y[a]]
            total += contrast_term(s, others, pos, tau)
            continue
        sim_partner = [float(u[partner] @ u[c]) for c in range(n)]
        order = nn_ranking(sim_partner, {a, partner})
        if nn + fnc > 0:
            margin = min(margin, cut_margin(sim_partner, order, [nn, nn + fnc]))
        neighbours, removed = order[:nn], order[nn:nn + fnc]
        assert len(order) - nn - fnc >= 1, "no negative left"
        kept = [c for c in others if c not in removed]
        total += uw * contrast_term(s, kept, [partner] + neighbours, tau)
    return total / n, margin


def cross_entropy(z, labels, w, b):
    rows = [i for i, y in enumerate(labels) if y is not None]
    if not rows:
        return 0.0
    total = 0.0
    for i in rows:
        logits = w @ z[i] + b
        m = float(np.max(logits))
        total += m + math.log(float(np.sum(np.exp(logits - m)))) - float(logits[labels[i]])
    return total / len(rows)


def uniform_loss(u, t):
    vals = []
    for i in range(u.shape[0]):
        for j in range(i + 1, u.shape[0]):
            vals.append(math.exp(-t * np.sum((u[i] - u[j]) ** 2)))
    return math.log(np.mean(vals))


def align_uniform(z1, z2, lam, t):
    u1, u2 = normalize(z1), normalize(z2)
    align = float(np.mean(np.sum((u1 - u2) ** 2, axis=1)))
    return align + lam * (uniform_loss(u1, t) + uniform_loss(u2, t)) / 2


def spectral(z1, z2, mu):
    r = math.sqrt(mu)

    def project(z):
        out = z.copy()
        for i in range(z.shape[0]):
            nrm = np.linalg.norm(z[i])
            if not nrm < r:
                out[i] = z[i] / nrm * r
        return out

    a, c = project(z1), project(z2)
    b = a.shape[0]
    part1 = -2 * np.mean([a[i] @ c[i] for i in range(b)])
    part2 = np.mean([(a[i] @ c[j]) ** 2 for i in range(b) for j in range(b) if i != j])
    return float((part1 + part2) / mu)


def sigmoid_loss(z1, z2, t_prime, bias):
    u1, u2 = normalize(z1), normalize(z2)
    b = u1.shape[0]
    total = 0.0
    for i in range(b):
        for j in range(b):
            y = 1.0 if i == j else -1.0
            logit = math.exp(t_prime) * (u1[i] @ u2[j]) + bias
            total += math.log(1.0 / (1.0 + math.exp(-y * logit)))
    return -total / b


def byol(p, z):
    cos = np.sum(p * z, axis=1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(z, axis=1))
    return float(np.mean(2 - 2 * cos))


def rows_with_norms(rng, b, d, norms):
    x = normalize(rng.standard_normal((b, d)))
    return x * np.asarray(norms)[:, None]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "data", "losses"))
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--queue", type=int, default=32)
    args = parser.parse_args()
    b, d, k = args.batch, args.dim, args.queue
    rng = np.random.default_rng(args.seed)

    base = normalize(rng.standard_normal((b, d)))
    z1 = base + 0.4 * rng.standard_normal((b, d)) / math.sqrt(d)
    z2 = base + 0.4 * rng.standard_normal((b, d)) / math.sqrt(d)
    z1 = normalize(z1) * rng.uniform(0.5, 3.0, (b, 1))
    z2 = normalize(z2) * rng.uniform(0.5, 3.0, (b, 1))
    queue = normalize(rng.standard_normal((k, d)))
    p1 = z1 + 0.3 * rng.standard_normal((b, d))
    p2 = z2 + 0.3 * rng.standard_normal((b, d))
    # Norms away from sqrt(mu) for mu in {1, 2} (1 and 1.414).
    norm_pool = [0.5, 0.7, 0.85, 1.2, 1.3, 1.7, 2.2, 0.6, 1.25, 1.8]
    sp1 = rows_with_norms(rng, b, d, rng.permutation(norm_pool)[:b])
    sp2 = sp1 + 0.3 * rng.standard_normal((b, d)) / math.sqrt(d)
    sp2 = normalize(sp2) * np.asarray(rng.permutation(norm_pool)[:b])[:, None]

    # The classifier of `ce`, from its own generator so the arrays above
    # stay what they were before it was added. Bias stored as [1, C].
    ce_rng = np.random.default_rng(args.seed + 1)
    ce_w = ce_rng.standard_normal((3, d))
    ce_b = ce_rng.standard_normal((1, 3))

    arrays = {
        "z1": z1, "z2": z2, "queue": queue, "p1": p1, "p2": p2, "sp1": sp1, "sp2": sp2,
        "ce_w": ce_w, "ce_b": ce_b,
    }
    os.makedirs(args.out, exist_ok=True)
    f64 = {}
    for name, arr in arrays.items():
        a32 = np.ascontiguousarray(arr, dtype=np.float32)
        np.save(os.path.join(args.out, name + ".npy"), a32)
        f64[name] = a32.astype(np.float64)
    z1, z2, queue, p1, p2, sp1, sp2, ce_w, ce_b = (f64[n] for n in arrays)

    for mu in (1.0, 2.0):
        for sp in (sp1, sp2):
            gap = np.min(np.abs(np.linalg.norm(sp, axis=1) - math.sqrt(mu)))
            assert gap > 0.05, f"spectral input too close to the projection boundary: {gap}"

    cases = []

    def add(loss, params, value, **extra):
        cases.append({"loss": loss, "params": params, "value": value, **extra})

    for tau in (0.1, 0.5):
        add("nt_xent", {"tau": tau}, nt_xent(z1, z2, tau))
    for tau, beta, tau_plus in ((0.5, 0.0, 0.0), (0.5, 1.0, 0.1), (0.2, 0.5, 0.05), (0.5, 1.0, 0.4)):
        value, clamped, margin = hcl(z1, z2, tau, beta, tau_plus)
        add("hcl", {"tau": tau, "beta": beta, "tau_plus": tau_plus}, value,
            clamped=clamped, clamp_margin=margin)
    for tau in (0.07, 0.2):
        add("infonce_bank", {"tau": tau}, infonce_bank(z1, z2, queue, tau))
    for lam, t in ((1.0, 2.0), (0.5, 3.0)):
        add("align_uniform", {"lambda": lam, "t": t}, align_uniform(z1, z2, lam, t))
    for mu in (1.0, 2.0):
        add("spectral", {"mu": mu}, spectral(sp1, sp2, mu))
    for t_prime, bias in ((math.log(10.0), -10.0), (math.log(5.0), -2.0)):
        add("sigmoid", {"t_prime": t_prime, "bias": bias}, sigmoid_loss(z1, z2, t_prime, bias))
    # Fixed labels (not drawn from the rng, so the arrays above stay as
    # they were): three classes, one unlabelled row; the queue's labels
    # cycle through the classes with every fourth key unlabelled.
    labels = [0, 1, 0, 2, 1, None, 0, 2][:b]
    queue_labels = [None if j % 4 == 3 else j % 3 for j in range(k)]
    for tau in (0.1, 0.5):
        add("supcon", {"tau": tau, "labels": labels}, supcon(z1, z2, labels, tau))
        add("supcon", {"tau": tau, "labels": [None] * b}, supcon(z1, z2, [None] * b, tau))
    for tau in (0.1, 0.2):
        add("supcon_bank", {"tau": tau, "labels": labels, "queue_labels": queue_labels},
            supcon_bank(z1, z2, labels, queue, queue_labels, tau))
    # Semi-supervised: mostly unlabelled anchors and bank, as in a
    # --labels-per-class run. (0, 0, 1) is plain SupCon (the defaults); the
    # last combination of each leaves exactly one negative.
    semi = [0, None, None, 2, None, None, 0, None][:b]
    semi_queue = [j % 3 if j % 5 == 0 else None for j in range(k)]
    for lab, qlab in ((semi, semi_queue), (labels, queue_labels), ([None] * b, [None] * k)):
        for tau, nn, fnc, uw in ((0.1, 0, 0, 1.0), (0.1, 1, 0, 1.0), (0.2, 2, 0, 1.0),
                                 (0.1, 1, 4, 1.0), (0.1, 0, 3, 1.0), (0.1, 1, 4, 0.5),
                                 (0.2, 3, 8, 0.25), (0.1, 0, 0, 0.5), (0.1, 2, 3, 0.0),
                                 (0.1, 20, b + k - 1 - 20 - 1, 2.0)):
            value, margin = supcon_bank_nn(z1, z2, lab, queue, qlab, tau, nn, fnc, uw)
            add("supcon_bank_nn", {"tau": tau, "nn": nn, "fnc": fnc, "uw": uw,
                                   "labels": lab, "queue_labels": qlab}, value,
                rank_margin=margin if math.isfinite(margin) else None)
        for tau, nn, fnc, uw in ((0.1, 0, 0, 1.0), (0.1, 1, 0, 1.0), (0.5, 2, 3, 1.0),
                                 (0.1, 1, 4, 0.5), (0.1, 0, 0, 0.5), (0.2, 0, 2, 1.0),
                                 (0.1, 3, 2 * b - 2 - 3 - 1, 2.0)):
            value, margin = supcon_nn(z1, z2, lab, tau, nn, fnc, uw)
            add("supcon_nn", {"tau": tau, "nn": nn, "fnc": fnc, "uw": uw, "labels": lab},
                value, rank_margin=margin if math.isfinite(margin) else None)
    for ce_labels in (labels, [2, 2, 1, 0, None, None, 1, 0][:b], [None] * b):
        add("ce", {"labels": ce_labels}, cross_entropy(z1, ce_labels, ce_w, ce_b[0]))
    add("byol", {}, byol(p1, z2))
    add("byol_symmetric", {}, byol(p1, z2) + byol(p2, z1))

    meta = {
        "generator": "runtime/tests/reference/losses_ref.py",
        "seed": args.seed,
        "numpy": np.__version__,
        "shapes": {n: list(a.shape) for n, a in f64.items()},
        "cases": cases,
    }
    with open(os.path.join(args.out, "losses_ref.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    for c in cases:
        print(c)


if __name__ == "__main__":
    main()
