r"""Declared endpoints: a study names its primary comparisons before it runs, and every test is
adjusted for the others of its family (``docs/theory.md``, "Statistics").

An :class:`Endpoint` is a plain paired difference
(:func:`natgrad.analysis.stats.paired_comparison`), a censored time-to-event
(:func:`natgrad.analysis.stats.censored_comparison`) of one per-seed value, or an
interaction of a two-by-two design, (reference − other) − (a − b) per seed (``interaction=(a,
b)``; e.g. "does batch norm help ReLU more than ELU").

Example:
    >>> import pandas as pd
    >>> v = pd.DataFrame({"unit_type": ["elu"] * 4 + ["relu"] * 4, "seed": [0, 1, 2, 3] * 2,
    ...                   "x": [1.0, 1.1, 1.2, 1.3, 2.0, 2.2, 2.1, 2.4]})
    >>> t = evaluate(v, [Endpoint("x", "elu", "relu", "primary", family="primary")])
    >>> float(t["diff"][0]), float(t["p"][0]), float(t["p_holm"][0]), t["ci_method"][0]
    (-1.025, 0.125, 0.125, 't')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from natgrad.analysis import stats

__all__ = ["Endpoint", "evaluate", "with_holm"]


@dataclass(frozen=True)
class Endpoint:
    r"""One declared comparison.

    Attributes:
        metric: the per-seed column compared.
        reference, other: the two arms (unit types), paired by seed.
        role: ``"primary"`` or ``"secondary"``.
        family: the Holm family it is adjusted in (default: its role).
        reached: for a censored time-to-event metric, the 0/1 column saying whether the run
            reached the event (``None``: a plain paired difference).
        description: what it measures, in words (the report's text).
        interaction: ``(a, b)``: the endpoint is the difference in differences
            (reference − other) − (a − b), paired by seed over the seeds all four arms have
            (values compared as they are, never as absolute values).
    """

    metric: str
    reference: str
    other: str
    role: str = "secondary"
    family: str | None = None
    reached: str | None = None
    description: str = ""
    interaction: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.role not in ("primary", "secondary"):
            raise ValueError(f"Endpoint role {self.role!r}: choose 'primary' or 'secondary'")
        if self.interaction is not None and (self.reached is not None
                                             or len(self.interaction) != 2):  # fmt: skip
            raise ValueError(f"Endpoint {self.metric}: interaction takes two arms (a, b) and "
                             "a plain paired metric (no 'reached')")  # fmt: skip


def evaluate(values, endpoints: list[Endpoint], *, group: str = "unit_type", by=()):
    r"""One row per endpoint: ``metric``, ``reference``, ``other``, ``role``, ``family``,
    ``n``, ``diff`` (mean of reference − other; for a censored endpoint the median, a bound
    where censoring enters), ``lo``, ``hi``, ``ci_method``, ``p``, ``p_min`` and ``p_holm``
    (Holm within the family), plus ``earlier``/``later``/``ties`` for censored endpoints.

    ``by``: columns of ``values`` that split it into strata (a rate, a layer, an epoch):
    every endpoint is evaluated in every stratum (its columns lead the row, strata in the
    order they first appear), and a family's Holm adjustment runs over all its rows, whatever the stratum."""
    import pandas as pd

    by = [by] if isinstance(by, str) else list(by)
    if by:
        rows = [{**dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)), **r}
                for key, sub in values.groupby(by, sort=False)
                for r in _rows(sub, endpoints, group)]  # fmt: skip
    else:
        rows = _rows(values, endpoints, group)
    return with_holm(pd.DataFrame(rows))


def with_holm(table):
    """``table`` with ``p_holm``: Holm's adjustment of ``p`` within each ``family``."""
    if len(table):
        table["p_holm"] = table.groupby("family")["p"].transform(lambda p: stats.holm(p.to_numpy()))
    return table


def _rows(values, endpoints: list[Endpoint], group: str) -> list[dict]:
    rows = []
    for ep in endpoints:
        if ep.interaction is not None:
            rows.append(_interaction(values, ep, group))
            continue
        sub = values[values[group].isin([ep.reference, ep.other])]
        if ep.reached is None:
            table = stats.paired_comparison(sub, ep.metric, reference=ep.reference, group=group)
        else:
            table = stats.censored_comparison(sub, ep.metric, ep.reached,
                                              reference=ep.reference, group=group)  # fmt: skip
        r = table.iloc[0].to_dict() if len(table) else {}
        row = {"metric": ep.metric, "reference": ep.reference, "other": ep.other,
               "role": ep.role, "family": ep.family or ep.role, "description": ep.description,
               "n": r.get("n", 0), "diff": r.get("diff", r.get("median_diff", math.nan)),
               "lo": r.get("lo", math.nan), "hi": r.get("hi", math.nan),
               "ci_method": r.get("ci_method", "none" if ep.reached is None else "none (sign test)"),
               "p": r.get("p", math.nan), "p_min": r.get("p_min", math.nan)}  # fmt: skip
        if ep.reached is None:
            row["text"] = r.get("text", "")
        else:
            bound = " (a bound: censored runs enter)" if r.get("median_is_bound") else ""
            row.update(earlier=r.get("earlier"), later=r.get("later"), ties=r.get("ties"),
                       text=f"{ep.metric}: {ep.reference} earlier than {ep.other} in "
                            f"{r.get('earlier', 0)} of {r.get('n', 0)} seeds, later in "
                            f"{r.get('later', 0)}; median difference {row['diff']:.3g}{bound}")  # fmt: skip
        rows.append(row)
    return rows


def _interaction(values, ep: Endpoint, group: str) -> dict:
    """The row of an interaction endpoint: (reference − other) − (a − b) per seed."""
    import numpy as np

    arms = [ep.reference, ep.other, *ep.interaction]
    wide = values[values[group].isin(arms)].pivot_table(index="seed", columns=group,
                                                        values=ep.metric, aggfunc="first")  # fmt: skip
    wide = wide.reindex(columns=arms)
    left_out = stats.infinite_note(wide)
    wide = wide.replace([np.inf, -np.inf], np.nan).dropna()
    a, b = ep.interaction
    s = stats.paired_summary(
        ((wide[ep.reference] - wide[ep.other]) - (wide[a] - wide[b])).to_numpy(),
        scale=np.abs(wide.to_numpy(float)).max(axis=1),  # per seed, its four arms' size
    )
    said = f"({ep.reference} − {ep.other}) − ({a} − {b})"
    if math.isfinite(s["lo"]) and math.isfinite(s["hi"]):
        sign = {0: "none resolved", 1: "positive", -1: "negative"}[stats.resolved_sign(s)]
        text = (f"{ep.metric}: {said} = {s['diff']:.3g} "
                f"{stats.interval_text(s['lo'], s['hi'], signed=False)} "
                f"({s['n']} seeds): interaction {sign}.{left_out}")  # fmt: skip
    else:
        text = f"{ep.metric}: {said}: too few seeds to compare ({s['n']})."
    return {"metric": ep.metric, "reference": ep.reference, "other": ep.other, "role": ep.role,
            "family": ep.family or ep.role, "description": ep.description, **s, "text": text,
            "interaction": f"{a} − {b}"}  # fmt: skip
