"""Study (issue 22): the fair causal test of the ELU paper's mechanism on MNIST — per-arm
learning rates chosen on validation, a Theorem-2-only arm, the pixel layer controlled.

The declaration is :mod:`natgrad.studies.fair_compare` (committed before the runs).

Stages (each resumable; a rerun goes on where it stopped)::

    python analysis/fair_compare.py pilot-sgd [--runs runs/fair_compare]
    python analysis/fair_compare.py pilot-ng  [--runs ...]      # fc1 at the chosen SGD rates
    python analysis/fair_compare.py select    [--runs ...] --record paper_figures/results/compare_mnist
    python analysis/fair_compare.py refresh   [--runs ...]
    python analysis/fair_compare.py main      [--runs ...] [--arms a,b] [--variant]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

from natgrad.argtypes import seed_range
from natgrad.studies.fair_compare import (  # noqa: F401 (the declaration, re-exported)
    ARMS,
    EPOCHS,
    GRIDS,
    PILOT_EPOCHS,
    PILOT_SEEDS,
    REFRESH_PILOT,
    SEEDS,
    SELECTION,
    VARIANT_EPOCHS,
    base,
    family,
)
from natgrad.training.carry import copy_runs, finished


def pilot_configs(runs: Path, fam: str) -> dict[str, object]:
    """The pilot of one family: a comparison per grid position k, every arm of the family at
    the k-th rate. The natural-gradient pilot runs after the SGD one: its plain fc1 takes its
    unit type's selected SGD rate, as in the main run."""
    arms = tuple(a for a in ARMS if family(a) == fam)
    fixed = ()
    if fam == "ng":
        sgd = dict(chosen_rates(runs, "sgd"))
        fixed = tuple((a, sgd[a]) for a in ("relu-sgd", "elu-sgd"))
    out = {}
    for k in range(4):
        lrs = tuple((a, GRIDS[fam][k]) for a in arms) + fixed
        out[f"{fam}-rate{k}"] = base(epochs=PILOT_EPOCHS, seeds=2, first_seed=PILOT_SEEDS[0],
                                     arms=arms, lrs=lrs)  # fmt: skip
    return out


def pilot(args, fam: str) -> None:
    from natgrad.studies import compare

    for name, config in pilot_configs(args.runs, fam).items():
        if args.rates and int(name[-1]) not in {int(k) for k in args.rates.split(",")}:
            continue
        t0 = time.perf_counter()
        _, diverged = compare.run_compare(config, args.runs / "pilot" / name)
        print(f"pilot {name}: {time.perf_counter() - t0:.0f} s; diverged "
              f"{sorted(diverged) or 'none'}", flush=True)  # fmt: skip


def selection_table(runs: Path, fams=("sgd", "ng")):
    """Per arm and rate: mean validation loss of the pilot seeds after the pilot epochs; the
    chosen rate of each arm (lowest; a diverged seed disqualifies a rate)."""
    import pandas as pd

    from natgrad.studies import compare

    rows = []
    for fam in fams:
        for name, config in pilot_configs(runs, fam).items():
            curves = compare.read_curves(config, runs / "pilot" / name)
            last = curves[curves["epoch"] == config.epochs]
            for arm in config.arms:
                sub = last[last["arm"] == arm]
                val = sub["val_loss"].to_numpy()
                rows.append(dict(arm=arm, lr=config.lr(arm), seeds=len(val),
                                 val_loss=float(val.mean()), val_error=float(sub["val_error"].mean()),
                                 diverged=int((~pd.notna(val)).sum()),
                                 fc1_lr=config.sgd_lr(compare.ARMS[arm].unit)))  # fmt: skip
    table = pd.DataFrame(rows)
    score = table["val_loss"].where(table["diverged"] == 0, math.inf).fillna(math.inf)
    best = score.groupby(table["arm"]).idxmin()  # per arm, the first of its lowest
    table["chosen"] = table.index.isin(best[score[best].to_numpy() < math.inf])
    return table


def chosen_rates(runs: Path, fam: str | None = None) -> tuple[tuple[str, float], ...]:
    t = selection_table(runs, (fam,) if fam else ("sgd", "ng"))
    return tuple((r.arm, float(r.lr)) for r in t[t["chosen"]].itertuples())


