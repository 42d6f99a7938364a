"""The main job end to end in its smallest mode: runs, tables, report, terminal summary."""

from __future__ import annotations

import argparse
import json

import pytest
from _demo_small import SMALL, small_demo

from natgrad.analysis.report import summary_text
from natgrad.analysis.summary import read_tables
from natgrad.errors import InputError
from natgrad.studies import demo

TABLES = ("units", "sweep", "curves", "activations", "seeds", "seed_epochs", "sweep_seeds",
          "summary", "comparison")  # fmt: skip


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    return small_demo(tmp_path_factory)


def test_demo_writes_runs_tables_and_report(demo_dir):
    for key in SMALL.units:
        unit, bn = (key[:-3], "-bn") if key.endswith("-bn") else (key, "")
        for seed in range(SMALL.seeds):
            run = demo_dir / "runs" / f"mnist-fc-{unit}{bn}-digits-s{seed}"
            assert (run / "checkpoints" / "epoch_0001.json").is_file(), run
    tables = read_tables(demo_dir / "tables")
    for name in set(TABLES) - {"probe_sizes", "sizes"}:  # no probe-size sweep on the digits
        assert len(tables[name]) > 0, name
    html = (demo_dir / "report.html").read_text()
    # the answer, headline, sweep, n_eff, Fig 2, Fig 1 and three per-layer figures
    assert html.count("data:image/png;base64,") == 9
    assert '<table id="summary">' in html and "The question" in html
    assert "Wilcoxon" not in html  # no test over units or layers
    meta = json.loads((demo_dir / "demo.json").read_text())
    assert meta["config"]["epochs"] == 1 and meta["seconds"]["total"] > 0


def test_unit_table_covers_every_layer_unit_and_epoch(demo_dir):
    units = read_tables(demo_dir / "tables")["units"]
    # 8 hidden layers of 128 units, the output layer of 10; epochs 0 and 1; 3 types × 2 seeds.
    assert len(units) == (8 * 128 + 10) * 2 * 3 * 2
    assert sorted(units["epoch"].unique()) == demo.analysed_epochs(SMALL) == [0, 1]
    assert sorted(units["unit_type"].unique()) == ["elu", "relu", "relu-bn"]
    assert set(units[units["layer"] == "fc1"]["input_from"]) == {"data"}
    sweep = read_tables(demo_dir / "tables")["sweep"]
    assert sorted(sweep["rel_damping"].unique()) == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert set(sweep["epoch"]) == {1}


def test_smoke_report_makes_no_rho_comparison(demo_dir):
    """The digits' blocks are not estimable (n_eff/(d+1) < 2): the first screen says so and
    gives no ρ verdict; the declared primary endpoint is the learning speed alone."""
    html = (demo_dir / "report.html").read_text()
    first = html[: html.index("How the numbers were made")]
    assert "not estimable on this probe" in first
    assert "closer to the unit natural gradient" not in first.split("</figure>")[-1]
    eps = read_tables(demo_dir / "tables")["endpoints"]
    assert eps[eps["role"] == "primary"]["metric"].tolist() == ["log_train_loss_auc"]


def test_terminal_summary_is_the_summary_table(demo_dir):
    summary = read_tables(demo_dir / "tables")["summary"]
    assert (demo_dir / "summary.txt").read_text() == summary_text(summary) + "\n"
    assert summary["unit_type"].tolist() == ["elu", "relu", "relu-bn"]


def _args(*argv):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_arguments_and_paper_mode():
    cfg = demo.config_from_args(_args("--epochs", "1", "--seeds", "2", "--units", "elu,ReLU"))
    assert (cfg.epochs, cfg.seeds, cfg.units, cfg.dataset) == (1, 2, ("elu", "relu"), "mnist")
    # MNIST, the paper's data, is the default: estimable blocks at epoch 1 on the validation split
    d = demo.config_from_args(_args())
    assert (d.dataset, d.units, d.analyse_epochs, d.grad, d.jackknife) == (
        "mnist",
        ("elu", "relu", "lrelu", "srelu"),
        (1,),
        "train",
        True,
    )
    smoke = demo.config_from_args(_args("--dataset", "digits"))
    assert (smoke.epochs, smoke.analyse_epochs, smoke.jackknife, smoke.probe_sizes) == (
        20,
        None,
        False,
        (),
    )
    assert [e.metric for e in demo.primary_endpoints(smoke) if e.role == "primary"] == [
        "log_train_loss_auc"
    ]
    assert [e.metric for e in demo.primary_endpoints(d) if e.role == "primary"] == [
        "rho_plain_jk",
        "log_train_loss_auc",
    ]
    assert demo.DemoConfig().seeds >= 8  # seeds are the replicates: enough to resolve effects
    with pytest.raises(InputError, match="unknown unit type"):
        demo.DemoConfig(units=("elu", "tanh"))
    paper = demo.config_from_args(_args("--paper", "--data-dir", "d"))
    from pathlib import Path

    # a --data-dir is recorded absolute: the run is resumed and analysed from anywhere (a
    # relative one failed from another working directory, a helper's find)
    assert (paper.dataset, paper.epochs, paper.seeds, paper.data_dir) == (
        "mnist", 300, 5, str(Path("d").absolute()))  # fmt: skip
    assert demo.analysed_epochs(paper)[:3] == [0, 25, 50] and demo.analysed_epochs(paper)[-1] == 300
    with pytest.raises(InputError, match="seeds"):
        demo.DemoConfig(seeds=0)
    # checked before any training (they were checked after it, or fell back to the digits'
    # defaults, and made 56 run folders first: a helper's find)
    with pytest.raises(InputError, match=r"--dataset 'bogus'.*mnist, digits, fashion-mnist"):
        demo.for_dataset("bogus")
    with pytest.raises(InputError, match=r"rel_damping must be a finite number >= 0, got -1"):
        demo.DemoConfig(rel_damping=-1.0)


def test_compare_refuses_an_output_that_is_a_file_before_training(tmp_path, capsys):
    from natgrad.cli import main as cli_main

    afile = tmp_path / "afile"
    afile.write_text("x")
    code = cli_main(["compare", "--dataset", "digits", "--seeds", "1", "--epochs", "1",
                     "--quiet", "--out", str(afile), "--runs", str(tmp_path / "runs")])  # fmt: skip
    assert code == 2 and "is a file" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_cli_errors_name_the_missing_file(tmp_path, capsys):
    from natgrad.cli import main as cli_main

    code = cli_main(["demo", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"),
                     "--seeds", "1", "--epochs", "1", "--out", str(tmp_path / "out"),
                     "--no-progress"])  # fmt: skip
    assert code == 2
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_unit_type_keys_choose_the_normalisation():
    """``-bn`` and ``-ln`` unit type keys (natgrad.units.split_unit_type) become batch-norm and
    layer-norm runs; an unknown base unit is named."""
    from dataclasses import replace

    config = replace(demo.for_dataset("digits"), units=("elu", "relu-bn", "gelu-ln"), seeds=1)
    cfgs = {c.unit + ("-bn" if c.batch_norm else "") + ("-ln" if c.layer_norm else ""): c
            for c in demo.train_configs(config)}  # fmt: skip
    assert set(cfgs) == {"elu", "relu-bn", "gelu-ln"}
    with pytest.raises(InputError, match="unknown unit type 'foo-ln'"):
        replace(config, units=("elu", "foo-ln"))
