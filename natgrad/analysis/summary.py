r"""Summaries of the tidy tables of :mod:`natgrad.analysis.runs`: what the report prints, as tables.

Conventions (stated once, used by the report's text):

- *Analysed units* are the live units (``dead == 0``) of the layers fed by hidden units
  (``input_from == "units"``): the first layer sees the data, identical for every unit
  type, so it says nothing about the units; dead units have no Fisher (NaN).
- "mean ± sd" is over seeds: first the MEDIAN over a run's analysed units (robust: k and
  s·c are heavy-tailed), then mean and sample sd (ddof 1) over the runs of a unit type
  (:func:`natgrad.analysis.tables.summarize`). Fractions (dead, damped) are per-run means.
- The paired test compares ELU with each other unit type at one epoch, on pairs that share
  their initial weights: the per-(seed, layer) median of a metric (n = seeds × layers), and,
  as a finer but not independent view, per (seed, layer, unit). Two-sided Wilcoxon
  signed-rank test (:func:`natgrad.analysis.tables.paired_wilcoxon`).

Example:
    >>> t = Table({"unit_type": ["elu", "elu", "relu", "relu"], "seed": [0, 1, 0, 1],
    ...            "epoch": [1] * 4, "layer": ["fc2"] * 4, "unit": [0] * 4,
    ...            "input_from": ["units"] * 4, "dead": [0] * 4, "damping": [0.0] * 4,
    ...            "cosine": [0.9, 0.8, 0.5, 0.4]})
    >>> paired_comparison(t, "cosine")["median_diff"]
    array([0.4, 0.4])
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from natgrad.analysis.tables import Table, concat, paired_wilcoxon, summarize, write_csv

__all__ = [
    "COMPARED",
    "SUMMARY_METRICS",
    "analysed_units",
    "epoch_summary",
    "paired_comparison",
    "unit_type_summary",
    "write_tables",
]

#: Unit-table columns summarised per unit type (median over analysed units, then ± over seeds).
SUMMARY_METRICS = ("cosine", "cosine_common", "mean_q_norm", "mean_q_avg", "k", "s_c",
                   "mean_p_norm", "corrected_mean_norm")  # fmt: skip


#: Metrics of the paired ELU-vs-others tests in ``comparison.csv``.
COMPARED = ("cosine", "cosine_common", "mean_q_norm", "k")


def analysed_units(units: Table) -> Table:
    """The live units of the layers fed by hidden units (see the module docstring)."""
    return units.where(input_from="units", dead=0)


def _last_epoch(table: Table) -> int:
    return int(table["epoch"].max())


def unit_type_summary(units: Table, curves: Table, *, epoch: int | None = None) -> Table:
    r"""One row per unit type at ``epoch`` (default: the last analysed): ``n_seeds``,
    ``<metric>_mean``/``_sd`` for :data:`SUMMARY_METRICS` (per-run medians over analysed
    units), the per-run
    fractions ``dead_frac`` (dead units of layers fed by units) and ``damped_frac``
    (analysed units solved with damping), and from the curves ``test_error``,
    ``train_loss``, ``test_loss`` and ``median_all`` at that epoch."""
    epoch = _last_epoch(units) if epoch is None else epoch
    u = units.where(epoch=epoch)
    fed = u.where(input_from="units")
    fed = fed.with_columns(
        dead_frac=fed["dead"].astype(np.float64),
        damped_frac=np.where(fed["dead"] == 1, np.nan, (fed["damping"] > 0).astype(np.float64)),
    )
    a = summarize(analysed_units(u), by=("unit_type",), values=SUMMARY_METRICS, within="median")
    d = summarize(fed, by=("unit_type",), values=("dead_frac", "damped_frac"))
    c = summarize(
        curves.where(epoch=epoch), by=("unit_type",),
        values=("test_error", "train_loss", "test_loss", "median_all"),
    )  # fmt: skip
    order = [t for t in ("elu", "relu", "lrelu", "srelu", "prelu") if t in a.unique("unit_type")]
    order += [t for t in a.unique("unit_type") if t not in order]
    cols: dict = {"unit_type": order, "epoch": [epoch] * len(order)}
    for src in (a, d, c):
        pos = {t: i for i, t in enumerate(src["unit_type"].tolist())}
        for name in src.columns:
            if name == "unit_type" or (name == "n_seeds" and "n_seeds" in cols):
                continue
            cols[name] = [src[name][pos[t]] if t in pos else math.nan for t in order]
    return Table(cols)


def epoch_summary(units: Table) -> Table:
    """Per unit type × epoch × layer: mean ± sd over seeds of the median of
    :data:`SUMMARY_METRICS` over the layer's live units (all layers, the first included)."""
    live = units.where(dead=0)
    return summarize(
        live, by=("unit_type", "epoch", "layer"), values=SUMMARY_METRICS, within="median"
    )


