r"""Benchmark: where the time of a unit natural-gradient step goes, against a plain SGD step.

The setting of issue 22's comparison: ``mnist-fc`` (784 → 8×128 → 10) on MNIST-shaped inputs,
batch 64, float32, one thread; ``UnitNaturalGradient`` (Monte-Carlo Fisher, refresh every
``--refresh`` steps, ema 0.9, λ = 0.1, λ_layer = 0.3) with the pixel-fed fc1 left to plain
SGD (``plain_layers``), and, for comparison, the block-diagonal variant. One refresh period
is timed part by part:

- ``forward+backward``: the training loss and its gradient (what SGD also pays);
- ``refresh``: the unit Fisher of the current batch (natgrad's engine: one forward and one
  batched backward over the sampled labels) and the running average;
- ``factorise``: F_λ⁻¹ of every unit (float64 Cholesky + inverse, once per refresh);
- ``apply``: the preconditioned direction (one batched float32 matmul per layer) and the
  update, every step.

The SGD step (forward, backward, ``torch.optim.SGD``) is timed alternately in the same
process; every ratio is against it. Run ``python bench/ng_cost_split.py`` (``--quick``);
results in ``bench/results/ng_cost_split_cpu.txt``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F


def period(structure: str, refresh: int, x, y, seed: int = 0) -> dict[str, float]:
    """Seconds of one refresh period of ``refresh`` steps, split by part."""
    from natgrad.models import build_model
    from natgrad.optim import UnitNaturalGradient

    net = build_model("mnist-fc", "relu", in_shape=(1, 28, 28), num_classes=10, seed=seed)
    opt = UnitNaturalGradient(net, 0.0, structure=structure, refresh_every=refresh,
                              plain_layers=("fc1",), seed=seed)  # fmt: skip
    parts = dict.fromkeys(("forward+backward", "refresh", "factorise", "apply"), 0.0)
    for step in range(refresh):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        t1 = time.perf_counter()
        parts["forward+backward"] += t1 - t0
        if step == 0:
            opt._refresh(x, None)
            t2 = time.perf_counter()
            parts["refresh"] += t2 - t1
            opt._factors = {n: opt._preconditioner(n, m) for n, m in opt.layers.items()}
            t1 = time.perf_counter()
            parts["factorise"] += t1 - t2
        with torch.no_grad():
            directions = opt._directions()
            for p in net.parameters():
                p.add_(directions.get(p, p.grad), alpha=-0.0)
        parts["apply"] += time.perf_counter() - t1
    return parts


def sgd_period(refresh: int, x, y, seed: int = 0) -> float:
    from natgrad.models import build_model

    net = build_model("mnist-fc", "relu", in_shape=(1, 28, 28), num_classes=10, seed=seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    t0 = time.perf_counter()
    for _ in range(refresh):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refresh", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rounds = 1 if args.quick else args.rounds
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    period("unit", args.refresh, x, y)  # warm-up
    sgd_period(args.refresh, x, y)
    print(f"torch {torch.__version__}, 1 thread, mnist-fc, batch 64, float32, fc1 plain, "
          f"refresh every {args.refresh} steps; median of {rounds} rounds, SGD timed "
          "alternately")  # fmt: skip
    for structure in ("unit", "blockdiag"):
        runs, sgd = [], []
        for _ in range(rounds):
            sgd.append(sgd_period(args.refresh, x, y))
            runs.append(period(structure, args.refresh, x, y))
        s = statistics.median(sgd) / args.refresh
        parts = {k: statistics.median(r[k] for r in runs) / args.refresh for k in runs[0]}
        total = sum(parts.values())
        print(f"\n{structure}-ng: {1e3 * total:.1f} ms per step = {total / s:.1f}x SGD "
              f"({1e3 * s:.1f} ms)")  # fmt: skip
        for k, v in parts.items():
            print(f"  {k:<17} {1e3 * v:8.2f} ms  {100 * v / total:5.1f} %  {v / s:6.2f}x SGD")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
