"""Study (issue 26, item 3): a mechanism dashboard over training — unit × normalisation on MNIST.

The declaration is :mod:`natgrad.studies.mechanism_dashboard` (committed before the runs).

    python analysis/mechanism_dashboard.py [--runs runs/mechanism_dashboard] [--workers 2]
        [--record paper_figures/results/mechanism_dashboard_mnist]

The declared confirmatory run of ρ(plain) (ELU and ReLU, 10 new seeds 5–14, epoch 3):

    python analysis/mechanism_dashboard.py --confirm --runs runs/mechanism_dashboard_confirm
        --record paper_figures/results/mechanism_dashboard_mnist_confirm
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from natgrad.analysis.stats import mean_ci_name
from natgrad.damping import MEASURE_DAMPING
from natgrad.studies.mechanism_dashboard import (  # noqa: F401 (the declaration, re-exported)
    BATCH,
    CHECKPOINTS,
    CONFIRM_CHECKPOINTS,
    CONFIRM_PRIMARY,
    CONFIRM_SEEDS,
    CONFIRM_UNITS,
    DEPTH,
    EPOCHS,
    GRAM_PROBE,
    LAYERS,
    LR,
    METRICS,
    NORMS,
    SEEDS,
    UNIT_PROBE,
    UNITS,
    WIDTH,
    arms,
    config,
    split_arm,
    study,
)


def mean_activations(model, x) -> float:
    """Median over the hidden units of |mean activation| on ``x`` (the unit means of
    :func:`natgrad.training.recording.record_activations`)."""
    import torch

    from natgrad.training.recording import record_activations

    return float(torch.cat(list(record_activations(model, x)["means"].values())).abs().median())


def measure(job) -> dict:
    """One (run, epoch) of the dashboard: the declared measures, one row."""
    import numpy as np
    import torch

    from natgrad.analysis.runs import load_model, probe_set, training_set
    from natgrad.analysis.unitstats import unit_statistics
    from natgrad.network import network_fisher_gram

    run, arm, seed, epoch, unit_probe, gram_probe = job
    torch.set_num_threads(1)
    model = load_model(run, epoch).double().eval()
    x, y = probe_set(run, unit_probe)
    x = x.double()
    gx, gy = training_set(run)
    units = unit_statistics(model, x, y, layers=list(LAYERS), rel_damping=MEASURE_DAMPING,
                            grad_data=(gx.double(), gy), jackknife=True)  # fmt: skip
    est = units["estimable"] == 1
    gram = network_fisher_gram(model, x[:gram_probe])
    unit, norm = split_arm(arm)
    return dict(
        arm=arm, unit=unit, norm=norm, seed=seed, epoch=epoch,
        mean_act=mean_activations(model, x),
        rho_plain_jk=float(np.nanmedian(units["rho_plain_jk"])),
        shift_error_plain=float(np.nanmedian(units["shift_error_plain"])),
        abs_k=float(np.nanmedian(units.loc[est, "k"].abs())) if est.any() else float("nan"),
        estimable=float(est.mean()),
        offblock_share=1.0 - gram.unit_block_share(),
        top_eig=float(gram.eigenvalues[0]), top_eig_over_mean=gram.top_eig_over_mean(),
    )  # fmt: skip


def measure_all(runs, workers: int, cache: Path, checkpoints=CHECKPOINTS):
    """Every (run, epoch of ``checkpoints``), from ``cache`` (a CSV of finished rows) where
    present."""
    import multiprocessing as mp

    import pandas as pd

    from natgrad.analysis.csvtables import read_csv, write_csv

    done = read_csv(cache) if cache.is_file() else pd.DataFrame()
    have = set(zip(done["arm"], done["seed"], done["epoch"], strict=True)) if len(done) else set()
    jobs = [(r.path, r.arm, r.seed, e, UNIT_PROBE, GRAM_PROBE) for r in runs for e in checkpoints
            if (r.arm, r.seed, e) not in have]  # fmt: skip
    rows = [done] if len(done) else []
    with mp.get_context("spawn").Pool(workers) as pool:
        new = []
        for i, row in enumerate(pool.imap_unordered(measure, jobs), start=1):
            new.append(row)
            if i % 8 == 0 or i == len(jobs):  # checkpoint the measures as they come
                write_csv(pd.concat(rows + [pd.DataFrame(new)], ignore_index=True), cache)
    table = pd.concat(rows + [pd.DataFrame(new)], ignore_index=True)
    return table.sort_values(["norm", "unit", "seed", "epoch"], ignore_index=True)


def summarise(table, confirm: bool = False):
    """Mean and CI (``stats.mean_ci``) per (arm, epoch, measure); ELU − ReLU per normalisation at the last
    epoch, paired by seed, Holm over the family (with ``confirm``, the declared confirmatory
    families: ``primary``, ρ(plain) under the four normalisations; ``secondary``, the rest)."""
    import pandas as pd

    from natgrad.analysis.endpoints import Endpoint, evaluate
    from natgrad.analysis.stats import mean_ci

    rows = []
    for (arm, epoch), sub in table.groupby(["arm", "epoch"], sort=False):
        row = dict(arm=arm, unit=sub["unit"].iloc[0], norm=sub["norm"].iloc[0], epoch=epoch,
                   seeds=len(sub))  # fmt: skip
        for m in (*METRICS, "estimable", "top_eig_over_mean"):
            lo, hi, how = mean_ci(sub[m].to_numpy())
            row.update({m: sub[m].mean(), f"{m}_lo": lo, f"{m}_hi": hi})
        row["ci_method"] = how
        rows.append(row)
    summary = pd.DataFrame(rows)
    last = table[table["epoch"] == CHECKPOINTS[-1]]
    arm_of = dict(zip(map(split_arm, arms()), arms(), strict=True))  # (unit, norm) -> arm

    def family(m: str) -> str:
        if not confirm:
            return "elu_vs_relu"
        return "primary" if m == CONFIRM_PRIMARY else "secondary"

    eps = [Endpoint(m, arm_of["elu", norm], arm_of["relu", norm], family=family(m))
           for norm in NORMS for m in METRICS]  # fmt: skip
    t = evaluate(last, eps, group="arm")
    paired = t.assign(norm=[split_arm(a)[1] for a in t["reference"]], epoch=CHECKPOINTS[-1],
                      seeds=t["n"])[["norm", "metric", "epoch", "diff", "lo", "hi", "ci_method",
                                     "p", "seeds", "p_holm"]]  # fmt: skip
    return summary, paired


def figure(summary, out: Path) -> Path:
    """One figure: a row per measure, a column per normalisation, a line per unit type (mean
    over seeds with its 95 % CI band) against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from natgrad.analysis.plots import save_figure
    from natgrad.units import unit_type_colour, unit_type_label

    titles = {"none": "no normalisation", "centred": "centring", "bn": "batch norm",
              "ln": "layer norm"}  # fmt: skip
    fig, axes = plt.subplots(len(METRICS), len(NORMS), figsize=(12, 2.0 * len(METRICS)),
                             sharex=True, sharey="row")  # fmt: skip
    for j, norm in enumerate(NORMS):
        axes[0, j].set_title(titles[norm], fontsize=10)
        for i, m in enumerate(METRICS):
            ax = axes[i, j]
            for unit in UNITS:
                s = summary[(summary["unit"] == unit) & (summary["norm"] == norm)]
                s = s.sort_values("epoch")
                c = unit_type_colour(unit)
                ax.plot(s["epoch"], s[m], "o-", color=c, ms=3, lw=1.2,
                        label=unit_type_label(unit, tex=False))  # fmt: skip
                ax.fill_between(s["epoch"], s[f"{m}_lo"], s[f"{m}_hi"], color=c, alpha=0.15, lw=0)
            if m == "top_eig":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(METRICS[m][0], fontsize=8)
        axes[-1, j].set_xlabel("epoch")
        axes[-1, j].set_xticks(CHECKPOINTS)
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Mechanism dashboard: mnist-fc {DEPTH}×{WIDTH} on MNIST, SGD lr {LR}, "
                 f"mean and 95 % {mean_ci_name()} band over {int(summary['seeds'].max())} seeds; unit measures on {UNIT_PROBE} "
                 f"validation images (λ = {MEASURE_DAMPING:g}), whole-network on {GRAM_PROBE}",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    path = save_figure(fig, out / "dashboard", dpi=130)
    plt.close(fig)
    return path