def paired_comparison(
    units: Table, metric: str = "cosine", *, reference: str = "elu", epoch: int | None = None
) -> Table:
    r"""ELU (``reference``) against each other unit type on ``metric`` at ``epoch``.

    Rows: one per (other unit type, level) with level ``"seed×layer"`` (pairs of per-run,
    per-layer medians over analysed units) and ``"seed×layer×unit"`` (pairs of units with the
    same initial weights, both live). Columns ``other``, ``level``, ``n``, ``median_diff``
    (reference − other), ``frac_reference_higher``, ``statistic``, ``p``.
    """
    epoch = _last_epoch(units) if epoch is None else epoch
    u = units.where(epoch=epoch, input_from="units")
    rows = []
    ref = u.where(unit_type=reference)
    for other in [t for t in u.unique("unit_type") if t != reference]:
        oth = u.where(unit_type=other)
        for level, keys in (
            ("seed×layer", ("seed", "layer")),
            ("seed×layer×unit", ("seed", "layer", "unit")),
        ):
            x, y = _paired(ref, oth, keys, metric)
            res = paired_wilcoxon(x, y)
            keep = np.isfinite(x) & np.isfinite(y)
            higher = float(np.mean(x[keep] > y[keep])) if keep.any() else math.nan
            rows.append({"metric": metric, "epoch": epoch, "reference": reference, "other": other,
                         "level": level, "n": res["n"], "median_diff": res["median_diff"],
                         "frac_reference_higher": higher, "statistic": res["statistic"],
                         "p": res["p"]})  # fmt: skip
    if not rows:
        return Table()
    return Table({k: [r[k] for r in rows] for k in rows[0]})


def _paired(
    a: Table, b: Table, keys: tuple[str, ...], metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Medians of ``metric`` (NaN for dead units) per key tuple, aligned on common keys."""

    def means(t: Table) -> dict:
        vals = np.where(t["dead"] == 1, np.nan, t[metric].astype(np.float64))
        groups: dict = {}
        for i, k in enumerate(zip(*(t[c].tolist() for c in keys), strict=True)):
            groups.setdefault(k, []).append(vals[i])
        out = {}
        for k, v in groups.items():
            v = np.asarray(v)
            v = v[np.isfinite(v)]
            out[k] = float(np.median(v)) if v.size else math.nan
        return out

    ma, mb = means(a), means(b)
    common = sorted(set(ma) & set(mb))
    return np.array([ma[k] for k in common]), np.array([mb[k] for k in common])


def write_tables(
    run_dirs,
    out_dir: str | os.PathLike,
    *,
    epochs=None,
    probe_size=None,
    progress=False,
    units: Table | None = None,
) -> dict[str, Path]:
    r"""Build every table from ``run_dirs`` and write them as CSV into ``out_dir``:

    ``units.csv`` (run × epoch × layer × unit), ``curves.csv`` (run × epoch),
    ``activations.csv`` (run × epoch × layer), ``epoch_summary.csv``,
    ``summary.csv`` (per unit type, last epoch) and ``comparison.csv`` (paired tests on
    ``cosine``, ``cosine_common``, ``mean_q_norm`` and ``k``). ``units`` skips recomputing the unit table.
    Returns ``{name: path}``.
    """
    from natgrad.analysis.runs import activation_table, curve_table, unit_table

    run_dirs = [Path(r) for r in run_dirs]
    out = Path(out_dir)
    if units is None:
        units = unit_table(run_dirs, epochs=epochs, probe_size=probe_size, progress=progress)
    curves = curve_table(run_dirs)
    if epochs is not None:
        curves = curves.take(curves["epoch"] <= max(epochs))
    acts = activation_table(run_dirs)
    comparison = concat([paired_comparison(units, m) for m in COMPARED])
    tables = {
        "units": units,
        "curves": curves,
        "activations": acts,
        "epoch_summary": epoch_summary(units),
        "summary": unit_type_summary(units, curves),
        "comparison": comparison,
    }
    return {name: write_csv(t, out / f"{name}.csv") for name, t in tables.items()}
