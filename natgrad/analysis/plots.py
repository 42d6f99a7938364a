r"""The figures of the report and of ``paper_figures/``, written once.

matplotlib is imported inside each function, so ``import natgrad`` never needs it. Every
function draws from tidy pandas tables and returns the ``Figure``; callers choose where it
goes (base64 PNG in the HTML report, PDF + PNG for the paper figures).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch

from natgrad.analysis.metrics import METRICS, label
from natgrad.errors import InputError
from natgrad.units import split_unit_type, unit_type_colour, unit_type_label, unit_type_order

__all__ = ["figure_png_base64", "plot_answer", "plot_probe_sizes", "plot_curves", "plot_fig2",
           "plot_damping_sweep", "plot_efficiencies", "plot_layer_metric", "plot_n_eff",
           "plot_units", "file_subplots", "save_figure"]  # fmt: skip


def _units_in(table, column: str = "unit_type") -> list[str]:
    return unit_type_order(table[column].unique())


def _style(key: str) -> dict:
    """Colour from the catalogue; batch-norm variants dashed."""
    return {"color": unit_type_colour(key),
            "ls": {"-bn": "--", "-ln": ":"}.get(split_unit_type(key)[1], "-")}  # fmt: skip


def _every_seed(values, rows, x: str):
    """``values`` (aligned with ``rows``; NaN where a seed has none) grouped by ``rows[x]``,
    and the mask of the ``x`` where every seed of ``rows`` has one: the one rule for a curve
    over seeds (a mean of the survivors is another population)."""
    g = values.groupby(rows[x])
    return g, g.count() == rows["seed"].nunique()


def seed_means(rows, x: str, cols):
    """Per ``x``: the mean over every seed of ``rows`` of each column of ``cols``, NaN where
    a seed lacks a finite value (:func:`_every_seed`; a line breaks there)."""
    v = rows[list(cols)]
    g, whole = _every_seed(v.where(np.isfinite(v)), rows, x)
    return g.mean().where(whole)


def mark_last_before_gap(ax, series, **kw) -> None:
    """An × at the last finite point of ``series`` before its first NaN (seeds were lost)."""
    finite = np.isfinite(series.to_numpy(float))
    gap = int(np.argmin(finite))  # the first NaN (0 where there is none, or it leads)
    if gap > 0:
        ax.plot(series.index[gap - 1], series.iloc[gap - 1], "x", ms=7, **kw)


def _band(ax, table, unit: str, x: str, y: str, alpha: float, suffix: str = "", *,
          log: bool = False, **kw) -> None:  # fmt: skip
    """Mean ± sd over seeds of ``y`` against ``x`` for ``unit``: a line (``kw`` overriding its
    style) and a band; with ``log``, of log10 ``y`` drawn back on the log scale (the geometric
    mean, its band ×/÷ 10^sd: mean − sd ≤ 0 has no place on a log axis)."""
    sub = table[table["unit_type"] == unit]
    if sub.duplicated(["seed", x]).any():
        raise InputError(f"plot of {y}: {unit} has two rows for one seed and {x}; a curve is "
                         "one run per seed (table the runs of one setting)")  # fmt: skip
    ok = np.isfinite(sub[y]) & ((sub[y] > 0) if log else True)
    values = np.log10(sub[y].where(ok)) if log else sub[y].where(ok)
    g, whole = _every_seed(values, sub, x)
    m, sd = g.mean().where(whole), g.std(ddof=1).where(whole)  # NaN: the line breaks there
    lo, hi = m - sd.fillna(0.0), m + sd.fillna(0.0)
    if log:
        m, lo, hi = 10.0**m, 10.0**lo, 10.0**hi
    st = {**_style(unit), **kw}
    ax.plot(m.index, m.values, label=unit_type_label(unit) + suffix, **st)
    ax.fill_between(m.index, lo, hi, color=st["color"], alpha=alpha, lw=0)
    mark_last_before_gap(ax, m, color=st["color"])  # a seed diverged, stopped or reached 0


def _marker(unit: str) -> dict:
    """An error bar's colour and marker: a circle for a plain unit, a square for a variant."""
    st = _style(unit)
    return {"fmt": "o" if st["ls"] == "-" else "s", "color": st["color"]}


