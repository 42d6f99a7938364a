r"""The report: one self-contained HTML file and a terminal summary, from the tables.

Every number shown is read from the tables of :func:`natgrad.analysis.summary.write_tables`
(no number is typed here) and every sentence is generated from a paired comparison's
95 % CI over seeds (:func:`natgrad.analysis.stats.sentence`). Figures are embedded as
base64 PNG, so the file can be mailed.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

from natgrad._atomic import write_text
from natgrad.analysis import metrics as mt
from natgrad.analysis.stats import (
    SIGN_FLIP_EXACT_UP_TO,
    analysed_units,
    ci_text,
    declared_sign,
    interval_text,
    mean_ci_name,
    outward,
    resolved_sign,
)
from natgrad.analysis.summary import headline_rho, read_tables
from natgrad.units import unit_type_label, unit_type_order

__all__ = ["SUMMARY_COLUMNS", "answer", "ci_text", "fmt", "fmt_ci", "outward", "p_text",
           "render_report", "summary_columns", "summary_text"]  # fmt: skip

#: Columns of the summary table (metric names of :mod:`natgrad.analysis.metrics`).
SUMMARY_COLUMNS = (
    "rho_plain", "rho_centred", "rho_quasidiagonal", "rho_blockdiag", "n_eff_over_d1",
    "estimable", "abs_median_activation", "train_loss_auc", "test_error",
)  # fmt: skip


def summary_columns(summary) -> tuple[str, ...]:
    """:data:`SUMMARY_COLUMNS`, led by the jackknifed ρ(plain) where the tables have it."""
    jk = ("rho_plain_jk",) if "rho_plain_jk_mean" in summary.columns else ()
    return jk + SUMMARY_COLUMNS


HEADLINE = ("rho_plain", "rho_centred", "rho_quasidiagonal", "rho_blockdiag")
QUESTION = (
    "Does ELU bring plain SGD closer to the unit natural gradient (Theorems 1–2), and does "
    "it make the net learn faster?"
)


def fmt(x) -> str:
    """A number in 4 significant digits (``nan``/``inf`` spelled out)."""
    try:
        return f"{float(x):.4g}"
    except (TypeError, ValueError):
        return str(x)


def fmt_ci(row, metric: str) -> str:
    """``mean [lo, hi]`` of ``metric`` in a summary row."""
    m, lo, hi = row.get(f"{metric}_mean"), row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return fmt(m)
    return f"{fmt(m)} {_ci(lo, hi)}"


def _ci(lo, hi) -> str:
    """``[lo, hi]`` at :func:`fmt`'s 4 digits, rounded outward (the printed interval holds
    the computed one)."""
    return interval_text(lo, hi, digits=4, signed=False)


def p_text(p: float, bound: bool, *, spec: str = ".2g") -> str:
    """A p (or its Holm value) as a report prints it: ``≤ p`` where it is a bound (the raw p
    sat at the floor of the random draws, e.g. :func:`~natgrad.analysis.stats.sign_flip_at_floor`).

    Example:
        >>> p_text(4e-05, True), p_text(0.384, False)
        ('≤ 4e-05', '0.38')
    """
    return f"{'≤ ' if bound else ''}{p:{spec}}"


def summary_text(summary, columns=None, *, width: int = 100) -> str:
    """The summary table as fixed-width text (terminal, ``summary.txt``), in blocks of columns
    that each fit ``width`` characters (the unit and seed columns repeat in every block);
    ``columns`` default :func:`summary_columns`."""
    columns = summary_columns(summary) if columns is None else columns
    rows = [["unit", "n"] + [mt.label(c) for c in columns]]
    for key in unit_type_order(summary["unit_type"]):
        r = summary[summary["unit_type"] == key].iloc[0].to_dict()
        rows.append([unit_type_label(key, tex=False), str(int(r["n_seeds"]))] +
                    [fmt_ci(r, c) for c in columns])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    head = widths[0] + widths[1] + 2
    blocks, current, used = [], [], head
    for i in range(2, len(widths)):
        if current and used + 2 + widths[i] > width:
            blocks.append(current)
            current, used = [], head
        current.append(i)
        used += 2 + widths[i]
    blocks.append(current)
    out = []
    for cols in blocks:
        keep = [0, 1, *cols]
        out += ["  ".join(row[i].ljust(widths[i]) for i in keep).rstrip() for row in rows]
        out.append("")
    return "\n".join(out).rstrip()


def _table_html(frame, columns, *, fmt_cell=None, table_id: str = "", row_key: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in columns)
    body = []
    for _, r in frame.iterrows():
        cells = []
        for key, _ in columns:
            v = fmt_cell(r, key) if fmt_cell else r[key]
            text = html.escape(v if isinstance(v, str) else fmt(v))
            cells.append(f'<td data-col="{html.escape(key)}">{text}</td>')
        attr = f' data-unit="{html.escape(str(r[row_key]))}"' if row_key else ""
        body.append(f"<tr{attr}>" + "".join(cells) + "</tr>")
    return f'<table id="{table_id}"><tr>{head}</tr>{"".join(body)}</table>'


def _unit_table(summary, columns, table_id: str, row_key: str = "") -> str:
    """A table of ``summary``'s rows in unit-type order, its cells the unit's label, the seed
    count or ``mean [lo, hi]``."""
    order = {k: i for i, k in enumerate(unit_type_order(summary["unit_type"]))}
    frame = summary.sort_values("unit_type", key=lambda s: s.map(order))
    frame = frame.assign(unit=[unit_type_label(k, tex=False) for k in frame["unit_type"]])

    def cell(r, key):
        if key == "unit":
            return r[key]
        return str(int(r[key])) if key == "n_seeds" else fmt_ci(r.to_dict(), key)

    return _table_html(frame, columns, fmt_cell=cell, table_id=table_id, row_key=row_key)


def _pair(reference: str, other: str) -> str:
    """``reference − other`` in the units' labels (the one sign convention)."""
    return f"{unit_type_label(reference, tex=False)} − {unit_type_label(other, tex=False)}"


