r"""Seeds as replicates: per-seed summaries, paired comparisons with CIs, generated sentences.

The replicate is the training seed: every unit-level metric is first summarised per run
(:func:`seed_values`) and only those per-seed values are compared, paired by seed; why, and
the tests and CIs used: ``docs/theory.md``, "Statistics".

Example:
    >>> import pandas as pd
    >>> v = pd.DataFrame({"unit_type": ["elu"] * 4 + ["relu"] * 4, "seed": [0, 1, 2, 3] * 2,
    ...                   "x": [2.0, 2.1, 2.2, 2.05, 1.0, 1.2, 1.1, 1.05]})
    >>> c = paired_comparison(v, "x", reference="elu")
    >>> round(float(c["diff"][0]), 3), float(c["p_min"][0])
    (1.0, 0.125)
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings

import numpy as np

from natgrad.analysis import metrics as mt
from natgrad.units import unit_type_label, unit_type_order

__all__ = ["analysed_units", "bootstrap_ci", "censored_comparison", "ci_changes",
           "claims_per_seed", "ci_sign", "ci_text", "geometric_mean_ci", "infinite_note", "interval_text", "outward", "current_mean_ci", "declared_sign", "unit_medians", "group_summary", "holm", "loss_auc", "mean_ci",
           "mean_ci_method", "mean_ci_name", "neff_adjusted", "paired_comparison",
           "paired_summary", "rank_correlation", "ratio_ci", "recorded_mean_ci", "resolved_sign",
           "seed_values", "sentence",
           "sign_flip_at_floor", "sign_flip_method", "sign_flip_p", "sign_flip_p_min"]  # fmt: skip

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0  # of the bootstrap's generator: tables are reproducible


def analysed_units(units):
    """The units a summary is over: live units (a nonzero block) of layers fed by hidden units (the
    first layer's incoming activations are the data, the same for every unit type)."""
    return units[(units["input_from"] == "units") & (units["dead"] == 0)]


def unit_medians(units, metric: str = "rho_plain_jk") -> dict:
    r"""One run's summary of a per-unit table ``units`` (its ``estimable`` column 0/1 and
    ``metric``, NaN for dead units): the median of ``metric`` over the live units, over the
    estimable units only (NaN where none is), and the share of estimable units (dead units
    count as not estimable), keyed ``metric``, ``<metric>_est`` and ``estimable``.

    Example:
        >>> import pandas as pd
        >>> u = pd.DataFrame({"rho_plain_jk": [0.2, 0.4, float("nan"), 0.9],
        ...                   "estimable": [1, 1, 0, 0]})
        >>> unit_medians(u)
        {'rho_plain_jk': 0.4, 'rho_plain_jk_est': 0.30000000000000004, 'estimable': 0.5}
    """
    est = units["estimable"] == 1
    return {metric: float(np.nanmedian(units[metric])),
            f"{metric}_est": float(np.nanmedian(units.loc[est, metric])) if est.any() else math.nan,
            "estimable": float(est.mean())}  # fmt: skip


def seed_values(units, metrics: list[str], *, by=("unit_type", "seed", "epoch")):
    r"""Per run (and epoch): the median over its analysed units of each metric, the fraction
    of dead units and the fraction of estimable units (n_eff ≥ 2(d+1)) among the live ones
    (a dead unit counts in ``dead`` only; :func:`unit_medians`, for the dashboards, counts it
    as not estimable, and their tables say so).

    ``estimable_only`` metrics (s·c, k, corrected mean) are medians over the estimable units
    only (NaN where a run has none)."""
    import pandas as pd

    fed = units[units["input_from"] == "units"]
    live = fed[fed["dead"] == 0]
    keys = list(by)
    # every run, also one whose analysed units all died (its medians NaN, its dead share 1)
    out = fed.groupby(keys)[["dead"]].mean()
    plain = [m for m in metrics if not _estimable_only(m)]
    out = out.join(live.groupby(keys)[plain].median(), how="left")[[*plain, "dead"]]
    est = [m for m in metrics if _estimable_only(m)]
    if est:
        sub = live[live["estimable"] == 1]
        out = out.join(sub.groupby(keys)[est].median(), how="left")
        out = out[[*plain, *est, "dead"]]
    out["estimable"] = live.groupby(keys)["estimable"].mean()
    ratio = live["n_eff"] / (live["fan_in"] + 1)
    out["n_eff_over_d1"] = ratio.groupby([live[k] for k in keys]).median()
    return pd.DataFrame(out).reset_index()


def neff_adjusted(units, metric: str, *, reference: str = "elu"):
    r"""``reference`` against every other unit type on ``metric`` adjusted for n_eff.

    Per seed (the replicate), over its (unit type, layer) medians of the analysed units of
    ``metric`` and of log(n_eff/(d+1)): the least-squares fit y = α_type + β·log(n_eff/(d+1))
    gives each unit type's level at a common n_eff, and the seed's adjusted difference is
    α_reference − α_other (a seed whose fit is not determined, e.g. a single layer, drops
    out). Those per-seed differences are compared like every paired difference
    (:func:`paired_summary`: mean, :func:`mean_ci`, :func:`sign_flip_p`). Returns one row per
    other unit type: ``metric``, ``reference``, ``other``, ``n`` (seeds with both unit types
    and a determined fit), ``diff``, ``lo``, ``hi``, ``ci_method``, ``p``, ``p_min``,
    ``slope`` (median of β over those seeds) and ``diff_unadjusted`` (the mean over the same
    seeds of the fit without the n_eff term, i.e. of the unit types' mean medians).

    Example:
        >>> import pandas as pd
        >>> rows = [dict(unit_type=t, seed=s, layer=f"fc{l}", input_from="units", dead=0,
        ...              fan_in=9, n_eff=10.0 * 2.0**l, x=(0.2 if t == "elu" else 0.0)
        ...              + 0.1 * l * math.log(2) + 0.01 * s)
        ...         for t in ("elu", "relu") for s in range(3) for l in range(3)]
        >>> r = neff_adjusted(pd.DataFrame(rows), "x").iloc[0]
        >>> round(float(r["diff"]), 6), round(float(r["slope"]), 6), int(r["n"])
        (0.2, 0.1, 3)
    """
    import pandas as pd

    live = analysed_units(units)
    live = live.assign(_lr=np.log(live["n_eff"] / (live["fan_in"] + 1)))
    per = live.groupby(["unit_type", "seed", "layer"]).agg(
        y=(metric, "median"), lr=("_lr", "median")
    )
    per = per.replace([np.inf, -np.inf], np.nan).dropna().reset_index()
    types = list(unit_type_order(per["unit_type"].unique()))
    if reference not in types or len(types) < 2:
        return pd.DataFrame()

    def fit(sub, with_slope=True):  # (α per unit type, NaN where absent; β), or None
        x = pd.get_dummies(sub["unit_type"].astype(str)).astype(float)
        if with_slope:
            x["_lr"] = sub["lr"].to_numpy()
        if np.linalg.matrix_rank(x.to_numpy()) < x.shape[1]:
            return None
        coef = pd.Series(np.linalg.lstsq(x.to_numpy(), sub["y"].to_numpy(), rcond=None)[0],
                         index=x.columns)  # fmt: skip
        return coef.reindex(types), (float(coef["_lr"]) if with_slope else math.nan)

    fits = {s: (fit(sub), fit(sub, with_slope=False)) for s, sub in per.groupby("seed")}
    fits = {s: f for s, f in fits.items() if f[0] is not None}
    out = []
    for other in types:
        if other == reference:
            continue
        d = np.array([a[reference] - a[other] for (a, _), _ in fits.values()])
        d0 = np.array([a[reference] - a[other] for _, (a, _) in fits.values()])
        slopes = np.array([b for (_, b), _ in fits.values()])
        ok = np.isfinite(d)  # the seeds with both unit types
        s = paired_summary(d[ok])
        out.append({"metric": metric, "reference": reference, "other": other, "n": s["n"],
                    "diff": s["diff"], **{k: s[k] for k in _SPREAD},
                    "slope": float(np.median(slopes[ok])) if ok.any() else math.nan,
                    "diff_unadjusted": float(np.mean(d0[ok])) if ok.any() else math.nan})  # fmt: skip
    return pd.DataFrame(out)


def _estimable_only(name: str) -> bool:
    return name in mt.METRICS and mt.METRICS[name].estimable_only


def bootstrap_ci(x, statistic=None, *, resamples: int = N_RESAMPLES,
                 vectorized: bool = False, scale=0.0) -> tuple[float, float, str]:  # fmt: skip
    """``(lo, hi, method)``: the 95 % bootstrap CI over seeds of the mean of ``x``, or of
    ``statistic(*x)`` for a tuple ``x`` of arrays paired by seed (resampled jointly; with
    ``vectorized``, ``statistic(*x, axis=-1)`` takes a batch of resamples at once); BCa where
    it is defined, else percentile (``method`` says which; ``"none"`` for < 2 seeds,
    ``"exact"`` when every value is equal), from ``resamples`` resamples of a fixed
    generator. Seeds with a non-finite value are left out."""
    from scipy import stats

    paired = isinstance(x, tuple)
    samples = tuple(np.asarray(a, dtype=np.float64) for a in (x if paired else (x,)))
    keep = np.logical_and.reduce([np.isfinite(a) for a in samples])
    samples = tuple(a[keep] for a in samples)
    if samples[0].size < 2:
        return (math.nan, math.nan, "none")
    if not paired and _all_equal(samples[0], np.broadcast_to(scale, keep.shape)[keep]):
        return (float(samples[0].mean()), float(samples[0].mean()), "exact")
    rng = np.random.default_rng(SEED)
    kw = dict(paired=True, vectorized=vectorized) if paired else {}
    for method in ("BCa", "percentile"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # BCa's degenerate-sample warning: fall back
                res = stats.bootstrap(samples, statistic or np.mean, confidence_level=CONFIDENCE,
                                      n_resamples=resamples, method=method, random_state=rng,
                                      **kw)  # fmt: skip
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
            if math.isfinite(lo) and math.isfinite(hi):
                return lo, hi, method
        except ValueError:
            continue
    return (math.nan, math.nan, "none")


#: How :func:`mean_ci` forms the CI of a mean over seeds: ``"t"`` (Student t, the default)
#: or ``"bootstrap"`` (BCa, else percentile: what every record written before 2026-12-06
#: used). Set it only through :func:`mean_ci_method`.
_MEAN_CI = contextvars.ContextVar("natgrad_mean_ci", default="t")
MEAN_CI_METHODS = ("t", "bootstrap")


@contextlib.contextmanager
def mean_ci_method(method: str):
    """Within the block, :func:`mean_ci` and :func:`ratio_ci` (and so the paired comparisons,
    group summaries, endpoint tables and the scripts' CIs of means built on them) use
    ``method``: ``"t"`` or ``"bootstrap"``. For rebuilding a record that was written with
    bootstrap CIs; new analyses keep the default ``"t"``. (:func:`neff_adjusted`'s older
    seed-resampling interval is not rebuilt by it.)"""
    if method not in MEAN_CI_METHODS:
        raise ValueError(f"mean_ci_method: unknown method {method!r}; use one of {MEAN_CI_METHODS}")
    token = _MEAN_CI.set(method)
    try:
        yield
    finally:
        _MEAN_CI.reset(token)


def current_mean_ci() -> str:
    """How :func:`mean_ci` forms its intervals now: ``"t"`` or ``"bootstrap"``."""
    return _MEAN_CI.get()


def mean_ci_name() -> str:
    """The name :func:`mean_ci`'s intervals go by now, for a report's headings: ``"t"`` or
    ``"BCa"`` (under ``mean_ci_method("bootstrap")``)."""
    return "t" if current_mean_ci() == "t" else "BCa"


def recorded_mean_ci(record) -> str:
    """The :func:`mean_ci_method` a record was written with, from the ``ci_method`` columns
    of a table (a DataFrame or a CSV file) or of every CSV table in a record folder (a folder
    may hold a table added later with other intervals: ask the table you rebuild):
    ``"t"`` where any CI is a t interval
    (a ratio's BCa may stand beside them), else ``"bootstrap"`` where any is BCa or
    percentile or none names its method (the records older than :func:`mean_ci`; a table
    whose every row says ``none``, no CI formed, names none), else ``"t"``. Rebuild a
    record under ``with mean_ci_method(recorded_mean_ci(folder)):``."""
    import os
    from pathlib import Path

    if isinstance(record, (str, os.PathLike)):  # only the method columns (older records
        import pandas as pd  # lack the checksums that csvtables.read_csv asks for)

        def names_method(path: Path) -> bool:
            with path.open(encoding="utf-8") as f:
                return "ci_method" in f.readline()

        paths = [Path(record)] if Path(record).is_file() else sorted(Path(record).glob("*.csv"))
        tables = [pd.read_csv(p, usecols=["ci_method"]) for p in paths if names_method(p)]
    else:
        tables = [record]
    named = [t for t in tables  # every row "none" (no CI formed: a gap of the wrong sign)
             if "ci_method" in t and set(t["ci_method"].dropna()) != {"none"}]  # fmt: skip
    methods = set().union(*(set(t["ci_method"].dropna()) for t in named))
    if "t" in methods:
        return "t"
    return "bootstrap" if methods & {"BCa", "percentile"} or not named else "t"


def mean_ci(x, scale=0.0) -> tuple[float, float, str]:
    r"""``(lo, hi, method)``: the 95 % CI of the mean of ``x`` over seeds (non-finite values
    left out): Student's t interval x̄ ± t_{n−1} s/√n (``"t"``), ``"exact"`` when every value
    is equal up to rounding (of ``scale``, per value or one for all: the size of what ``x``
    was computed from, where larger; :func:`_all_equal`), ``"none"`` for < 2 values.

    Why t and not the bootstrap: with the 3–10 seeds of a study the bootstrap's resamples
    cannot show how far the mean of n values strays, and its 95 % intervals cover the true
    mean far less often (measured by ``bench/ci_coverage.py``: BCa 84 % at 5 seeds and 89 %
    at 10 for normal differences, where the t interval covers 93–95 %; see ``docs/theory.md``,
    "Statistics"). Under :func:`mean_ci_method` ``("bootstrap")`` it is :func:`bootstrap_ci`.

    Example:
        >>> lo, hi, how = mean_ci([1.0, 2.0, 3.0])
        >>> round(lo, 3), round(hi, 3), how
        (-0.484, 4.484, 't')
    """
    if current_mean_ci() == "bootstrap":
        return bootstrap_ci(x, scale=scale)
    from scipy import stats

    a = np.asarray(x, dtype=np.float64)
    keep = np.isfinite(a)
    a = a[keep]
    if a.size < 2:
        return (math.nan, math.nan, "none")
    if _all_equal(a, np.broadcast_to(scale, keep.shape)[keep]):
        return (float(a.mean()), float(a.mean()), "exact")
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, a.size - 1) * stats.sem(a))
    m = float(a.mean())
    return (m - half, m + half, "t")


