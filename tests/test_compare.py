"""``natgrad compare`` in a small form: every arm trains, shares its initial weights, and the
tables answer the question (the statistics checked against a second route from the curves)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from natgrad import cli
from natgrad.studies import compare
from natgrad.testing import assert_close
from natgrad.training.engine import TRAIN_LOSS


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    r"""3 seeds x 2 epochs of every default arm on 128 digits (2 steps per epoch), via the
    CLI, with its run directories in ``<out>/../runs``."""
    out = tmp_path_factory.mktemp("compare")
    old = torch.get_num_threads()
    try:
        rc = cli.main(["compare", "--seeds", "3", "--epochs", "2", "--train-size", "128",
                       "--out", str(out), "--quiet", "--last-epochs", "1",
                       "--runs", str(out.parent / "runs")])  # fmt: skip
    finally:
        torch.set_num_threads(old)
    assert rc == 0
    return out


def test_outputs_and_the_stated_question(small_run):
    for name in ("curves.csv", "summary.csv", "effects.csv", "gap.csv", "answer.md",
                 "curves.png", "curves.pdf"):  # fmt: skip
        assert (small_run / name).stat().st_size > 0, name
    text = (small_run / "answer.md").read_text()
    assert "What fraction of the gap between ReLU+SGD and ReLU+unit-NG" in text
    assert "epoch budget 2: ELU+SGD closes" in text
    assert "commit:" in text and "wall time:" in text
    layers = ", ".join(f"fc{i}" for i in range(1, 10))
    assert f"- unit-NG arms, per layer: unit blocks (dense running average): {layers}" in text
    assert "- run directories: `" in text and "a rerun resumes them" in text
    assert "test_error_last: test error" in text  # digits: no validation split, said so


def test_arms_share_initial_weights(small_run):
    r"""Epoch 0: every ReLU arm without batch norm is the same net (same loss, bit for bit)."""
    import pandas as pd

    c = pd.read_csv(small_run / "curves.csv")
    start = c[c["epoch"] == 0].pivot(index="seed", columns="arm", values="train_loss")
    for arm in ("relu-centred", "relu-qd", "relu-unit-ng"):
        assert (start[arm] == start["relu-sgd"]).all(), arm
    assert (start["elu-unit-ng"] == start["elu-sgd"]).all()
    assert set(c["arm"]) == set(compare.DEFAULT_ARMS) and c["seed"].nunique() == 3


def test_effects_and_gap_from_the_curves(small_run):
    r"""Paired effects (reference − arm) and the gap fraction recomputed from curves.csv by
    hand, with the p-values against the 2^3 sign patterns enumerated."""
    import itertools

    import pandas as pd

    c = pd.read_csv(small_run / "curves.csv")
    c = c[c["epoch"] >= 1]
    auc = c.groupby(["arm", "seed"])["train_loss"].mean().unstack("seed")  # epochs 1..2
    eff = pd.read_csv(small_run / "effects.csv").set_index(["reference", "other", "metric"])
    for arm in ("elu-sgd", "relu-unit-ng", "relu-bn"):
        d = (auc.loc["relu-sgd"] - auc.loc[arm]).to_numpy()
        row = eff.loc[("relu-sgd", arm, "auc")]
        assert_close(row["diff"], d.mean(), what=arm)
        assert row["lo"] <= row["diff"] <= row["hi"]
        flips = [abs((d * s).mean()) for s in itertools.product((1, -1), repeat=len(d))]
        assert row["p"] == pytest.approx(np.mean([f >= abs(d.mean()) * (1 - 1e-12) for f in flips]))
    d = (auc.loc["relu-unit-ng"] - auc.loc["elu-unit-ng"]).to_numpy()
    assert_close(eff.loc[("relu-unit-ng", "elu-unit-ng", "auc"), "diff"], d.mean(), what="NG")
    gap = pd.read_csv(small_run / "gap.csv").set_index("epoch")
    a, b, t = (auc.loc[k].to_numpy() for k in ("relu-sgd", "elu-sgd", "relu-unit-ng"))
    expected = (a.mean() - b.mean()) / (a.mean() - t.mean())
    got = gap.loc[2, "fraction_closed"]
    assert (math.isnan(got) and a.mean() <= t.mean()) or abs(got - expected) < 1e-9


def test_the_runs_are_run_directories_and_a_stopped_comparison_resumes(small_run, tmp_path):
    r"""Every (arm, seed) is a run directory that ``natgrad tables``-style readers open; a
    comparison stopped after epoch 1 and run again to epoch 2 gives the curves of one run
    straight through (all but the wall times, bit for bit)."""
    import pandas as pd

    from natgrad.training.rundir import RunDir

    root = small_run.parent / "runs"
    config = compare.CompareConfig(seeds=3, epochs=2, train_size=128, last_epochs=1)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        f"{a}-s{s}" for a in config.arms for s in range(3)
    )
    assert RunDir(root / "elu-unit-ng-s2").read_config()["optimizer"] == "unit-ng"
    arms = ("relu-sgd", "elu-sgd", "relu-unit-ng")
    part = compare.CompareConfig(seeds=2, epochs=1, train_size=128, arms=arms)
    compare.run_compare(part, tmp_path)
    whole = dataclasses.replace(part, epochs=2)
    resumed, _ = compare.run_compare(whole, tmp_path)
    straight = pd.read_csv(small_run / "curves.csv")
    straight = straight[straight["arm"].isin(arms) & (straight["seed"] < 2)]
    cols = ["seed", "arm", "epoch", "train_loss", "test_loss", "test_error"]
    pd.testing.assert_frame_equal(
        resumed[cols].sort_values(cols[:3]).reset_index(drop=True),
        straight[cols].sort_values(cols[:3]).reset_index(drop=True), check_exact=True,
    )  # fmt: skip
    import shutil

    for run in tmp_path.iterdir():  # finished runs carried without checkpoints: read, not retrained
        shutil.rmtree(run / "checkpoints")
    stamp = (tmp_path / "relu-sgd-s0" / "metrics.jsonl").stat().st_mtime_ns
    again, _ = compare.run_compare(whole, tmp_path)
    assert (tmp_path / "relu-sgd-s0" / "metrics.jsonl").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again, resumed, check_exact=True)


def test_a_diverging_run_is_recorded_and_the_others_train_on(tmp_path):
    r"""A learning rate that makes ReLU+SGD diverge: its runs are recorded as diverged (NaN
    from the epoch it failed; ``diverged.json``), the batched ELU+SGD runs go on and equal
    the same runs trained without it, and a rerun does not train the diverged runs again."""
    from natgrad.training.rundir import RunDir

    bad = compare.CompareConfig(seeds=2, epochs=2, train_size=128, arms=("relu-sgd", "elu-sgd"),
                                lrs=(("relu-sgd", 1e4),))  # fmt: skip
    curves, diverged = compare.run_compare(bad, tmp_path / "a")
    assert sorted(diverged) == ["relu-sgd-s0", "relu-sgd-s1"]
    assert RunDir(tmp_path / "a" / "relu-sgd-s0").read_diverged() is not None
    relu = curves[(curves["arm"] == "relu-sgd") & (curves["epoch"] >= 1)]
    assert relu["train_loss"].isna().all()
    alone, _ = compare.run_compare(dataclasses.replace(bad, arms=("elu-sgd",)), tmp_path / "b")
    elu = curves[curves["arm"] == "elu-sgd"].reset_index(drop=True)
    for col in ("train_loss", "test_loss"):
        assert_close(torch.tensor(elu[col].to_numpy()), torch.tensor(alone[col].to_numpy()),
                     what=col)  # fmt: skip
    tables = compare.summarise(curves, bad)
    assert tables["diverged"] == ["relu-sgd (seed 0)", "relu-sgd (seed 1)"]
    stamp = (tmp_path / "a" / "relu-sgd-s0" / "metrics.jsonl").stat().st_mtime_ns
    assert sorted(compare.train_runs(bad, tmp_path / "a")) == ["relu-sgd-s0", "relu-sgd-s1"]
    assert (tmp_path / "a" / "relu-sgd-s0" / "metrics.jsonl").stat().st_mtime_ns == stamp


def test_gap_fraction_by_hand():
    a, b, c = np.array([3.0, 3.2]), np.array([2.0, 2.2]), np.array([1.0, 1.2])
    assert compare._gap_fraction(a, b, c) == pytest.approx(0.5)
    assert math.isnan(compare._gap_fraction(a, b, a + 1))  # NG no better: undefined


def test_arm_configs_carry_the_settings_to_the_trainer():
    r"""Each arm is a TrainConfig: per-arm rates, the window and memory budget for the unit-NG
    arms only, the plain first layer at its unit type's SGD rate, the standardised inputs."""
    from natgrad.errors import InputError

    config = compare.CompareConfig(window=2, memory_budget=10_000_000, plain_first_layer=True,
                                   preprocess="standardise", lrs=(("elu-sgd", 0.01),))  # fmt: skip
    ng = compare.arm_config(config, "elu-unit-ng", 3)
    assert (ng.fisher_window, ng.ng_memory_budget, ng.plain_lr, ng.seed) == (2, 10_000_000, 0.01, 3)
    qd = compare.arm_config(config, "relu-qd", 0)
    assert (qd.optimizer, qd.fisher_window, qd.ng_memory_budget, qd.plain_lr) == (
        "qd-ng",
        0,
        None,
        0.03,
    )
    bd = compare.arm_config(config, "relu-blockdiag-ng", 0)
    assert bd.optimizer == "blockdiag-ng" and bd.lr == config.lr_ng
    c = compare.arm_config(config, "elu-centred", 0)
    assert c.centre and c.plain_first_layer and c.plain_lr is None and c.preprocess == "standardise"
    assert compare.arm_config(config, "elu-sgd", 0).lr == 0.01
    with pytest.raises(InputError, match="unknown arms"):
        compare.CompareConfig(lrs=(("gelu-sgd", 0.1),))
    budget = compare.structures(compare.CompareConfig(dataset="mnist", memory_budget=10_000_000))
    assert budget["fc1"] == "quasidiagonal" and set(list(budget.values())[1:]) == {"unit"}
    plain = compare.structures(compare.CompareConfig(dataset="mnist", plain_first_layer=True))
    assert plain["fc1"] == "plain" and plain["fc2"] == "unit"
    with pytest.raises(InputError, match="window"):
        compare.CompareConfig(window=-1)
    assert cli.main(["compare", "--lr", "nope=1"]) == 2