def _comparison_html(comparison) -> str:
    frame = comparison.copy()
    frame["metric_label"] = [mt.label(m) for m in frame["metric"]]
    frame["pair"] = [_pair(a, b) for a, b in zip(frame["reference"], frame["other"], strict=True)]
    by_order = frame["ci_method"].eq("none (sign test)") if "ci_method" in frame else None
    frame["ci"] = [_ci(lo, hi) for lo, hi in zip(frame["lo"], frame["hi"], strict=True)]
    if by_order is not None and by_order.any():  # a censored time: ordered, not averaged
        frame.loc[by_order, "ci"] = [
            f"by order: earlier in {int(e)}, later in {int(la)}"
            for e, la in zip(frame.loc[by_order, "earlier"], frame.loc[by_order, "later"],
                             strict=True)
        ]  # fmt: skip
    cols = [("metric_label", "metric"), ("pair", "difference"), ("n", "seeds"),
            ("diff", "mean (median where ordered)"),
            ("ci", "95 % CI"), ("p", "p (sign flips; sign test where ordered)"),
            ("p_min", "smallest possible p")]  # fmt: skip
    return _table_html(frame, cols, table_id="comparison")


def compact_html(comparison, metrics, *, table_id: str) -> str:
    r"""One table for many paired comparisons: a row per metric, a column per compared unit
    type, each cell ``reference − other = diff [lo, hi]`` (one sign convention) and a mark:
    ▲ better, ▼ worse (by the metric's registered direction, only where the CI excludes 0),
    · no difference resolved. The full sentences stay in ``comparison.csv``."""
    esc = html.escape
    comp = comparison[comparison["metric"].isin(metrics)]
    if not len(comp):
        return ""
    others = unit_type_order(comp["other"].unique())
    head = "".join(f"<th>{esc(_pair(comp['reference'].iloc[0], o))}</th>" for o in others)
    rows = []
    for m in metrics:
        sub = comp[comp["metric"] == m].set_index("other")
        if not len(sub):
            continue
        cells = []
        for o in others:
            if o not in sub.index:
                cells.append("<td></td>")
                continue
            r = sub.loc[o]
            if r.get("ci_method") == "none (sign test)":  # a censored time: ordered
                cells.append(f"<td data-col='{esc(o)}'>· by order: earlier in "
                             f"{int(r['earlier'])}, later in {int(r['later'])} of "
                             f"{int(r['n'])}</td>")  # fmt: skip
                continue
            mark = "·"
            if _resolved(r) and r.get("better") in ("higher", "lower", "closer_to_zero"):
                mark = "▲" if (r["lo"] > 0) == (r["better"] == "higher") else "▼"
            ci = "" if _nan(r["lo"]) else f" {_ci(r['lo'], r['hi'])}"
            cells.append(f"<td data-col='{esc(o)}'>{mark} {fmt(r['diff'])}{ci}</td>")
        rows.append(f"<tr data-metric='{esc(m)}'><td>{esc(mt.label(m))}</td>{''.join(cells)}</tr>")
    return (f"<table id='{table_id}'><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"
            "<p><small>▲ better, ▼ worse for the reference (CI excludes 0), · no difference "
            f"resolved; mean paired difference over seeds [{mean_ci_name()} 95 % CI]; a "
            "censored time (a run that never got there) is compared by order instead.</small></p>")  # fmt: skip


