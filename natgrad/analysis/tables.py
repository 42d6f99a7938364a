r"""Tidy tables: one row per observation, one column per variable, stored as CSV.

natgrad does not depend on pandas. A :class:`Table` is an ordered mapping of column names
to equal-length 1-D numpy arrays (numbers as float64 or int64, text as ``str``), with the
few operations the analysis needs: select rows, group and aggregate, concatenate, write and
read CSV (the :mod:`csv` module; floats written with ``repr`` so a round trip is exact).

The aggregation used throughout the report is :func:`summarize`: first average over the
rows of each run (``seed``) within a group, then mean ± sample standard deviation over the
seeds — the paper's "mean ± sd over seeds".

Example:
    >>> t = Table({"unit_type": ["elu", "elu", "relu"], "seed": [0, 1, 0], "x": [1.0, 3.0, 5.0]})
    >>> len(t), t.columns
    (3, ['unit_type', 'seed', 'x'])
    >>> t.where(unit_type="elu")["x"]
    array([1., 3.])
    >>> s = summarize(t, by=("unit_type",), values=("x",))
    >>> s["x_mean"], s["n_seeds"]
    (array([2., 5.]), array([2, 1]))
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from natgrad.errors import DataFileError, InputError

__all__ = ["Table", "concat", "paired_wilcoxon", "read_csv", "summarize", "write_csv"]


def _column(values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.dtype.kind in "biu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        return arr.astype(np.float64)
    return arr.astype(str)


class Table:
    r"""Columns of equal length ``n`` (rows): ``{name: ndarray [n]}``, order kept.

    Args:
        columns: mapping of column name to a sequence or array of length n (scalars are
            broadcast to n).
    """

    def __init__(self, columns: Mapping[str, object] | None = None) -> None:
        cols = dict(columns or {})
        n = max((np.size(v) for v in cols.values() if np.ndim(v) > 0), default=0)
        self._cols: dict[str, np.ndarray] = {}
        for name, v in cols.items():
            arr = _column(np.full(n, v) if np.ndim(v) == 0 else v)
            if arr.shape[0] != n:
                raise InputError(f"Table: column {name!r} has {arr.shape[0]} rows, expected {n}")
            self._cols[str(name)] = arr

    # --- access ------------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        """Column names, in order."""
        return list(self._cols)

    def __len__(self) -> int:
        return next(iter(self._cols.values())).shape[0] if self._cols else 0

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cols:
            raise KeyError(f"no column {name!r}; columns are {', '.join(self._cols)}")
        return self._cols[name]

    def __contains__(self, name: str) -> bool:
        return name in self._cols

    def rows(self) -> Iterable[dict]:
        """Each row as a ``{column: python value}`` dict."""
        for i in range(len(self)):
            yield {k: v[i].item() for k, v in self._cols.items()}

    def with_columns(self, **columns) -> Table:
        """A copy with columns added or replaced."""
        return Table({**self._cols, **columns})

    def take(self, index) -> Table:
        """Rows at ``index`` (an integer array or a boolean mask ``[n]``)."""
        return Table({k: v[index] for k, v in self._cols.items()})

    def where(self, **equal) -> Table:
        """Rows whose columns equal the given values (a list/tuple value means "is in")."""
        mask = np.ones(len(self), dtype=bool)
        for name, value in equal.items():
            col = self[name]
            if isinstance(value, (list, tuple, set)):
                mask &= np.isin(col, list(value))
            else:
                mask &= col == value
        return self.take(mask)

    def unique(self, name: str) -> list:
        """Distinct values of a column, in order of first appearance."""
        _, first = np.unique(self[name], return_index=True)
        return [self[name][i].item() for i in sorted(first)]

    def __repr__(self) -> str:
        return f"Table({len(self)} rows × {len(self._cols)} columns: {', '.join(self._cols)})"


def concat(tables: Sequence[Table]) -> Table:
    """Stack tables with the same columns (in the first table's order)."""
    tables = [t for t in tables if len(t)]
    if not tables:
        return Table()
    names = tables[0].columns
    for t in tables[1:]:
        if set(t.columns) != set(names):
            raise InputError(f"concat: columns differ: {names} vs {t.columns}")
    return Table({n: np.concatenate([t[n] for t in tables]) for n in names})


def write_csv(table: Table, path: str | os.PathLike) -> Path:
    """Write ``table`` as CSV (header row; floats by ``repr``, so reading back is exact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(table.columns)
        cols = [table[c].tolist() for c in table.columns]
        w.writerows(zip(*cols, strict=True))
    return path


def read_csv(path: str | os.PathLike) -> Table:
    """Read a CSV written by :func:`write_csv`; columns that parse as int/float become numeric."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(
            f"table {path} does not exist (write it with natgrad.analysis.tables.write_csv)"
        )
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DataFileError(f"table {path} is empty (no header row)") from None
        data = list(reader)
    if any(len(r) != len(header) for r in data):
        raise DataFileError(f"table {path}: some rows do not have {len(header)} fields")
    cols = {}
    for j, name in enumerate(header):
        raw = [r[j] for r in data]
        cols[name] = _parse(raw)
    return Table(cols)


