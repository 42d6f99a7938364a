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


def test_fig2_protocol_records_runs(demo_dir, tmp_path):
    r"""``analysis/fig2_protocol.py``'s record step on the small demo's runs (ELU, ReLU,
    ReLU+BN × 2 seeds): tables, figure and README, ELU's paired differences recomputed from
    the per-run claims by hand."""
    import pandas as pd

    sys.path.insert(0, str(ROOT / "analysis"))
    try:
        import fig2_protocol
    finally:
        sys.path.remove(str(ROOT / "analysis"))
    runs = sorted(p for p in (demo_dir / "runs").iterdir() if p.is_dir())
    meta = dict(command="test", commit="abc", wall_seconds=1.0, epochs_this_call=1,
                threads=1, runs=str(demo_dir / "runs"), device="cpu")  # fmt: skip
    text = fig2_protocol.record(runs, tmp_path, meta)
    assert (
        "Epochs trained: **1 of the protocol's 300**" in text
        and "| train_loss_auc | relu |" in text
    )
    for name in ("curves.csv", "claims.csv", "paired.csv", "README.md", "run.json",
                 "fig2_mean_activation.png"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0, name
    from natgrad.analysis.csvtables import read_csv  # checked: written with their checksums

    claims = read_csv(tmp_path / "claims.csv").set_index(["unit_type", "seed"])
    paired = read_csv(tmp_path / "paired.csv").set_index(["metric", "other"])
    assert read_csv(tmp_path / "curves.csv").equals(pd.read_csv(tmp_path / "curves.csv"))
    for other in ("relu", "relu-bn"):
        diff = claims.loc["elu", "train_loss_auc"] - claims.loc[other, "train_loss_auc"]
        assert paired.loc[("train_loss_auc", other), "diff"] == pytest.approx(diff.mean())
    # through the declared endpoints: Holm within each metric over the two other unit types
    for _, rows in paired.groupby(level="metric"):
        p = rows["p"].dropna()  # a metric a run lacks (too few epochs) has no p
        if len(p):
            assert rows["p_holm"].min() == pytest.approx(min(1.0, len(p) * p.min()))
    assert set(paired["family"]) == set(fig2_protocol.METRICS) and "| Holm p |" in text