def findings(comparison, metrics) -> list[str]:
    """The generated sentences of ``comparison`` for ``metrics``, in order."""
    return [t for m in metrics for t in comparison[comparison["metric"] == m]["text"]]


_ESTIMABILITY = (("unit", "unit"), ("n_eff_over_d1", "median n_eff/(d+1)"),
                 ("estimable", "estimable"), ("s_c", "s·c (estimable units)"),
                 ("k", "k (estimable units)"),
                 ("corrected_mean_norm", "‖E_p − (1+k)E_q‖ (estimable)"),
                 ("cond", "median κ(F)"))  # fmt: skip


SPEED = "log_train_loss_auc"
"""The learning-speed half of the answer (Fig 2b on a log scale: every epoch counts)."""


def estimable_layers(units) -> tuple[bool, float]:
    """Whether every analysed layer's median n_eff/(d+1) at the last epoch is ≥ 2, and the
    smallest of those medians."""
    live = analysed_units(units[units["epoch"] == units["epoch"].max()])
    if not len(live):
        return False, math.nan
    per_layer = (live["n_eff"] / (live["fan_in"] + 1)).groupby(live["layer"]).median()
    low = float(per_layer.min())
    return low >= 2.0, low


def _pair_text(row: dict) -> str:
    p = f", p = {fmt(row['p'])}" if not _nan(row.get("p")) else ""
    ph = f", Holm-adjusted p = {fmt(row['p_holm'])}" if not _nan(row.get("p_holm")) else ""
    ci = "" if _nan(row.get("lo")) else f" {_ci(row['lo'], row['hi'])}"
    pair = _pair(row["reference"], row["other"])
    return f"{mt.label(row['metric'])}: {pair} = {fmt(row['diff'])}{ci}{p}{ph}"


def _nan(x) -> bool:
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def _resolved(row) -> bool:
    """Whether a paired comparison is resolved (:func:`~natgrad.analysis.stats.resolved_sign`:
    its CI excludes 0, and a zero-width one only with its sign-flip p < 0.05)."""
    return not _nan(row.get("lo")) and resolved_sign(row) != 0


def _verdict(row, *, higher_word: str, lower_word: str, declared=None) -> str:
    """Which way ELU − ReLU goes: by the declared rule (Holm p and CI,
    :func:`~natgrad.analysis.stats.declared_sign`) where the comparison is a declared primary
    endpoint (``declared``, its rows: :func:`_declared`), else by its CI (:func:`_resolved`)."""
    if row is None:
        return "not compared (no paired seeds)"
    sign = _declared(declared) if declared is not None else _resolved(row) and resolved_sign(row)
    if not sign:
        return "no difference resolved"
    return higher_word if sign > 0 else lower_word


