"""The paper figure scripts run in small mode and write PDF + PNG."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _demo_small import small_demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    return small_demo(tmp_path_factory)


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "NATGRAD_SMALL": "1", "MPLBACKEND": "Agg"}
    res = subprocess.run(
        [sys.executable, str(ROOT / "paper_figures" / script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_fig1_units(tmp_path):
    _run("fig1_units.py", "--out", str(tmp_path))
    for ext in ("pdf", "png"):
        assert (tmp_path / f"fig1_units.{ext}").stat().st_size > 1000


def test_fig2_mean_activation_from_run_dirs(demo_dir, tmp_path):
    out = _run("fig2_mean_activation.py", "--runs", str(demo_dir / "runs"), "--out", str(tmp_path))
    assert str(demo_dir / "runs") in out
    for ext in ("pdf", "png"):
        assert (tmp_path / f"fig2_mean_activation.{ext}").stat().st_size > 1000
