r"""The bias-shift report: one self-contained HTML file and a terminal summary, from tables.

Everything shown is read from the CSV tables written by :func:`natgrad.analysis.summary.write_tables`
(``summary.csv``, ``comparison.csv``, ``curves.csv``, ``units.csv``); no number is typed
here. Figures are embedded as base64 PNG (:mod:`natgrad.analysis.plots`), so the file can be mailed.

Sections: the summary table (per unit type, last analysed epoch, mean ± sd over seeds), the
findings (sentences generated from ``summary.csv`` and ``comparison.csv``), Fig 1, Fig 2
(median unit mean activation; training and validation loss), and per layer over training the
distributions of ‖E_q(a)‖, k and the cosine between the plain and the unit natural gradient.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

from natgrad.analysis.tables import Table, read_csv

__all__ = ["SUMMARY_COLUMNS", "fmt", "fmt_pm", "load_tables", "render_report", "summary_text"]

#: (column stem in summary.csv, heading) of the summary table, in order.
SUMMARY_COLUMNS = (
    ("cosine", "cos(g, F⁻¹g)"),
    ("cosine_common", "cos, common λ"),
    ("mean_q_norm", "‖E_q(a)‖₂"),
    ("mean_q_avg", "avg E_q(a)"),
    ("k", "k"),
    ("s_c", "s·c"),
    ("mean_p_norm", "‖E_p(a)‖₂"),
    ("corrected_mean_norm", "‖E_p−(1+k)E_q‖₂"),
    ("dead_frac", "dead"),
    ("damped_frac", "damped"),
    ("median_all", "median act."),
    ("test_error", "test error"),
)

_TABLES = ("summary", "comparison", "curves", "units")


def fmt(x: float) -> str:
    """A number as the report prints it (4 significant digits; ``nan`` as "–").

    Example:
        >>> fmt(0.123456), fmt(float("nan")), fmt(1234567.0)
        ('0.1235', '–', '1.235e+06')
    """
    x = float(x)
    return "–" if not math.isfinite(x) else f"{x:.4g}"


def fmt_pm(mean: float, sd: float) -> str:
    """``"mean ± sd"`` (sd omitted when it is NaN, e.g. one seed).

    Example:
        >>> fmt_pm(0.5, 0.01), fmt_pm(0.5, float("nan"))
        ('0.5 ± 0.01', '0.5')
    """
    return fmt(mean) if not math.isfinite(float(sd)) else f"{fmt(mean)} ± {fmt(sd)}"


def load_tables(tables_dir: str | os.PathLike) -> dict[str, Table]:
    """``{name: Table}`` of the report's CSVs in ``tables_dir`` (errors name the file)."""
    return {name: read_csv(Path(tables_dir) / f"{name}.csv") for name in _TABLES}