def _primary(t: dict, metric: str):
    """The rows of the declared primary endpoint ELU − ReLU on ``metric`` (one per stratum,
    if it has strata), or ``None``."""
    eps = t.get("endpoints")
    if eps is None or not len(eps):
        return None
    sub = eps[(eps["role"] == "primary") & (eps["metric"] == metric)
              & (eps["reference"] == "elu") & (eps["other"] == "relu")]  # fmt: skip
    return [r.to_dict() for _, r in sub.iterrows()] or None


def _declared(rows) -> int:
    """The declared rule's direction over a primary's rows: one direction where every row
    resolves it (:func:`~natgrad.analysis.stats.declared_sign`), else 0."""
    signs = {declared_sign(r) for r in rows}
    return signs.pop() if len(signs) == 1 else 0


def _neff_caveat(t: dict, rho: str, rho_row) -> str:
    """Where ELU − ReLU on ``rho`` is resolved but its comparison at a common n_eff
    (``neff_adjusted``) is not, or points the other way: a sentence saying so, else ''."""
    adj = t.get("neff_adjusted")
    if rho_row is None or not _resolved(rho_row) or adj is None or not len(adj):
        return ""
    sub = adj[(adj["metric"] == rho) & (adj["other"] == "relu")]
    if not len(sub):
        return ""
    r = sub.iloc[0].to_dict()
    if _nan(r.get("lo")):  # no adjusted interval (too few seeds with a determined fit)
        return ""
    same = _resolved(r) and (r["lo"] > 0) == (rho_row["lo"] > 0)
    if same:
        return ""
    how = "points the other way" if _resolved(r) else "is not resolved"
    return (
        f" Adjusted for n_eff (per seed, at a common n_eff/(d+1)), that ρ difference {how}"
        f" ({fmt(r['diff'])} {_ci(r['lo'], r['hi'])}): the difference may follow how "
        "many effective samples the unit types' blocks rest on."
    )


def _withheld(t: dict, row, metric: str) -> str:
    """Where ELU − ReLU on a declared primary ``metric`` has a CI that excludes 0 but the
    declared rule (Holm) does not resolve it: a sentence saying so, else ''."""
    declared = _primary(t, metric)
    if row is None or declared is None or _declared(declared) or not _resolved(row):
        return ""
    holm = ", ".join(fmt(r["p_holm"]) for r in declared)
    if all(declared_sign(r) for r in declared):  # every stratum resolved, not one way
        return (f" On {metric}, the declared rule resolves the endpoint's strata in opposite "
                f"directions (Holm-adjusted p {holm}): no one direction is stated.")  # fmt: skip
    return (f" On {metric}, ELU − ReLU has a CI that excludes 0 ({fmt(row['diff'])} "
            f"{_ci(row['lo'], row['hi'])}) but the declared rule, a Holm-adjusted p below 0.05 "
            f"with the CI, does not resolve it (Holm-adjusted p {holm}).")  # fmt: skip


