"""``natgrad.analysis.study.Study``: a study as data — its plan, the one runner, the one
reader of the curves, its declared endpoints; and the studies of ``analysis/`` declared with
it build their runs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from natgrad.analysis import stats
from natgrad.analysis.endpoints import Endpoint
from natgrad.analysis.study import Study
from natgrad.errors import InputError
from natgrad.training import default_config

ROOT = Path(__file__).resolve().parents[1]


def _study(**kw):
    def config(arm, seed):
        return default_config("mnist-fc", dataset="digits", unit=arm, seed=seed, epochs=2,
                              train_size=128, probe_size=16, checkpoint_every=1)  # fmt: skip

    settings = dict(name="t", arms=("elu", "relu"), seeds=(0, 1), config=config)
    settings.update(kw)
    return Study(**settings)


def test_train_curves_and_endpoints(tmp_path):
    s = _study(endpoints=(Endpoint("auc", "elu", "relu", "primary"),))
    assert s.train(tmp_path) == {}
    assert [r.path.name for r in s.finished(tmp_path)] == ["elu-s0", "relu-s0", "elu-s1", "relu-s1"]
    curves = s.curves(tmp_path)
    assert len(curves) == 2 * 2 * 3 and not curves["train_loss"].isna().any()
    assert (
        curves.groupby(["arm", "seed"])["seconds"].apply(lambda c: c.is_monotonic_increasing)
    ).all()
    values = curves[curves.epoch >= 1].groupby(["arm", "seed"], as_index=False)["train_loss"].mean()
    table = s.evaluate(values.rename(columns={"train_loss": "auc"}))
    assert table["reference"].tolist() == ["elu"] and table["n"].tolist() == [2]


def test_unfinished_runs_read_as_nan(tmp_path):
    s = _study(seeds=(0,))
    curves = s.curves(tmp_path)  # nothing trained yet
    assert len(curves) == 2 * 3 and curves["train_loss"].isna().all()
    assert s.finished(tmp_path) == []


def test_seeds_given_as_a_count_are_the_first_ones_and_none_is_refused():
    assert _study(seeds=3).seeds == (0, 1, 2) == _study(seeds=range(3)).seeds
    with pytest.raises(InputError, match="at least one arm and one seed"):
        _study(seeds=0)


@pytest.mark.parametrize("bad", ["a:b", "5:", "0", "-1:3", "2:0"])
def test_a_bad_seed_range_is_refused_at_parse_time(bad):
    import argparse

    from natgrad.argtypes import seed_range

    with pytest.raises(argparse.ArgumentTypeError, match="is not an integer"):
        seed_range(bad)


def test_the_demo_is_a_declaration():
    from natgrad.studies.demo import declaration, for_dataset, primary_endpoints

    config = for_dataset("mnist", seeds=2)
    demo = declaration(config)
    assert demo.arms == config.units and demo.seeds == (0, 1)
    assert list(demo.endpoints) == primary_endpoints(config)
    assert demo.plan("runs")[0].path.name == "mnist-fc-elu-mnist-s0"


def test_bad_declarations():
    with pytest.raises(InputError, match="arms repeat"):
        _study(arms=("elu", "elu"))
    with pytest.raises(InputError, match="at least one arm and one seed"):
        _study(seeds=())
    with pytest.raises(InputError, match="declares no endpoints"):
        _study().evaluate(pd.DataFrame())


@pytest.mark.parametrize("name, build", [
    ("bn_cnn", lambda m: m.study(range(2))),
    ("fig3", lambda m: m.study(0.01, 25, seeds=range(5))),
    ("direction_audit", lambda m: m.study(5)),
    ("fig2", lambda m: m.study(300, None, "mnist")),
    ("mechanism_dashboard", lambda m: m.study(5)),
    ("mechanism_dashboard", lambda m: m.study(m.CONFIRM_SEEDS, m.CONFIRM_UNITS)),
    ("mechanism_dashboard",
     lambda m: m.study(m.CONFIRMATIONS["estimable"].seeds, m.CONFIRM_UNITS)),
    ("mechanism_dashboard",
     lambda m: m.study(m.CONFIRMATIONS["none"].seeds, m.CONFIRM_UNITS, ("none",))),
    ("direction_audit", lambda m: m.study(m.CONFIRM_SEEDS)),
    ("fair_compare", lambda m: m.study()),
    ("mechanism_speed", lambda m: m.study()),
])  # fmt: skip
def test_the_studies_are_declarations_in_natgrad_studies(name, build):
    """Every study's declaration lives in natgrad.studies and plans distinct runs whose configs
    carry the declared seed and a rate."""
    import importlib

    runs = build(importlib.import_module(f"natgrad.studies.{name}")).plan("runs")
    assert runs and len({r.path for r in runs}) == len(runs)
    assert all(r.config.seed == r.seed and not math.isnan(r.config.lr) for r in runs)


def test_record_tables_writes_checked_csvs_and_the_command(tmp_path):
    """A study script's result folder: every table as a CSV with its checksum (read back
    equal), and run.json with the command, the commit and the given metadata."""
    import json

    import pandas as pd

    from natgrad.analysis.csvtables import read_csv
    from natgrad.analysis.record import record_tables

    frame = pd.DataFrame({"arm": ["elu", "relu"], "rho": [0.5, 0.25]})
    out = record_tables(tmp_path / "rec", {"summary": frame}, argv=["--seeds", "2"],
                        script="analysis/x.py", seeds=2)  # fmt: skip
    assert read_csv(out / "summary.csv").equals(frame)
    assert (out / "summary.csv.sha256").is_file()
    meta = json.loads((out / "run.json").read_text())
    assert meta["command"] == "python analysis/x.py --seeds 2" and meta["seeds"] == 2
    assert "commit" in meta


def test_mechanism_dashboard_measures_one_checkpoint(tmp_path, monkeypatch):
    """The dashboard's measure of one (run, epoch) on a small layer-norm net of the digits:
    every declared column, finite, in range; arms are unit × normalisation."""
    import dataclasses

    monkeypatch.syspath_prepend(str(ROOT / "analysis"))
    import mechanism_dashboard as md

    try:
        assert len(md.arms()) == 16 and md.split_arm("gelu-ln") == ("gelu", "ln")
        assert md.split_arm("relu") == ("relu", "none")
        from natgrad.training import train

        cfg = dataclasses.replace(md.config("elu-ln", 0), dataset="digits", epochs=1, width=8)
        run = train(cfg, tmp_path / "elu-ln-s0", device="cpu", progress=False).run_dir
        row = md.measure((run, "elu-ln", 0, 1, 200, 16))
    finally:
        sys.modules.pop("mechanism_dashboard", None)
    assert set(md.METRICS) <= set(row) and row["norm"] == "ln" and row["unit"] == "elu"
    assert all(math.isfinite(row[k]) for k in md.METRICS if k != "abs_k")
    assert 0.0 <= row["offblock_share"] <= 1.0 and -1.0 <= row["rho_plain_jk"] <= 1.5
    assert row["top_eig"] > 0 and 0.0 <= row["estimable"] <= 1.0
    # the median over estimable units only (the second confirmation's primary), or none
    assert math.isnan(row["rho_plain_jk_est"]) == (row["estimable"] == 0)


def _script(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "analysis"))
    module = __import__(name)
    sys.modules.pop(name, None)
    return module


def test_bn_cnn_selects_on_validation_error_and_writes_its_text_from_the_cis(monkeypatch):
    """The batch-norm study's declared selection (lowest validation error; ties by validation
    loss, then the earlier epoch) and its reading, generated from the CIs: a per-seed table
    where ELU is lower than every other unit and batch norm helps only ReLU must read so; the
    same table with ELU shifted up must say the opposite."""
    import numpy as np

    m = _script("bn_cnn", monkeypatch)
    rows = [dict(epoch=1, val_error=0.02, val_loss=0.10), dict(epoch=2, val_error=0.018,
            val_loss=0.12), dict(epoch=3, val_error=0.018, val_loss=0.11)]  # fmt: skip
    assert min(rows, key=m._selection_key)["epoch"] == 3
    rng = np.random.default_rng(0)
    base = {"elu": 0.015, "relu": 0.020, "lrelu": 0.019, "srelu": 0.018, "relu-bn": 0.016,
            "elu-bn": 0.015}  # fmt: skip
    values = pd.DataFrame([dict(unit_type=a, seed=s, seconds_per_iteration=0.05 * (1.1 if a ==
                                "elu" else 1.0) + 1e-4 * rng.random(),
                                test_error_at_best_val=b + 5e-4 * rng.standard_normal(),
                                train_loss_last=10 * b, best_val_epoch=6)
                           for s in range(10) for a, b in base.items()])  # fmt: skip
    table = m.primaries(values)
    for role, n in (("primary", 4), ("secondary", 3)):  # Holm within each role's family
        sub = table[table["role"] == role]
        assert len(sub) == n and (sub["p_holm"] == stats.holm(sub["p"].to_numpy())).all()
    ratio = m.time_ratio(values)
    assert 1.05 < ratio["ratio"] < 1.15 and ratio["lo"] <= ratio["ratio"] <= ratio["hi"]
    meta = dict(command="c", run_commit="r", commit="k", runs=60, train_seconds=1.0)
    text = m.readme(values, table, ratio, meta)
    assert "ELU is lower than each of the three" in text
    assert "batch norm helps ReLU more than ELU" in text and "BN helps ReLU" in text
    worse = values.assign(test_error_at_best_val=lambda d: d["test_error_at_best_val"]
                          + 0.01 * (d["unit_type"] == "elu"))  # fmt: skip
    text = m.readme(worse, m.primaries(worse), ratio, meta)
    assert "not shown to be the lowest" in text and "ELU higher" in text


def test_fig3_pieces_analysis_record_and_restore(tmp_path, monkeypatch):
    """The Fig 3 study end to end at smoke scale on MNIST: two pieces (one seed each) train
    as grids, the unit analysis (Bernoulli Fisher) runs on their last checkpoints, --record
    writes the tables, figure and a text with the primary endpoint, and --restore brings the
    records back so that nothing is trained again."""
    from natgrad.analysis.csvtables import read_csv

    m = _script("fig3_autoencoder", monkeypatch)
    monkeypatch.setattr(m, "PROBE", 24)
    monkeypatch.setattr(m, "GRAD_IMAGES", 48)
    runs, out = tmp_path / "runs", tmp_path / "out"
    common = ["--lr", "0.01", "--epochs", "1", "--train-size", "128", "--runs", str(runs)]
    for piece in ("0:1", "1:1"):
        assert m.main([*common, "--seeds", piece]) == 0
    assert m.main(["--runs", str(runs), "--analyse", "--record", str(out)]) == 0
    units = read_csv(out / "units.csv")
    assert len(units) == 2 * 3 * len(m.ANALYSED) and units["rho_plain_jk"].between(-1, 1).all()
    table = read_csv(out / "comparisons.csv")
    assert set(table.loc[table["role"] == "primary", "metric"]) == {"log_train_loss_auc"}
    text = (out / "README.md").read_text()
    assert "log10 training-loss AUC over epochs 1..1 (primary)" in text and "Side by side" in text
    assert "dead share of the analysed units: lr 0.01 ELU" in text and "Reading: " in text
    assert (out / "fig3.png").stat().st_size > 10_000
    assert len(list((out / "runs" / "lr0.01").glob("*/analysis/fig3-units.csv"))) == 6
    # the estimable-only re-analysis: per layer, medians over the estimable units of the
    # run's cached per-unit table (a second route: straight from that table)
    est = read_csv(out / "units_estimable.csv")
    assert len(est) == 2 * 3 * len(m.ANALYSED) and (est["estimable_units"] <= est["live"]).all()
    assert len(list((out / "runs" / "lr0.01").glob("*/analysis/fig3-units-estimable.csv"))) == 6
    rows = read_csv(runs / "lr0.01" / "elu-s0" / "analysis" / m.UNIT_ROWS)
    ok = rows[(rows["dead"] == 0) & (rows["estimable"] == 1)]
    mine = est[(est["unit_type"] == "elu") & (est["seed"] == 0)].set_index("layer")
    for layer in m.ANALYSED:
        want = ok.loc[ok["layer"] == layer, "rho_plain_jk"].median()
        assert mine.loc[layer, "estimable_units"] == (ok["layer"] == layer).sum()
        assert mine.loc[layer, "rho_plain_jk"] == pytest.approx(want, nan_ok=True)
    assert (
        "## ρ over estimable units only (secondary; declared after the tables above)" in text
        and "Estimable share" in text
    )
    # at smoke scale (24 probe images: n_eff <= 24 < 2(d+1) = 62 for the narrowest layer) no
    # block is estimable, so every estimable-only median is NaN and drops out; the medians
    # themselves are checked on a hand-built table in the test below
    assert (est["estimable_units"] == 0).all() and est["rho_plain_jk"].isna().all()
    fresh = tmp_path / "fresh"
    assert m.main(["--runs", str(fresh), "--restore", str(out), *common[:6], "--seeds", "0:2"]) == 0
    assert not list(fresh.glob("lr0.01/*/checkpoints"))  # read, not trained again


def test_fig3_estimable_medians_are_over_estimable_units_only(monkeypatch):
    """The estimable-only re-analysis's per-layer values are medians over the live units whose
    blocks are estimable (none: NaN), while the declared analysis's ρ stays over live units."""
    import numpy as np

    m = _script("fig3_autoencoder", monkeypatch)
    units = pd.DataFrame(dict(
        layer=["a"] * 4 + ["b"] * 2, dead=[0, 0, 0, 1, 0, 0], estimable=[1, 0, 1, 0, 0, 0],
        rho_plain_jk=[0.1, 0.9, 0.3, 0.5, 0.2, 0.4], rho_plain=0.0, k=-1.0, mean_q_norm=2.0,
        shift_error_plain=[1.0, 5.0, 3.0, 7.0, 1.0, 1.0], n_eff=100.0, fan_in=9,
        unit_type="elu", seed=0, epoch=25, probe=1000, rel_damping=1e-3, seconds=1.0,
    ))  # fmt: skip
    est = pd.DataFrame(m._layer_rows(units, estimable_only=True)).set_index("layer")
    live = pd.DataFrame(m._layer_rows(units, estimable_only=False)).set_index("layer")
    assert est.loc["a", ["estimable_units", "rho_plain_jk", "shift_error_plain"]].tolist() == [
        2, pytest.approx(0.2), pytest.approx(2.0)]  # fmt: skip
    assert np.isnan(est.loc["b", "rho_plain_jk"]) and est.loc["b", "estimable_units"] == 0
    assert live.loc["a", "rho_plain_jk"] == pytest.approx(0.3)  # over the 3 live units
    assert live.loc["a", "estimable"] == pytest.approx(2 / 3) and live.loc["a", "abs_k"] == 1.0


