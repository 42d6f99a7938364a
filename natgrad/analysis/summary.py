r"""From run directories to the tables of a study (CSV), summarised with seeds as replicates.

:func:`write_tables` writes into one folder:

=========================  ==========================================================
file                       rows
=========================  ==========================================================
``units.csv``              run × analysed epoch × layer × unit (:mod:`~natgrad.analysis.unitstats`)
``sweep.csv``              run × layer × unit × λ at the last epoch: efficiencies vs damping
``curves.csv``             run × epoch: losses, test error, median activation
``activations.csv``        run × epoch × layer: activation summaries
``seeds.csv``              unit type × seed (last analysed epoch): the replicates — medians
                           over analysed units, and the paper's claims per run
``seed_epochs.csv``        unit type × seed × epoch: the same medians per analysed epoch
``sweep_seeds.csv``        unit type × seed × λ: the sweep's medians per run
``summary.csv``            unit type: mean over seeds and bootstrap 95 % CI of every metric
``comparison.csv``         metric × (ELU vs other): paired by seed, CI, exact permutation p
``context.json``           how the tables were made (command, device, damping, threshold, …)
=========================  ==========================================================

The tables are written into a new folder next to ``out_dir`` and swapped in whole
(:func:`save_tables`), so a reader or a killed writer sees the complete old set or the
complete new set, never a mix; each CSV carries a checksum file ``<name>.csv.sha256``
(SHA-256 and row count) that :func:`read_tables` checks, so a cut or edited table is refused.
``context.json`` (strict JSON) travels with the tables so that a report rebuilt from them
keeps its header.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from natgrad._atomic import (
    carry_over,
    check_replaceable,
    clean_stale,
    commit_dir,
    dumps_json,
    staging_dir,
    write_json,
)
from natgrad.analysis import metrics as mt
from natgrad.analysis import stats
from natgrad.analysis.csvtables import read_csv, write_csv
from natgrad.analysis.unitstats import REL_DAMPING, SWEEP

__all__ = [
    "COMPARED",
    "UNIT_METRICS",
    "read_csv",
    "read_tables",
    "resummarise",
    "save_tables",
    "write_csv",
    "write_tables",
]

#: Unit-level metrics summarised per seed.
UNIT_METRICS = [
    "rho_plain", "rho_centred", "rho_quasidiagonal", "rho_diagonal", "rho_blockdiag",
    "coupling_cost", "shift_error_plain", "shift_error_blockdiag", "n_eff", "cond",
    "mean_q_norm", "s_c", "k", "corrected_mean_norm",
]  # fmt: skip

#: Metrics compared between unit types (paired by seed) in ``comparison.csv``.
COMPARED = [
    "rho_plain", "rho_centred", "rho_quasidiagonal", "rho_blockdiag", "coupling_cost",
    "shift_error_plain", "abs_median_activation", "train_loss_auc", "epochs_to_loss",
    "median_activation_var", "test_error",
]  # fmt: skip

TABLES = ("units", "sweep", "curves", "activations", "seeds", "seed_epochs", "sweep_seeds",
          "summary", "comparison")  # fmt: skip


def save_tables(frames: dict, out_dir: str | os.PathLike, context: dict | None = None) -> dict:
    r"""Write ``{name: DataFrame}`` as ``<out_dir>/<name>.csv`` (each with its checksum
    file) and ``context`` as ``context.json``, in one atomic step: everything goes into a
    new folder next to ``out_dir``, the other files of ``out_dir`` (a report) are
    hard-linked into it, and the two folders are swapped (:func:`natgrad._atomic.commit_dir`).
    Temporaries a killed writer left next to ``out_dir`` are removed first. Returns
    ``{name: path}``."""
    out = Path(out_dir)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out.parent)
    stage = staging_dir(out)
    try:
        for name, frame in frames.items():
            write_csv(frame, stage / f"{name}.csv")
        if context is not None:
            write_json(stage / "context.json", context)
        carry_over(out, stage)
        commit_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    paths = {name: out / f"{name}.csv" for name in frames}
    if context is not None:
        paths["context"] = out / "context.json"
    return paths


def summarise(units, sweep, curves, *, reference: str = "elu", last: int = 3) -> dict:
    """The summary tables (DataFrames) from the unit, sweep and curve tables."""
    last_epoch = int(units["epoch"].max())
    seed_epochs = stats.seed_values(units, UNIT_METRICS)
    per_seed = seed_epochs[seed_epochs["epoch"] == last_epoch].drop(columns="epoch")
    claims, threshold = stats.claims_per_seed(curves, last=last)
    seeds = per_seed.merge(claims.drop(columns="run"), on=["unit_type", "seed"], how="outer")
    summary_metrics = UNIT_METRICS + ["dead", "estimable", "n_eff_over_d1"]
    summary_metrics += [m.name for m in mt.paper_claims()]
    summary = stats.group_summary(seeds, summary_metrics)
    import pandas as pd

    comparison = pd.concat(
        [stats.paired_comparison(seeds, m, reference=reference) for m in COMPARED],
        ignore_index=True,
    )
    sweep_seeds = pd.DataFrame()
    if sweep is not None and len(sweep):
        live = sweep[(sweep["input_from"] == "units") & (sweep["dead"] == 0)]
        cols = [c for c in sweep.columns if c.startswith("rho_")]
        sweep_seeds = (
            live.groupby(["unit_type", "seed", "rel_damping"])[cols].median().reset_index()
        )
    return {"seeds": seeds, "seed_epochs": seed_epochs, "summary": summary,
            "comparison": comparison, "sweep_seeds": sweep_seeds,
            "threshold": threshold, "last_epoch": last_epoch}  # fmt: skip


def resummarise(tables_dir: str | os.PathLike, *, last: int = 3) -> dict:
    r"""Recompute the seed-level tables (seeds, seed_epochs, summary, comparison,
    sweep_seeds) of ``tables_dir`` from its unit, sweep and curve tables, without touching
    a checkpoint; the other tables and ``context.json`` (its threshold updated) are kept.
    For summaries made by an older natgrad. Returns ``{name: path}``."""
    t = read_tables(tables_dir)
    summ = summarise(t["units"], t.get("sweep"), t["curves"], last=last)
    frames = {k: v for k, v in t.items() if k != "context"}
    frames.update({k: summ[k] for k in ("seeds", "seed_epochs", "summary", "comparison")})
    if "sweep" in t:
        frames["sweep_seeds"] = summ["sweep_seeds"]
    ctx = dict(t["context"])
    ctx["loss threshold (epochs_to_loss)"] = float(f"{summ['threshold']:.4g}")
    ctx["test error"] = f"mean of the last {last} epochs"
    return save_tables(frames, tables_dir, ctx)


def write_tables(
    run_dirs,
    out_dir: str | os.PathLike,
    *,
    epochs=None,
    probe_size=None,
    rel_damping: float = REL_DAMPING,
    sweep=SWEEP,
    layers=None,
    workers: int = 1,
    progress: bool = False,
    context: dict | None = None,
    last: int = 3,
) -> dict[str, Path]:
    r"""Build every table from ``run_dirs`` and write them (see the module docstring) into
    ``out_dir``. ``context`` (command, device, …) is stored in ``context.json`` together with
    the settings. Returns ``{name: path}``."""
    from natgrad.analysis.runs import activation_table, curve_table, unit_table

    run_dirs = [Path(r) for r in run_dirs]
    out = Path(out_dir)
    counts: dict = {}
    res = unit_table(run_dirs, epochs=epochs, probe_size=probe_size, rel_damping=rel_damping,
                     sweep=sweep or None, layers=layers, workers=workers, progress=progress,
                     stats=counts)  # fmt: skip
    units, sw = res if sweep else (res, None)
    curves = curve_table(run_dirs)
    if epochs is not None:
        curves = curves[curves["epoch"] <= max(epochs)]
    acts = activation_table(run_dirs)
    summ = summarise(units, sw, curves, last=last)
    frames = {"units": units, "curves": curves, "activations": acts, "seeds": summ["seeds"],
              "seed_epochs": summ["seed_epochs"], "summary": summ["summary"],
              "comparison": summ["comparison"]}  # fmt: skip
    if sw is not None:
        frames["sweep"] = sw
        frames["sweep_seeds"] = summ["sweep_seeds"]
    ctx = dict(context or {})
    ctx.update({
        "relative damping λ": rel_damping,
        "damping sweep": list(sweep or ()),
        "probe": f"held-out test inputs ({'all' if probe_size is None else probe_size})",
        "analysed epochs": sorted(int(e) for e in units["epoch"].unique()),
        "loss threshold (epochs_to_loss)": float(f"{summ['threshold']:.4g}"),
        "test error": f"mean of the last {last} epochs",
        "unit tables": f"{counts.get('computed', 0)} computed, {counts.get('cached', 0)} reused",
    })  # fmt: skip
    return save_tables(frames, out, {k: _jsonable(v) for k, v in ctx.items()})


def _jsonable(value):
    """``value`` if strict JSON can hold it (non-finite numbers become null), else its text."""
    try:
        dumps_json(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def read_tables(tables_dir: str | os.PathLike) -> dict:
    """``{name: DataFrame}`` of the tables in ``tables_dir`` (missing ones skipped) and
    ``"context"``: the dict of ``context.json`` (empty if absent)."""
    from natgrad.errors import DataFileError

    folder = Path(tables_dir)
    out: dict = {}
    for name in TABLES:
        path = folder / f"{name}.csv"
        if path.is_file():
            out[name] = read_csv(path)
    if "units" not in out and "summary" not in out:
        raise DataFileError(f"{folder}: no natgrad tables (summary.csv, units.csv) in it")
    ctx = folder / "context.json"
    out["context"] = json.loads(ctx.read_text()) if ctx.is_file() else {}
    return out