def _subplots(*args, ax=None, **kw):
    """``plt.subplots(*args, **kw)``, or ``(figure, ax)`` of a given ``ax`` (matplotlib is
    imported here, at the first figure)."""
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kw) if ax is None else (ax.figure, ax)


def file_subplots(*args, **kw):
    """``plt.subplots(*args, **kw)`` on matplotlib's Agg backend: a figure that a script or a
    record writes to a file (:func:`save_figure`), never shown."""
    import matplotlib

    matplotlib.use("Agg")
    return _subplots(*args, **kw)


def plot_units(ax=None, *, xlim: tuple[float, float] = (-3.0, 2.0), extra: bool = True):
    r"""Fig 1: the four units of the paper on ``xlim``, computed by :func:`natgrad.units.make_unit`,
    and (``extra``) SELU, which the demo also trains, dashed and labelled as not the paper's.

    Returns the ``Figure`` (a new one unless ``ax`` is given).
    """
    from natgrad.units import CATALOGUE, make_unit

    fig, ax = _subplots(ax=ax, figsize=(4.0, 3.2))
    x = torch.linspace(*xlim, 501, dtype=torch.float64)
    for name, unit in CATALOGUE.items():
        if name == "prelu" or not (unit.in_paper or extra):
            continue
        with torch.no_grad():
            y = make_unit(name)(x)
        label = unit_type_label(name) + ("" if unit.in_paper else " (not in the paper)")
        ax.plot(x.numpy(), y.numpy(), color=unit.colour, label=label,
                ls="-" if unit.in_paper else "--")  # fmt: skip
    ax.axhline(0.0, color="0.7", lw=0.6, zorder=0)
    ax.axvline(0.0, color="0.7", lw=0.6, zorder=0)
    ax.set(xlabel="x", ylabel="f(x)", xlim=xlim, ylim=(-1.5, xlim[1]))
    ax.legend(loc="upper left", frameon=False)
    return fig


def plot_curves(table, y: str, *, ax=None, x: str = "epoch", style: str | None = None,
                label_suffix: str = "", ylabel: str | None = None, title: str | None = None,
                log: bool = False):  # fmt: skip
    r"""Mean ± sd over seeds of column ``y`` against ``x``, one line and band per unit type;
    ``log``: on a log axis, the mean ± sd of log10 ``y`` (a geometric mean and a ×/÷ band;
    a band of mean − sd fell to the axis floor wherever sd > mean). A point is a mean over
    every seed of its unit type: where a seed is missing or non-finite (or ≤ 0 on a log axis)
    the point is left out (not averaged over the survivors) and the last full one marked ×.

    ``table`` is a DataFrame with columns ``unit_type``, ``seed``, ``x`` and ``y`` (one row per
    run and epoch, e.g. :func:`natgrad.analysis.runs.curve_table`). ``style`` overrides the
    line style (Fig 2b: training solid, validation dotted).
    """
    fig, ax = _subplots(ax=ax, figsize=(4.0, 3.2))
    for unit in _units_in(table):
        _band(ax, table, unit, x, y, 0.15, label_suffix, log=log,
              **({"ls": style} if style else {}))  # fmt: skip
    if log:
        ax.set_yscale("log")
    ax.set(xlabel=x, ylabel=ylabel or y)
    if title:
        ax.set_title(title)
    return fig