def test_the_committed_batch_norm_study_rebuilds_to_its_numbers(tmp_path, monkeypatch):
    """``paper_figures/results/bn_cnn_mnist`` (issue 23: 60 runs) rebuilt from its committed
    run records gives its declared comparisons and per-run table again, to the last digit."""
    m = _script("bn_cnn", monkeypatch)
    src = ROOT / "paper_figures/results/bn_cnn_mnist"
    with stats.mean_ci_method(stats.recorded_mean_ci(src)):  # the record's own CIs
        assert m.run(["report", "--runs", str(src / "runs"), "--record", str(tmp_path / "r")]) == 0
    for name in ("primary", "runs"):
        old, new = pd.read_csv(src / f"{name}.csv"), pd.read_csv(tmp_path / "r" / f"{name}.csv")
        pd.testing.assert_frame_equal(new[old.columns], old, check_exact=False, rtol=1e-12)
    _same_provenance(src / "run.json", tmp_path / "r" / "run.json")


def _same_provenance(old, new):
    """The record's runs, their commits and their summed training time rebuild from the run
    records (:func:`natgrad.analysis.record.run_provenance`)."""
    import json

    old, new = json.loads(old.read_text()), json.loads(new.read_text())
    assert (new["runs"], new["run_commit"]) == (old["runs"], old["run_commit"])
    assert new["train_seconds"] == pytest.approx(old["train_seconds"], rel=1e-12)