def test_tables_rebuilt_from_curves_and_run_record(tmp_path):
    r"""``--tables-from DIR`` rebuilds every table exactly, without training, on curves where
    the gap is defined (unit-NG below SGD, ELU between): the gap, the shares of every arm and
    the ReLU+unit-NG − ELU+unit-NG effect are all finite and recomputed."""
    import pandas as pd

    config = compare.CompareConfig(seeds=4, epochs=2, last_epochs=1, lrs=(("elu-sgd", 0.01),))
    level = {"relu-sgd": 1.0, "elu-sgd": 0.8, "relu-centred": 0.6, "relu-qd": 0.5,
             "relu-unit-ng": 0.2, "elu-unit-ng": 0.3, "relu-bn": 0.7}  # fmt: skip
    rng = np.random.default_rng(0)
    rows = [dict(seed=s, arm=a, epoch=e, train_loss=(2.0 if e == 0 else lv / e) + 0.01 * rng.random(),
                 val_loss=lv, val_error=0.1 * lv + 0.002 * s * e, test_loss=lv,
                 test_error=0.1 * lv + 0.001 * s, seconds=float(e))
            for s in range(4) for a, lv in level.items() for e in range(3)]  # fmt: skip
    structures = {"fc1": "quasidiagonal", "fc2": "unit"}
    compare.write_outputs(pd.DataFrame(rows), config, tmp_path, {"command": "test"}, structures)
    names = ("effects.csv", "gap.csv", "summary.csv", "shares.csv")
    before = {n: pd.read_csv(tmp_path / n) for n in names}
    assert (
        before["gap.csv"]["ci_low"].notna().all() and before["shares.csv"]["ci_low"].notna().all()
    )
    shares = before["shares.csv"].set_index(["arm", "epoch"])
    gap = before["gap.csv"].set_index("epoch")
    assert (shares.loc["elu-sgd"]["fraction_closed"] == gap["fraction_closed"]).all()
    eff = before["effects.csv"]
    ng = eff[(eff["other"] == "elu-unit-ng") & (eff["reference"] == "relu-unit-ng")]
    assert len(ng) == 3 and (ng["diff"] < 0).all()  # ELU+unit-NG above ReLU+unit-NG here
    assert set(eff["metric"]) == {"auc", "val_error_last", "test_error_at_best_val"}
    for n in names:
        (tmp_path / n).unlink()
    assert cli.main(["compare", "--tables-from", str(tmp_path)]) == 0
    for name, table in before.items():
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / name), table, check_exact=True)
    text = (tmp_path / "answer.md").read_text()
    assert "quasi-diagonal step (over the memory budget): fc1; unit blocks" in text
    assert "rel_damping 0.1, layer_damping 0.3" in text and "elu-sgd 0.01" in text
    assert cli.main(["compare", "--tables-from", str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize("record", ["compare_mnist/main", "compare_fashion_full"])
def test_a_committed_comparison_rebuilds_to_its_numbers(tmp_path, record):
    """``paper_figures/results/compare_mnist/main`` (issue 22's study, 10 seeds × 9 arms) and
    ``compare_fashion_full`` (the retired pipeline's record, its tables rebuilt by today's
    statistics) rebuilt by ``--tables-from`` from their curves and run records give every
    committed number again (columns added since, such as Holm's p, aside); the answer
    states the record's own definition of the training loss."""
    import json
    import shutil
    from pathlib import Path

    import pandas as pd

    src = Path(__file__).resolve().parents[1] / "paper_figures/results" / record
    shutil.copytree(src, tmp_path / "out")
    from natgrad.analysis import stats

    with stats.mean_ci_method(stats.recorded_mean_ci(src)):  # the record's own CIs
        assert cli.main(["compare", "--tables-from", str(tmp_path / "out")]) == 0
    for name in ("effects", "summary", "gap", "shares"):
        old, new = pd.read_csv(src / f"{name}.csv"), pd.read_csv(tmp_path / "out" / f"{name}.csv")
        assert set(old.columns) <= set(new.columns), name
        pd.testing.assert_frame_equal(new[old.columns], old, check_exact=False, rtol=1e-12)
    meta = json.loads((src / "run.json").read_text())["meta"]
    answer = (tmp_path / "out" / "answer.md").read_text()
    assert meta.get("train_loss", TRAIN_LOSS) in answer


def test_the_gap_fractions_ci_is_fiellers_and_none_without_a_gap():
    """``gap_ci``: Fieller's interval of (ā − b̄)/(ā − c̄) over the seeds where all three arms
    finished; no interval where ReLU+unit-NG is not ahead (no gap to close); the records'
    three-arm bootstrap under ``mean_ci_method("bootstrap")``."""
    import math

    import numpy as np

    from natgrad.analysis import stats
    from natgrad.studies.compare import gap_ci

    rng = np.random.default_rng(5)
    a = 1.0 + 0.05 * rng.normal(size=6)
    c, b = a - 0.3 + 0.02 * rng.normal(size=6), a - 0.1 + 0.02 * rng.normal(size=6)
    lo, hi, how = gap_ci(a, b, c)
    assert how == "Fieller" and lo < (a - b).mean() / (a - c).mean() < hi
    # each end: the fraction θ at which (a − b) − θ(a − c) has t-test p = 0.05 exactly
    from scipy import stats as st

    ends = [st.ttest_1samp((a - b) - theta * (a - c), 0.0).pvalue for theta in (lo, hi)]
    from natgrad.testing import assert_close

    assert_close(np.array(ends), np.array([0.05, 0.05]), what="Fieller's ends, gap fraction")
    assert gap_ci(np.append(a, np.nan), np.append(b, 0.5), np.append(c, 0.2)) == (lo, hi, how)
    assert math.isnan(gap_ci(a, b, a + 0.1)[0]) and gap_ci(a, b, a + 0.1)[2] == "none"
    with stats.mean_ci_method("bootstrap"):
        assert gap_ci(a, b, c)[2] == "BCa"


def test_the_figure_averages_every_seed_and_marks_where_seeds_were_lost(monkeypatch, tmp_path):
    """ReLU+QD's curve ran on as the mean of the 8, 5, 3, 1 seeds still alive: a curve now
    ends at the last epoch every seed reached, marked, and its label says so."""
    import numpy as np
    import pandas as pd

    from natgrad.analysis import plots
    from natgrad.studies.compare import _figure

    rows = []
    for arm, lost_at in (("relu-sgd", None), ("relu-qd", 3)):
        for seed in range(3):
            for epoch in range(5):
                dead = lost_at is not None and seed > 0 and epoch >= lost_at
                rows.append(dict(arm=arm, seed=seed, epoch=epoch, seconds=float(epoch),
                                 train_loss=np.nan if dead else 1.0 / (epoch + 1) + seed,
                                 val_error=np.nan if dead else 0.1, test_error=0.1))  # fmt: skip
    curves = pd.DataFrame(rows)
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, *a, **k: figs.append(fig) or [])
    _figure(curves, {"gap": pd.DataFrame(columns=["epoch", "fraction_closed", "ci_low",
                                                  "ci_high"])}, tmp_path)  # fmt: skip
    ax = figs[0].axes[0]
    qd = [ln for ln in ax.lines if ln.get_label().startswith("relu-qd")]
    assert qd[0].get_label() == "relu-qd (seeds lost after epoch 2)"
    drawn = qd[0].get_xdata()[np.isfinite(qd[0].get_ydata())]  # a NaN breaks the line
    assert list(drawn) == [1, 2]
    assert any(ln.get_marker() == "x" and list(ln.get_xdata()) == [2] for ln in ax.lines)
    assert "not defined here" in figs[0].axes[2].texts[0].get_text()


def test_the_answer_and_tables_print_cis_rounded_outward():
    import pandas as pd

    """The gap fraction's CI 0.004 to 0.3649 printed as "0.00 to 0.36": the upper end rounded
    inward, the lower one read as touching 0 (a helper's hunt); the tables' 4-digit ends were
    rounded to nearest. Both now round outward."""
    gap = pd.DataFrame([{"epoch": 5, "gap": 0.2, "fraction_closed": 0.18, "ci_low": 0.004,
                         "ci_high": 0.3649, "ci_method": "Fieller", "seeds": 5}])  # fmt: skip
    text = compare._answer({"gap": gap}, compare.CompareConfig())
    assert "CI over 5 seeds: [0.004, 0.365]" in text
    table = compare._markdown(gap[["epoch", "ci_low", "ci_high"]].assign(lo=0.123456, hi=0.123451))
    assert table.splitlines()[-1] == "| 5 | 0.004 | 0.3649 | 0.1234 | 0.1235 |"
