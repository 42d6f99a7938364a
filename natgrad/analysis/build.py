r"""``natgrad tables RUNS... --out DIR [--report]``: tidy tables (and the report) from runs.

Reads every run directory below the given folders (``config.json`` marks one), computes the
per-unit table at the chosen epochs (default: 0 and every checkpoint) and writes the CSV
tables of :func:`natgrad.analysis.summary.write_tables` into ``DIR``; ``--report`` also
writes ``DIR/report.html``. ``--layers`` picks the layers analysed (all, those fed by hidden
units, or names: an autoencoder's 1000-wide layers do not fit in memory together).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from natgrad.argtypes import nonnegative_int, positive_float, positive_int

__all__ = ["add_arguments", "build", "run"]


def build(
    roots,
    out,
    *,
    epochs=None,
    probe_size=None,
    report=False,
    progress=True,
    echo=print,
    grad: str = "probe",
    jackknife: bool = False,
    layers="all",
    rel_damping: float | None = None,
    workers: int = 1,
    probe_split: str | None = None,
) -> dict:
    """Tables (and the report) from every run below ``roots``; returns ``{name: path}``.
    ``grad`` and ``jackknife`` as in :func:`natgrad.analysis.runs.unit_table` (the MNIST
    demo's tables: ``grad="train", jackknife=True``). ``layers``: ``"all"``, ``"hidden"`` (those
    fed by hidden units, :func:`~natgrad.analysis.runs.hidden_layers`) or a list of names;
    ``rel_damping``: the measures' λ (default :data:`natgrad.damping.MEASURE_DAMPING`);
    ``probe_split``: the probe's inputs (:func:`~natgrad.analysis.runs.probe_set`; default the
    held-out split)."""
    from natgrad._atomic import check_replaceable
    from natgrad.analysis.runs import hidden_layers
    from natgrad.analysis.summary import write_tables
    from natgrad.damping import MEASURE_DAMPING
    from natgrad.errors import InputError, MemoryBudgetError
    from natgrad.training.rundir import RunDir, find_runs

    check_replaceable(out, files_only=True)  # before any work: never after minutes of analysis
    runs = [run for root in roots for run in find_runs(root)]
    if report:
        types = sorted({RunDir(r).identity()["unit_type"] for r in runs})
        if len(types) < 2:
            raise InputError(f"--report compares unit types, and these runs hold one "
                             f"({', '.join(types)}); drop --report (the tables are written "
                             "without a comparison) or add runs of another unit type")  # fmt: skip
    if layers == "hidden" and runs:
        layers = hidden_layers(runs[0])
    try:
        paths = write_tables(runs, out, epochs=epochs, probe_size=probe_size, progress=progress,
                             grad=grad, jackknife=jackknife, workers=workers,
                             probe_split=probe_split,
                             layers=None if layers == "all" else list(layers),
                             rel_damping=MEASURE_DAMPING if rel_damping is None else rel_damping)  # fmt: skip
    except MemoryBudgetError as exc:
        raise InputError(f"{exc} With natgrad tables: --layers NAME,... (or --layers hidden) "
                         "analyses only the layers named, each within the budget.") from None  # fmt: skip
    if report:
        from natgrad.analysis.report import render_report

        paths["report"] = render_report(out, Path(out) / "report.html")
    for name, path in paths.items():
        echo(f"{name:>14}: {path}")
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("roots", nargs="+", type=Path, help="folders holding run directories")
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSV tables")
    parser.add_argument("--epochs", type=epoch_list, default=None,
                        help="comma-separated epochs (default: all checkpoints and 0)")  # fmt: skip
    parser.add_argument("--probe-size", type=positive_int, default=None,
                        help="first N probe inputs (default: all)")  # fmt: skip
    parser.add_argument("--probe", choices=("held-out", "train-all"), default="held-out",
                        help="the probe's inputs: held out (default: the validation split, else "
                             "the test split) or all the inputs the runs trained on (the Fisher "
                             "of the training objective)")  # fmt: skip
    parser.add_argument("--report", action="store_true", help="also write <out>/report.html")
    parser.add_argument("--grad", choices=("probe", "train"), default="probe",
                        help="g judged: the probe's mean gradient (default) or the training "
                             "set's (the MNIST demo's)")  # fmt: skip
    parser.add_argument("--jackknife", action="store_true",
                        help="also the jackknifed efficiencies, the headline when present "
                             "(the MNIST demo's)")  # fmt: skip
    parser.add_argument("--layers", type=_layers, default="all",
                        help="layers analysed: all (default), hidden (those fed by hidden "
                             "units) or comma-separated names (e.g. encoder.fc4,decoder.fc1)")  # fmt: skip
    parser.add_argument("--rel-damping", type=positive_float, default=None,
                        help="relative damping λ of the measures' metric F_λ (default 1e-3)")  # fmt: skip
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="parallel processes for the unit Fishers (one torch thread each)")  # fmt: skip
    parser.add_argument("--threads", type=nonnegative_int, default=1,
                        help="torch CPU threads (default 1; 0: torch's)")  # fmt: skip


def epoch_list(text: str) -> tuple[int, ...]:
    """Comma-separated epochs >= 0 (an argument type: ``natgrad tables``, ``natgrad demo``)."""
    try:
        out = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        out = ()
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give epochs >= 0, comma-separated (e.g. 1,3)")
    return out


def _layers(text: str):
    """``all``, ``hidden`` or a tuple of layer names."""
    if text in ("all", "hidden"):
        return text
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give all, hidden or layer names")
    return names


def run(args: argparse.Namespace) -> int:
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    epochs = None if args.epochs is None else sorted(set(args.epochs))
    build(args.roots, args.out, epochs=epochs, probe_size=args.probe_size, report=args.report,
          grad=args.grad, jackknife=args.jackknife, layers=args.layers,
          rel_damping=args.rel_damping, workers=args.workers,
          probe_split=None if args.probe == "held-out" else args.probe)  # fmt: skip
    return 0