def plot_fig2(curves, *, figsize: tuple[float, float] = (9.5, 3.6)):
    r"""Fig 2 of the paper from a curve table (:func:`natgrad.analysis.runs.curve_table`):
    (a) the median unit mean activation per epoch, mean ± sd over seeds; (b) the training
    (solid) and held-out (dotted: validation where the data have one, else test)
    cross-entropy, geometric mean ×/÷ sd over seeds on a log axis. Returns the ``Figure``."""
    held = ("val_loss" if "val_loss" in curves and curves["val_loss"].notna().any()
            else "test_loss")  # fmt: skip
    name = "validation" if held == "val_loss" else "test"
    fig, (a, b) = _subplots(1, 2, figsize=figsize, layout="constrained")
    plot_curves(curves, "median_all", ax=a, ylabel="mean ± sd over seeds",
                title="(a) median unit mean activation")  # fmt: skip
    a.axhline(0.0, color="0.6", lw=0.6)
    plot_curves(curves, "train_loss", ax=b, label_suffix=" train", log=True)
    plot_curves(curves, held, ax=b, style=":", label_suffix=f" {name}", log=True,
                ylabel="cross-entropy (geom. mean ×/÷ sd)",
                title=f"(b) train (solid), {name} (dotted)")  # fmt: skip
    a.legend(frameon=False, fontsize="x-small")
    return fig


def plot_layer_metric(table, metric: str, *, ylabel: str | None = None, log: bool = False,
                      layers: list[str] | None = None, ncols: int = 4, title: str | None = None):  # fmt: skip
    r"""One panel per layer (``layers``, default all in net order): median (line) and 25–75 %
    band over the units of every seed of ``metric`` per epoch, one colour per unit type. Dead
    units (NaN) are left out. A descriptive figure: the replicates of any test are seeds,
    never these units. ``title`` (default: "<label> per layer over training") heads it."""
    if layers is None:
        layers = list(table.sort_values("layer_index", kind="stable")["layer"].unique())
    nrows = -(-len(layers) // ncols)
    fig, axes = _subplots(
        nrows, ncols, figsize=(3.0 * ncols, 2.4 * nrows), squeeze=False, sharex=True
    )
    units = _units_in(table)
    for ax, layer in zip(axes.flat, layers, strict=False):
        sub = table[table["layer"] == layer]
        for unit in units:
            su = sub[sub["unit_type"] == unit]
            epochs = sorted(su["epoch"].unique())
            q = np.array([_quartiles(su[su["epoch"] == e][metric]) for e in epochs]).reshape(-1, 3)
            st = _style(unit)
            ax.plot(epochs, q[:, 1], marker="o", ms=3, label=unit_type_label(unit), **st)
            ax.fill_between(epochs, q[:, 0], q[:, 2], color=st["color"], alpha=0.15, lw=0)
        fed_by_data = "input_from" in sub and (sub["input_from"] == "data").any()
        ax.set_title(f"{layer} (input: data)" if fed_by_data else layer, fontsize="small")
        if log:
            ax.set_yscale("log")
    for ax in axes.flat[len(layers) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel or metric)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.suptitle(title or f"{ylabel or metric} per layer over training", fontsize="medium",
                 y=1.0 - 0.05 / nrows)  # fmt: skip
    fig.legend(handles, labels, loc="upper center", ncol=len(units), frameon=False,
               bbox_to_anchor=(0.5, 1.0 - 0.3 / (2.4 * nrows)))  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / (2.4 * nrows)))
    return fig


