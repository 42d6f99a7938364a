"""Study (issue 23, item 2): the paper's batch-norm question (Fig 5, Table 1) on a CNN that fits
this CPU — does ELU have the lowest test error of the four units, and does batch norm help
ReLU but not ELU?

Declared before any run (this file is the declaration; its commit precedes the runs):

- **Net:** the paper's ``cifar-11`` recipe (7 stacks, 11 conv layers, 2×2 max-pool after the
  stacks while the map is ≥ 2×2, per-stack dropout 0, .1, .2, .3, .4, .5, 0, a 1×1 conv head
  and global average pooling) at ``CHANNEL_SCALE`` = 1/8 of its widths (24, 24-30, 30-32,
  32-35, 35-38, 38 channels; 26,597 parameters), on MNIST 1×28×28, 10 classes.
- **Arms:** ELU, ReLU, LReLU (α 0.1), SReLU, ReLU+BN, ELU+BN (batch norm after every conv
  but the head, before the unit); seeds 0–9, run j of every arm from the same initial
  weights.
- **Recipe (the paper's, scaled):** SGD, momentum 0.9, L2 5e-4, batch 100, no augmentation
  (MNIST), pixels in [0, 1]; ``EPOCHS`` epochs of MNIST's 50,000 training images (500
  iterations each); learning rate 0.01, halved at 21 % of the run and then ÷10 at 52 % and
  82 % (the paper's 35k/85k/135k of 165k iterations: 0.01, 0.005, 5e-4, 5e-5).
- **Endpoints:** test error at the epoch of lowest validation error (MNIST's 10,000
  validation images; the test set is read only there). Primary (Holm over the four):
  ELU − ReLU, ELU − LReLU, ELU − SReLU, and the interaction (ReLU − ReLU+BN) − (ELU − ELU+BN)
  ("batch norm helps ReLU more than ELU"), each paired by seed. Secondary: ELU − ELU+BN,
  ReLU − ReLU+BN, validation curves, and the ELU/ReLU time per iteration measured in the
  same process (the paper: 1.058 on ImageNet).

    python analysis/bn_cnn.py train [--runs runs/bn_cnn] [--seeds F:C] [--arms a,b]
    python analysis/bn_cnn.py report [--runs runs/bn_cnn] --record paper_figures/results/bn_cnn_mnist
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ARMS = ("elu", "relu", "lrelu", "srelu", "relu-bn", "elu-bn")
CHANNEL_SCALE, EPOCHS, SEEDS, BATCH, LR = 0.125, 6, 10, 100, 0.01
STEPS = tuple((round(f * EPOCHS * 500), lr) for f, lr in ((0.0, LR), (35 / 165, LR / 2),
                                                         (85 / 165, LR / 20), (135 / 165, LR / 200)))  # fmt: skip


def config(arm: str, seed: int, epochs: int = EPOCHS):
    from natgrad.training import default_config

    unit, bn = (arm[:-3], True) if arm.endswith("-bn") else (arm, False)
    return default_config(
        "cifar-11", dataset="mnist", unit=unit, batch_norm=bn, seed=seed, epochs=epochs,
        channel_scale=CHANNEL_SCALE, batch_size=BATCH, lr=LR, momentum=0.9, weight_decay=5e-4,
        lr_schedule=STEPS, schedule_unit="iteration", preprocess="none", augment=False,
        checkpoint_every=1, keep_checkpoints=1, probe_size=256, notes=f"bn_cnn arm {arm}",
    )  # fmt: skip


def study(seeds=range(SEEDS), arms=ARMS):
    """The declared runs as a :class:`~natgrad.analysis.study.Study`."""
    from natgrad.analysis.study import Study

    return Study("batch norm on a CNN (MNIST)", arms, seeds, config)


def per_run(root: Path, seeds: range, arms=ARMS):
    r"""One row per finished run: test error at the best-validation epoch, the median time
    per iteration, the validation curve's minimum."""
    import math

    import pandas as pd

    from natgrad.training.rundir import RunDir

    rows = []
    for _, _, cfg, run in study(seeds, arms).finished(root):
        metrics = [r for r in RunDir(run).read_metrics() if r["epoch"] >= 1]
        best = min(
            metrics, key=lambda r: r["val_loss"] if r.get("val_loss") is not None else math.inf
        )
        times = sorted(r["seconds_per_iteration"] for r in metrics)
        rows.append(dict(unit_type=run.name.rsplit("-s", 1)[0], seed=cfg.seed,
                         best_val_epoch=best["epoch"], val_loss=best["val_loss"],
                         val_error=best.get("val_error"), test_error_at_best_val=best["test_error"],
                         seconds_per_iteration=times[len(times) // 2]))  # fmt: skip
    return pd.DataFrame(rows)


def primaries(values):
    r"""The four declared endpoints (Holm) and the secondary BN effects, paired by seed."""
    import numpy as np
    import pandas as pd

    from natgrad.analysis.stats import bootstrap_ci, holm, sign_flip_p

    wide = values.pivot(index="seed", columns="unit_type", values="test_error_at_best_val")

    def row(label, d, role):
        d = np.asarray(d, dtype=float)
        d = d[np.isfinite(d)]
        lo, hi, how = bootstrap_ci(d)
        return dict(endpoint=label, role=role, seeds=len(d), diff=float(d.mean()) if len(d) else
                    np.nan, lo=lo, hi=hi, ci_method=how, p=sign_flip_p(d))  # fmt: skip

    rows = [row(f"elu - {o}", wide["elu"] - wide[o], "primary") for o in ("relu", "lrelu", "srelu")]
    rows.append(row("(relu - relu-bn) - (elu - elu-bn)",
                    (wide["relu"] - wide["relu-bn"]) - (wide["elu"] - wide["elu-bn"]), "primary"))  # fmt: skip
    rows += [row("elu - elu-bn", wide["elu"] - wide["elu-bn"], "secondary"),
             row("relu - relu-bn", wide["relu"] - wide["relu-bn"], "secondary")]  # fmt: skip
    table = pd.DataFrame(rows)
    prim = table["role"] == "primary"
    table.loc[prim, "p_holm"] = holm(table.loc[prim, "p"].to_numpy())
    return table


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("train", "report"))
    parser.add_argument("--runs", type=Path, default=Path("runs/bn_cnn"))
    parser.add_argument("--seeds", default=f"0:{SEEDS}", help="FIRST:COUNT of seeds 0-9")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    first, count = (int(v) for v in args.seeds.split(":"))
    seeds, arms = range(first, first + count), tuple(args.arms.split(","))
    if args.stage == "train":
        t0 = time.perf_counter()
        diverged = study(seeds, arms).train(args.runs, say=print)
        print(f"trained {len(seeds) * len(arms)} runs in {time.perf_counter() - t0:.0f} s; diverged "
              f"{sorted(diverged) or 'none'}")  # fmt: skip
        return 0
    values = per_run(args.runs, seeds, arms)
    table = primaries(values)
    ratio = (values[values.unit_type == "elu"]["seconds_per_iteration"].median()
             / values[values.unit_type == "relu"]["seconds_per_iteration"].median())  # fmt: skip
    print(values.groupby("unit_type")["test_error_at_best_val"].agg(["mean", "count"]))
    print(table.round(5).to_string(index=False))
    print(f"ELU/ReLU time per iteration: {ratio:.3f}")
    if args.record:
        from natgrad.analysis.csvtables import write_csv

        args.record.mkdir(parents=True, exist_ok=True)
        write_csv(values, args.record / "runs.csv")
        write_csv(table, args.record / "primary.csv")
    return 0


if __name__ == "__main__":
    sys.exit(run())