def main_configs(runs: Path) -> dict[str, object]:
    lrs = chosen_rates(runs)
    return {
        "main": base(lrs=lrs),
        "standardised": base(
            lrs=lrs,
            plain_first_layer=False,
            preprocess="standardise",
            epochs=VARIANT_EPOCHS,
            last_epochs=VARIANT_EPOCHS,
        ),
    }


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("pilot-sgd", "pilot-ng", "refresh", "select", "main",
                                          "save", "report"))  # fmt: skip
    parser.add_argument("--runs", type=Path, default=Path("runs/fair_compare"))
    parser.add_argument("--arms", default=None, help="main: comma-separated subset of arms")
    parser.add_argument("--variant", action="store_true", help="main: the standardised variant")
    parser.add_argument("--seeds", type=seed_range, default=None,
                        help="main: FIRST:COUNT, a slice of seeds 0-9")  # fmt: skip
    parser.add_argument("--rates", default=None,
                        help="pilot: comma-separated grid positions 0-3 (for parallel processes)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--record", type=Path, default=None)
    parser.add_argument("--restore", type=Path, default=None,
                        help="first copy the finished runs saved in this folder into --runs")  # fmt: skip
    args = parser.parse_args(argv)
    if args.restore:  # runs already in --runs are kept
        copy_runs(args.restore, args.runs, replace=False)
    import torch

    torch.set_num_threads(args.threads)
    if args.stage.startswith("pilot-"):
        pilot(args, args.stage.removeprefix("pilot-"))
    elif args.stage == "refresh":
        refresh_pilot(args)
    elif args.stage == "select":
        table = selection_table(args.runs)
        print(table.to_string(index=False))
        if args.record:
            from natgrad.analysis.csvtables import write_csv

            args.record.mkdir(parents=True, exist_ok=True)
            write_csv(table, args.record / SELECTION)
    elif args.stage == "save":
        n = copy_runs(args.runs, args.record / "runs", finished_only=True)
        print(f"saved {n} files of the finished runs' records to {args.record / 'runs'}")
    elif args.stage == "report":
        report(args)
    elif args.stage == "main":
        from natgrad.studies import compare

        name = "standardised" if args.variant else "main"
        config = main_configs(args.runs)[name]
        if args.arms:
            config = dataclasses.replace(config, arms=tuple(args.arms.split(",")))
        if args.seeds:  # a slice of the declared seeds, for a second process
            config = dataclasses.replace(config, first_seed=args.seeds.start, seeds=len(args.seeds))
        t0 = time.perf_counter()
        _, diverged = compare.run_compare(config, args.runs / name)
        print(f"main ({', '.join(config.arms)}): {time.perf_counter() - t0:.0f} s; diverged "
              f"{sorted(diverged) or 'none'}")  # fmt: skip
    return 0


def finished_seeds(config, root: Path) -> list[int]:
    """The declared seeds on which every arm has finished or diverged."""
    return [seed for seed in config.seed_list
            if all(finished(root / f"{arm}-s{seed}") for arm in config.arms)]  # fmt: skip


def training_seconds(curves) -> float:
    """Training seconds summed over the runs: each run's ``seconds`` at its last epoch. A
    curve's ``seconds`` is cumulative over its run's epochs, so the sum of every row (what the
    reports up to 2026-12-07 wrote as ``wall_seconds``) counted epoch e's time once for each
    epoch from e on."""
    last = curves.sort_values("epoch").groupby(["seed", "arm"])["seconds"].last()
    return float(last.sum())


def report(args) -> None:
    """The comparison's tables, figure and answer from the seeds finished so far (the text
    says how many of the declared ten)."""
    from natgrad.studies import compare
    from natgrad.training.engine import TRAIN_LOSS, git_commit

    name = "standardised" if args.variant else "main"
    config = main_configs(args.runs)[name]
    root = args.runs / name
    done = finished_seeds(config, root)
    k = len(done)
    if k < 2:
        print(f"{name}: {k} finished seeds; nothing to report yet")
        return
    part = dataclasses.replace(config, only_seeds=tuple(done))
    curves = compare.read_curves(part, root)
    meta = dict(command="python analysis/fair_compare.py " + " ".join(sys.argv[1:]),
                commit=git_commit(), runs=str(root), train_loss=TRAIN_LOSS,
                wall_seconds=training_seconds(curves),
                device=f"cpu, one thread per run; {k} of {SEEDS} declared seeds finished "
                       f"({', '.join(map(str, done))}); "
                       "wall_seconds: training seconds summed over the runs")  # fmt: skip
    out = args.record / name
    compare.write_outputs(curves, part, out, meta, compare.structures(part))
    print((out / "answer.md").read_text().split("## Per arm")[0])
    if k == SEEDS:  # the declared analysis needs every declared seed
        from natgrad.analysis.csvtables import write_csv

        table = primaries(curves, epoch=config.epochs)
        write_csv(table, out / PRIMARY)
        print(table.to_string(index=False))