def test_fig3_text_is_written_from_the_cis_whichever_way_they_point(monkeypatch):
    """The Fig 3 study's reading: curves where ELU's reconstruction error is lower at every
    epoch read "ELU learns faster" / "ELU lower" on the primary endpoint and the last epoch;
    the same curves with ELU's error raised read the opposite; the unit analysis's ρ rows are
    worded from their CIs too."""
    import numpy as np

    m = _script("fig3_autoencoder", monkeypatch)
    rng = np.random.default_rng(0)

    def curves(elu_factor, rates=(0.01, 0.001), epochs=25):
        rows = []
        for lr in rates:
            for seed in range(5):
                for unit, f in (("elu", elu_factor), ("relu", 1.0), ("lrelu", 0.98)):
                    for e in range(epochs + 1):
                        loss = f * (0.1 + 0.5 / (1 + e)) * (1 + 0.01 * rng.random())
                        rows.append(dict(lr=lr, unit_type=unit, seed=seed, epoch=e,
                                         run=f"{unit}-s{seed}", train_loss=loss,
                                         val_loss=1.02 * loss, test_loss=1.03 * loss))  # fmt: skip
        return pd.DataFrame(rows)

    units = pd.DataFrame([dict(lr=lr, layer="decoder.fc1", unit_type=u, seed=s,
                               rho_plain_jk=(0.6 if u == "elu" else 0.4) + 0.01 * rng.random(),
                               shift_error_plain=0.5, abs_k=0.1, mean_q_norm=1.0, estimable=1.0)
                          for lr in (0.01, 0.001) for s in range(5)
                          for u in ("elu", "relu", "lrelu")])  # fmt: skip
    meta = dict(runs=30, command="test", commit="c", run_commit="r", train_seconds=1.0,
                analysis_seconds=1.0, diverged=[], analysed=30)  # fmt: skip
    for factor, speed, level in ((0.9, "ELU learns faster", "ELU lower"),
                                 (1.1, "ELU learns slower", "ELU higher")):  # fmt: skip
        c = curves(factor)
        table = m.comparisons(c, 25)
        text = m.readme(table, m.unit_comparisons(units), c, meta)
        primary = table[table["role"] == "primary"]
        assert len(primary) == 4 and primary["p_holm"].notna().all()
        assert text.count(speed) == 4 and text.count(f": {level}.") == 4
        assert "Interim" not in text
        crossing = ("ELU's mean validation error falls below ReLU's first at epoch 1"
                    if factor < 1 else "falls below ReLU's at no epoch up to 25")  # fmt: skip
        assert text.count(crossing) == 2  # one line per rate
        assert (
            text.count(
                "From epoch 0 to 25 the validation error fell by (mean over seeds [95 % CI]): ELU"
            )
            == 2
        )
        assert "closer to the unit natural gradient under ELU" in text
        assert "closer to the unit natural gradient under ELU in 4, farther from it in 0" in text
        assert ("nearer the unit natural gradient in most comparisons; its incoming means are "
                "neither smaller nor larger in most (counts of CIs, not tests).") in text  # fmt: skip
        # the estimable-only re-analysis: ELU's ρ lower there, so every reading flips
        est_units = units.assign(rho_plain_jk=lambda d: 1 - d["rho_plain_jk"], live=250,
                                 estimable_units=200)  # fmt: skip
        est = m.evaluate(est_units, list(m.ESTIMABLE_ENDPOINTS), by=["lr", "layer"])
        text = m.readme(table, m.unit_comparisons(units), c, meta, est, est_units)
        assert "## ρ over estimable units only (secondary; declared after the tables above)" in text
        assert "the next section checks them over estimable units only." in text
        assert "decoder.fc1 ELU (α=1) 80 %, ReLU 80 %, LReLU (α=0.1) 80 %." in text
        assert (
            "Reading: over live units ρ(plain) is closer to the unit natural gradient under "
            "ELU in most comparisons (ELU closer in 4, farther in 0, not resolved in 0 of 4); "
            "over estimable units it is farther from the unit natural gradient under ELU in "
            "most comparisons (ELU closer in 0, farther in 4, not resolved in 0 of 4): so the "
            "live-unit reading rests on units"
        ) in text
        assert (
            "farther from it in 4, not resolved in 0 of 4 (over live units: 4, 0, 0); the "
            "reading differs in 4: lr 0.01 decoder.fc1 vs ReLU"
        ) in text
        same = m.readme(table, m.unit_comparisons(units), c, meta,
                        m.evaluate(units, list(m.ESTIMABLE_ENDPOINTS), by=["lr", "layer"]),
                        units.assign(live=250, estimable_units=250))  # fmt: skip
        assert (
            "ELU in most comparisons (ELU closer in 4, farther in 0, not resolved in 0 of 4): "
            "the same reading." in same
        )
        assert "t intervals instead of the declared BCa" not in same  # no changes given
    # the amendment's section: the unit table under BCa against the same under t, one
    # reading moved by hand (ELU higher under BCa, not resolved under t)
    unit_t = m.unit_comparisons(units)
    with stats.mean_ci_method("bootstrap"):
        unit_bca = m.unit_comparisons(units)
    rho = unit_t.index[unit_t["metric"] == "rho_plain_jk"]  # ELU's ρ higher: resolved
    assert set(unit_bca.loc[rho, "ci_method"]) == {"BCa"}
    assert set(unit_t.loc[rho, "ci_method"]) == {"t"}
    moved = unit_t.assign(lo=np.where(unit_t.index == rho[0], -1.0, unit_t["lo"]))
    keys = ["lr", "layer", "metric", "other"]
    changes = {"unit analysis": stats.ci_changes(unit_bca, moved, keys)}
    text = m.readme(table, moved, c, meta, changes=changes)
    r = moved.loc[rho[0]]
    assert "## t intervals instead of the declared BCa (an amendment)" in text
    n = int((stats.ci_sign(unit_bca["lo"], unit_bca["hi"]) != 0).sum())
    assert f"- unit analysis: {n} of {len(moved)} under BCa, {n - 1} under t." in text
    assert "Readings that changed (1):" in text
    assert (
        f"- unit analysis, lr {r['lr']:g} {r['layer']} {r['metric']} vs "
        f"{'ReLU' if r['other'] == 'relu' else 'LReLU (α=0.1)'}: ELU "
    ) in text
    # the declared extension (1e-5 to 50 epochs): no primary, one family, said so
    c = curves(0.9, rates=(1e-5,), epochs=50)
    table = m.comparisons(c, 50)
    assert set(table["role"]) == {"secondary"} and set(table["family"]) == {"extension"}
    assert {"train_loss_e50", "val_loss_e50"} <= set(table["metric"])
    text = m.readme(table, None, c, meta)
    assert text.startswith("# Fig 3, the autoencoder, on MNIST: lr 1e-05 extended to 50 epochs")
    assert (
        "the 15 runs of that rate (seeds 0–4) were copied with their epoch-25 checkpoints" in text
    )
    assert text.count("over epochs 1..50 (secondary, family extension)") == 2
    assert f"Holm over the {len(table)} comparisons of the family" in text


