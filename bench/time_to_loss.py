r"""Benchmark: wall-clock time to SGD's epoch-5 loss, for every optimizer (issue 24, item 2).

The setting of the fair comparison (``analysis/fair_compare.py``, issue 22): ``mnist-fc``
(784 → 8×128 → 10) on MNIST (train 50k, validation 10k), batch 64, float32, one thread, the
pixel-fed fc1 trained by plain SGD in every arm, each arm at the learning rate the comparison
chose on the validation split from a small grid (``paper_figures/results/compare_mnist/
rates.csv``: SGD-family from {0.003, 0.01, 0.03, 0.1}, natural-gradient family from
{1e-4, 3e-4, 1e-3, 3e-3}, 2 pilot seeds). Every arm is trained alone, one after the other in
this process, epoch by epoch, on seed ``--seed`` with the same initial weights.

Targets: ReLU+SGD's training loss (the running mean over its 5th epoch) and validation loss
after epoch 5. For each arm the time to reach each is the training time (``train_seconds``:
the optimizer's steps, not the evaluations) summed up to the first epoch whose loss is at or
below the target; an arm stops once it has reached both, or after ``--max-epochs``. The
verdict states where, if anywhere, a natural-gradient arm reaches a target first.

Run ``python bench/time_to_loss.py`` (about 20 minutes on one core). Results:
``bench/results/time_to_loss_cpu.txt``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import tempfile
import time
from pathlib import Path

from _common import machine

HERE = Path(__file__).resolve().parent.parent
RATES = HERE / "paper_figures" / "results" / "compare_mnist" / "rates.csv"
ARMS = ("relu-sgd", "elu-sgd", "relu-centred", "relu-bn", "relu-qd", "relu-blockdiag-ng",
        "relu-unit-ng", "elu-unit-ng")  # fmt: skip
NATURAL = ("relu-qd", "relu-blockdiag-ng", "relu-unit-ng", "elu-unit-ng")
TARGET_ARM, TARGET_EPOCH = "relu-sgd", 5


def chosen_rates(path: Path = RATES) -> dict[str, float]:
    """``{arm: lr}`` the comparison chose on the validation split."""
    with open(path, newline="") as f:
        return {r["arm"]: float(r["lr"]) for r in csv.DictReader(f) if r["chosen"] == "True"}


def train_arm(arm: str, config, seed: int, root: Path, until, max_epochs: int) -> list[dict]:
    """Train ``arm`` one epoch at a time (resuming its run directory) until ``until(rows)``
    or ``max_epochs``; its metrics rows (epoch 0 first)."""
    import torch

    from natgrad.studies.compare import arm_config
    from natgrad.training import RunDir, train

    torch.set_num_threads(1)
    run = root / arm
    rows: list[dict] = []
    for epoch in range(1, max_epochs + 1):
        cfg = dataclasses.replace(arm_config(config, arm, seed), epochs=epoch)
        train(cfg, run, device="cpu", progress=False)
        rows = RunDir(run).read_metrics()
        if until(rows):
            break
    return rows


def first_time(rows: list[dict], key: str, target: float) -> tuple[float, int] | None:
    """(training seconds summed to the first epoch with ``key`` ≤ ``target``, that epoch)."""
    total = 0.0
    for r in rows[1:]:
        total += r["train_seconds"]
        if r[key] is not None and math.isfinite(r[key]) and r[key] <= target:
            return total, r["epoch"]
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, default=5)
    p.add_argument("--arms", default=",".join(ARMS))
    args = p.parse_args()
    from natgrad.studies.compare import CompareConfig

    rates = chosen_rates()
    arms = [a for a in args.arms.split(",") if a]
    if arms[0] != TARGET_ARM:
        arms = [TARGET_ARM] + [a for a in arms if a != TARGET_ARM]
    config = CompareConfig(dataset="mnist", arms=tuple(arms), plain_first_layer=True,
                           lrs=tuple((a, rates[a]) for a in rates), epochs=args.max_epochs)  # fmt: skip
    print(f"# bench/time_to_loss.py {' '.join(f'--{k.replace(chr(95), chr(45))} {v}' for k, v in vars(args).items())}; "
          f"{machine()}, 1 thread, "
          f"seed {args.seed}, rates {RATES.relative_to(HERE)}")  # fmt: skip
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    target: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in arms:
            if arm == TARGET_ARM:
                rows = train_arm(arm, config, args.seed, Path(tmp), lambda r: False, TARGET_EPOCH)
                target = {k: rows[TARGET_EPOCH][k] for k in ("train_loss", "val_loss")}
                print(f"targets: {TARGET_ARM} after epoch {TARGET_EPOCH}: training loss "
                      f"{target['train_loss']:.4f}, validation loss {target['val_loss']:.4f}")  # fmt: skip
            else:
                rows = train_arm(arm, config, args.seed, Path(tmp),
                                 lambda r, t=target: all(first_time(r, k, v) for k, v in t.items()),
                                 args.max_epochs)  # fmt: skip
            per_epoch = sum(r["train_seconds"] for r in rows[1:]) / max(1, len(rows) - 1)
            results[arm] = {"per_epoch": per_epoch, "epochs": len(rows) - 1,
                            **{k: first_time(rows, k, v) for k, v in target.items()}}  # fmt: skip
    print(
        f"\n{'arm':20} {'lr':>8} {'s/epoch':>8}   {'to training loss':>22}   {'to validation loss':>22}"
    )
    base = {k: results[TARGET_ARM][k][0] for k in target}

    def cell(res, k):
        hit = res[k]
        if hit is None:
            return f"{'not in ' + str(res['epochs']) + ' epochs':>22}"
        return f"{hit[0]:7.1f} s (ep {hit[1]}) {hit[0] / base[k]:5.2f}x"

    for arm, res in results.items():
        print(f"{arm:20} {rates.get(arm, float('nan')):8.0e} {res['per_epoch']:8.1f}   "
              f"{cell(res, 'train_loss')}   {cell(res, 'val_loss')}")  # fmt: skip
    print("(x: time over ReLU+SGD's time to the same loss, measured in this run)")
    wins = [(arm, k) for arm in NATURAL if arm in results for k in target
            if results[arm][k] is not None and results[arm][k][0] < base[k]]  # fmt: skip
    if wins:
        print(
            "a natural-gradient arm reaches a target before ReLU+SGD: "
            + ", ".join(f"{a} ({k})" for a, k in wins)
        )
    else:
        sgd = results[TARGET_ARM]
        parts = []
        for a in (a for a in NATURAL if a in results):
            r = results[a]
            reached = [f"{k.split('_')[0]} loss at epoch {r[k][1]}" for k in target if r[k]]
            parts.append(f"{a}: {r['per_epoch'] / sgd['per_epoch']:.1f}x an SGD epoch, "
                         + (", ".join(reached) or f"neither target in {r['epochs']} epochs"))  # fmt: skip
        print(f"no natural-gradient arm reaches ReLU+SGD's epoch-{TARGET_EPOCH} training or "
              "validation loss first on this CPU -- why: an epoch costs more than the epochs "
              "it saves (a Fisher refresh every 10 steps, float64 block solves), at the rates "
              "validated for it: " + "; ".join(parts))  # fmt: skip
    print(f"total wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