#: The declared primary endpoints, Holm-adjusted together (written next to answer.md).
PRIMARY = "primary.csv"


def primaries(curves, epoch: int = EPOCHS):
    r"""The three declared primary endpoints at ``epoch`` with CIs over seeds (t for the
    differences of means, ``stats.mean_ci``; Fieller's for the ratio (1),
    ``stats.ratio_ci``), exact sign-flip p-values and Holm's adjustment over the three.

    AUC is :func:`~natgrad.analysis.stats.loss_auc` of epochs 1..``epoch``. (1) the fraction
    of the ReLU+SGD → ReLU+unit-NG gap that ELU+SGD closes, (ā_relu-sgd − ā_elu-sgd) /
    (ā_relu-sgd − ā_relu-unit-ng), its CI from the paired per-seed numerator and
    denominator; its null is "closes none of it", tested by the sign flip of the paired numerator (the same data as
    (3), which it therefore shares its p with); (2) ReLU+unit-NG − ReLU+block-diag. NG; (3)
    ReLU+SGD − ELU+SGD. A secondary row tests "closes exactly the whole gap" (ReLU+unit-NG −
    ELU+SGD), outside the Holm family. Every row is over the seeds on which all four arms
    reached ``epoch`` (``seeds`` says how many).
    """
    import numpy as np
    import pandas as pd

    from natgrad.analysis.stats import holm, loss_auc, mean_ci, sign_flip_p
    from natgrad.studies.compare import gap_ci

    auc = {}
    for (seed, arm), g in curves.sort_values("epoch").groupby(["seed", "arm"]):
        loss = g.loc[(g["epoch"] >= 1) & (g["epoch"] <= epoch), "train_loss"].to_numpy()
        auc[arm, seed] = loss_auc(loss) if loss.size == epoch else np.nan
    seeds = sorted(curves["seed"].unique())

    def arm(name):
        return np.array([auc.get((name, s), np.nan) for s in seeds])

    a, b, c, bd = arm("relu-sgd"), arm("elu-sgd"), arm("relu-unit-ng"), arm("relu-blockdiag-ng")
    full = np.isfinite(a) & np.isfinite(b) & np.isfinite(c) & np.isfinite(bd)
    a, b, c, bd = a[full], b[full], c[full], bd[full]  # the seeds every arm reached epoch on
    seeds = [s for s, ok in zip(seeds, full, strict=True) if ok]

    def frac(x, y, z):
        return (np.mean(x) - np.mean(y)) / (np.mean(x) - np.mean(z))

    def row(endpoint, estimate, ci, p):
        return dict(endpoint=endpoint, epoch=epoch, seeds=len(seeds), estimate=estimate,
                    ci_low=ci[0], ci_high=ci[1], ci_method=ci[2], null="0", p=p)  # fmt: skip

    rows = [row("(1) fraction of the gap ELU+SGD closes", frac(a, b, c), gap_ci(a, b, c, frac),
                sign_flip_p(a - b))]  # fmt: skip
    rows += [row(label, float(np.mean(d)), mean_ci(d), sign_flip_p(d)) for label, d in (
        ("(2) relu-unit-ng - relu-blockdiag-ng AUC", c - bd),
        ("(3) relu-sgd - elu-sgd AUC", a - b),
        ("secondary: fraction = 1 (relu-unit-ng - elu-sgd AUC)", c - b),
    )]  # fmt: skip
    table = pd.DataFrame(rows)
    table["p_holm"] = np.append(holm(table["p"].iloc[:3]), np.nan)  # the primaries' family
    return table


def refresh_config(runs: Path, every: int):
    """ReLU+unit-NG at its chosen rate (fc1 at ReLU's chosen SGD rate), refreshed every
    ``every`` steps, on the pilot seeds."""
    return base(epochs=PILOT_EPOCHS, seeds=2, first_seed=PILOT_SEEDS[0], arms=("relu-unit-ng",),
                lrs=chosen_rates(runs), refresh_every=every)  # fmt: skip


def refresh_pilot(args) -> None:
    """ReLU+unit-NG at its selected rate, refreshed every 10 and every 50 steps."""
    from natgrad.studies import compare

    for every in REFRESH_PILOT:
        config = refresh_config(args.runs, every)
        t0 = time.perf_counter()
        compare.run_compare(config, args.runs / "refresh" / f"every{every}")
        print(f"refresh every {every}: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(run())
