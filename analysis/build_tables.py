"""Build the tidy tables (and optionally the HTML report) from run directories.

    python -m analysis.build_tables reports/demo/runs --out reports/demo/tables [--report]

Reads every run directory below the given folders (``config.json`` marks one), computes the
per-unit Theorem 1–2 table at the chosen epochs (default: 0 and every checkpoint) and
writes ``units.csv``, ``curves.csv``, ``activations.csv``, ``epoch_summary.csv``,
``summary.csv`` and ``comparison.csv`` (:func:`natgrad.summary.write_tables`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from natgrad.runs import find_runs
from natgrad.summary import write_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.build_tables", description=__doc__.splitlines()[0]
    )
    parser.add_argument("roots", nargs="+", type=Path, help="folders holding run directories")
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSV tables")
    parser.add_argument(
        "--epochs", default=None, help="comma-separated epochs (default: all checkpoints and 0)"
    )
    parser.add_argument(
        "--probe-size", type=int, default=None, help="first N probe inputs (default: all)"
    )
    parser.add_argument("--report", action="store_true", help="also write <out>/report.html")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's)"
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    runs = [run for root in args.roots for run in find_runs(root)]
    epochs = None if args.epochs is None else [int(e) for e in args.epochs.split(",")]
    paths = write_tables(runs, args.out, epochs=epochs, probe_size=args.probe_size, progress=True)
    for name, path in paths.items():
        print(f"{name:>14}: {path}")
    if args.report:
        from natgrad.report import render_report

        print(f"{'report':>14}: {render_report(args.out, args.out / 'report.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