def test_fig3_seed_extension_reads_its_primary_family_from_holm_p_and_ci_together(monkeypatch):
    """Seeds 0–9 (the declared seed extension): the record says so, its Holm p can reach 0.05,
    so a direction is read only where the declared test and the CI agree; a CI that excludes
    0 with Holm p ≥ 0.05 is said to be unresolved by the test. No BCa amendment section."""
    import numpy as np

    m = _script("fig3_autoencoder", monkeypatch)
    rng = np.random.default_rng(1)
    rows = []
    for lr in m.RATES:
        for seed in range(10):
            for unit, f in (("elu", 0.9), ("relu", 1.0), ("lrelu", 0.98)):
                # at 1e-5 ELU is ahead of ReLU on 8 of 10 seeds, by a little: the CI
                # (unadjusted) excludes 0, but Holm over the family's 8 does not reach 0.05
                f = SLOW[seed] if (lr == 1e-5 and unit == "elu") else f
                for e in range(26):
                    loss = f * (0.1 + 0.5 / (1 + e)) * (1 + 0.001 * rng.random())
                    rows.append(dict(lr=lr, unit_type=unit, seed=seed, epoch=e,
                                     run=f"{unit}-s{seed}", train_loss=loss,
                                     val_loss=1.02 * loss, test_loss=1.03 * loss))  # fmt: skip
    c = pd.DataFrame(rows)
    table = m.comparisons(c, 25)
    meta = dict(runs=120, command="test", commit="c", run_commit="r", train_seconds=1.0,
                analysis_seconds=1.0, diverged=[], analysed=120)  # fmt: skip
    changes = {"reconstruction": stats.ci_changes(table, table, ["lr", "metric", "other"])}
    text = m.readme(table, None, c, meta, changes=changes)
    assert text.startswith("# Fig 3, the autoencoder, on MNIST: 10 seeds (the seed extension)")
    assert "**Seed extension" in text and "seeds 0–9 with shared initial weights" in text
    assert "Interim" not in text and "t intervals instead of the declared BCa" not in text
    assert "the declared test can resolve each of them" in text
    primary = table[table["role"] == "primary"].set_index(["lr", "other"])
    for (lr, other), r in primary.iterrows():
        line = next(x for x in text.splitlines()
                    if x.startswith(f"- lr {lr:g}, log10 training-loss AUC") and
                    ("LReLU" in x) == (other == "lrelu"))  # fmt: skip
        if r["p_holm"] < 0.05 and r["hi"] < 0:
            assert line.endswith(": ELU learns faster.")
        elif r["hi"] < 0:
            assert line.endswith("the declared test does not resolve it (Holm p ≥ 0.05).")
    slow = primary.loc[1e-5]
    # ELU − ReLU at 1e-5: the CI excludes 0 (raw p 0.033) but Holm p 0.066 (the other line kind)
    assert slow.loc["relu", "hi"] < 0 and slow.loc["relu", "p_holm"] >= 0.05
    assert (primary.drop(index=1e-5)["p_holm"] < 0.05).all()
    # the 1e-4 extension (seeds 0-9 to 50 epochs): an extension record, not the seed extension's
    c = pd.DataFrame([dict(r, epoch=r["epoch"] + 25 * k) for r in rows if r["lr"] == 1e-4
                      for k in (0, 1) if k == 0 or r["epoch"] >= 1])  # fmt: skip
    table = m.comparisons(c, 50)
    assert set(table["family"]) == {"extension"} and table["n"].eq(10).all()
    text = m.readme(table, None, c, dict(meta, runs=30, analysed=0))
    assert text.startswith("# Fig 3, the autoencoder, on MNIST: lr 0.0001 extended to 50 epochs")
    assert "the 30 runs of that rate (seeds 0–9) were copied" in text
    assert "`fig3_autoencoder_mnist_10seeds`" in text and "**Seed extension" not in text
    assert "Interim" not in text and "the declared test can resolve each of them" in text
    assert text.count("over epochs 1..50 (secondary, family extension)") == 2
    assert text.count(": lower under ELU over epochs 1..50.") == 2 and "learns" not in text
    assert "this record is not a second try at it" in text and "lr 0.0001 only)" in text
    assert "reported once all 30 runs are analysed; 0 are so far" in text
    assert "t intervals instead of the declared BCa" not in m.readme(
        table, None, c, dict(meta, runs=30, analysed=30), changes=changes
    )
    half = c[c["seed"] < 5]  # an interim look: the declared seeds, not those finished, count
    text = m.readme(m.comparisons(half, 50), None, half, dict(meta, runs=15, analysed=15))
    assert "**Interim: 15 of the 30 declared runs" in text
    assert "the 30 runs of that rate (seeds 0–9)" in text
    assert "is this reconstruction loss on that split, not a classification error" in text


def test_fig3_reads_a_lean_in_rho_only_from_a_majority_of_its_comparisons(monkeypatch):
    """The estimable-only reading calls ELU's ρ closer (or farther) only where it is so in
    most of the comparisons: 9 closer and 8 farther of 24 is no direction, over either set of
    units, and a live-unit majority that the estimable units lose is not a finding."""
    m = _script("fig3_autoencoder", monkeypatch)
    assert m._lean(9, 8, 24).startswith("in neither direction in most comparisons (ELU closer")
    assert m._lean(13, 2, 24).startswith("closer to the unit natural gradient under ELU in most")
    assert m._lean(1, 13, 24).startswith("farther from the unit natural gradient under ELU in")
    assert m._lean(12, 0, 24).startswith("in neither")  # half is not most
    assert m._lean_ending(12, 5, 9, 8, 24).startswith("neither set of units")
    assert m._lean_ending(14, 5, 7, 7, 24).startswith("so the live-unit reading rests on")
    assert m._lean_ending(14, 5, 13, 7, 24) == "the same reading."
    assert m._lean_ending(5, 5, 14, 7, 24) == "the readings differ; neither is a finding."
    assert m._lean_ending(2, 14, 3, 13, 24) == "the same reading."
    assert m._lean_ending(2, 14, 3, 3, 24).startswith("so the live-unit reading rests on")
    # the live-unit reading: each direction of ρ and of the incoming means in its own words
    r = {(a, b): m._unit_reading(a, b) for a in (1, 0, -1) for b in (1, 0, -1)}
    assert "advantage in ρ does not come through the paper's mechanism" in r[1, 1]
    assert sum("advantage in ρ" in t for t in r.values()) == 1
    assert all(t.startswith("ELU's plain gradient is farther from the unit natural gradient in "
                            "most") for (a, _), t in r.items() if a == -1)  # fmt: skip
    assert r[0, 1].startswith("ELU's plain gradient is neither nearer")
    assert "larger in most, not smaller" in r[0, 1] and "smaller in most, as" in r[-1, -1]
    assert "neither smaller nor larger in most" in r[1, 0]


SLOW = (0.97, 0.985, 1.01, 0.965, 0.995, 1.01, 0.975, 0.985, 1.0, 0.975)  # ELU at 1e-5, per seed