def run(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/mechanism_dashboard"))
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--record", type=Path, default=None)
    parser.add_argument("--confirm", action="store_true",
                        help="the declared confirmatory run (ELU, ReLU; seeds 5-14; epoch 3)")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    s = study(CONFIRM_SEEDS, CONFIRM_UNITS) if args.confirm else study(args.seeds)
    diverged = s.train(args.runs, workers=args.workers)
    if diverged:
        print(f"diverged: {sorted(diverged)}", file=sys.stderr)
        return 1
    t_train = time.perf_counter() - t0
    checkpoints = CONFIRM_CHECKPOINTS if args.confirm else CHECKPOINTS
    table = measure_all(s.plan(args.runs), args.workers, args.runs / "dashboard_cache.csv",
                        checkpoints)  # fmt: skip
    t_measure = time.perf_counter() - t0 - t_train
    summary, paired = summarise(table, confirm=args.confirm)
    print(paired.round(4).to_string(index=False))
    if args.record:
        from natgrad.analysis.record import record_tables

        record_tables(args.record, {"dashboard": table, "summary": summary, "elu_vs_relu": paired},
                      argv=argv, script="analysis/mechanism_dashboard.py", train_seconds=t_train,
                      measure_seconds=t_measure, seeds=len(s.seeds),
                      seed_range=[min(s.seeds), max(s.seeds)],
                      device=f"cpu, {args.workers} worker process(es) of one torch thread")  # fmt: skip
        if not args.confirm:  # the figure draws the measures over epochs
            figure(summary, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(run())
