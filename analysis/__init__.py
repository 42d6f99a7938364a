"""Analysis pipelines over natgrad run directories: run dirs → tidy CSV tables → summaries.

The table-building functions live inside the package (:mod:`natgrad.runs`,
:mod:`natgrad.summary`, :mod:`natgrad.tables`) so that ``natgrad demo`` and installed
copies of natgrad can use them; this folder holds thin, importable pipelines over them
(importable from the repository root: ``python -m analysis.build_tables``).

Example:
    >>> import analysis
    >>> analysis.summarize is analysis.tables.summarize
    True
"""

from __future__ import annotations

from natgrad import tables
from natgrad.runs import (
    activation_table,
    checkpoint_epochs,
    curve_table,
    find_runs,
    load_model,
    probe_set,
    unit_table,
)
from natgrad.summary import (
    analysed_units,
    epoch_summary,
    paired_comparison,
    unit_type_summary,
    write_tables,
)
from natgrad.tables import Table, concat, paired_wilcoxon, read_csv, summarize, write_csv

__all__ = [
    "Table",
    "activation_table",
    "analysed_units",
    "checkpoint_epochs",
    "concat",
    "curve_table",
    "epoch_summary",
    "find_runs",
    "load_model",
    "paired_comparison",
    "paired_wilcoxon",
    "probe_set",
    "read_csv",
    "summarize",
    "tables",
    "unit_table",
    "unit_type_summary",
    "write_csv",
    "write_tables",
]
