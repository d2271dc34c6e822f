#!/usr/bin/env python3
"""The peer of benches/adapt.rs: the same MoCo step in PyTorch on CPU.

One step: q = head(adapter(x1)); k = head_ema(adapter_ema(x2)) without grad;
logits [q·k⁺, q·queue]/τ on L2-normalised rows; cross-entropy on the
positive; backward; AdamW; EMA update of adapter + head; enqueue k.
adapter(x) = x + up(relu(down(x))), head(x) = fc2(relu(fc1(x))), as in
runtime/src/adapt/layers.rs. Prints one JSON line: steps/s and peak RSS.

--tail: the inputs are the flattened cut tensor of MobileNetV2 ([B, 320·7·7],
channel-major as the ONNX trunk outputs it) and the net first runs the
trainable tail of runtime/src/adapt/tail.rs: the 1×1 conv 320→1280 + bias as
one matmul over all B·49 pixels, ReLU6 (clamp 0..6), global average pool;
then the same adapter + head. The tail's weights are trained and EMA-copied
with the rest, exactly as in the head-only mode.
"""
import argparse, json, resource, time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--bottleneck", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--out", type=int, default=128)
    ap.add_argument("--bank", type=int, default=4096)
    ap.add_argument("--tau", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tail", action="store_true",
                    help="train the 1x1 conv + ReLU6 + pool tail too")
    ap.add_argument("--channels", type=int, default=320)
    ap.add_argument("--pixels", type=int, default=49)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.down = torch.nn.Linear(a.dim, a.bottleneck)
            self.up = torch.nn.Linear(a.bottleneck, a.dim)
            torch.nn.init.zeros_(self.up.weight)
            torch.nn.init.zeros_(self.up.bias)
            self.fc1 = torch.nn.Linear(a.dim, a.hidden)
            self.fc2 = torch.nn.Linear(a.hidden, a.out)
            if a.tail:
                # 1x1 conv 320->1280 with its bias, held as a Linear.
                self.conv = torch.nn.Linear(a.channels, a.dim)

        def forward(self, x):
            if a.tail:
                # [B, C*S] channel-major -> [B, S, C]; one matmul for all pixels.
                x = x.view(-1, a.channels, a.pixels).transpose(1, 2)
                x = F.linear(x, self.conv.weight, self.conv.bias)
                x = x.clamp(0.0, 6.0).mean(1)
            x = x + self.up(F.relu(self.down(x)))
            return self.fc2(F.relu(self.fc1(x)))

    net, ema = Net(), Net()
    ema.load_state_dict(net.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    queue = F.normalize(torch.randn(a.bank, a.out), dim=1)
    ptr = 0
    width = a.channels * a.pixels if a.tail else a.dim
    x1 = torch.randn(a.batch, width)
    x2 = x1 + 0.1 * torch.randn(a.batch, width)

    def step():
        nonlocal queue, ptr
        q = F.normalize(net(x1), dim=1)
        with torch.no_grad():
            k = F.normalize(ema(x2), dim=1)
        l_pos = (q * k).sum(1, keepdim=True)
        l_neg = q @ queue.t()
        logits = torch.cat([l_pos, l_neg], 1) / a.tau
        loss = F.cross_entropy(logits, torch.zeros(a.batch, dtype=torch.long))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.mul_(0.99).add_(p, alpha=0.01)
            queue[ptr:ptr + a.batch] = k
            ptr = (ptr + a.batch) % a.bank
        return loss.item()

    for _ in range(a.warmup):
        step()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    dt = time.perf_counter() - t
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"steps_per_sec": a.steps / dt, "peak_rss_mb": rss_mb,
                      "threads": a.threads, "tail": a.tail,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