def _all_equal(a: np.ndarray, scale=0.0) -> bool:
    """Whether the values are equal up to their float rounding: each within 4·n·ε of its own
    size or of its ``scale`` (per value, or one for all), the size of the operands it was
    computed from (a difference of two test errors of 0.78 carries their rounding, not its
    own), i.e. the intervals a_i ± tol_i share a point. Equal differences computed from
    counts (errors / 10000) differ in the last bits, and a t CI of width 1e-17 from them
    resolved a direction that 3 equal values cannot (sign-flip p = 0.25)."""
    tol = 4 * a.size * np.finfo(np.float64).eps * np.maximum(np.abs(a), scale)
    return bool((a - tol).max() <= (a + tol).min())


def geometric_mean_ci(ratios) -> tuple[float, float, float, int]:
    r"""``(geometric mean, lo, hi, n)`` of paired ratios (one per seed or round; non-finite
    or non-positive ones left out): exp of the mean of the logs and of its :func:`mean_ci`.

    Example:
        >>> gm, lo, hi, n = geometric_mean_ci([1.05, 1.10, 1.02, 1.07])
        >>> round(gm, 4), lo < gm < hi, n
        (1.0596, True, 4)
    """
    r = np.asarray(ratios, dtype=np.float64)
    logr = np.log(r[np.isfinite(r) & (r > 0)])
    if logr.size == 0:
        return math.nan, math.nan, math.nan, 0
    lo, hi, _ = mean_ci(logr)
    return float(np.exp(logr.mean())), float(np.exp(lo)), float(np.exp(hi)), int(logr.size)