def answer(t: dict) -> tuple[str, str | None]:
    r"""The first screen's paragraph (HTML) and the ρ metric shown (``None`` where the blocks
    are not estimable), generated from the CIs: ELU against ReLU on the headline ρ and on the
    learning speed (a declared primary endpoint by the declared rule, Holm p < 0.05 and the
    CI: :func:`_verdict`, :func:`_withheld`), with the declared primary endpoints and their
    Holm-adjusted p, and a caveat where the ρ difference does not hold at a common n_eff
    (:func:`_neff_caveat`)."""
    esc = html.escape
    rho = headline_rho(t["units"])
    ok, low = estimable_layers(t["units"])
    comp = t["comparison"]

    def row(metric, other="relu"):
        sub = comp[(comp["metric"] == metric) & (comp["other"] == other)]
        return sub.iloc[0].to_dict() if len(sub) else None

    speed_row = row(SPEED)
    faster = _verdict(speed_row, higher_word="learns slower", lower_word="learns faster",
                      declared=_primary(t, SPEED))  # fmt: skip
    parts = []
    if ok:
        rho_row = row(rho)
        closer = _verdict(rho_row, higher_word="is closer to the unit natural gradient",
                          lower_word="is farther from the unit natural gradient",
                          declared=_primary(t, rho))  # fmt: skip
        lam = (t.get("context") or {}).get("relative damping λ")
        who = "ELU vs ReLU" + (f" (ρ in F_λ, relative damping λ = {lam:g})" if lam is not None
                               else "")  # fmt: skip
        verdict = (f"{who}: ELU {closer}" if closer != "no difference resolved" else
                   f"{who}: closeness to the unit natural gradient, no difference resolved")  # fmt: skip
        verdict += "; " + (f"it {faster}" if faster != "no difference resolved" else
                           "learning speed, no difference resolved") + "."  # fmt: skip
        caveat = _neff_caveat(t, rho, rho_row) if closer != "no difference resolved" else ""
        parts.append(
            f"<b>{esc(verdict)}</b>"
            + esc(caveat + _withheld(t, rho_row, rho) + _withheld(t, speed_row, SPEED))
        )
    else:
        parts.append(f"<b>The unit blocks are not estimable on this probe</b> (the smallest "
                     f"per-layer median n_eff/(d+1) is {fmt(low)} &lt; 2): ρ is biased by the "
                     "probe, so no ρ comparison is made here. Learning speed, ELU vs ReLU: "
                     f"{esc(faster)}.{esc(_withheld(t, speed_row, SPEED))}")  # fmt: skip
    eps = t.get("endpoints")
    if eps is not None and len(eps):
        prim = eps[eps["role"] == "primary"]
        if len(prim):
            items = "".join(f"<li>{esc(_pair_text(r.to_dict()))}</li>" for _, r in prim.iterrows())
            parts.append("Primary endpoints, declared before the runs (Holm within the "
                         f"primaries; CIs {esc(str(prim['ci_method'].iloc[0]))} over seeds):"
                         f"<ul id='primary'>{items}</ul>")  # fmt: skip
    else:
        shown = [r for r in (row(rho) if ok else None, speed_row) if r is not None]
        items = "".join(f"<li>{esc(_pair_text(r))}</li>" for r in shown)
        parts.append(f"Paired by seed ({mean_ci_name()} 95 % CIs):<ul id='primary'>{items}</ul>")
    return f"<div id='answer'><p>{parts[0]}</p>{''.join(parts[1:])}</div>", rho if ok else None


def _estimation_html(t: dict) -> str:
    """ρ per unit type next to its n_eff/(d+1), and the n_eff-adjusted comparison."""
    esc = html.escape
    adj = t.get("neff_adjusted")
    if adj is None or not len(adj):
        return ""
    rows = "".join(
        f"<tr><td>{esc(mt.label(r['metric']))}</td><td>{esc(_pair(r['reference'], r['other']))}</td>"
        f"<td>{fmt(r['diff_unadjusted'])}</td>"
        f"<td>{fmt(r['diff'])} {_ci(r['lo'], r['hi'])}</td><td>{fmt(r['slope'])}</td></tr>"
        for _, r in adj.iterrows())  # fmt: skip
    return ("<p>ρ depends on n_eff (the probe's effective size) as well as on the unit "
            "type. Adjusted: per seed, the median ρ of each (unit type, layer) is regressed "
            "on the unit type and log(n_eff/(d+1)); the difference of the unit-type terms is "
            "that seed's comparison at a common n_eff (CI: t over seeds).</p>"
            "<table id='neff_adjusted'><tr><th>metric</th><th>difference</th>"
            "<th>unadjusted</th><th>at a common n_eff [95 % CI]</th>"
            "<th>slope on log n_eff</th></tr>" + rows + "</table>")  # fmt: skip