@pytest.mark.parametrize(
    "folder",
    [
        "fig3_autoencoder_mnist",
        "fig3_autoencoder_mnist_lr1e-5_e50",
        "fig3_autoencoder_mnist_10seeds",
        "fig3_autoencoder_mnist_lr1e-4_e50",
    ],
)
def test_the_committed_fig3_study_rebuilds_to_its_numbers(folder, tmp_path, monkeypatch):
    """``paper_figures/results/fig3_autoencoder_mnist`` (issue 23: 60 runs at four rates and
    their unit analysis), its declared extensions (lr 1e-5 to 50 epochs; the same study at 10
    seeds: 120 runs; and lr 1e-4 of those to 50 epochs), restored from
    their committed records and reported again, give their comparisons and the unit
    analysis's comparisons (over live units, and over estimable units only) to the last
    digit, without training."""
    m = _script("fig3_autoencoder", monkeypatch)
    src = ROOT / "paper_figures/results" / folder
    runs, out = tmp_path / "runs", tmp_path / "out"
    with stats.mean_ci_method(stats.recorded_mean_ci(src)):  # the record's own CIs
        assert m.main(["--runs", str(runs), "--restore", str(src), "--record", str(out)]) == 0
    assert not list(runs.glob("*/*/checkpoints"))
    for name in ("comparisons", "unit_comparisons", "units", "units_estimable",
                 "unit_comparisons_estimable"):  # fmt: skip
        old, new = pd.read_csv(src / f"{name}.csv"), pd.read_csv(out / f"{name}.csv")
        pd.testing.assert_frame_equal(new[old.columns], old, check_exact=False, rtol=1e-12)
    _same_provenance(src / "run.json", out / "run.json")


@pytest.mark.parametrize("name, folder, tables", [
    ("mechanism_dashboard", "mechanism_dashboard_mnist", ("dashboard", "summary", "elu_vs_relu")),
    ("direction_audit", "direction_audit_digits", ("directions", "summary", "primary")),
    ("direction_audit", "direction_audit_digits_confirm", ("directions", "summary", "primary")),
])  # fmt: skip
def test_a_committed_descriptive_study_rebuilds_from_its_measures(name, folder, tables,
                                                                  monkeypatch):  # fmt: skip
    """The mechanism dashboard and the direction audit: their summaries and paired
    comparisons (through the declared endpoints' one path, ``endpoints.evaluate``) rebuild
    from their committed per-run measures exactly."""
    from natgrad.analysis.csvtables import read_csv

    m = _script(name, monkeypatch)
    src = ROOT / "paper_figures/results" / folder
    measures, *rebuilt = tables
    with stats.mean_ci_method(stats.recorded_mean_ci(src)):  # the record's own CIs
        summary, paired = m.summarise(read_csv(src / f"{measures}.csv"))
    for table, new in zip(rebuilt, (summary, paired), strict=True):
        pd.testing.assert_frame_equal(new.reset_index(drop=True), read_csv(src / f"{table}.csv"),
                                      check_exact=True, check_dtype=False, obj=table)  # fmt: skip


def test_the_network_fisher_record_rebuilds_from_its_runs(monkeypatch):
    """The whole-network Fisher study's summary (``stats.ci_summary`` per width × unit type)
    rebuilds from its committed per-run table, with the record's own CIs (its BCa ends to
    the last bits: one upper end differs in the 16th digit)."""
    from natgrad.analysis.csvtables import read_csv

    m = _script("network_fisher_study", monkeypatch)
    src = ROOT / "paper_figures/results/network_fisher_random"
    with stats.mean_ci_method(stats.recorded_mean_ci(src)):
        summary = m.summarise(read_csv(src / "runs.csv"))
    pd.testing.assert_frame_equal(summary, read_csv(src / "summary.csv"), rtol=1e-12,
                                  check_dtype=False)  # fmt: skip


def test_the_direction_audits_confirmatory_readme_is_its_tables_read_by_the_declared_rule(
    tmp_path, monkeypatch
):
    """The confirmatory record's README is what ``confirm_readme`` writes from its committed
    tables, and its verdicts follow the declared rule (Holm p < 0.05 and the CI above 0): with
    one endpoint's Holm p raised past 0.05 it is no longer confirmed, and one with its CI below
    0 reads as the opposite sign."""
    import shutil

    m = _script("direction_audit", monkeypatch)
    src = ROOT / "paper_figures/results/direction_audit_digits_confirm"
    text = m.confirm_readme(src)
    assert text == (src / "README.md").read_text(encoding="utf-8")
    assert "**4 of the 6 confirmed** (confirmed: ELU (α=1) against K-FAC" in text
    assert "not confirmed: SELU against K-FAC, SELU against EKFAC" in text
    from natgrad.analysis.csvtables import write_csv

    for name in ("directions.csv", "directions.csv.sha256", "summary.csv", "summary.csv.sha256",
                 "run.json"):  # fmt: skip
        shutil.copy(src / name, tmp_path / name)
    primary = pd.read_csv(src / "primary.csv")
    primary.loc[0, "p_holm"] = 0.06  # ELU against K-FAC
    primary.loc[3, ["diff", "lo", "hi"]] = [-0.5, -0.6, -0.4]  # ReLU against EKFAC
    write_csv(primary, tmp_path / "primary.csv")
    text = m.confirm_readme(tmp_path)
    assert (
        "**2 of the 6 confirmed** (confirmed: ELU (α=1) against EKFAC, ReLU against K-FAC; " in text
    )
    assert "not confirmed: ELU (α=1) against K-FAC, SELU against K-FAC" in text
    assert "opposite sign: ReLU against EKFAC" in text


@pytest.mark.parametrize("record, key", [("mechanism_dashboard_mnist_confirm", "rho"),
                                         ("mechanism_dashboard_mnist_confirm_estimable",
                                          "estimable"),
                                         ("mechanism_dashboard_mnist_confirm_none", "none")])  # fmt: skip
def test_the_dashboards_confirmatory_records_rebuild(record, key, monkeypatch):
    """Each confirmatory dashboard record holds its declared runs (its new seeds, ELU and ReLU
    under the four normalisations, epoch 3) and nothing else; its summary and paired tables
    rebuild exactly from its per-run measures, with Holm within each declared family alone
    (primary: its declared measures under its normalisations; secondary: the rest); and its
    README is what ``confirm_readme`` writes from them."""
    import json

    import numpy as np

    from natgrad.analysis.csvtables import read_csv

    m = _script("mechanism_dashboard", monkeypatch)
    src = ROOT / "paper_figures/results" / record
    conf = m.CONFIRMATIONS[key]
    assert json.loads((src / "run.json").read_text()).get("confirmation", "rho") == key
    table = read_csv(src / "dashboard.csv")  # the declared runs, and only those
    assert set(table["seed"]) == set(conf.seeds)
    assert set(table["arm"]) == set(m.arms(m.CONFIRM_UNITS, conf.norms))
    assert set(table["epoch"]) == set(m.CONFIRM_CHECKPOINTS)
    assert len(table) == len(conf.seeds) * len(m.arms(m.CONFIRM_UNITS, conf.norms))
    with stats.mean_ci_method(stats.recorded_mean_ci(src)):
        summary, paired = m.summarise(table, confirm=key)
    for name, new in (("summary", summary), ("elu_vs_relu", paired)):
        pd.testing.assert_frame_equal(new.reset_index(drop=True), read_csv(src / f"{name}.csv"),
                                      check_exact=True, check_dtype=False, obj=name)  # fmt: skip
    assert (paired["ci_method"] == "t").all()
    primary = paired["metric"].isin(conf.primaries)
    assert primary.sum() == len(conf.norms) * len(conf.primaries)
    for family in (primary, ~primary):
        np.testing.assert_array_equal(paired["p_holm"][family].to_numpy(),  # each family alone
                                      stats.holm(paired["p"][family].to_numpy()))  # fmt: skip
    assert (src / "README.md").read_text(encoding="utf-8") == m.confirm_readme(src)