def ratio_ci(x, y) -> tuple[float, float, str]:
    r"""``(lo, hi, method)``: the 95 % CI of the ratio of means x̄/ȳ, ``x`` and ``y`` paired by
    seed (seeds with a non-finite value left out): Fieller's interval, the set of θ whose
    paired differences x − θy have a mean that Student's t test does not reject, i.e. the
    roots of (x̄ − θȳ)² = t²_{n−1}/n · var(x − θy) (``"Fieller"``; exact under bivariate
    normality, the ratio's counterpart of :func:`mean_ci`). Where ȳ itself is not resolved
    from 0 the set is unbounded: ``(-inf, inf, "Fieller (unbounded)")``. ``"none"`` for < 2
    seeds. Under :func:`mean_ci_method` ``("bootstrap")``: :func:`bootstrap_ci` of the ratio.

    Example:
        >>> lo, hi, how = ratio_ci([0.2, 0.3, 0.25, 0.28], [1.0, 1.1, 0.9, 1.05])
        >>> round(lo, 3), round(hi, 3), how
        (0.196, 0.312, 'Fieller')
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if current_mean_ci() == "bootstrap":
        return bootstrap_ci((x, y), _ratio_of_means)
    if x.size < 2:
        return (math.nan, math.nan, "none")
    from scipy import stats

    n = x.size
    q = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) ** 2 / n
    (sxx, sxy), (_, syy) = np.cov(x, y, ddof=1)
    xb, yb = x.mean(), y.mean()
    a, b, c = yb * yb - q * syy, xb * yb - q * sxy, xb * xb - q * sxx
    if a <= 0:  # ȳ within its own CI of 0: the set is every θ or the complement of an
        return (-math.inf, math.inf, "Fieller (unbounded)")  # interval; reported as every θ
    root = math.sqrt(max(b * b - a * c, 0.0))
    return (float((b - root) / a), float((b + root) / a), "Fieller")


def _ratio_of_means(x, y) -> float:
    den = np.mean(y)
    return float(np.mean(x) / den) if den != 0 else math.nan


def loss_auc(train_loss, *, log: bool = False) -> float:
    r"""The speed of learning, natgrad's one definition: the mean over epochs 1..E of the
    training loss (each epoch's running mean over its steps, as the trainer records it), or
    of its log10 (``log``: late epochs, where every loss is near 0, count as much as early
    ones; an epoch whose loss is exactly 0 makes it -inf: a summary's mean is then -inf with
    no CI, and a paired comparison leaves that seed out and names it).
    ``train_loss`` holds epochs 1..E (the initial net, epoch 0, is left out: nets of two unit
    types with the same weights start at different losses).

    Example:
        >>> loss_auc([1.0, 0.1]), loss_auc([1.0, 0.1], log=True)
        (0.55, -0.5)
    """
    x = np.asarray(train_loss, dtype=np.float64)
    if log:
        with np.errstate(divide="ignore"):  # a loss of exactly 0: log -inf, so the AUC -inf
            x = np.log10(x)
    return float(x.mean())


def mean_and_ci(x) -> tuple[float, float, float, str]:
    r"""``(mean, lo, hi, method)`` over seeds of ``x``: the mean of its values (NaN, a missing
    value, left out) and :func:`mean_ci` of the same values. A seed whose value is infinite
    (e.g. the condition number of a singular block) makes the mean infinite and leaves no CI
    (``"none (infinite values)"``): a CI over the finite values alone would not hold it. With
    no finite value at all, the mean is NaN."""
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    if not np.isfinite(x).any():
        return math.nan, math.nan, math.nan, "none"
    if np.isinf(x).any():
        return float(x.mean()), math.nan, math.nan, "none (infinite values)"
    lo, hi, how = mean_ci(x)
    return (float(x.mean()) if x.size else math.nan), lo, hi, how


def group_summary(values, metrics: list[str], *, group: str = "unit_type"):
    r"""Per unit type: ``<metric>_mean``, ``<metric>_lo``, ``<metric>_hi`` (the mean over
    seeds and its 95 % CI, :func:`mean_and_ci`) and ``n_seeds``; ``values`` has one row per
    seed. A censored time (the registry's ``reached`` column, e.g. ``epochs_to_loss``) is
    never averaged where a run of the unit type is censored: NaN there (its comparisons go
    by order, :func:`paired_comparison`)."""
    import pandas as pd

    rows = []
    for key in unit_type_order(values[group].unique()):
        sub = values[values[group] == key]
        row = {group: key, "n_seeds": int(sub["seed"].nunique())}
        for m in metrics:
            reached = mt.METRICS[m].reached if m in mt.METRICS else None
            if reached in sub and (sub[reached] == 0).any():
                row[f"{m}_mean"] = row[f"{m}_lo"] = row[f"{m}_hi"] = math.nan
                continue
            row[f"{m}_mean"], row[f"{m}_lo"], row[f"{m}_hi"], _ = mean_and_ci(sub[m])
        rows.append(row)
    return pd.DataFrame(rows)


def ci_summary(table, by, metrics, *, first=()):
    r"""One row per group of ``by`` (in order of appearance; one row of ``table`` per seed):
    the keys, ``seeds`` (the group's rows), the first value of each ``first`` column, then per
    metric its mean over seeds and 95 % CI (``m``, ``m_lo``, ``m_hi``; :func:`mean_and_ci`) and
    ``ci_method``: the method of the row's CIs (those of equal values, ``exact``, the point
    itself, and ``none`` are not named), or ``metric: method`` for each where they differ."""
    import pandas as pd

    rows = []
    for keys, sub in table.groupby(list(by), sort=False):
        row = dict(zip(by, keys, strict=True), seeds=len(sub), **{c: sub[c].iloc[0] for c in first})
        how = {}
        for m in metrics:
            row[m], row[f"{m}_lo"], row[f"{m}_hi"], how[m] = mean_and_ci(sub[m])
        named = {m: h for m, h in how.items() if h != "exact" and not h.startswith("none")}
        methods = set(named.values()) or set(how.values())
        row["ci_method"] = (methods.pop() if len(methods) == 1
                            else "; ".join(f"{m}: {h}" for m, h in how.items()))  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def paired_comparison(values, metric: str, *, reference: str = "elu", group: str = "unit_type"):
    r"""``reference`` against every other unit type on ``metric``, paired by seed.

    Returns one row per other unit type: ``metric``, ``reference``, ``other``, ``n`` (paired
    seeds), ``diff`` = mean over seeds of (reference − other), ``lo``/``hi`` (95 % CI of that
    mean, :func:`mean_ci`), ``p`` (two-sided sign-flip permutation test of the paired
    differences, :func:`sign_flip_p`), ``p_min`` (the smallest p n pairs allow), ``better`` (the registry's
    direction), ``ci_method`` (t; BCa or percentile under ``mean_ci_method("bootstrap")``)
    and ``text`` (:func:`sentence`). For
    ``closer_to_zero`` metrics the absolute values are compared. A censored time-to-event
    metric (the registry names its ``reached`` column, and ``values`` has it) is compared by
    order wherever a run of the pair is censored (:func:`censored_comparison`: ``diff`` the
    median difference, no CI, the sign test's p; ``earlier``/``later``/``ties``), and averaged
    only where every time of the pair was observed.
    """
    spec = mt.METRICS.get(metric)
    better = spec.better if spec else None
    reached = spec.reached if spec and spec.reached in values else None
    v = values[[group, "seed", metric, *([reached] if reached else [])]].copy()
    if better == "closer_to_zero":
        v[metric] = v[metric].abs()

    def row(other, wide, wide_r=None):
        pair = wide.replace([np.inf, -np.inf], np.nan).dropna()
        if wide_r is not None and not wide_r.reindex(pair.index).fillna(0).astype(bool).all(
            axis=None
        ):
            r = _censored_row(metric, reference, other, pair, wide_r)
            r = {**r, "diff": r["median_diff"], "lo": math.nan, "hi": math.nan, "better": better}
            r["text"] = _censored_sentence(r)
            return r
        ref, oth = pair[reference].to_numpy(), pair[other].to_numpy()
        s = paired_summary(ref - oth, scale=np.maximum(np.abs(ref), np.abs(oth)))
        r = {"metric": metric, "reference": reference, "other": other, "n": s["n"],
             "diff": s["diff"], "better": better, **{k: s[k] for k in _SPREAD}}  # fmt: skip
        r["text"] = sentence(r) + infinite_note(wide)
        return r

    return _per_other(v, [metric, *([reached] if reached else [])], reference, group, row)


def infinite_note(wide) -> str:
    """The sentence a comparison adds for the seeds (rows of ``wide``, one column per arm) it
    leaves out for an infinite value, or ``""``: no mean can hold them, and they are often
    the seeds most in one arm's favour (a log AUC of −inf: a training loss of exactly 0)."""
    seeds = [int(s) for s in wide.index[np.isinf(wide.to_numpy(float)).any(axis=1)]]
    if not seeds:
        return ""
    return (f" Left out: seed(s) {', '.join(map(str, seeds))} with an infinite value (e.g. a "
            "log AUC of −inf, a training loss of exactly 0), which no mean can hold; compare "
            "such runs on the linear AUC or by order.")  # fmt: skip


def _censored_sentence(r: dict) -> str:
    """A censored comparison's finding, by order (no CI: no direction is stated from it)."""
    ref = unit_type_label(r["reference"], tex=False)
    other = unit_type_label(r["other"], tex=False)
    return (f"{mt.label(r['metric'])}: {ref} earlier than {other} in {r['earlier']} of "
            f"{r['n']} seeds, later in {r['later']}, tied in {r['ties']} (never reached: "
            f"{ref} {r['censored_ref']}, {other} {r['censored_other']} seeds); compared by "
            f"order, not averaged: sign test p = {_g(r['p'])}.")  # fmt: skip


_SPREAD = ("lo", "hi", "ci_method", "p", "p_min")


def paired_summary(diff, scale=0.0) -> dict:
    r"""The one summary of paired differences (one per seed; non-finite ones already
    dropped; ``scale``: the size of the values they are differences of): ``n``, ``diff``
    (their mean), ``lo``/``hi``/``ci_method`` (:func:`mean_ci`), ``p`` (:func:`sign_flip_p`)
    and ``p_min`` (the smallest p that n pairs allow). :func:`paired_comparison` and the interaction endpoints of
    :mod:`natgrad.analysis.endpoints` report through it.

    Example:
        >>> r = paired_summary([0.1, 0.2, 0.3, 0.4])
        >>> r["n"], round(r["diff"], 3), r["p"], r["p_min"]
        (4, 0.25, 0.125, 0.125)
    """
    d = np.asarray(diff, dtype=np.float64)
    n = len(d)
    lo, hi, how = mean_ci(d, scale)
    return {"n": n, "diff": float(d.mean()) if n else math.nan, "lo": lo, "hi": hi,
            "ci_method": how, "p": sign_flip_p(d), "p_min": sign_flip_p_min(n)}  # fmt: skip


def censored_comparison(values, metric: str, reached: str, *, reference: str = "elu",
                        group: str = "unit_type"):  # fmt: skip
    r"""``reference`` against every other unit type on a censored time-to-event ``metric``
    (e.g. epochs to a training loss), paired by seed; ``reached`` is 1 where the run reached
    the event and 0 where it is censored at the horizon (all runs share the horizon).

    Each pair is ordered, never averaged: the reference is *earlier* when its time is below
    the other's (a censored time is later than every observed one; two censored times tie).
    Returns per other unit type: ``n``, ``earlier``, ``later``, ``ties``, ``censored_ref``,
    ``censored_other``, ``median_diff`` (median over seeds of reference − other, censored
    times at the horizon, so a bound where censoring enters: ``median_is_bound``), ``p`` (exact
    two-sided sign test on earlier vs later, :func:`scipy.stats.binomtest`), ``p_min`` and
    ``ci_method`` ``"none (sign test)"``.

    Example:
        >>> import pandas as pd
        >>> v = pd.DataFrame({"unit_type": ["elu"] * 3 + ["relu"] * 3, "seed": [0, 1, 2] * 2,
        ...                   "t": [5.0, 6, 7, 9, 11, 11], "ok": [1, 1, 1, 1, 0, 0]})
        >>> r = censored_comparison(v, "t", "ok").iloc[0]
        >>> int(r["earlier"]), int(r["later"]), float(r["p"])
        (3, 0, 0.25)
    """

    def row(other, wide_t, wide_r):
        return _censored_row(metric, reference, other, wide_t.dropna(), wide_r)

    return _per_other(values, [metric, reached], reference, group, row)


def _censored_row(metric: str, reference: str, other: str, t, wide_r) -> dict:
    """:func:`censored_comparison`'s row of one pair: ``t`` the seeds' times (both finite),
    ``wide_r`` whether each run reached the event (a seed without that for both runs drops
    out). A censored time is a lower bound (its run's horizon + 1): an observed time at or
    beyond it, from a longer run, cannot be ordered against it and counts as a tie, as do two
    censored times. ``p_min`` is the design's floor, 2/2ⁿ, before ties."""
    from scipy import stats

    r = wide_r.reindex(t.index)
    t = t[r.notna().all(axis=1)]
    r = r.loc[t.index].astype(bool)
    a, b = t[reference].to_numpy(), t[other].to_numpy()
    ra, rb = r[reference].to_numpy(), r[other].to_numpy()
    open_pair = (~ra & ~rb) | (~ra & rb & (b >= a)) | (ra & ~rb & (a >= b))
    earlier = int(((a < b) & ~open_pair).sum())
    later = int(((a > b) & ~open_pair).sum())
    n = len(t)
    p = float(stats.binomtest(earlier, earlier + later).pvalue) if earlier + later else 1.0
    return {
        "metric": metric, "reference": reference, "other": other, "n": n,
        "earlier": earlier, "later": later, "ties": n - earlier - later,
        "censored_ref": int((~ra).sum()), "censored_other": int((~rb).sum()),
        "median_diff": float(np.median(a - b)) if n else math.nan,
        "median_is_bound": bool((~ra | ~rb).any()),
        "p": p, "p_min": 2.0 / 2**n if n else math.nan, "ci_method": "none (sign test)",
    }  # fmt: skip


def _per_other(values, columns, reference: str, group: str, row):
    """``row(other, *wide)`` per other unit type in order, ``wide`` the ``[seed, (reference,
    other)]`` pivot of each of ``columns``; an empty table where ``reference`` is absent."""
    import pandas as pd

    wide = [values.pivot_table(index="seed", columns=group, values=c, aggfunc="first")
            for c in columns]  # fmt: skip
    if reference not in wide[0].columns:
        return pd.DataFrame([])
    others = unit_type_order(c for c in wide[0].columns if c != reference)
    return pd.DataFrame([row(other, *(w[[reference, other]] for w in wide)) for other in others])


def holm(pvalues) -> np.ndarray:
    r"""Holm's step-down adjusted p-values of one family: p_(i) · (m − i + 1), made monotone,
    capped at 1. m counts every member declared: a NaN entry (an endpoint too few seeds could
    test) stays NaN and counts as p = 1, so the family never shrinks below its declaration.

    Example:
        >>> holm([0.01, 0.04, 0.03]).round(3).tolist(), holm([0.01, float("nan")]).tolist()
        ([0.03, 0.06, 0.06], [0.02, nan])
    """
    p = np.asarray(pvalues, dtype=np.float64)
    ok = np.isfinite(p)
    q = np.where(ok, p, 1.0)
    m = q.size
    order = np.argsort(q, kind="stable")
    res = np.empty(m)
    res[order] = np.minimum(1.0, np.maximum.accumulate(q[order] * (m - np.arange(m))))
    return np.where(ok, res, np.nan)


def _noise_to_zero(lo, hi):
    r"""``(lo, hi)`` with an end within 1e-12 of the other's size from 0 (float noise of an
    exact 0) and −0.0 set to 0: how a CI is both judged (:func:`ci_sign`) and printed
    (:func:`interval_text`)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        scale = np.where(np.isfinite(lo) & np.isfinite(hi), np.maximum(abs(lo), abs(hi)), 0.0)
        return tuple(np.where(abs(v) < 1e-12 * scale, 0.0, v + 0.0) for v in (lo, hi))


def ci_sign(lo, hi):
    r"""Which way each CI points: +1 where it lies above 0, −1 below, 0 where it holds 0 (or is
    NaN; an end that is float noise of 0 counts as 0): the one rule by which a report says a
    difference is resolved.

    Example:
        >>> ci_sign([0.1, -0.3, -0.1, float("nan"), 5e-17], [0.2, -0.1, 0.1, float("nan"), 0.3]).tolist()
        [1, -1, 0, 0, 0]
    """
    lo, hi = _noise_to_zero(lo, hi)
    return np.where(lo > 0, 1, np.where(hi < 0, -1, 0))


def resolved_sign(row, alpha: float = 0.05) -> int:
    r"""Which way one comparison ``row`` (``lo``, ``hi``, ``ci_method``, ``p``) is resolved by
    its CI (:func:`ci_sign`), except that a zero-width ``"exact"`` CI (every seed's difference
    the same) resolves only where its sign-flip p is below ``alpha``: n equal differences say
    nothing of their spread, and two seeds of one sign have p = 0.5.

    Example:
        >>> resolved_sign({"lo": 0.1, "hi": 0.1, "ci_method": "exact", "p": 0.5}), resolved_sign(
        ...     {"lo": 0.1, "hi": 0.1, "ci_method": "exact", "p": 0.002})
        (0, 1)
    """
    if row.get("ci_method") == "exact" and not row.get("p", math.nan) < alpha:
        return 0
    return int(ci_sign(row["lo"], row["hi"]))


def declared_sign(row, alpha: float = 0.05) -> int:
    r"""The declared rule of natgrad's confirmatory studies for one endpoint ``row`` (``lo``,
    ``hi``, ``p_holm``): resolved where the Holm p is below ``alpha`` *and* the CI excludes
    0, then the CI's direction (:func:`ci_sign`), else 0. A censored endpoint has no CI
    (NaN), so this rule never resolves it: its row is read by its order test
    (:func:`censored_comparison`).

    Example:
        >>> declared_sign({"lo": 0.1, "hi": 0.3, "p_holm": 0.01}), declared_sign(
        ...     {"lo": 0.1, "hi": 0.3, "p_holm": 0.06})
        (1, 0)
    """
    return int(ci_sign(row["lo"], row["hi"])) if row["p_holm"] < alpha else 0


def ci_changes(before, after, keys: list[str]):
    r"""The same comparisons in two tables (matched on ``keys``, e.g. computed under two CI
    methods): ``keys``, both CIs (``lo_before``, ``hi_before``, ``lo_after``, ``hi_after``) and
    which way each points (:func:`ci_sign`) in ``before`` and in ``after``, one row per
    comparison present in both.

    Example:
        >>> import pandas as pd
        >>> a = pd.DataFrame({"m": ["x", "y"], "lo": [0.1, -0.2], "hi": [0.3, 0.1]})
        >>> b = pd.DataFrame({"m": ["x", "y"], "lo": [-0.1, -0.3], "hi": [0.4, 0.2]})
        >>> ci_changes(a, b, ["m"])[["m", "before", "after"]].values.tolist()
        [['x', 1, 0], ['y', 0, 0]]
    """
    both = before[[*keys, "lo", "hi"]].merge(after[[*keys, "lo", "hi"]], on=keys,
                                             suffixes=("_before", "_after"))  # fmt: skip
    return both.assign(before=ci_sign(both["lo_before"], both["hi_before"]),
                       after=ci_sign(both["lo_after"], both["hi_after"]))  # fmt: skip


SIGN_FLIP_EXACT_UP_TO = 20
"""Seeds up to which :func:`sign_flip_p` enumerates every sign pattern (2^20 ≈ 10^6)."""
SIGN_FLIP_RESAMPLES = 100_000
"""Random sign patterns :func:`sign_flip_p` draws (from a fixed generator) above that."""


def sign_flip_p_min(n: int) -> float:
    """The smallest p :func:`sign_flip_p` can give with ``n`` seeds (NaN for none)."""
    if not n:
        return math.nan
    return 2.0 / 2**n if n <= SIGN_FLIP_EXACT_UP_TO else 2.0 / (SIGN_FLIP_RESAMPLES + 1)


def sign_flip_method(n: int) -> str:
    """How :func:`sign_flip_p` gets its p with ``n`` seeds, in words (for reports)."""
    if n <= SIGN_FLIP_EXACT_UP_TO:
        return "exact two-sided sign-flip permutation test"
    return (f"two-sided sign-flip permutation test from {SIGN_FLIP_RESAMPLES:,} random sign "
            "patterns of a fixed generator")  # fmt: skip


def sign_flip_at_floor(p: float, n: int) -> bool:
    """Whether a :func:`sign_flip_p` of ``n`` seeds from random patterns sits at its floor, so
    is a bound (no drawn pattern was as extreme); an exact p is never a bound."""
    return n > SIGN_FLIP_EXACT_UP_TO and abs(p - sign_flip_p_min(n)) < 1e-15


def sign_flip_p(diff) -> float:
    r"""Two-sided sign-flip permutation p-value of the mean of paired differences ``diff``
    (one per seed): exact up to :data:`SIGN_FLIP_EXACT_UP_TO` seeds (all 2^n sign patterns, so
    n seeds cannot go below 2/2^n), above that from :data:`SIGN_FLIP_RESAMPLES` random
    patterns of a fixed generator (reproducible; scipy counts the observed pattern among
    them, so p is never 0). Patterns whose sums are equal in exact arithmetic are ties
    whatever their float rounding: exact p counts sums within 4·n·ε·Σ|d| (the bound of a
    float sum's error) of the observed one's size, the random patterns compare means on a 1e-12·Σ|d| grid
    (scipy's own relative tolerance misses ties near a mean of 0). NaN for fewer than 2 or non-finite
    differences, 1 when every difference is 0."""
    from scipy import stats

    d = np.asarray(diff, dtype=np.float64)
    if d.size < 2 or not np.isfinite(d).all():
        return math.nan
    if not np.any(d != 0):
        return 1.0
    scale = np.abs(d).sum()
    if d.size <= SIGN_FLIP_EXACT_UP_TO:  # every pattern, |Σ| compared with a tolerance
        return _exact_sign_flip_p(d, tol=4 * d.size * np.finfo(np.float64).eps * scale)

    def mean_on_grid(x, axis=-1):  # the mean over Σ|d|, in [-1, 1], on a 1e-12 grid: patterns
        return np.round(x.sum(axis=axis) / scale, 12)  # tied in exact arithmetic stay tied

    res = stats.permutation_test((d,), mean_on_grid, permutation_type="samples",
                                 n_resamples=SIGN_FLIP_RESAMPLES, alternative="two-sided",
                                 rng=np.random.default_rng(0))  # fmt: skip
    return float(res.pvalue)


def _exact_sign_flip_p(d: np.ndarray, *, tol: float) -> float:
    """The share of all 2ⁿ sign patterns s with |sᵀd| ≥ |Σd| − ``tol`` (the exact two-sided
    p: the null distribution is symmetric), in chunks of 2¹⁶ patterns."""
    n, obs = d.size, abs(d.sum()) - tol
    bits = np.arange(n, dtype=np.int64)
    count = 0
    for start in range(0, 2**n, 1 << 16):
        idx = np.arange(start, min(start + (1 << 16), 2**n), dtype=np.int64)
        signs = 1.0 - 2.0 * ((idx[:, None] >> bits) & 1)  # [chunk, n]
        count += int(np.count_nonzero(np.abs(signs @ d) >= obs))
    return count / 2**n


def _spearman(a, b, axis: int = -1):
    """Spearman's r along ``axis`` (Pearson's of the ranks), vectorised over the other axes."""
    from scipy import stats

    ra, rb = stats.rankdata(a, axis=axis), stats.rankdata(b, axis=axis)
    ra = ra - ra.mean(axis=axis, keepdims=True)
    rb = rb - rb.mean(axis=axis, keepdims=True)
    return (ra * rb).sum(axis=axis) / np.sqrt((ra * ra).sum(axis=axis) * (rb * rb).sum(axis=axis))


def rank_correlation(x, y, *, resamples: int = 10_000, permutations: int = 100_000) -> dict:
    r"""Spearman's correlation over seeds of ``x`` and ``y``, paired by seed (pairs with a
    non-finite value left out): ``r``; its 95 % bootstrap CI over seeds (``lo``, ``hi``,
    ``ci_method``: :func:`bootstrap_ci` of joint resamples, ``resamples`` of them); the
    two-sided permutation p of no association (``p``), from every pairing where there are
    no more than ``permutations``, else from that many random pairings with the observed one
    counted, so p ≥ ``p_min`` = 2/(permutations + 1) (``p_exact`` says which; ``p_at_floor``
    that a drawn p sits at that floor, so is a bound); ``n``. Fixed
    generators: the same input gives the same row. NaN entries for fewer than 3 pairs or a
    constant sample; the CI alone is NaN (``ci_method`` ``"none"``) where some resample
    holds a constant x or y, whose correlation is not defined: likely at few seeds or with
    ties (at 5–6 seeds in most draws), never at the 100 seeds of the speed study.

    Example:
        >>> r = rank_correlation([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0])
        >>> round(r["r"], 2), round(r["p"], 3), r["n"], r["p_exact"]
        (0.8, 0.133, 5, True)
    """
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    exact = n < 3 or math.factorial(n) <= permutations
    row = dict(r=math.nan, lo=math.nan, hi=math.nan, ci_method="none", p=math.nan, n=n,
               p_exact=exact, p_min=math.nan if exact else 2.0 / (permutations + 1),
               p_at_floor=False)  # fmt: skip
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return row
    row["r"] = float(_spearman(x, y))
    # ranking commutes with a pairing's permutation: rank once, then r is a dot product
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    rx = (rx - rx.mean()) / np.sqrt(((rx - rx.mean()) ** 2).sum() * ((ry - ry.mean()) ** 2).sum())
    res = stats.permutation_test((ry - ry.mean(),), lambda b, axis=-1: (b * rx).sum(axis=axis),
                                 permutation_type="pairings", n_resamples=permutations,
                                 alternative="two-sided", vectorized=True, batch=10_000,
                                 rng=np.random.default_rng(SEED))  # fmt: skip
    row["p"] = float(res.pvalue)
    row["p_at_floor"] = not exact and abs(row["p"] - row["p_min"]) < 1e-15
    row["lo"], row["hi"], row["ci_method"] = bootstrap_ci((x, y), _spearman, resamples=resamples,
                                                          vectorized=True)  # fmt: skip
    return row


def outward(x: float, up: bool, *, digits: int = 3, signed: bool = True) -> str:
    """A CI end in ``digits`` significant digits, rounded away from the interval's inside
    (``up`` for an upper end), so the printed interval always holds the computed one.

    Ends are first taken to 12 significant digits, so the last bits of float arithmetic do
    not widen an interval that is exact at the digits shown.

    Example:
        >>> outward(-0.219047, up=False), outward(0.164680, up=True), outward(0.0025, up=True)
        ('-0.22', '+0.165', '+0.0025')
        >>> outward(0.99999999999988, up=False), outward(1.00000000000009, up=True)
        ('+1', '+1')
    """
    from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

    x = float(x)
    spec = f"{'+' if signed else ''}.{digits}g"
    if not math.isfinite(x) or x == 0:
        return format(x, spec)
    d = Decimal(format(x, ".12g"))  # float noise (0.99999999999988 for 1) is not widened
    step = Decimal(1).scaleb(d.adjusted() - digits + 1)
    return format(float(d.quantize(step, rounding=ROUND_CEILING if up else ROUND_FLOOR)), spec)


def ci_text(value: float, lo: float, hi: float, *, digits: int = 3, signed: bool = True) -> str:
    """``value [lo, hi]``: the value rounded to ``digits`` significant digits, the ends
    rounded outward (:func:`outward`), the one way a report prints a CI; the value alone
    where no CI was formed (both ends NaN), an infinite end as ``inf``.

    Example:
        >>> ci_text(-0.0280, -0.219047, 0.164680), ci_text(0.5, float("nan"), float("nan"))
        ('-0.028 [-0.22, +0.165]', '+0.5')
    """
    spec = f"{'+' if signed else ''}.{digits}g"
    if math.isnan(lo) and math.isnan(hi):
        return format(float(value), spec)
    return f"{format(float(value), spec)} {interval_text(lo, hi, digits=digits, signed=signed)}"


def interval_text(lo: float, hi: float, *, digits: int = 3, signed: bool = True) -> str:
    """``[lo, hi]`` with both ends rounded outward (:func:`outward`); an end within 1e-12 of
    the other's size from 0 (float noise of an exact 0) and −0.0 print as 0, as
    :func:`ci_sign` judges them.

    Example:
        >>> interval_text(0.012345, 0.098761, signed=False)
        '[0.0123, 0.0988]'
    """
    lo, hi = (float(v) for v in _noise_to_zero(lo, hi))
    return f"[{outward(lo, False, digits=digits, signed=signed)}, {outward(hi, True, digits=digits, signed=signed)}]"


def sentence(row: dict) -> str:
    r"""The finding of one paired comparison, from its CI (never from a p-value alone), with
    one sign convention: the difference is always reference − other, its CI likewise.

    Example:
        >>> sentence({"metric": "rho_plain", "reference": "elu", "other": "relu", "n": 8,
        ...           "diff": 0.05, "lo": 0.01, "hi": 0.09, "better": "higher"})
        'ρ(plain): ELU (α=1) − ReLU = 0.05 [0.01, 0.09] (8 seeds): ELU (α=1) higher than ReLU — better.'
    """
    ref = unit_type_label(row["reference"], tex=False)
    other = unit_type_label(row["other"], tex=False)
    lab = mt.label(row["metric"])
    lo, hi, n = row["lo"], row["hi"], row["n"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{lab}: {ref} vs {other}: too few seeds to compare ({n})."
    stated = f"{lab}: {ref} − {other} = {_g(row['diff'])} {interval_text(lo, hi, signed=False)} ({n} seeds)"
    sign = resolved_sign(row)
    if not sign:
        same = (f" (every seed's difference is the same; sign-flip p = {_g(row['p'])})"
                if row.get("ci_method") == "exact" and lo != 0 else "")  # fmt: skip
        return f"{stated}: no difference resolved between {ref} and {other}{same}."
    higher = sign > 0
    better = row.get("better")
    word = "higher" if higher else "lower"
    if better == "closer_to_zero":  # compared on |value|
        word = "farther from 0" if higher else "closer to 0"
    verdict = ""
    if better in ("higher", "lower", "closer_to_zero"):
        verdict = " — better" if higher == (better == "higher") else " — worse"
    return f"{stated}: {ref} {word} than {other}{verdict}."


def _g(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def claims_per_seed(curves, *, last: int = 3, threshold: float | None = None,
                    group: str = "unit_type"):  # fmt: skip
    r"""The paper's own claims per run (one row per ``group`` × seed), from its curves — the
    one definition of every study's per-seed values from curves (the demo, the Fig 2
    protocol, ``natgrad compare``):

    - ``abs_median_activation``: |median_all| at the last epoch (Fig 2a), where the curves
      record activations;
    - ``train_loss_auc`` and ``log_train_loss_auc``: :func:`loss_auc` (Fig 2b's speed);
    - ``epochs_to_loss``: the first epoch with training loss ≤ ``threshold`` (default: the
      largest over groups of their mean final training loss, a level most runs reach);
      a run that never reaches it is censored at E + 1 (``epochs_reached`` = 0), so that
      every seed stays paired;
    - ``median_activation_var``: the variance over epochs ≥ 1 of median_all (Appendix C);
      NaN for a run that stopped early (diverged), as its AUC and errors are, and the
      default threshold is taken over the runs that lasted;
    - ``test_error``: the mean test error of the last ``last`` epochs;
    - ``val_error_last`` (the mean validation error of the last ``last`` epochs),
      ``best_val_epoch`` (the epoch ≥ 1 of the lowest validation error, the first of ties) and
      ``test_error_at_best_val`` (selection on validation, never on test); NaN where the
      curves have no validation split or a run lacks an epoch's (a diverged run).

    A run is a ``run`` where the curves name one, else a (``group``, ``seed``).
    Returns ``(table, threshold)``.
    """
    import pandas as pd

    trained = curves[curves["epoch"] >= 1]
    runs = "run" if "run" in curves else [group, "seed"]
    horizon = int(trained["epoch"].max()) if len(trained) else 0
    final_epoch = trained.groupby(runs)["epoch"].transform("max")
    final = trained[(trained["epoch"] == final_epoch) & (final_epoch == horizon)]
    if threshold is None:  # over the runs that lasted (a diverged run's last loss is not final)
        threshold = float(final.groupby(group)["train_loss"].mean().max())
    acts = "median_all" in curves
    has_val = "val_error" in curves and curves["val_error"].notna().any()
    rows = []
    for key, sub in trained.groupby(runs, sort=False):
        sub = sub.sort_values("epoch")
        last_loss = float(sub["train_loss"].iloc[-1])
        stopped = not math.isfinite(last_loss) or int(sub["epoch"].max()) < horizon
        if int(sub["epoch"].max()) < horizon:  # it stopped early (diverged): its missing
            sub = (sub.set_index("epoch")  # epochs are NaN, as Study.curves gives them
                   .reindex(range(int(sub["epoch"].min()), horizon + 1))
                   .rename_axis("epoch").reset_index())  # fmt: skip
        below = sub[sub["train_loss"] <= threshold]["epoch"]
        tail = sub.tail(last)
        row = {"run": key if runs == "run" else f"{key[0]}-s{key[1]}",
               group: sub[group].iloc[0], "seed": int(sub["seed"].iloc[0]),
               "abs_median_activation": abs(float(sub["median_all"].iloc[-1])) if acts else math.nan,
               "train_loss_auc": loss_auc(sub["train_loss"]),
               "log_train_loss_auc": loss_auc(sub["train_loss"], log=True),
               "epochs_to_loss": float(below.iloc[0]) if len(below) else float(sub["epoch"].max() + 1),
               "epochs_reached": int(len(below) > 0),
               "median_activation_var": (float(sub["median_all"].var(ddof=1))  # over the
                                         if acts and len(sub) > 1 and not stopped  # recorded
                                         else math.nan),  # epochs (record_every)
               "test_error": float(tail["test_error"].mean(skipna=False)),
               "val_error_last": math.nan, "best_val_epoch": math.nan,
               "test_error_at_best_val": math.nan}  # fmt: skip
        if has_val:
            row["val_error_last"] = float(tail["val_error"].mean(skipna=False))
            if sub["val_error"].notna().all():
                best = sub.loc[sub["val_error"].idxmin()]
                row["best_val_epoch"] = int(best["epoch"])
                row["test_error_at_best_val"] = float(best["test_error"])
        rows.append(row)
    columns = ["run", group, "seed", "abs_median_activation", "train_loss_auc",
               "log_train_loss_auc", "epochs_to_loss", "epochs_reached", "median_activation_var",
               "test_error", "val_error_last", "best_val_epoch", "test_error_at_best_val"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns), threshold
