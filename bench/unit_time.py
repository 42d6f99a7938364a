r"""Benchmark: the time per training iteration of each unit type (the paper: ELU/ReLU 1.058
on ImageNet, 12.15 h vs 11.48 h per 10k iterations), measured on a quiet CPU.

The batch-norm CNN study (``analysis/bn_cnn.py``) records each run's seconds per iteration,
but its runs shared the CPU with other work; this benchmark times the same step in one
process, the arms interleaved round by round so that drift in the machine's speed falls on
every arm alike:

- the study's net (``cifar-11`` at 1/8 width, dropout, momentum 0.9, L2 5e-4) and the full
  width recipe, on MNIST batches of 100 (the study's data and batch);
- arms ELU, ReLU, LReLU, SReLU, ReLU+BN, ELU+BN; one step = forward, backward and the SGD
  update (what the trainer times as an iteration, without the data loader);
- ``--rounds`` rounds of ``--steps`` steps per arm; per arm the median over rounds; the
  ratio to ReLU per round (paired), its geometric mean and a t 95 % CI over rounds (``stats.geometric_mean_ci``).

Run ``python bench/unit_time.py`` (``--quick``); results in ``bench/results/unit_time_cpu.txt``.
No target: the number is reported beside the paper's 1.058.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional as F

ARMS = ("elu", "relu", "lrelu", "srelu", "relu-bn", "elu-bn")


def _stepper(arm: str, scale: float | None, seed: int = 0):
    from natgrad.models import build_model

    unit, bn = (arm[:-3], True) if arm.endswith("-bn") else (arm, False)
    options = {} if scale is None else {"channel_scale": scale}
    net = build_model("cifar-11", unit, batch_norm=bn, in_shape=(1, 28, 28), num_classes=10,
                      seed=seed, **options).train()  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def measure(scale: float | None, rounds: int, steps: int, x, y) -> dict[str, np.ndarray]:
    """Seconds per iteration, ``[rounds]`` per arm, the arms interleaved within each round."""
    steppers = {arm: _stepper(arm, scale) for arm in ARMS}
    batches = [(x[i * 100 : (i + 1) * 100], y[i * 100 : (i + 1) * 100]) for i in range(steps)]
    for step in steppers.values():  # warm-up
        for xb, yb in batches[:3]:
            step(xb, yb)
    out = {arm: [] for arm in ARMS}
    for r in range(rounds):
        order = ARMS if r % 2 == 0 else ARMS[::-1]
        for arm in order:
            t0 = time.perf_counter()
            for xb, yb in batches:
                steppers[arm](xb, yb)
            out[arm].append((time.perf_counter() - t0) / steps)
    return {arm: np.asarray(v) for arm, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    from natgrad.analysis.stats import geometric_mean_ci
    from natgrad.data import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="per round, 1/8 width")
    parser.add_argument("--full-steps", type=int, default=3, help="per round, full width")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 5 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.full_steps = 3, 5, 1
    torch.set_num_threads(args.threads)
    ds = load_dataset("mnist")
    x, y = ds.train_x[: 100 * args.steps], ds.train_y[: 100 * args.steps]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.rounds} rounds "
          f"per arm, batch 100, MNIST; arms interleaved (order reversed every other round)")  # fmt: skip
    for label, scale, steps in (("cifar-11 at 1/8 width (the study's net)", 0.125, args.steps),
                                ("cifar-11 at full width", None, args.full_steps)):  # fmt: skip
        t = measure(scale, args.rounds, steps, x, y)
        print(f"\n{label}, {steps} steps per round: ms per iteration (median over rounds) and ratio to ReLU "
              "(geometric mean of per-round ratios, t 95 % CI)")  # fmt: skip
        for arm in ARMS:
            gm, lo, hi, _ = geometric_mean_ci(t[arm] / t["relu"]) if arm != "relu" else (1, 1, 1, 0)
            print(f"  {arm:8s} {1e3 * np.median(t[arm]):8.2f} ms   x{gm:.3f} "
                  f"({lo:.3f} to {hi:.3f})")  # fmt: skip
    print("\npaper (ImageNet, imagenet-15, GPU): ELU/ReLU 1.058")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