def test_the_dashboards_confirmatory_readme_reads_by_the_declared_rule(tmp_path, monkeypatch):
    """The first confirmation's reading follows the declared rule (Holm p < 0.05 and a CI that
    excludes 0), with the estimability caveat naming only the normalisations whose shares
    differ; the second's (over estimable units) states its declared limit instead, and sets
    its primary beside the same run's median over all live units."""
    import shutil

    from natgrad.analysis.csvtables import read_csv, write_csv

    m = _script("mechanism_dashboard", monkeypatch)
    src = ROOT / "paper_figures/results/mechanism_dashboard_mnist_confirm"
    for name in ("dashboard.csv", "dashboard.csv.sha256", "run.json"):
        shutil.copy(src / name, tmp_path / name)
    rows = read_csv(src / "elu_vs_relu.csv")
    primary = rows.index[rows["metric"] == "rho_plain_jk"]
    rows.loc[primary, "p_holm"] = 0.01
    rows.loc[primary, ["diff", "lo", "hi"]] = [0.1, 0.05, 0.15]
    rows.loc[primary[0], "p_holm"] = 0.06  # none: no longer resolved
    rows.loc[primary[1], ["diff", "lo", "hi"]] = [-0.1, -0.15, -0.05]  # centring: ReLU nearer
    rows.loc[primary[3], "lo"] = -0.01  # layer norm: Holm p < 0.05, but the CI holds 0
    write_csv(rows, tmp_path / "elu_vs_relu.csv")
    text = m.confirm_readme(tmp_path)
    assert ("**Reading** (ELU nearer: batch norm; ReLU nearer: centring; not resolved: none, "
            "layer norm)") in text  # fmt: skip
    assert "under none (100% of ELU's units, 81% of ReLU's); centring" in text  # the caveat
    assert "batch norm (100%" not in text  # equal shares are not named
    est = m.confirm_readme(
        ROOT / "paper_figures/results/mechanism_dashboard_mnist_confirm_estimable"
    )
    assert "Limit (declared before the run)" in est and "Caveat" not in est
    assert (
        "| all live units (this run) |" in est and "| none | +0.00707 [-0.0598, +0.0739] |" in est
    )
    # the third (100 seeds, random sign patterns): a p at the patterns' floor is a bound
    none = m.confirm_readme(ROOT / "paper_figures/results/mechanism_dashboard_mnist_confirm_none")
    live = "| ρ(plain) over live units | +0.048 [+0.0377, +0.0582] | 79 of 100 | ≤ 2e-05 | ≤ 4e-05"
    assert live in none
    assert none.index("over estimable units |") < none.index("over live units |")  # declared order


@pytest.mark.parametrize("record", ["main", "standardised"])
def test_the_fair_comparisons_primary_endpoints_rebuild(record, monkeypatch):
    """``compare_mnist/<record>/primary.csv`` (issue 22's declared endpoints) rebuilt from its
    committed curves at its epoch, with the CIs it was written with, to the last digit."""
    m = _script("fair_compare", monkeypatch)
    src = ROOT / "paper_figures/results/compare_mnist" / record
    old = pd.read_csv(src / "primary.csv", dtype={"null": str})
    with stats.mean_ci_method(stats.recorded_mean_ci(src)):
        new = m.primaries(pd.read_csv(src / "curves.csv"), int(old["epoch"].iloc[0]))
    pd.testing.assert_frame_equal(new[old.columns], old, check_exact=False, rtol=1e-12,
                                  check_dtype=False)  # fmt: skip
    if record == "main":  # a seed one arm did not finish is left out of every endpoint, and said
        curves = pd.read_csv(src / "curves.csv")
        short = curves[~((curves["arm"] == "relu-unit-ng") & (curves["seed"] == 3)
                         & (curves["epoch"] > 5))]  # fmt: skip
        kept = curves[curves["seed"] != 3]
        with stats.mean_ci_method(stats.recorded_mean_ci(src)):
            cut, ref = (m.primaries(c, int(old["epoch"].iloc[0])) for c in (short, kept))
        assert (cut["seeds"] == 9).all() and cut["p_holm"].iloc[:3].notna().all()
        pd.testing.assert_frame_equal(cut, ref)


def test_the_fair_comparisons_training_seconds_are_each_runs_last_cumulative_time(monkeypatch):
    """A curve's ``seconds`` is cumulative over its run's epochs (ReLU+SGD seed 0 of the
    committed main run: 1.18 s after epoch 1, 10.53 s after epoch 10), so the training time
    summed over the runs is each run's last value: 14,189 s for the main run's 90 runs, not the
    77,090 s that the sum of every row gave (its run.json, written before the fix)."""
    import json

    m = _script("fair_compare", monkeypatch)
    src = ROOT / "paper_figures/results/compare_mnist/main"
    curves = pd.read_csv(src / "curves.csv")
    one = curves[(curves["arm"] == "relu-sgd") & (curves["seed"] == 0)].sort_values("epoch")
    assert one["seconds"].is_monotonic_increasing
    assert m.training_seconds(curves) == pytest.approx(14188.8, abs=0.1)
    written = json.loads((src / "run.json").read_text())["meta"]["wall_seconds"]
    assert written == pytest.approx(float(curves["seconds"].sum()))  # the old double count


def test_the_speed_study_resumes_the_third_confirmations_runs():
    """The speed study's runs are the third confirmation's, run for run (the same folders,
    seeds and configs), but for the epochs they are resumed to."""
    import dataclasses

    from natgrad.studies import mechanism_dashboard as md
    from natgrad.studies import mechanism_speed as ms

    speed, source = ms.study().plan("r"), md.study(ms.SEEDS, md.CONFIRM_UNITS, ("none",)).plan("r")
    assert [r.path for r in speed] == [r.path for r in source] and len(speed) == 200
    assert all(r.config.epochs == ms.EPOCHS > ms.FROM_EPOCH == s.config.epochs
               and dataclasses.replace(r.config, epochs=s.config.epochs) == s.config
               for r, s in zip(speed, source, strict=True))  # fmt: skip


@pytest.mark.parametrize("record, paper, primaries, rows", [
    ("mechanism_speed_mnist", False, 2, 10), ("mechanism_speed_mnist_8x128", True, 3, 14)])  # fmt: skip
def test_the_speed_records_rebuild_from_their_curves(record, paper, primaries, rows, monkeypatch):
    """Each speed record holds its declared runs (100 seeds of ELU and ReLU to epoch 10); its
    per-run table rebuilds exactly from its curves and its ρ (the third confirmation's
    committed one, or the replication's own ``rho.csv``), its endpoints from that table (the
    replication's with ρ as its first primary), and its README is what ``readme`` writes
    from them."""
    from natgrad.analysis.csvtables import read_csv

    m = _script("mechanism_speed", monkeypatch)
    src = ROOT / "paper_figures/results" / record
    curves = read_csv(src / "curves.csv")
    seeds = m.PAPER_SEEDS if paper else m.SEEDS
    assert set(curves["seed"]) == set(seeds) and curves["epoch"].max() == m.EPOCHS
    assert set(curves["arm"]) == {"elu", "relu"} and len(curves) == 200 * (m.EPOCHS + 1)
    rho = read_csv(src / "rho.csv") if paper else m.confirmation_rho()
    table = m.per_run(curves, rho)
    pd.testing.assert_frame_equal(table, read_csv(src / "per_run.csv"), check_exact=True,
                                  check_dtype=False)  # fmt: skip
    eps = m.endpoints(table, nearer=paper)
    pd.testing.assert_frame_equal(eps, read_csv(src / "endpoints.csv"), check_exact=True,
                                  check_dtype=False)  # fmt: skip
    assert list(eps["family"]).count("primary") == primaries and (eps["n"] == 100).all()
    assert len(eps) == rows and (eps["p_holm"] >= eps["p"]).all()
    assert (src / "README.md").read_text(encoding="utf-8") == m.readme(src)


