"""Study (issue 26): a direction audit of the optimizers people use, in the whole-network Fisher.

The declaration is :mod:`natgrad.studies.direction_audit` (committed before the runs).

    python analysis/direction_audit.py [--runs runs/direction_audit] [--seeds 5]
        [--record paper_figures/results/direction_audit_digits]

The declared confirmatory run (10 new seeds, 5–14):

    python analysis/direction_audit.py --confirm --runs runs/direction_audit
        --record paper_figures/results/direction_audit_digits_confirm
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from natgrad.analysis.stats import mean_ci_name
from natgrad.damping import MEASURE_DAMPING
from natgrad.studies.direction_audit import (  # noqa: F401 (the declaration, re-exported)
    CHECKPOINTS,
    CONFIRM_SEEDS,
    DEPTH,
    EPOCHS,
    LR,
    PRIMARY,
    SEEDS,
    UNITS,
    WIDTH,
    study,
)


def measure(run: Path, epoch: int, ds) -> list[dict]:
    import torch

    from natgrad.analysis.directions import audit
    from natgrad.network import network_fisher
    from natgrad.training import load_checkpoint

    model, info = load_checkpoint(run, epoch)
    model = model.double().eval()
    probe = (ds.test_x.double(), ds.test_y)
    train = (ds.train_x.double(), ds.train_y)
    F = network_fisher(model, probe[0])
    loss = torch.nn.functional.cross_entropy(model(train[0]), train[1])
    g = torch.cat([t.flatten() for t in torch.autograd.grad(-loss, list(model.parameters()))])
    spec = F.spectrum()
    common = dict(unit_type=info["unit"], seed=info["config"]["seed"], epoch=epoch,
                  params=F.num_params, unit_block_share=F.unit_block_share(),
                  top_eig_over_mean=float(spec[0] / spec.mean()))  # fmt: skip
    return [
        dict(common, **row) for row in audit(model, F, g, train, probe, rel_damping=MEASURE_DAMPING)
    ]


def summarise(table):
    import pandas as pd

    from natgrad.analysis.endpoints import Endpoint, evaluate
    from natgrad.analysis.stats import mean_ci

    rows = []
    for (unit, epoch, method), sub in table.groupby(["unit_type", "epoch", "method"], sort=False):
        row = dict(unit_type=unit, epoch=epoch, method=method, seeds=len(sub))
        for m in ("rho_full", "rho_unit", "decrease_per_kl"):
            lo, hi, how = mean_ci(sub[m].to_numpy())
            row.update({m: sub[m].mean(), f"{m}_lo": lo, f"{m}_hi": hi})
        row["ci_method"] = how
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary["rank_rho_full"] = summary.groupby(["unit_type", "epoch"])["rho_full"].rank(
        ascending=False, method="min").astype(int)  # fmt: skip
    last = table[table["epoch"] == EPOCHS]
    t = evaluate(last, [Endpoint("rho_full", a, b) for a, b in PRIMARY], group="method",
                 by="unit_type")  # fmt: skip
    paired = t.assign(epoch=EPOCHS, seeds=t["n"])[["unit_type", "epoch", "reference", "other",
                                                   "diff", "lo", "hi", "ci_method", "p",
                                                   "seeds", "p_holm"]]  # fmt: skip
    return summary, paired


def figure(summary, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from natgrad.analysis.directions import METHODS
    from natgrad.analysis.plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, epoch in zip(axes, CHECKPOINTS, strict=True):
        sub = summary[summary["epoch"] == epoch]
        for k, unit in enumerate(UNITS):
            s = sub[sub["unit_type"] == unit].set_index("method").loc[list(METHODS)]
            x = [i + (k - 1) * 0.25 for i in range(len(METHODS))]
            ax.errorbar(x, s["rho_full"], yerr=[s["rho_full"] - s["rho_full_lo"],
                        s["rho_full_hi"] - s["rho_full"]], fmt="o", ms=4, capsize=2,
                        label=unit.upper())  # fmt: skip
        ax.set_xticks(range(len(METHODS)), METHODS, rotation=45, ha="right")
        ax.set_title(f"epoch {epoch}")
        ax.axhline(1.0, color="0.7", lw=0.8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("ρ against the full natural gradient")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Direction audit: mnist-fc {DEPTH}×{WIDTH} on digits, λ = {MEASURE_DAMPING:g} per "
                 f"unit, mean and 95 % {mean_ci_name()} CI over seeds", fontsize=9)  # fmt: skip
    fig.tight_layout()
    save_figure(fig, out / "direction_audit", dpi=150)
    plt.close(fig)


def run(argv: list[str] | None = None) -> int:
    import pandas as pd
    import torch

    from natgrad.data import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/direction_audit"))
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--confirm", action="store_true",
                        help="the declared confirmatory run: seeds 5-14 (overrides --seeds)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    seeds = CONFIRM_SEEDS if args.confirm else args.seeds
    runs = study(seeds).plan(args.runs)
    dirs = [r.path for r in runs]
    diverged = study(seeds).train(args.runs)
    if diverged:
        print(f"diverged: {sorted(diverged)}", file=sys.stderr)
        return 1
    t_train = time.perf_counter() - t0
    ds = load_dataset("digits", None, seed=0)
    table = pd.DataFrame([r for d in dirs for e in CHECKPOINTS for r in measure(d, e, ds)])
    summary, paired = summarise(table)
    wall = time.perf_counter() - t0
    last = summary[summary["epoch"] == EPOCHS]
    print(last[["unit_type", "method", "rho_full", "rho_full_lo", "rho_full_hi", "rho_unit",
                "rank_rho_full"]].round(3).to_string(index=False))  # fmt: skip
    print(paired.round(4).to_string(index=False))
    if args.record:
        from natgrad.analysis.record import record_tables

        record_tables(args.record, {"directions": table, "summary": summary, "primary": paired},
                      argv=argv, script="analysis/direction_audit.py", wall_seconds=wall,
                      train_seconds=t_train, device=f"cpu, {args.threads} torch thread(s)",
                      seeds=len(runs) // len(UNITS), seed_range=[min(r.seed for r in runs),
                                                                max(r.seed for r in runs)])  # fmt: skip
        figure(summary, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(run())
