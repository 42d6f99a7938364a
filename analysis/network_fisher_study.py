"""Study: how block-diagonal by units is the whole-network Fisher of random nets, per unit type
and width (Amari, Karakida & Oizumi 2019), its top eigenvalue (Karakida et al. 2019), and what
the unit natural gradient loses against the full one.

    python analysis/network_fisher_study.py [--widths 8,16,32] [--seeds 5]
        [--record paper_figures/results/network_fisher_random]

Nets: ``mnist-fc`` with depth 3 and the given widths on scikit-learn's 8×8 digits (input 64,
10 classes), He-initialised from each seed (run j of every unit type from the same seed), at
initialisation: the regime of Amari et al.'s claim. The exact whole-network Fisher
(:func:`natgrad.network.network_fisher`, float64, torch.func) on the 360 held-out test digits;
g = the mean log-likelihood gradient on the 1,437 training digits; λ = 1e-3 per unit. Per run:
the Frobenius share of the Fisher inside the unit blocks, the largest eigenvalue over the mean
eigenvalue, and ρ of the unit natural gradient and of the plain gradient against the full
natural gradient. Seeds are the replicates (mean and t CI over seeds per unit type × width).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

UNITS = ("elu", "relu", "lrelu", "srelu", "selu")


def measure(unit: str, width: int, seed: int, ds) -> dict:
    import torch

    from natgrad.models import build_model
    from natgrad.network import loglik_gradient, network_fisher

    net = build_model("mnist-fc", unit=unit, seed=seed, in_features=64, width=width, depth=3,
                      dtype=torch.float64)  # fmt: skip
    F = network_fisher(net, ds.test_x.reshape(len(ds.test_x), -1))
    x, y = ds.train_x.reshape(len(ds.train_x), -1).double(), ds.train_y
    out = F.unit_vs_full(loglik_gradient(net, x, y), rel_damping=1e-3)
    return {"unit_type": unit, "width": width, "seed": seed, "params": F.num_params,
            "unit_block_share": F.unit_block_share(),
            "top_eig_over_mean": F.top_eig_over_mean(), **out}  # fmt: skip


def summarise(table):
    """Mean and 95 % CI over seeds per width × unit type (``stats.ci_summary``)."""
    from natgrad.analysis.stats import ci_summary

    measures = ("unit_block_share", "top_eig_over_mean", "rho_unit_ng", "rho_plain")
    return ci_summary(table, ["width", "unit_type"], measures, first=("params",))


def run(argv: list[str] | None = None) -> int:
    import pandas as pd

    from natgrad.data import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="8,16,32")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args(argv)
    ds = load_dataset("digits", None, seed=0)
    t0 = time.perf_counter()
    rows = [measure(u, int(w), s, ds) for w in args.widths.split(",") for u in UNITS
            for s in range(args.seeds)]  # fmt: skip
    table = pd.DataFrame(rows)
    summary = summarise(table)
    wall = time.perf_counter() - t0
    print(summary.round(4).to_string())
    if args.record:
        from natgrad._atomic import write_text
        from natgrad.analysis.csvtables import write_csv
        from natgrad.training import git_commit

        args.record.mkdir(parents=True, exist_ok=True)
        write_csv(table, args.record / "runs.csv")
        write_csv(summary, args.record / "summary.csv")
        lines = ["# Whole-network Fisher of random nets: unit-block share, top eigenvalue, "
                 "unit vs full natural gradient", "",
                 f"- command: `python analysis/network_fisher_study.py {' '.join(argv or sys.argv[1:])}`",
                 f"- commit: {git_commit()}; wall time {wall:.0f} s on the 2-core CPU (1 thread)",
                 "- settings: see the script's docstring (mnist-fc, depth 3, digits, at "
                 "initialisation, λ = 1e-3 per unit, seeds as replicates)", "",
                 "| width | unit | P | unit-block share | λ_max / mean λ | ρ(unit NG vs full) | ρ(plain vs full) |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip

        def ci(r, m):
            return f"{getattr(r, m):.3f} [{getattr(r, m + '_lo'):.3f}, {getattr(r, m + '_hi'):.3f}]"

        for r in summary.itertuples():
            lines.append(f"| {r.width} | {r.unit_type} | {r.params} | {ci(r, 'unit_block_share')} | "
                         f"{ci(r, 'top_eig_over_mean')} | {ci(r, 'rho_unit_ng')} | {ci(r, 'rho_plain')} |")  # fmt: skip
        lines += ["", f"Mean over {args.seeds} seeds [{summary['ci_method'].iloc[0]} 95 % CI].", ""]
        write_text(args.record / "README.md", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run())