def plot_efficiencies(summary, metrics: list[str], *, ax=None, title: str | None = None):
    r"""The headline figure: per metric (group of points) and unit type (colour), the mean over
    seeds with its 95 % CI (``summary`` from :func:`natgrad.analysis.stats.group_summary`).
    Where ρ(block-diag.) sits above 0.9 for every unit type its differences are invisible on
    the common axis, so it gets a panel of its own: 1 − ρ on a log axis (not when drawn into a
    given ``ax``)."""
    units = unit_type_order(summary["unit_type"])
    near_one = "rho_blockdiag" in metrics and bool((summary["rho_blockdiag_mean"] > 0.9).all())
    main = [m for m in metrics if not (near_one and m == "rho_blockdiag")]
    if ax is not None:
        fig, side = ax.figure, None
    elif near_one:
        fig, (ax, side) = _subplots(1, 2, figsize=(1.9 * len(main) + 3.6, 3.4),
                                       gridspec_kw={"width_ratios": [len(main), 1.3]})  # fmt: skip
    else:
        (fig, ax), side = _subplots(figsize=(1.9 * len(main) + 1.5, 3.4)), None
    width = 0.8 / max(1, len(units))
    for j, unit in enumerate(units):
        row = summary[summary["unit_type"] == unit].iloc[0]
        xs = np.arange(len(main)) - 0.4 + width * (j + 0.5)
        m, lo, hi = (np.array([row[f"{k}_{q}"] for k in main], dtype=float)
                     for q in ("mean", "lo", "hi"))  # fmt: skip
        err = np.vstack([np.nan_to_num(m - lo), np.nan_to_num(hi - m)])
        ax.errorbar(xs, m, yerr=err, **_marker(unit), capsize=2, ms=4,
                    label=unit_type_label(unit) + f" (n={int(row['n_seeds'])})")  # fmt: skip
        if side is not None:
            c = 1.0 - float(row["rho_blockdiag_mean"])
            c_lo, c_hi = 1.0 - float(row["rho_blockdiag_hi"]), 1.0 - float(row["rho_blockdiag_lo"])
            side.errorbar([j], [c], yerr=[[max(c - c_lo, 0.0)], [max(c_hi - c, 0.0)]],
                          **_marker(unit), capsize=2, ms=4)  # fmt: skip
    ax.set_xticks(np.arange(len(main)), [label(k) for k in main])
    ax.set_ylabel("Fisher efficiency ρ\n(seed mean, 95 % CI)")
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", frameon=False, ncol=2)
    if side is not None:
        side.set_yscale("log")
        side.set_xticks(range(len(units)), [unit_type_label(u) for u in units], rotation=45,
                        fontsize="x-small", ha="right")  # fmt: skip
        side.set_title("1 − ρ(block-diag.), log axis", fontsize="small")
        side.grid(axis="y", alpha=0.3, which="both")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def _ci_points(ax, summary, metric: str, units: list[str]) -> None:
    for j, unit in enumerate(units):
        row = summary[summary["unit_type"] == unit].iloc[0]
        m, lo, hi = (float(row[f"{metric}_{k}"]) for k in ("mean", "lo", "hi"))
        ax.errorbar([j], [m], yerr=[[np.nan_to_num(m - lo)], [np.nan_to_num(hi - m)]],
                    **_marker(unit), capsize=3, ms=5)  # fmt: skip
    ax.set_xticks(range(len(units)), [unit_type_label(u) for u in units], fontsize="small")
    ax.set_xlim(-0.6, len(units) - 0.4)
    ax.grid(axis="y", alpha=0.3)


def plot_answer(summary, rho: str | None, speed: str):
    r"""The report's first figure: the paper's question in two halves, side by side, per unit
    type (mean over seeds, 95 % CI). Left: the Fisher efficiency ``rho`` with each
    type's median n_eff/(d+1) written under it (``None``: the blocks are not estimable and
    the panel says so instead of plotting); right: the learning-speed metric ``speed``."""
    units = unit_type_order(summary["unit_type"])
    fig, (a, b) = _subplots(1, 2, figsize=(9.0, 3.3))
    if rho is None:
        a.text(0.5, 0.5, "ρ not compared:\nthe unit blocks are not estimable\non this probe "
               "(median n_eff < 2(d+1))", ha="center", va="center", transform=a.transAxes)  # fmt: skip
        a.set(xticks=[], yticks=[])
    else:
        _ci_points(a, summary, rho, units)
        a.set_ylabel(label(rho))
        # n_eff/(d+1) under each unit's name, where it never meets a CI bar
        n_eff = [summary[summary["unit_type"] == u].iloc[0].get("n_eff_over_d1_mean", np.nan)
                 for u in units]  # fmt: skip
        a.set_xticks(range(len(units)), [f"{unit_type_label(u)}\nn_eff/(d+1)\n{float(r):.3g}"
                                         for u, r in zip(units, n_eff, strict=True)],
                     fontsize="small")  # fmt: skip
    a.set_title("closer to the unit natural gradient? (higher = closer)", fontsize="medium")
    _ci_points(b, summary, speed, units)
    b.set_ylabel(label(speed))
    better = METRICS[speed].better if speed in METRICS else None
    b.set_title(f"learns faster? ({better} = faster)" if better else "learning speed",
                fontsize="medium")  # fmt: skip
    fig.tight_layout()
    return fig


