"""The main job end to end in its smallest mode: runs, tables, report, terminal summary."""

from __future__ import annotations

import argparse
import json

import pytest
from _demo_small import SMALL, small_demo

from natgrad.analysis import demo
from natgrad.analysis.report import summary_text
from natgrad.analysis.tables import read_csv
from natgrad.errors import InputError

TABLES = ("units", "curves", "activations", "epoch_summary", "summary", "comparison")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    return small_demo(tmp_path_factory)


def test_demo_writes_runs_tables_and_report(demo_dir):
    for unit in SMALL.units:
        run = demo_dir / "runs" / f"mnist-fc-{unit}-digits-s0"
        assert (run / "checkpoints" / "epoch_0001.json").is_file(), run
    for name in TABLES:
        assert len(read_csv(demo_dir / "tables" / f"{name}.csv")) > 0, name
    html = (demo_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 7  # Fig 1, Fig 2, five per-layer figures
    assert '<table id="summary">' in html and "Wilcoxon" in html
    meta = json.loads((demo_dir / "demo.json").read_text())
    assert meta["config"]["epochs"] == 1 and meta["seconds"]["total"] > 0


def test_unit_table_covers_every_layer_unit_and_epoch(demo_dir):
    units = read_csv(demo_dir / "tables" / "units.csv")
    # 8 hidden layers of 128 units, the output layer of 10; epochs 0 and 1; two unit types.
    assert len(units) == (8 * 128 + 10) * 2 * 2
    assert units.unique("epoch") == demo.analysed_epochs(SMALL) == [0, 1]
    assert units.unique("unit_type") == ["elu", "relu"]
    assert units.where(layer="fc1").unique("input_from") == ["data"]


def test_terminal_summary_is_the_summary_table(demo_dir):
    summary = read_csv(demo_dir / "tables" / "summary.csv")
    assert (demo_dir / "summary.txt").read_text() == summary_text(summary) + "\n"
    assert summary["unit_type"].tolist() == ["elu", "relu"]


def _args(*argv):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_arguments_and_paper_mode():
    cfg = demo.config_from_args(_args("--epochs", "1", "--seeds", "2", "--units", "elu,ReLU"))
    assert (cfg.epochs, cfg.seeds, cfg.units, cfg.dataset) == (1, 2, ("elu", "relu"), "digits")
    paper = demo.config_from_args(_args("--paper", "--data-dir", "d"))
    assert (paper.dataset, paper.epochs, paper.seeds, paper.data_dir) == ("mnist", 300, 5, "d")
    assert demo.analysed_epochs(paper)[:3] == [0, 25, 50] and demo.analysed_epochs(paper)[-1] == 300
    with pytest.raises(InputError, match="seeds"):
        demo.DemoConfig(seeds=0)


def test_cli_errors_name_the_missing_file(tmp_path, capsys):
    from natgrad.cli import main as cli_main

    code = cli_main(["demo", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"),
                     "--seeds", "1", "--epochs", "1", "--out", str(tmp_path / "out"),
                     "--no-progress"])  # fmt: skip
    assert code == 2
    assert str(tmp_path / "none") in capsys.readouterr().err
