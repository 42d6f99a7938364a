"""Fig 1 of the ELU paper: ELU (α=1), ReLU, LReLU (α=0.1) and SReLU, plus SELU (dashed; the demo
also trains it, the paper does not have it).

    python paper_figures/fig1_units.py [--small] [--out DIR]

Writes ``fig1_units.pdf`` and ``.png`` to ``paper_figures/out/`` (or ``--out``). The plot is
:func:`natgrad.analysis.plots.plot_units`, the same function the HTML report uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import OUT, setup_matplotlib, small_mode

from natgrad.analysis.plots import plot_units, save_figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="quick mode (also NATGRAD_SMALL=1)")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    args = parser.parse_args(argv)
    usetex = setup_matplotlib()
    fig = plot_units()
    paths = save_figure(fig, args.out / "fig1_units", dpi=100 if small_mode(args.small) else 300)
    print(f"LaTeX: {usetex}; wrote", *map(str, paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