def _parse(raw: list[str]) -> np.ndarray:
    for kind in (int, float):
        try:
            return np.array([kind(v) for v in raw], dtype=np.int64 if kind is int else np.float64)
        except ValueError:
            continue
    return np.array(raw, dtype=str)


def summarize(
    table: Table,
    by: Sequence[str],
    values: Sequence[str],
    *,
    run: str = "seed",
    within: str = "mean",
) -> Table:
    r"""Mean ± sd over runs, per group.

    For each group (distinct values of the ``by`` columns, in order of appearance) and each
    value column: first the NaN-ignoring ``within`` (``"mean"`` or ``"median"``) over the
    rows of each run (distinct ``run`` values), then the mean and sample standard deviation
    (ddof = 1; NaN for one run) of those per-run values. Returns the ``by`` columns, ``n_seeds``, and ``<value>_mean``,
    ``<value>_sd`` for each value.
    """
    if not len(table):
        raise InputError("summarize: the table is empty")
    if within not in ("mean", "median"):
        raise InputError(f"summarize: within must be 'mean' or 'median', got {within!r}")
    reduce = _nanmean if within == "mean" else _nanmedian
    keys = list(zip(*(table[b].tolist() for b in by), strict=True)) if by else [()] * len(table)
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    out: dict[str, list] = {b: [] for b in by}
    out["n_seeds"] = []
    for v in values:
        out[f"{v}_mean"], out[f"{v}_sd"] = [], []
    runs = table[run]
    for key, idx in groups.items():
        idx = np.asarray(idx)
        for b, kv in zip(by, key, strict=True):
            out[b].append(kv)
        run_ids = np.unique(runs[idx])
        out["n_seeds"].append(len(run_ids))
        for v in values:
            col = table[v][idx].astype(np.float64)
            means = np.array([reduce(col[runs[idx] == r]) for r in run_ids])
            means = means[np.isfinite(means)]
            out[f"{v}_mean"].append(float(means.mean()) if means.size else math.nan)
            out[f"{v}_sd"].append(float(means.std(ddof=1)) if means.size > 1 else math.nan)
    return Table(out)


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def _nanmedian(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


def paired_wilcoxon(x: np.ndarray, y: np.ndarray) -> dict:
    r"""Two-sided Wilcoxon signed-rank test of paired samples ``x [n]``, ``y [n]``.

    Pairs with a NaN on either side are dropped. Returns ``{"n", "median_diff",
    "statistic", "p"}`` (``median_diff`` = median of x − y); ``p`` is NaN when fewer than
    two pairs remain or all differences are zero.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    res = {"n": int(d.size), "median_diff": float(np.median(d)) if d.size else math.nan}
    if d.size < 2 or not np.any(d != 0):
        return {**res, "statistic": math.nan, "p": math.nan}
    from scipy.stats import wilcoxon

    stat = wilcoxon(x[keep], y[keep], alternative="two-sided")
    return {**res, "statistic": float(stat.statistic), "p": float(stat.pvalue)}
