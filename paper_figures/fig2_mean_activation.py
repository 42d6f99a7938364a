"""Fig 2 of the ELU paper (mnist-fc): (a) the median over all hidden units of each unit's
mean activation per epoch, (b) training (solid) and validation (dotted) cross-entropy (the
test split where the data set has no validation split: Fashion-MNIST, the digits);
mean ± sd over seeds, one colour per unit type (the paper's three: ELU, ReLU, LReLU, plus any
other unit type found in the runs).

    python paper_figures/fig2_mean_activation.py [--runs DIR | --curves CSV] [--small] [--out DIR]

Reads the run directories below ``--runs`` (default ``reports/demo/runs``, written by
``make demo``), or a record's curve table (``--curves``, a committed ``curves.csv``).
Panel (a): mean ± sd over seeds; panel (b), on a log axis: geometric mean ×/÷ the sd of
log10 over seeds. In small mode without ``--runs`` it first trains ELU, ReLU and LReLU for
two epochs on the digits (one seed) into ``<out>/small_runs``. Writes
``fig2_mean_activation.pdf`` and ``.png``. The figure is :func:`natgrad.analysis.plots.plot_fig2`,
the one the HTML report draws; the data are :func:`natgrad.analysis.runs.curve_table`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import OUT, setup_matplotlib, small_mode

from natgrad.analysis.plots import plot_fig2, save_figure
from natgrad.analysis.runs import curve_table, find_runs


def _small_runs(folder: Path) -> Path:
    from natgrad.training import default_config, default_run_dir, train

    for unit in ("elu", "relu", "lrelu"):
        cfg = default_config(
            "mnist-fc", dataset="digits", unit=unit, seed=0, epochs=2, probe_size=128
        )
        train(cfg, default_run_dir(cfg, folder), device="cpu", progress=False)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=None, help="folder of run directories")
    parser.add_argument("--curves", type=Path, default=None, help="a record's curves.csv")
    parser.add_argument("--small", action="store_true", help="quick mode (also NATGRAD_SMALL=1)")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    args = parser.parse_args(argv)
    small = small_mode(args.small)
    runs_root = args.runs
    if args.curves is not None:
        import pandas as pd  # a record's table (older records have no checksum file)

        curves, runs_root = pd.read_csv(args.curves), args.curves
    else:
        if runs_root is None:
            runs_root = _small_runs(args.out / "small_runs") if small else Path("reports/demo/runs")
        curves = curve_table(find_runs(runs_root))
    usetex = setup_matplotlib()
    fig = plot_fig2(curves, figsize=(7.0, 2.8))
    paths = save_figure(fig, args.out / "fig2_mean_activation", dpi=100 if small else 300)
    print(f"LaTeX: {usetex}; runs: {runs_root}; wrote", *map(str, paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