def _sizes_html(t: dict) -> str:
    """Mean over the swept seeds of ρ at each probe size, and its change to the largest size
    from the next-to-last one and from one doubling below."""
    ps = t["probe_sizes"]
    cols = [c for c in ("rho_plain", "rho_plain_jk", "n_eff_over_d1") if c in ps.columns]
    mean = ps.groupby(["unit_type", "probe_size"])[cols].mean().reset_index()
    sizes = sorted(mean["probe_size"].unique())
    # the next-to-last size, and the largest at most half the last (one doubling), if distinct
    halves = [m for m in sizes[:-1] if 2 * m <= sizes[-1]]
    ref_sizes = sorted({*sizes[-2:-1], *halves[-1:]}, reverse=True) if len(sizes) > 1 else []
    rows = []
    for key in unit_type_order(mean["unit_type"]):
        sub = mean[mean["unit_type"] == key].set_index("probe_size")
        cells = "".join(f"<td>{fmt(sub.loc[m, 'rho_plain'])} / {fmt(sub.loc[m, 'rho_plain_jk'])}"
                        f" ({fmt(sub.loc[m, 'n_eff_over_d1'])})</td>" for m in sizes)  # fmt: skip
        deltas = "".join(
            "<td>" + " / ".join(fmt(abs(sub.loc[sizes[-1], c] - sub.loc[m, c]))
                                for c in ("rho_plain", "rho_plain_jk")) + "</td>"
            for m in ref_sizes)  # fmt: skip
        rows.append(f"<tr data-unit='{html.escape(key)}'><td>{html.escape(unit_type_label(key, tex=False))}</td>"
                    f"{cells}{deltas}</tr>")  # fmt: skip
    head = "".join(f"<th>{int(m)}</th>" for m in sizes)
    head += "".join(f"<th>|Δ| {int(m)} → {int(sizes[-1])}</th>" for m in ref_sizes)
    return ("<p>Cells: ρ(plain) plain / jackknifed (median n_eff/(d+1)); last columns: the change "
            "from the next-to-last size, and over the last doubling of the probe, to the largest."
            "</p><table id='probe_sizes'><tr><th>unit</th>" + head + "</tr>" + "".join(rows)
            + "</table>")  # fmt: skip


def figures(t: dict, keys=None) -> dict[str, tuple[str, object]]:
    """``{section: (caption, matplotlib figure, or a list of them)}`` of the report, drawn
    from its tables ``t`` (those of ``keys``, default all that the tables allow); the one
    place the report's and a record's figures are drawn. matplotlib is imported here only."""
    import matplotlib

    matplotlib.use("Agg")
    from natgrad.analysis import plots

    rho = answer(t)[1] if keys is None or "answer" in keys else None
    has = lambda k: k in t and len(t[k])  # noqa: E731
    makers = {
        "answer": (
            f"The two halves of the question per unit type (mean over seeds, {mean_ci_name()} 95 % "
            f"CI). Left: {mt.label(rho) if rho else 'ρ'} at the last analysed epoch, with each "
            "type's median n_eff/(d+1); right: the learning speed (mean over epochs of log10 "
            "training loss).", lambda: plots.plot_answer(t["summary"], rho, SPEED)),
        "probe_sizes": (
            "Probe-size sweep (nested probes, the swept seeds): the plain estimate of ρ(plain) "
            "rises with the probe (biased low by O((d+1)/n_eff)); the jackknifed one settles.",
            lambda: plots.plot_probe_sizes(t["probe_sizes"])) if has("probe_sizes") else None,
        "headline": (
            "Fisher efficiency ρ of four update directions at the last analysed epoch: per run "
            "the median over the live units of the layers fed by hidden units, then the mean "
            f"over seeds with its {mean_ci_name()} 95 % CI. ρ = 1 is the unit natural gradient.",
            lambda: plots.plot_efficiencies(t["summary"], list(HEADLINE))),
        "sweep": (
            "Efficiency against the relative damping λ of the metric F_λ = F + λ·tr(F)/(d+1)·I "
            "(mean ± sd over seeds of per-run medians, last epoch).",
            lambda: plots.plot_damping_sweep(t["sweep_seeds"])) if has("sweep_seeds") else None,
        "n_eff": (
            "Estimability: n_eff/(d+1) of every analysed unit at the last epoch (box: "
            "quartiles). Below the dotted line (n_eff < 2(d+1)) the δ̄²-weighted moments, s, k "
            "and the corrected mean are not estimable from the probe.",
            lambda: plots.plot_n_eff(t["units"])),
        "fig2": ("Fig 2 (the paper's): per epoch, the median unit mean activation (mean ± sd "
                 "over seeds) and the training loss and the held-out split's (validation where "
                 "the data have one; geometric mean ×/÷ sd over seeds, log scale).",
                 lambda: plots.plot_fig2(t["curves"])),
        "fig1": ("Fig 1: the units compared.", plots.plot_units),
        "layers": (
            "Per layer over training (descriptive; units of one net are not replicates): "
            "median and 25–75 % band over the live units of all seeds.",
            lambda: [plots.plot_layer_metric(t["units"], m, ylabel=mt.label(m), log=log, ncols=3)
                     for m, log in (("rho_plain", False), ("rho_centred", False),
                                    ("n_eff", True))]),
    }  # fmt: skip
    return {k: (caption, make()) for k, v in makers.items() if v is not None
            and (keys is None or k in keys) for caption, make in [v]}  # fmt: skip