def test_the_speed_readme_reads_by_the_declared_rule(tmp_path, monkeypatch):
    """Each primary endpoint reads by the declared rule (Holm p < 0.05 and a CI that excludes
    0), whichever way the tables point."""
    import shutil

    from natgrad.analysis.csvtables import read_csv, write_csv

    m = _script("mechanism_speed", monkeypatch)
    src = ROOT / "paper_figures/results/mechanism_speed_mnist"
    for name in ("per_run.csv", "per_run.csv.sha256", "run.json"):
        shutil.copy(src / name, tmp_path / name)
    eps = read_csv(src / "endpoints.csv")
    cases = {("ELU's falls further", "positive", "the loss of ELU, whose plain gradient is the "
              "nearer (by the third confirmation), also fell faster after the measure here"):
             ([0.1, 0.05, 0.2, 0.01], [0.3, 0.1, 0.5, 0.01]),
             ("ReLU's falls further", "not resolved", "did not fall faster after the measure here; over seeds no "
              "association between the relative nearness at epoch 3 and the relative fall is "
              "resolved: the CI leaves out correlations above +0.5 and below +0.1. ELU's "
              "training loss stood higher"):
             ([-0.1, -0.2, -0.05, 0.01], [0.3, 0.1, 0.5, 0.06]),  # CI above 0, Holm p 0.06
             ("not resolved", "negative", "The design does not resolve which loss falls "
              "further after epoch 3"):
             ([0.1, 0.05, 0.2, 0.06], [-0.3, -0.5, -0.1, 0.001])}  # fmt: skip
    for (speed, link, said), rows in cases.items():
        for i, (value, lo, hi, p_holm) in enumerate(rows):
            eps.loc[i, ["value", "lo", "hi", "p_holm"]] = [value, lo, hi, p_holm]
        write_csv(eps, tmp_path / "endpoints.csv")
        text = m.readme(tmp_path)
        assert f"**Reading.** Speed: {speed}; link: {link}. (Worded after" in text
        assert said in text


def test_the_speed_replication_measures_and_reads_its_runs(tmp_path, monkeypatch):
    """The replication's stages on two tiny runs of the digits (its layers and probe scaled
    down): ρ over live and estimable units, the estimable share and |mean activation| per
    run at epoch 3, as the dashboard measures them (its ρ medians from the same per-unit
    table); the endpoints with ρ as the first primary (Holm over three); and a README whose
    reading follows the declared rule."""
    import dataclasses
    import json

    import numpy as np

    from natgrad.analysis.csvtables import write_csv
    from natgrad.analysis.runs import probe_set, training_set
    from natgrad.analysis.study import Study
    from natgrad.analysis.unitstats import unit_statistics
    from natgrad.studies import mechanism_speed as ms

    m = _script("mechanism_speed", monkeypatch)
    monkeypatch.setattr(m, "PAPER_PROBE", 200)
    monkeypatch.setattr(m, "PAPER_LAYERS", ("fc2", "fc3"))
    small = Study("tiny", ("elu", "relu"), (0,), lambda a, s: dataclasses.replace(
        ms.paper_config(a, s), dataset="digits", width=8, depth=2, epochs=3))  # fmt: skip
    small.train(tmp_path / "runs", progress=False)
    rho = m.measure(small.plan(tmp_path / "runs"), workers=1)
    assert list(rho["arm"]) == ["elu", "relu"] and (rho["epoch"] == 3).all()
    import torch

    from natgrad.analysis.runs import load_model
    from natgrad.testing import tolerances

    rtol, atol = tolerances(torch.float64)
    for i, r in enumerate(small.plan(tmp_path / "runs")):  # both arms, by a second route
        x, y = probe_set(r.path, 200)
        gx, gy = training_set(r.path)
        model = load_model(r.path, 3).double().eval()
        u = unit_statistics(model, x.double(), y, layers=["fc2", "fc3"], rel_damping=1e-3,
                            grad_data=(gx.double(), gy), jackknife=True)  # fmt: skip
        est = u["estimable"] == 1
        rho_est = float(np.nanmedian(u.loc[est, "rho_plain_jk"])) if est.any() else np.nan
        pre = {}  # the hidden units' inputs, by hooks on fc1 and fc2, then the unit by hand
        hooks = [getattr(model, n).register_forward_hook(
            lambda _m, _i, out, n=n, pre=pre: pre.__setitem__(n, out.detach()))
            for n in ("fc1", "fc2")]  # fmt: skip
        model(x.double())
        for h in hooks:
            h.remove()
        unit = torch.nn.functional.elu if r.arm == "elu" else torch.nn.functional.relu
        mean_act = torch.cat([unit(pre[n]).mean(0) for n in ("fc1", "fc2")]).abs().median()
        expect = [float(np.nanmedian(u["rho_plain_jk"])), rho_est, float(est.mean()),
                  float(mean_act)]  # fmt: skip
        got = rho.loc[i, [m.RHO, m.RHO_EST, "estimable", "mean_act"]].to_numpy(dtype=float)
        np.testing.assert_allclose(got, expect, rtol=rtol, atol=atol)
    assert rho.loc[0, "estimable"] != rho.loc[1, "estimable"]  # the arms' masks differ here

    rng = np.random.default_rng(0)  # the endpoints and README on a made-up table of 30 seeds
    seeds = np.arange(30)
    table = pd.DataFrame({"arm": ["elu"] * 30 + ["relu"] * 30, "seed": np.tile(seeds, 2)})
    for c in ("log_fall", "log_train_loss_auc", "log_train_loss_e3", "log_train_loss_e10",
              "val_loss_e10", "val_error_e10", "estimable", "mean_act", m.RHO_EST):  # fmt: skip
        table[c] = rng.normal(size=60)
    table[m.RHO] = np.r_[rng.normal(0.5, 0.01, 30), rng.normal(0.3, 0.01, 30)]  # ELU nearer
    table.loc[:29, "log_fall"] = table.loc[30:, "log_fall"].to_numpy() + 1.0  # ELU falls further
    eps = m.endpoints(table, nearer=True)
    assert list(eps[eps["family"] == "primary"]["endpoint"])[:2] == [m.RHO, m.FALL]
    assert (eps["family"] == "primary").sum() == 3 and (eps["family"] == "secondary").sum() == 10
    assert list(eps[eps["family"] == m.ADDED]["endpoint"]) == [m.RHO_EST]
    write_csv(table, tmp_path / "per_run.csv")
    write_csv(eps, tmp_path / "endpoints.csv")
    (tmp_path / "run.json").write_text(json.dumps(dict(
        command="c", commit="x", train_seconds=1.0, measure_seconds=2.0, runs=60,
        declared="e200087", variant="paper", device="cpu")))  # fmt: skip
    text = m.readme(tmp_path)
    assert "**Reading.** Nearer: ELU nearer; speed: ELU's falls further; link:" in text
    assert (
        "the loss of ELU, whose plain gradient is the nearer (by the first endpoint), also "
        "fell faster after the measure here"
        in text
        and "Holm over the three" in text
    )
    assert "Worded after" not in text and "Over estimable units only" in text