def summary_text(summary: Table) -> str:
    """The summary table as fixed-width text for the terminal."""
    cols = [("unit_type", "unit")] + [(c, h) for c, h in SUMMARY_COLUMNS]
    rows = [[h for _, h in cols]]
    for r in summary.rows():
        rows.append(
            [r["unit_type"]] + [fmt_pm(r[f"{c}_mean"], r[f"{c}_sd"]) for c, _ in SUMMARY_COLUMNS]
        )
    widths = [max(len(row[j]) for row in rows) for j in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    epoch = int(summary["epoch"][0]) if len(summary) else -1
    n = int(summary["n_seeds"].max()) if len(summary) else 0
    head = (f"epoch {epoch}; mean ± sd over {n} seed(s); analysed units: live units of layers "
            "fed by hidden units; dead/damped: fractions of units")  # fmt: skip
    return head + "\n" + "\n".join(lines)


_VERDICTS = {
    "cosine": ("ELU's plain gradient is measurably {dir} its unit natural gradient than {other}'s",
               ("closer to", "further from")),
    "cosine_common": ("with the same damping for all, ELU's plain gradient is measurably {dir} its "
                      "unit natural gradient than {other}'s", ("closer to", "further from")),
    "mean_q_norm": ("ELU's ‖E_q(a)‖₂ is measurably {dir} {other}'s", ("larger than", "smaller than")),
}  # fmt: skip


def _findings(summary: Table, comparison: Table) -> list[str]:
    """Sentences stating what the tables show, every number read from them."""
    out = []
    by = {r["unit_type"]: r for r in summary.rows()}

    def listing(col: str, order) -> str:
        return ", ".join(f"{t}: {fmt_pm(by[t][f'{col}_mean'], by[t][f'{col}_sd'])}" for t in order)

    if by:
        epoch = int(next(iter(by.values()))["epoch"])
        ranking = sorted(
            by,
            key=lambda t: (
                -by[t]["cosine_mean"] if math.isfinite(by[t]["cosine_mean"]) else math.inf
            ),
        )
        out.append(
            f"At epoch {epoch}, the cosine between the plain gradient and the unit natural gradient "
            f"(median over analysed units, mean ± sd over seeds) is {listing('cosine', ranking)} "
            f"(highest first); with the same relative damping for every unit it is "
            f"{listing('cosine_common', by)}."
        )
        out.append(
            f"‖E_q(a)‖₂, the norm of the δ̄²-reweighted incoming mean that Theorems 1–2 turn on, "
            f"is {listing('mean_q_norm', by)}; the median unit mean activation is "
            f"{listing('median_all', by)}; the test error is {listing('test_error', by)}."
        )
        top = max(
            by.values(), key=lambda r: r["cosine_mean"] if math.isfinite(r["cosine_mean"]) else -1
        )
        out.append(
            f"In absolute terms every net's plain gradient is far from its unit natural gradient: "
            f"the largest cosine above is {fmt(top['cosine_mean'])} ({top['unit_type']}), and s·c "
            f"= 1 + E_q(a)ᵀVar_q(a)⁻¹E_q(a) (1 for a block-diagonal Fisher) is "
            f"{listing('s_c', by)}: the blocks are strongly coupled and ill-conditioned. The "
            f"differences between unit types below are small next to that. With "
            f"{int(max(r['n_seeds'] for r in by.values()))} seed(s) the paired tests pool the "
            "layers of each net, which are not independent: read the p-values as descriptive."
        )
        for t, r in by.items():
            if r["damped_frac_mean"] > 0 or r["dead_frac_mean"] > 0:
                out.append(
                    f"{t}: {fmt(100 * r['dead_frac_mean'])} % of the units of layers fed by hidden "
                    f"units are dead (no gradient, left out), and "
                    f"{fmt(100 * r['damped_frac_mean'])} % of the live ones have a singular or "
                    "ill-conditioned block solved with damping — compare the common-λ cosine."
                )
    for r in comparison.rows():
        if r["metric"] not in _VERDICTS or r["level"] != "seed×layer":
            continue
        template, (up, down) = _VERDICTS[r["metric"]]
        if not math.isfinite(r["p"]):
            verdict = "the test could not be run (too few pairs)"
        elif r["p"] < 0.05:
            verdict = template.format(dir=up if r["median_diff"] > 0 else down, other=r["other"])
        else:
            verdict = f"no measurable difference between ELU and {r['other']} (p ≥ 0.05)"
        out.append(
            f"{r['metric']}, ELU vs {r['other']}, pairs by {r['level']} (n = {int(r['n'])}): median "
            f"difference (ELU − {r['other']}) {fmt(r['median_diff'])}, ELU higher in "
            f"{fmt(100 * r['frac_reference_higher'])} % of pairs, Wilcoxon p = {fmt(r['p'])}: "
            f"{verdict}."
        )
    return out


def _table_html(summary: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["unit", *(h for _, h in SUMMARY_COLUMNS)])
    body = []
    for r in summary.rows():
        cells = "".join(
            f'<td data-col="{c}">{html.escape(fmt_pm(r[f"{c}_mean"], r[f"{c}_sd"]))}</td>'
            for c, _ in SUMMARY_COLUMNS
        )
        body.append(
            f'<tr data-unit="{html.escape(r["unit_type"])}"><td>{html.escape(r["unit_type"])}</td>{cells}</tr>'
        )
    return f'<table id="summary"><tr>{head}</tr>{"".join(body)}</table>'


def _comparison_html(comparison: Table) -> str:
    cols = ("metric", "other", "level", "n", "median_diff", "frac_reference_higher", "p")
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = []
    for r in comparison.rows():
        cells = "".join(
            f"<td>{html.escape(fmt(r[c]) if isinstance(r[c], float) else str(r[c]))}</td>"
            for c in cols
        )
        body.append(f"<tr>{cells}</tr>")
    return f'<table id="comparison"><tr>{head}</tr>{"".join(body)}</table>'


def _figures(tables: dict[str, Table]) -> list[tuple[str, str]]:
    """``[(caption, base64 png)]``; matplotlib is imported here only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from natgrad.analysis import plots

    curves, units = tables["curves"], tables["units"]
    figs = [("Fig 1. The units compared: ELU (α=1), ReLU, LReLU (α=0.1), SReLU.",
             plots.figure_png_base64(plots.plot_units()))]  # fmt: skip
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    plots.plot_curves(curves, "median_all", ax=a, ylabel="median unit mean activation",
                      title="(a) median over units of the mean activation")  # fmt: skip
    plots.plot_curves(curves, "train_loss", ax=b, label_suffix=" train")
    plots.plot_curves(curves, "test_loss", ax=b, style=":", label_suffix=" validation",
                      ylabel="cross-entropy", title="(b) train (solid), validation (dotted)")  # fmt: skip
    a.legend(frameon=False, fontsize="small")
    b.set_yscale("log")
    figs.append(("Fig 2. Mean ± sd over seeds per epoch (validation = the held-out split).",
                 plots.figure_png_base64(fig)))  # fmt: skip
    for metric, label, log, caption in (
        (
            "mean_q_norm",
            "‖E_q(a)‖₂",
            False,
            "‖E_q(a)‖₂, the norm of the δ̄²-reweighted incoming mean",
        ),
        ("k", "k", False, "Theorem 2's k"),
        (
            "cosine",
            "cos(g, F⁻¹g)",
            False,
            "cosine between the plain gradient and the unit natural gradient",
        ),
        (
            "cosine_common",
            "cos, common λ",
            False,
            "the same cosine with the same relative damping for every unit",
        ),
        ("s_c", "s·c", True, "s·c = 1 + E_q(a)ᵀVar_q(a)⁻¹E_q(a) (1: block-diagonal Fisher)"),
    ):
        fig = plots.plot_layer_metric(units, metric, ylabel=label, log=log, ncols=3)
        figs.append((f"Per layer over training: {caption}. Median (line) and 25–75 % band over the "
                     "live units of all seeds; the first layer sees the data.",
                     plots.figure_png_base64(fig)))  # fmt: skip
    return figs


_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:3px 6px}
img{max-width:100%}figcaption{font-size:90%;color:#444}code{background:#f4f4f4}"""


def render_report(
    tables_dir: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    *,
    title: str = "natgrad: bias shift and the unit natural gradient in trained nets",
    context: dict | None = None,
    figures: bool = True,
) -> Path:
    r"""Write the HTML report for the tables in ``tables_dir`` (default
    ``<tables_dir>/../report.html``) and return its path. ``context`` (command, device,
    wall time, …) is listed verbatim under the title. ``figures=False`` leaves the figures out
    (fast; for tests of the text)."""
    tables = load_tables(tables_dir)
    out = Path(out_path) if out_path is not None else Path(tables_dir).parent / "report.html"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]  # fmt: skip
    if context:
        items = "".join(f"<li><b>{html.escape(str(k))}</b>: <code>{html.escape(str(v))}</code></li>"
                        for k, v in context.items())  # fmt: skip
        parts.append(f"<ul>{items}</ul>")
    parts.append(
        "<p>For every unit of every layer, at each analysed epoch, the exact unit Fisher "
        "F = [[A, b], [bᵀ, c]] (bias last) is computed on the run's fixed probe set, and the "
        "gradient g is the gradient of the probe set's mean log-likelihood (minus the loss "
        "gradient). <i>Analysed units</i> are the live units of the layers fed by hidden "
        "units; dead units (c = 0) have no Fisher and are counted, not hidden; blocks with "
        "condition number estimate above the limit are solved with a small relative damping "
        "(fraction shown as <i>damped</i>); <i>cos, common λ</i> applies that damping to every "
        "unit. Each number is the median over a run's analysed units, then mean ± sd over "
        "seeds; paired tests compare per-(seed, layer) medians of nets with the same initial "
        "weights. Tables: <code>tables/*.csv</code>.</p>"
    )
    parts.append("<h2>Summary</h2><pre>" + html.escape(summary_text(tables["summary"])) + "</pre>")
    parts.append(_table_html(tables["summary"]))
    parts.append("<h2>Findings</h2><ul>" + "".join(
        f"<li>{html.escape(s)}</li>" for s in _findings(tables["summary"], tables["comparison"])) + "</ul>")  # fmt: skip
    parts.append(
        "<h3>Paired tests (ELU vs each unit type)</h3>" + _comparison_html(tables["comparison"])
    )
    parts.append("<h2>Figures</h2>")
    for caption, png in _figures(tables) if figures else []:
        parts.append(
            f'<figure><img src="data:image/png;base64,{png}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        )
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