def _figures(t: dict) -> dict[str, tuple[str, object]]:
    """``{section: (caption, png or list of pngs)}``: :func:`figures` as base64 PNG."""
    from natgrad.analysis.plots import figure_png_base64 as png

    return {k: (c, [png(f) for f in fig] if isinstance(fig, list) else png(fig))
            for k, (c, fig) in figures(t).items()}  # fmt: skip


#: The first screen's frame colour (a left rule no figure uses): a browser test finds the
#: extent of the answer by it (tests/test_report_browser.py).
SCREEN_RULE = "#2c5a9e"

_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.4}
table{border-collapse:collapse;font-size:85%}td,th{border:1px solid #ccc;padding:3px 6px}
img{max-width:100%}figcaption{font-size:90%;color:#444}code{background:#f4f4f4}
.q{font-size:110%;background:#f6f8fa;padding:.6em;border-left:4px solid #1b9e77}
#first-screen figure{margin:.4em 0}#first-screen ul{margin:.2em 0}""" + (
    "#first-screen{border-left:6px solid " + SCREEN_RULE + ";padding:0 .8em;margin:0}"
)


def _img(caption: str, png) -> str:
    pngs = png if isinstance(png, list) else [png]
    imgs = "".join(f'<img src="data:image/png;base64,{p}">' for p in pngs)
    return f"<figure>{imgs}<figcaption>{html.escape(caption)}</figcaption></figure>"


def render_report(tables_dir: str | os.PathLike, out_path: str | os.PathLike | None = None, *,
                  title: str = "natgrad: does ELU bring SGD closer to the unit natural gradient?",
                  context: dict | None = None, figures: bool = True) -> Path:  # fmt: skip
    r"""Write the HTML report for the tables in ``tables_dir`` (default
    ``<tables_dir>/../report.html``) atomically and return its path. The run header is the
    tables' ``context.json`` updated by ``context``. ``figures=False`` leaves the figures out
    (fast; for tests of the text)."""
    t = read_tables(tables_dir)
    out = Path(out_path) if out_path is not None else Path(tables_dir).parent / "report.html"
    ctx = {**t["context"], **(context or {})}
    summary, comparison = t["summary"], t["comparison"]
    figs = _figures(t) if figures else {}
    esc = html.escape
    p = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
         f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>",
         f"<p class='q'><b>The question.</b> {esc(QUESTION)}</p>"]  # fmt: skip
    p.append("<section id='first-screen'>")
    if "answer" in figs:
        p.append(_img(*figs["answer"]))
    p.append(answer(t)[0] + "</section>")
    p.append(_estimation_html(t))
    p.append("<h2>How the numbers were made</h2>")
    if ctx:
        items = "".join(f"<li><b>{esc(str(k))}</b>: <code>{esc(str(v))}</code></li>"
                        for k, v in ctx.items())  # fmt: skip
        p.append(f"<ul id='context'>{items}</ul>")
    p.append(
        "<p><b>How the numbers are made.</b> For every unit of every layer the exact unit Fisher "
        "F = [[A, b], [bᵀ, c]] (bias last) is computed on a held-out probe; g is the gradient "
        "of a mean log-likelihood (which one: 'g (the gradient judged)' above; the probe's where "
        "not stated). Every direction is judged in ONE metric per unit, "
        "F_λ = F + λ·tr(F)/(d+1)·I, with the same stated λ for every unit and unit type. The "
        "measure is the <i>Fisher efficiency</i> ρ(u) = gᵀu/√(uᵀF_λu·gᵀF_λ⁻¹g), the cosine "
        "between u and the unit natural gradient in the Fisher metric (1 = the natural "
        "gradient; invariant to reparametrising the unit) — not the Euclidean cosine, which "
        "reads out the spread of A's eigenvalues. Per run, each metric is the median over the "
        "live units of the layers fed by hidden units; the <b>replicate is the seed</b> (run j "
        "of every unit type starts from the same weights): unit types are compared paired by "
        f"seed, with {mean_ci_name()} 95 % CIs of the mean difference and sign-flip permutation "
        f"tests (exact up to {SIGN_FLIP_EXACT_UP_TO} seeds). No test uses layers or units as replicates. Sentences state a direction only "
        "where the CI excludes 0. Only the declared primary endpoints are adjusted for "
        "multiplicity (Holm); every other comparison is secondary, its CI unadjusted for the "
        "others.</p>"
    )
    p.append("<h2>Headline: how close is each update to the unit natural gradient?</h2>")
    if "headline" in figs:
        p.append(_img(*figs["headline"]))
    rho = headline_rho(t["units"])
    shown = [rho] if rho != "rho_plain" else []
    p.append(compact_html(comparison, [*shown, *HEADLINE, "n_eff_over_d1"], table_id="findings"))
    p.append(
        f"<h2>Summary (units at the last analysed epoch, curve claims over all epochs; mean over seeds [{mean_ci_name()} 95 % CI])</h2>"
    )
    cols = [(c, mt.label(c)) for c in summary_columns(summary)]
    p.append(_unit_table(summary, [("unit", "unit"), ("n_seeds", "seeds"), *cols], "summary",
                         row_key="unit_type"))  # fmt: skip
    p.append("<h2>Paired comparisons (ELU minus each unit type, per seed)</h2>")
    p.append(_comparison_html(comparison))
    if "sweep" in figs:
        p.append("<h2>Damping sweep</h2>" + _img(*figs["sweep"]))
    if "probe_sizes" in figs:
        p.append("<h2>Probe-size sweep</h2>" + _img(*figs["probe_sizes"]) + _sizes_html(t))
    p.append("<h2>Estimability</h2><p>n_eff = (Σ c_n)²/Σ c_n² is the effective number of probe "
             "inputs behind each unit's block. s·c, k and the corrected mean are δ̄²-weighted "
             "moments: they are shown only as medians over units with n_eff ≥ 2(d+1), and never "
             "as a headline.</p>")  # fmt: skip
    p.append(_unit_table(summary, _ESTIMABILITY, "estimability"))
    if "n_eff" in figs:
        p.append(_img(*figs["n_eff"]))
    p.append("<h2>The paper's own claims</h2><p>Fig 2a: median unit mean activation closest to "
             "0; Fig 2b: training loss falls fastest (mean training loss over the epochs, and "
             "epochs to reach the threshold in the header); Appendix C: smaller variance of the "
             "median activation; test error (mean of the last epochs).</p>")  # fmt: skip
    claims = [m.name for m in mt.paper_claims()]
    p.append(compact_html(comparison, claims, table_id="claims"))
    for key in ("fig2", "fig1", "layers"):
        if key in figs:
            p.append(_img(*figs[key]))
    p.append("<h2>Columns</h2><dl>" + "".join(
        f"<dt><b>{esc(m.label)}</b> (<code>{esc(m.name)}</code>)</dt><dd>{esc(m.meaning)}"
        + (f" Better: {esc(m.better.replace('_', ' '))}." if m.better else "") + "</dd>"
        for m in mt.METRICS.values()) + "</dl>")  # fmt: skip
    p.append("</body></html>")
    return write_text(out, "\n".join(p))  # atomic: a kill leaves the old report or the new