def test_the_train_probe_stage_measures_on_the_training_inputs(tmp_path, monkeypatch):
    """The Fig 2 train-probe analysis (declared in ``natgrad/studies/fig2.py``): its unit
    table is computed on the inputs the run trained on (``probe_split="train-all"``), its
    per-run n_eff/(d+1) and estimable share agree with ``natgrad.unit_fishers`` on those
    inputs (a second route), and the record's endpoints and README come from its values."""
    import dataclasses

    import numpy as np
    import torch

    import natgrad
    from natgrad.analysis.runs import load_model, training_set
    from natgrad.studies import fig2
    from natgrad.training import default_config, train

    m = _script("fig2_protocol", monkeypatch)
    monkeypatch.setattr(m, "TRAIN_PROBE", dict(fig2.TRAIN_PROBE, epochs=(1,),
                                               layers=("fc2", "fc3")))  # fmt: skip
    runs = []
    for unit in fig2.UNITS:
        for seed in range(3):
            cfg = default_config("mnist-fc", dataset="digits", unit=unit, seed=seed, epochs=1,
                                 width=6, depth=3, train_size=400, probe_size=16)  # fmt: skip
            cfg = dataclasses.replace(cfg, checkpoint_every=1)
            runs.append(train(cfg, tmp_path / f"{unit}-s{seed}", device="cpu",
                              progress=False).run_dir)  # fmt: skip
    values = m.train_probe_values(runs, progress=False)
    assert len(values) == 12 and set(values["unit_type"]) == set(fig2.UNITS)
    # elu-s0 again, from the Fisher engine on the whole training set (400 inputs, not the
    # 16-input held-out probe): the same n_eff/(d+1) median and estimable share
    x, _ = training_set(runs[0])
    assert x.shape[0] == 400
    fishers = natgrad.unit_fishers(load_model(runs[0], 1), x)
    ratio = torch.cat([(fishers[k].n_eff / (fishers[k].fan_in + 1)) for k in ("fc2", "fc3")])
    ratio = ratio.double().numpy()
    row = values[(values["unit_type"] == "elu") & (values["seed"] == 0)].iloc[0]
    assert row["n_eff_over_d1"] == pytest.approx(np.nanmedian(ratio), rel=1e-5)
    assert row["estimable"] == pytest.approx(np.mean(ratio >= 2))
    meta = dict(analysis_seconds=1.0, runs=12, run_commit="x", device="cpu")
    text = m.record_train_probe(values, tmp_path / "rec", meta, argv=["--train-probe", "rec"])
    table = pd.read_csv(tmp_path / "rec" / "endpoints.csv")
    assert list(table["family"][:3]) == ["train-probe"] * 3 and len(table) == 3 + 6 * 3
    wide = values.pivot(index="seed", columns="unit_type", values="rho_plain_jk_est")
    assert table.iloc[0]["diff"] == pytest.approx((wide["elu"] - wide["relu"]).mean())
    assert "`python analysis/fig2_protocol.py --train-probe rec`" in text
    for other in ("ReLU", "LReLU", "SReLU"):
        assert text.count(f"| ρ(plain), estimable units | {other} | 3 |") == 1
        assert f"ELU − {other} in ρ(plain) over estimable units at epoch 300" in text


def test_the_committed_train_probe_record_rebuilds(tmp_path, monkeypatch):
    """``paper_figures/results/fig2_mnist_train_probe``: its endpoints rebuild exactly from its
    per-run values through the declared endpoints, over the 40 declared runs (ELU, ReLU,
    LReLU, SReLU × seeds 0–9), and its README's tables and reading are what the stage writes
    from them."""
    from natgrad.analysis.csvtables import read_csv
    from natgrad.analysis.endpoints import evaluate
    from natgrad.studies.fig2 import UNITS, train_probe_endpoints

    m = _script("fig2_protocol", monkeypatch)
    src = ROOT / "paper_figures/results/fig2_mnist_train_probe"
    values = read_csv(src / "values.csv")
    assert sorted(zip(values["unit_type"], values["seed"], strict=True)) == sorted(
        (u, s) for u in UNITS for s in range(10)
    )
    with stats.mean_ci_method(stats.recorded_mean_ci(src)):
        table = evaluate(values, train_probe_endpoints())
        blank = table.replace("", float("nan"))  # an empty text cell reads back as NaN
        pd.testing.assert_frame_equal(blank, read_csv(src / "endpoints.csv"), check_exact=True,
                                      check_dtype=False)  # fmt: skip
        meta = {k: v for k, v in json.loads((src / "run.json").read_text()).items()
                if k not in ("command", "commit")}  # fmt: skip
        text = m.record_train_probe(values, tmp_path, meta, argv=["x"])
    old = (src / "README.md").read_text()
    body = "## ELU − other, paired by seed"
    assert text[text.index(body) :] == old[old.index(body) :]


def test_the_fig2_mechanism_keeps_a_layer_whose_units_all_died(monkeypatch, tmp_path):
    """``mechanism_tables``: a layer with every unit dead is a row (dead share 1, NaN
    medians) beside the others, not a length mismatch."""
    import numpy as np

    import natgrad.analysis.runs as runs

    m = _script("fig2_protocol", monkeypatch)
    rows = []
    for layer, dead_share in (("fc2", 0.0), ("fc3", 1.0), ("fc4", 0.5)):
        for u in range(4):
            dead = int(u < 4 * dead_share)
            rows.append(dict(run="relu-s0", unit_type="relu", seed=0, epoch=1, layer=layer,
                             input_from="units", dead=dead, fan_in=4, estimable=1 - dead,
                             n_eff=np.nan if dead else 10.0,
                             **{r: np.nan if dead else 0.3 for r in m.RHO}))  # fmt: skip
    monkeypatch.setattr(runs, "unit_table", lambda *a, **k: pd.DataFrame(rows))
    monkeypatch.setattr(runs, "checkpoint_epochs", lambda run: [1])
    layers, _ = m.mechanism_tables([tmp_path / "relu-s0"], units=("relu",), progress=False)
    assert list(layers["layer"]) == ["fc2", "fc3", "fc4"]
    assert list(layers["dead"]) == [0.0, 1.0, 0.5] and np.isnan(layers["rho_plain"][1])


def test_the_fig3_unit_cache_is_of_the_runs_last_checkpoint(monkeypatch, tmp_path):
    """The Fig 3 unit analysis caches its tables in each run directory; a run extended since
    (25 → 50 epochs) returned its epoch-25 table as 'the last checkpoint's'."""
    import pandas as pd

    from natgrad.analysis.csvtables import write_csv

    m = _script("fig3_autoencoder", monkeypatch)
    path = tmp_path / "fig3-units.csv"
    assert not m._cached_at(path, 25)
    write_csv(pd.DataFrame({"layer": ["a", "b"], "epoch": [25, 25]}), path)
    assert m._cached_at(path, 25) and not m._cached_at(path, 50)


def test_a_demo_scripts_own_flags_change_its_declaration(monkeypatch, tmp_path):
    """``demo.study(options=)``: the Fashion-MNIST study's --epochs and --units reach the
    config it trains (and --epochs its checkpoint period), through the one script main."""
    from natgrad.studies import demo

    m = _script("fashion_mnist_study", monkeypatch)
    seen = []
    monkeypatch.setattr(demo, "main", seen.append)  # training itself is tested elsewhere
    argv = ["--out", str(tmp_path), "--epochs", "5", "--units", "elu,relu"]
    assert m.run(argv) == 0
    (config,) = seen
    assert (config.out, config.epochs, config.checkpoint_every, config.units) == (
        str(tmp_path), 5, 5, ("elu", "relu"))  # fmt: skip
    assert config.probe_size == m.CONFIG.probe_size and config.seeds == m.CONFIG.seeds
