"""The report shows the tables' numbers, and only those; the library imports without matplotlib."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from _demo_small import small_demo

from natgrad.analysis.report import SUMMARY_COLUMNS, fmt, fmt_pm, render_report
from natgrad.analysis.tables import read_csv, write_csv


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    return small_demo(tmp_path_factory)


def _cells(html: str) -> dict[tuple[str, str], str]:
    """``{(unit, column): text}`` of the HTML summary table."""
    table = re.search(r'<table id="summary">(.*?)</table>', html, re.S).group(1)
    out = {}
    for unit, row in re.findall(r'<tr data-unit="([^"]+)">(.*?)</tr>', table, re.S):
        for col, text in re.findall(r'<td data-col="([^"]+)">([^<]*)</td>', row):
            out[(unit, col)] = text
    return out


def test_summary_cells_equal_the_summary_table(demo_dir):
    summary = read_csv(demo_dir / "tables" / "summary.csv")
    cells = _cells((demo_dir / "report.html").read_text())
    assert len(cells) == len(summary) * len(SUMMARY_COLUMNS)
    for row in summary.rows():
        for col, _ in SUMMARY_COLUMNS:
            assert cells[(row["unit_type"], col)] == fmt_pm(row[f"{col}_mean"], row[f"{col}_sd"])


def test_findings_quote_the_comparison_table(demo_dir):
    html = (demo_dir / "report.html").read_text()
    comparison = read_csv(demo_dir / "tables" / "comparison.csv").where(
        metric="cosine", level="seed×layer"
    )
    for row in comparison.rows():
        assert f"Wilcoxon p = {fmt(row['p'])}" in html
        assert f"(n = {row['n']})" in html


def test_report_follows_an_edited_table(demo_dir, tmp_path):
    tables = tmp_path / "tables"
    shutil.copytree(demo_dir / "tables", tables)
    summary = read_csv(tables / "summary.csv")
    cos = summary["cosine_mean"].copy()
    cos[0] = 0.4242
    write_csv(summary.with_columns(cosine_mean=cos), tables / "summary.csv")
    html = render_report(tables, figures=False).read_text()
    assert _cells(html)[(summary["unit_type"][0], "cosine")].startswith("0.4242")
    assert "data:image/png" not in html


def test_library_imports_without_matplotlib():
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import natgrad, natgrad.analysis.demo, natgrad.analysis.report, natgrad.analysis.plots, natgrad.analysis.summary, "
        "natgrad.analysis.runs, natgrad.analysis.unitstats, analysis\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