def plot_probe_sizes(probe_sizes, metrics=("rho_plain", "rho_plain_jk")):
    r"""ρ against the probe size (log axis): per unit type, the mean over the swept seeds of
    the per-run medians; solid the plain estimate, dashed the jackknifed one."""
    fig, ax = _subplots(figsize=(5.6, 3.4))
    for unit in _units_in(probe_sizes):
        sub = seed_means(probe_sizes[probe_sizes["unit_type"] == unit], "probe_size", metrics)
        for metric, ls in zip(metrics, ("-", "--"), strict=False):
            ax.plot(sub.index, sub[metric], ls, marker="o", ms=3, color=unit_type_colour(unit),
                    label=f"{unit_type_label(unit)}, {label(metric)}")  # fmt: skip
    ax.set(xscale="log", xlabel="probe size (held-out inputs)",
           ylabel="ρ (mean over seeds of run medians)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize="xx-small", frameon=False, ncol=2)
    fig.tight_layout()
    return fig


def plot_damping_sweep(sweep_seeds, metrics=("rho_plain", "rho_centred", "rho_quasidiagonal")):
    r"""Efficiency against the relative damping λ: mean over seeds (of per-run medians) ± sd,
    one panel per update direction, one line per unit type."""
    fig, axes = _subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.0), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=True):
        for unit in _units_in(sweep_seeds):
            _band(ax, sweep_seeds, unit, "rel_damping", metric, 0.12, marker="o", ms=3)
        ax.set(xscale="log", xlabel="relative damping λ", ylabel=label(metric), title=label(metric))
    handles, labels = axes.flat[0].get_legend_handles_labels()  # beside the panels, off the lines
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               fontsize="small")  # fmt: skip
    fig.tight_layout()
    return fig


def plot_n_eff(units):
    r"""n_eff/(d+1) of every analysed unit at the last epoch, per unit type (box plots), with
    the estimability line n_eff = 2(d+1)."""
    from natgrad.analysis.stats import analysed_units

    live = analysed_units(units[units["epoch"] == units["epoch"].max()])
    keys = _units_in(live)
    fig, ax = _subplots(figsize=(1.1 * len(keys) + 2.0, 3.0))
    ratio = live["n_eff"] / (live["fan_in"] + 1)
    data = [ratio[live["unit_type"] == k].to_numpy() for k in keys]
    bp = ax.boxplot(data, showfliers=False, patch_artist=True)
    for patch, k in zip(bp["boxes"], keys, strict=True):
        patch.set_facecolor(unit_type_colour(k) or "0.8")
        patch.set_alpha(0.5)
    ax.set_xticks(range(1, len(keys) + 1), [unit_type_label(k) for k in keys], rotation=20)
    ax.axhline(2.0, color="k", ls=":", lw=1, label="n_eff = 2(d+1)")
    ax.set(yscale="log", ylabel="n_eff / (d+1)")
    ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


def _quartiles(values: np.ndarray) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return tuple(np.percentile(v, [25, 50, 75])) if v.size else (np.nan, np.nan, np.nan)


def figure_png_base64(fig, *, dpi: int = 110) -> str:
    """The figure as a base64-encoded PNG (for ``<img src="data:image/png;base64,…">``); closes it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def save_figure(fig, stem, *, formats: tuple[str, ...] = ("pdf", "png"), dpi: int = 200) -> list:
    """Save ``fig`` as ``<stem>.<fmt>`` for each format (folders created); closes it. No
    creation date is written, so a figure redrawn from the same data has the same bytes."""
    import matplotlib.pyplot as plt

    from natgrad._atomic import atomic_open

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        with atomic_open(path, "wb") as fh:  # a kill leaves the old figure or the new
            fig.savefig(fh, format=fmt, dpi=dpi, bbox_inches="tight",
                        metadata={"CreationDate": None} if fmt == "pdf" else None)  # fmt: skip
        paths.append(path)
    plt.close(fig)
    return paths
