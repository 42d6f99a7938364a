"""Study (issue 23, part 1): the paper's Fig 3 autoencoder on MNIST, declared before its runs.

    python analysis/fig3_autoencoder.py --lr 0.01 --epochs E [--runs /work/studies/fig3]
    python analysis/fig3_autoencoder.py --lr 0.001 --epochs E ...
    python analysis/fig3_autoencoder.py --report --record paper_figures/results/fig3_autoencoder

Declared (before any run):

- **Net and data:** ``mnist-ae`` (784-1000-500-250-30 and the mirror image, logits out), He
  initialisation, run j of every unit type from the same initial weights; MNIST's 50,000
  training images, the 10,000 validation images for every curve and selection, the 10,000
  test images only for the final numbers.
- **Loss:** binary cross-entropy on the logits, per pixel (``loss="bce_logits"``; the paper
  does not say). Why: MNIST pixels lie in [0, 1] and are nearly binary, BCE is the
  negative log-likelihood of the Bernoulli model whose Fisher natgrad's analysis uses
  (``likelihood="bernoulli"``), and it is what the deep-autoencoder literature the paper
  follows (Hinton & Salakhutdinov 2006; Martens 2010) reports. Kept for every run.
- **Training:** SGD, batch 64, no momentum; the paper's rates 1e-2 and 1e-3 (1e-4 and 1e-5
  if time allows), one grid per rate (ELU/ReLU/LReLU × ``SEEDS`` seeds batched), resumable in
  pieces. At least ``MIN_EPOCHS`` = 25 epochs: the paper's 500 do not fit this CPU.
- **Reported:** training and validation reconstruction error (BCE) per epoch, one panel per
  rate; paired ELU − other differences, BCa CIs over seeds, at epochs 5, 10, 25 and on the
  AUC (``natgrad.analysis.stats.loss_auc`` of the training loss over epochs 1..E, linear and
  log); test error at the last epoch only. **Primary endpoint per rate** (Holm over the two
  other unit types and the rates run): ELU − other in log training-loss AUC over epochs
  1..25.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

UNITS = ("elu", "relu", "lrelu")
SEEDS = 5
MIN_EPOCHS = 25
RATES = (1e-2, 1e-3, 1e-4, 1e-5)
AT_EPOCHS = (5, 10, 25)


def study(lr: float, epochs: int, *, seeds: int = SEEDS, train_size: int | None = None):
    """The runs of one learning rate, declared: ELU, ReLU, LReLU × seeds (shared weights)."""
    from natgrad.analysis.study import Study
    from natgrad.training.config import default_config

    def config(unit: str, seed: int):
        return dataclasses.replace(
            default_config("mnist-ae"), unit=unit, seed=seed, lr=lr, epochs=epochs,
            train_size=train_size, checkpoint_every=5, keep_checkpoints=1, probe_size=256,
            notes=f"fig3 autoencoder, lr {lr:g}",
        )  # fmt: skip

    return Study(f"fig3 autoencoder, lr {lr:g}", UNITS, range(seeds), config)


def train(root: Path, lr: float, epochs: int, *, seeds: int = SEEDS, train_size=None) -> float:
    t0 = time.perf_counter()
    diverged = study(lr, epochs, seeds=seeds, train_size=train_size).train(
        root / f"lr{lr:g}", say=print
    )
    if diverged:  # recorded in the run (diverged.json), not retried; the report names them
        print(f"lr {lr:g}: diverged {sorted(diverged)}")
    return time.perf_counter() - t0


def comparisons(curves, epochs: int):
    """Per rate: ELU − other on the AUCs and on the losses at :data:`AT_EPOCHS` (≤ epochs)."""
    import pandas as pd

    from natgrad.analysis.stats import holm, loss_auc, paired_comparison

    rows = []
    for lr, sub in curves.groupby("lr"):
        per_run = []
        for (unit, seed), g in sub.groupby(["unit_type", "seed"]):
            g = g.sort_values("epoch")
            trained = g[(g["epoch"] >= 1) & (g["epoch"] <= epochs)]
            row = {"unit_type": unit, "seed": seed,
                   "train_loss_auc": loss_auc(trained["train_loss"]),
                   "log_train_loss_auc": loss_auc(trained["train_loss"], log=True)}  # fmt: skip
            for e in AT_EPOCHS:
                if e <= epochs:
                    row[f"train_loss_e{e}"] = float(g.loc[g["epoch"] == e, "train_loss"].iloc[0])
                    row[f"val_loss_e{e}"] = float(g.loc[g["epoch"] == e, "val_loss"].iloc[0])
            row["test_loss_last"] = float(trained["test_loss"].iloc[-1])
            per_run.append(row)
        values = pd.DataFrame(per_run)
        for metric in [c for c in values.columns if c not in ("unit_type", "seed")]:
            t = paired_comparison(values, metric, reference="elu")
            t.insert(0, "lr", lr)
            rows.append(t)
    table = pd.concat(rows, ignore_index=True)
    primary = table["metric"] == "log_train_loss_auc"
    table["role"] = ["primary" if p else "secondary" for p in primary]
    table.loc[primary, "p_holm"] = holm(table.loc[primary, "p"].to_numpy())
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, choices=RATES, default=None)
    parser.add_argument("--epochs", type=int, default=MIN_EPOCHS)
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--train-size", type=int, default=None, help="smoke runs only")
    parser.add_argument("--runs", type=Path, default=Path("runs/fig3"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.lr is not None:
        wall = train(args.runs, args.lr, args.epochs, seeds=args.seeds, train_size=args.train_size)
        print(f"lr {args.lr:g}: epochs 1..{args.epochs} of {len(UNITS) * args.seeds} runs in "
              f"{wall:.0f} s")  # fmt: skip
    if args.report:
        import pandas as pd

        from natgrad.analysis.runs import curve_table

        frames = []
        for folder in sorted(args.runs.glob("lr*")):
            dirs = sorted(p.parent for p in folder.glob("*/config.json"))
            frames.append(curve_table(dirs).assign(lr=float(folder.name[2:])))
        curves = pd.concat(frames, ignore_index=True)
        epochs = int(curves.groupby(["lr", "run"])["epoch"].max().min())
        table = comparisons(curves, epochs)
        print(table[["lr", "metric", "other", "diff", "lo", "hi", "p"]].to_string(index=False))
        if args.record:
            from natgrad.analysis.csvtables import write_csv

            args.record.mkdir(parents=True, exist_ok=True)
            write_csv(curves, args.record / "curves.csv")
            write_csv(table, args.record / "comparisons.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
