r"""The figures of the report and of ``paper_figures/``, written once.

matplotlib is imported inside each function, so ``import natgrad`` never needs it. Every
function draws from tidy tables (:mod:`natgrad.analysis.tables`) and returns the ``Figure``; callers
choose where it goes (base64 PNG in the HTML report, PDF + PNG for the paper figures).

=========================  =============================================================
function                   figure
=========================  =============================================================
:func:`plot_units`         Fig 1: ELU(α=1), ReLU, LReLU(α=0.1), SReLU
:func:`plot_curves`        Fig 2: a per-epoch column, mean ± sd over seeds per unit type
:func:`plot_layer_metric`  new: per layer, median and interquartile band over units (all
                           seeds pooled) of a unit-table column, per epoch and unit type
=========================  =============================================================
"""

from __future__ import annotations

import numpy as np

from natgrad.analysis.tables import Table

__all__ = [
    "UNIT_COLORS",
    "UNIT_LABELS",
    "figure_png_base64",
    "plot_curves",
    "plot_layer_metric",
    "plot_units",
    "save_figure",
]

#: One colour and label per unit, shared by every figure.
UNIT_COLORS = {
    "elu": "#1b9e77",
    "relu": "#d95f02",
    "lrelu": "#7570b3",
    "srelu": "#e7298a",
    "prelu": "#66a61e",
}
UNIT_LABELS = {
    "elu": r"ELU ($\alpha=1$)",
    "relu": "ReLU",
    "lrelu": r"LReLU ($\alpha=0.1$)",
    "srelu": "SReLU",
    "prelu": "PReLU",
}


def _units_in(table: Table, column: str = "unit_type") -> list[str]:
    present = table.unique(column)
    return [u for u in UNIT_COLORS if u in present] + [u for u in present if u not in UNIT_COLORS]


def plot_units(ax=None, *, xlim: tuple[float, float] = (-3.0, 2.0)):
    r"""Fig 1: the four units of the paper on ``xlim``, computed by :func:`natgrad.units.make_unit`.

    Returns the ``Figure`` (a new one unless ``ax`` is given).
    """
    import matplotlib.pyplot as plt
    import torch

    from natgrad.units import make_unit

    if ax is None:
        fig, ax = plt.subplots(figsize=(4.0, 3.2))
    else:
        fig = ax.figure
    x = torch.linspace(*xlim, 501, dtype=torch.float64)
    for name in ("elu", "relu", "lrelu", "srelu"):
        with torch.no_grad():
            y = make_unit(name)(x)
        ax.plot(x.numpy(), y.numpy(), color=UNIT_COLORS[name], label=UNIT_LABELS[name])
    ax.axhline(0.0, color="0.7", lw=0.6, zorder=0)
    ax.axvline(0.0, color="0.7", lw=0.6, zorder=0)
    ax.set(xlabel="x", ylabel="f(x)", xlim=xlim, ylim=(-1.5, xlim[1]))
    ax.legend(loc="upper left", frameon=False)
    return fig


def plot_curves(
    table: Table,
    y: str,
    *,
    ax=None,
    x: str = "epoch",
    style: str | None = None,
    label_suffix: str = "",
    ylabel: str | None = None,
    title: str | None = None,
):
    r"""Mean ± sd over seeds of column ``y`` against ``x``, one line and band per unit type.

    ``table`` has columns ``unit_type``, ``seed``, ``x`` and ``y`` (one row per run and
    epoch, e.g. :func:`natgrad.analysis.runs.activation_table`). ``style`` is a matplotlib linestyle
    (Fig 2b: training solid, validation dotted).
    """
    import matplotlib.pyplot as plt

    from natgrad.analysis.tables import summarize

    if ax is None:
        fig, ax = plt.subplots(figsize=(4.0, 3.2))
    else:
        fig = ax.figure
    for unit in _units_in(table):
        s = summarize(table.where(unit_type=unit), by=(x,), values=(y,))
        order = np.argsort(s[x])
        xs, m, sd = s[x][order], s[f"{y}_mean"][order], np.nan_to_num(s[f"{y}_sd"][order])
        color = UNIT_COLORS.get(unit)
        ax.plot(
            xs, m, color=color, ls=style or "-", label=UNIT_LABELS.get(unit, unit) + label_suffix
        )
        ax.fill_between(xs, m - sd, m + sd, color=color, alpha=0.2, lw=0)
    ax.set(xlabel=x, ylabel=ylabel or y)
    if title:
        ax.set_title(title)
    return fig


def plot_layer_metric(
    table: Table,
    metric: str,
    *,
    ylabel: str | None = None,
    log: bool = False,
    layers: list[str] | None = None,
    ncols: int = 4,
):
    r"""One panel per layer: median (line) and 25–75 % band over the units of every seed of
    ``metric`` per epoch, one colour per unit type. Dead units (NaN) are left out.

    ``table`` is a unit table (:func:`natgrad.analysis.runs.unit_table`: columns ``unit_type``,
    ``epoch``, ``layer``, ``layer_index`` and ``metric``).
    """
    import matplotlib.pyplot as plt

    if layers is None:
        order = np.argsort(table["layer_index"], kind="stable")
        layers = list(dict.fromkeys(table["layer"][order].tolist()))
    nrows = -(-len(layers) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.0 * ncols, 2.4 * nrows), squeeze=False, sharex=True
    )
    units = _units_in(table)
    for ax, layer in zip(axes.flat, layers, strict=False):
        sub = table.where(layer=layer)
        for unit in units:
            su = sub.where(unit_type=unit)
            epochs = sorted(set(su["epoch"].tolist()))
            q = np.array([_quartiles(su.where(epoch=e)[metric]) for e in epochs]).reshape(-1, 3)
            color = UNIT_COLORS.get(unit)
            ax.plot(
                epochs, q[:, 1], color=color, marker="o", ms=3, label=UNIT_LABELS.get(unit, unit)
            )
            ax.fill_between(epochs, q[:, 0], q[:, 2], color=color, alpha=0.2, lw=0)
        fed_by_data = "input_from" in sub and "data" in sub["input_from"].tolist()
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
    fig.legend(handles, labels, loc="upper center", ncol=len(units), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2.4 * nrows)))
    return fig


def _quartiles(values: np.ndarray) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return (np.nan, np.nan, np.nan)
    q = np.percentile(v, [25, 50, 75])
    return (float(q[0]), float(q[1]), float(q[2]))


def figure_png_base64(fig, *, dpi: int = 110) -> str:
    """The figure as a base64-encoded PNG (for ``<img src="data:image/png;base64,…">``); closes it."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def save_figure(fig, stem, *, formats: tuple[str, ...] = ("pdf", "png"), dpi: int = 200) -> list:
    """Save ``fig`` as ``<stem>.<fmt>`` for each format (folders created); closes it."""
    from pathlib import Path

    import matplotlib.pyplot as plt

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths
