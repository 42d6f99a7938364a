"""The unit table against direct UnitFisher calls, the cache, and seeds-as-replicates statistics."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from _demo_small import small_demo
from torch.nn import functional as F

from natgrad import measures as ms
from natgrad.analysis import stats
from natgrad.analysis.runs import curve_table, find_runs, load_model, probe_set, unit_table
from natgrad.analysis.summary import read_tables
from natgrad.damping import MEASURE_DAMPING
from natgrad.errors import DataFileError
from natgrad.fisher import unit_fisher
from natgrad.testing import assert_close, conditioned_rtol
from natgrad.training.rundir import RunDir


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    return small_demo(tmp_path_factory)


@pytest.mark.parametrize(("unit", "layer"), [("elu", "fc3"), ("relu", "fc5"), ("relu-bn", "fc9")])
def test_table_agrees_with_direct_unit_fisher(demo_dir, unit, layer):
    units = read_tables(demo_dir / "tables")["units"]
    table = units[(units["unit_type"] == unit) & (units["epoch"] == 1) & (units["layer"] == layer)]
    table = table[table["seed"] == 0].sort_values("unit")
    run = demo_dir / "runs" / table["run"].iloc[0]
    model = load_model(run, 1).to(torch.float64)
    x, y = probe_set(run, 160)  # held out: the run's test split
    x = x.to(torch.float64)
    fisher = unit_fisher(model, layer, x)
    module = dict(model.named_modules())[layer]
    gw, gb = torch.autograd.grad(-F.cross_entropy(model(x), y), [module.weight, module.bias])
    numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
    col = {c: torch.tensor(table[c].to_numpy(dtype=np.float64)) for c in numeric}

    assert_close(col["c"], fisher.c, what="c")
    assert_close(col["n_eff"], fisher.n_eff, what="n_eff")
    assert_close(col["cond"], fisher.condition_number(exact=True), what="cond", rtol=1e-6)
    live = (fisher.c > 0).nonzero().flatten()
    assert (col["dead"][live] == 0).all()
    sub = dataclasses.replace(
        fisher,
        matrix=fisher.matrix[live],
        units=fisher.units[live],
        c_sum=None,
        c_sq_sum=None,
    )
    g, g0 = gw[live], gb[live]
    # Every solve is in F_λ, κ(F_λ) <= (d+1)/λ + 1: round-off tolerances follow it.
    kappa = sub.condition_number(rel_damping=MEASURE_DAMPING)
    rtol = conditioned_rtol(kappa)
    for direction in ("plain", "centred", "quasidiagonal", "blockdiag", "diagonal"):
        expected = sub.efficiency(g, g0, direction, rel_damping=MEASURE_DAMPING)
        assert_close(col[f"rho_{direction}"][live], expected, rtol=rtol, what=direction)
    err = sub.bias_shift_error(g, g0, "plain", rel_damping=MEASURE_DAMPING)
    assert_close(col["shift_error_plain"][live], err, rtol=rtol, what="shift error")
    # Theorem 2 on F_λ: k goes through Var_q(a)⁻¹ (condition number up to κ·s·c).
    damped = dataclasses.replace(sub, matrix=ms.relative_damped(sub.matrix, MEASURE_DAMPING))
    s_c = damped.s() * damped.c
    assert_close(col["s_c"][live], s_c, rtol=rtol, what="s·c")
    rtol_q = conditioned_rtol(kappa * s_c)
    determined = rtol_q < 1e-2
    assert determined.any(), "some unit has a determined k (else this compares nothing)"
    k = damped.k("closed")
    assert_close(col["k"][live][determined], k[determined], rtol=rtol_q[determined], what="k")


def test_dead_units_are_counted_not_hidden(demo_dir):
    units = read_tables(demo_dir / "tables")["units"]
    dead = units[units["dead"] == 1]
    assert (dead["c"] == 0).all() and dead["rho_plain"].isna().all() and dead["k"].isna().all()
    live = units[units["dead"] == 0]
    assert np.isfinite(live["rho_plain"]).all()
    assert ((live["rho_natural"] - 1).abs() < 1e-8).all()
    # the stated damping is the same relative λ for every unit
    assert (units["rel_damping"] == MEASURE_DAMPING).all()


def test_curves_match_the_run_records(demo_dir):
    runs = find_runs(demo_dir / "runs")
    curves = curve_table(runs)
    assert len(curves) == 2 * len(runs)
    for run in runs:
        rows = RunDir(run).read_activation_summary()
        got = curves[curves["run"] == run.name]["median_all"]
        assert got.tolist() == [r["median_all"] for r in rows]


def test_unit_tables_are_reused_until_the_checkpoint_changes(demo_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(find_runs(demo_dir / "runs")[0], run)
    shutil.rmtree(run / "analysis", ignore_errors=True)
    counts: dict = {}
    first = unit_table([run], epochs=[1], probe_size=32, layers=["fc9"], stats=counts)
    assert counts == {"computed": 1, "cached": 0}
    again = unit_table([run], epochs=[1], probe_size=32, layers=["fc9"], stats=counts)
    assert counts == {"computed": 0, "cached": 1}
    pd.testing.assert_frame_equal(first, again)
    unit_table([run], epochs=[1], probe_size=33, layers=["fc9"], stats=counts)  # new settings
    assert counts == {"computed": 1, "cached": 0}
    st_path = RunDir(run).checkpoint_paths(1)[0]
    st_path.write_bytes(st_path.read_bytes())  # same bytes: still current
    unit_table([run], epochs=[1], probe_size=33, layers=["fc9"], stats=counts)
    assert counts["cached"] == 1
    # a run resumed for more epochs (its config's epochs raised) keeps its checkpoints' tables
    meta_path = run / "config.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["epochs"] += 25
    meta_path.write_text(json.dumps(meta))
    unit_table([run], epochs=[1], probe_size=33, layers=["fc9"], stats=counts)
    assert counts == {"computed": 0, "cached": 1}
    # the training inputs as the probe keep a cache of their own beside the held-out one's
    on_train = dict(epochs=[1], probe_size=33, layers=["fc9"], probe_split="train-all")
    unit_table([run], **on_train, stats=counts)
    assert counts == {"computed": 1, "cached": 0}
    for kw in (dict(epochs=[1], probe_size=33, layers=["fc9"]), on_train):
        unit_table([run], **kw, stats=counts)
        assert counts == {"computed": 0, "cached": 1}
    from natgrad.training import load_checkpoint
    from natgrad.training.checkpoint import read_checkpoint, write_checkpoint

    model, info = load_checkpoint(run, 1)
    with torch.no_grad():
        model.fc9.bias.add_(1.0)
    _, full = read_checkpoint(run, 1)
    write_checkpoint(run, 1, model, torch.optim.SGD(model.parameters(), lr=0.1), full)
    unit_table([run], epochs=[1], probe_size=33, layers=["fc9"], stats=counts)
    assert counts == {"computed": 1, "cached": 0}


def test_epoch_zero_is_rebuilt_exactly(demo_dir):
    """The epoch-0 net reproduces the activations recorded before the first step and is
    shared by the unit types of one seed."""
    from natgrad.training import load_activations, record_activations

    runs = {u: demo_dir / "runs" / f"mnist-fc-{u}-digits-s0" for u in ("elu", "relu")}
    models = {u: load_model(r, 0) for u, r in runs.items()}
    for a, b in zip(models["elu"].parameters(), models["relu"].parameters(), strict=True):
        assert torch.equal(a, b)
    x, _ = probe_set(runs["elu"], split="train")
    recorded = load_activations(runs["elu"], 0)
    again = record_activations(models["elu"], x)["means"]
    for layer, mean in recorded.items():
        assert_close(again[layer], mean, what=layer)


# --- statistics: seeds are the replicates ---------------------------------------------


def _pairs(diffs, *, base=1.0):
    n = len(diffs)
    return pd.DataFrame({
        "unit_type": ["elu"] * n + ["relu"] * n,
        "seed": list(range(n)) * 2,
        "rho_plain": [base + d for d in diffs] + [base] * n,
    })  # fmt: skip


def test_permutation_p_is_the_exact_sign_flip_p():
    diffs = [0.3, -0.1, 0.2, 0.25, 0.05]
    row = stats.paired_comparison(_pairs(diffs), "rho_plain").iloc[0]
    d = np.array(diffs)
    flips = [abs(np.mean(d * np.array(s))) for s in itertools.product([1, -1], repeat=len(d))]
    exact = np.mean(np.array(flips) >= abs(d.mean()) - 1e-12)
    assert row["p"] == pytest.approx(exact)
    assert row["n"] == 5 and row["p_min"] == pytest.approx(2 / 2**5)
    assert row["lo"] <= row["diff"] <= row["hi"]


def test_sign_flip_p_draws_random_patterns_above_twenty_seeds():
    """Above 20 seeds the sign-flip p comes from a fixed generator's random patterns: the
    same p on every call, near the exact one's large-sample value (the normal approximation
    of the permutation distribution), and never below its floor."""
    from scipy.stats import norm

    rng = np.random.default_rng(1)
    d = rng.normal(0.2, 1.0, 100)
    p = stats.sign_flip_p(d)
    assert p == stats.sign_flip_p(d)
    z = abs(d.mean()) / math.sqrt(np.sum(d**2)) * len(d)  # the sign-flip mean's sd: sqrt(Σd²)/n
    assert p == pytest.approx(2 * norm.sf(z), abs=0.01)
    far = stats.paired_comparison(_pairs(list(np.full(30, 0.3) + rng.normal(0, 0.01, 30))),
                                  "rho_plain").iloc[0]  # fmt: skip
    assert far["p"] == pytest.approx(2 / 100_001) and far["p_min"] == pytest.approx(2 / 100_001)
    assert stats.sign_flip_at_floor(far["p"], 30) and not stats.sign_flip_at_floor(p, 100)
    assert stats.sign_flip_p_min(20) == 2 / 2**20 and not stats.sign_flip_at_floor(2 / 2**20, 20)
    assert "exact" in stats.sign_flip_method(20) and "100,000 random" in stats.sign_flip_method(21)


def test_rank_correlation_against_scipy_and_every_pairing():
    """Spearman's r is scipy's; at 6 seeds (720 pairings, fewer than the permutations drawn)
    the p is the exact one, counted over every pairing by brute force; at 100 seeds the
    random pairings' p is near scipy's large-sample p, the same on every call, and the CI
    holds r; ties, non-finite pairs and constant samples are handled."""
    from scipy.stats import spearmanr

    x, y = np.array([0.3, -0.1, 0.2, 0.25, 0.05, 0.4]), np.array([1.0, 0.2, 0.1, 0.9, 0.3, 0.5])
    row = stats.rank_correlation(x, y)
    assert row["r"] == pytest.approx(spearmanr(x, y).statistic, rel=1e-12) and row["n"] == 6
    r_all = [spearmanr(x, np.array(q)).statistic for q in itertools.permutations(y)]
    exact = np.mean(np.abs(r_all) >= abs(row["r"]) - 1e-12)
    assert row["p"] == pytest.approx(exact, rel=1e-12)

    rng = np.random.default_rng(3)
    a = rng.normal(size=100)
    b = 0.3 * a + rng.normal(size=100)
    b[:10] = np.round(b[:10])  # ties
    big = stats.rank_correlation(np.append(a, np.nan), np.append(b, 1.0))
    sp = spearmanr(a, b)
    assert big["n"] == 100 and big["r"] == pytest.approx(sp.statistic, rel=1e-12)
    assert big["p"] == pytest.approx(sp.pvalue, abs=0.01) and big == stats.rank_correlation(a, b)
    assert big["lo"] < big["r"] < big["hi"] and big["ci_method"] == "BCa"
    assert not big["p_exact"] and big["p_min"] == 2 / 100_001
    flat = stats.rank_correlation(np.ones(10), a[:10])
    assert flat["n"] == 10 and all(math.isnan(flat[k]) for k in ("r", "lo", "hi", "p"))
    assert math.isnan(stats.rank_correlation([1.0, 2.0], [2.0, 1.0])["r"])  # < 3 pairs


def test_rank_correlation_ci_and_floor_by_a_second_route():
    """The bootstrap CI is scipy's BCa of ``spearmanr`` itself, resample for resample (one
    call per resample, not the vectorised ranks); a perfectly monotone pair of 100 seeds sits
    at the floor of the random pairings, 2/(B + 1)."""
    from scipy import stats as st

    rng = np.random.default_rng(3)
    a = rng.normal(size=40)
    b = 0.3 * a + rng.normal(size=40)
    row = stats.rank_correlation(a, b, resamples=2000)
    ci = st.bootstrap((a, b), lambda x, y: st.spearmanr(x, y).statistic, paired=True,
                      vectorized=False, n_resamples=2000, method="BCa",
                      random_state=np.random.default_rng(stats.SEED)).confidence_interval  # fmt: skip
    assert (row["lo"], row["hi"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
    mono = stats.rank_correlation(np.arange(100.0), np.arange(100.0) ** 3, permutations=999)
    assert mono["r"] == 1.0 and mono["p"] == pytest.approx(2 / 1000) == mono["p_min"]
    assert mono["p_at_floor"] and not row["p_at_floor"]


def test_sentences_follow_the_confidence_interval():
    clear = stats.paired_comparison(
        _pairs([0.30, 0.32, 0.29, 0.31, 0.33, 0.30, 0.28, 0.31]), "rho_plain"
    )
    assert clear["lo"].iloc[0] > 0
    assert (
        "ELU (α=1) higher than ReLU" in clear["text"].iloc[0] and "better" in clear["text"].iloc[0]
    )
    unclear = stats.paired_comparison(
        _pairs([0.3, -0.3, 0.1, -0.2, 0.05, -0.1, 0.2, -0.05]), "rho_plain"
    )
    assert unclear["lo"].iloc[0] < 0 < unclear["hi"].iloc[0]
    assert "no difference resolved" in unclear["text"].iloc[0]


def test_seed_values_summarise_units_per_run_before_any_comparison(demo_dir):
    t = read_tables(demo_dir / "tables")
    seeds, comparison = t["seeds"], t["comparison"]
    assert len(seeds) == 3 * 2  # unit types × seeds: the replicates
    # every test pairs seeds (2 here), never layers or units; a metric undefined for a run
    # (the variance over one epoch) drops that seed from its pairs
    assert comparison["n"].max() == 2 and (comparison["n"] <= 2).all()
    assert (comparison[comparison["metric"].str.startswith("rho_")]["n"] == 2).all()
    units = t["units"]
    last = units[(units["epoch"] == 1) & (units["input_from"] == "units") & (units["dead"] == 0)]
    for _, row in seeds.iterrows():
        sub = last[(last["unit_type"] == row["unit_type"]) & (last["seed"] == row["seed"])]
        assert row["rho_plain"] == pytest.approx(sub["rho_plain"].median())
        est = sub[sub["estimable"] == 1]["k"]
        assert (math.isnan(row["k"]) and est.empty) or row["k"] == pytest.approx(est.median())


def test_claims_per_seed_from_curves():
    curves = pd.DataFrame({
        "run": ["a"] * 4 + ["b"] * 4, "unit_type": ["elu"] * 4 + ["relu"] * 4, "seed": [0] * 8,
        "epoch": [0, 1, 2, 3] * 2,
        "train_loss": [2.0, 1.0, 0.5, 0.4, 2.0, 1.5, 1.0, 0.8],
        "test_error": [0.9, 0.5, 0.3, 0.2, 0.9, 0.6, 0.5, 0.4],
        "median_all": [0.1, 0.2, -0.1, 0.05, 0.1, 0.3, 0.4, 0.5],
    })  # fmt: skip
    claims, threshold = stats.claims_per_seed(curves, last=2)
    assert threshold == pytest.approx(0.8)  # the worst unit type's final loss
    a = claims[claims["run"] == "a"].iloc[0]
    b = claims[claims["run"] == "b"].iloc[0]
    assert b["epochs_to_loss"] == 3 and b["epochs_reached"] == 1
    claims, _ = stats.claims_per_seed(curves, last=2, threshold=0.45)
    assert claims[claims["run"] == "b"].iloc[0]["epochs_to_loss"] == 4  # censored at E + 1
    assert claims[claims["run"] == "b"].iloc[0]["epochs_reached"] == 0
    claims, _ = stats.claims_per_seed(curves, last=2)
    assert a["epochs_to_loss"] == 2 and a["train_loss_auc"] == pytest.approx((1.0 + 0.5 + 0.4) / 3)
    assert a["abs_median_activation"] == pytest.approx(0.05)
    assert a["test_error"] == pytest.approx(0.25)
    assert a["median_activation_var"] == pytest.approx(np.var([0.2, -0.1, 0.05], ddof=1))


def test_unit_tables_read_an_autoencoder_run(tmp_path):
    """The unit table of an autoencoder's run directory (loss bce_logits; what ``natgrad
    tables`` reads): taken under the Bernoulli model of its outputs with its inputs as
    targets, equal to unit_statistics(likelihood="bernoulli") on the same probe."""
    import dataclasses

    from natgrad.analysis.runs import load_model, probe_set, unit_table
    from natgrad.analysis.unitstats import unit_statistics
    from natgrad.training import default_config, train

    cfg = dataclasses.replace(default_config("mnist-ae"), dataset="digits", epochs=1,
                              train_size=64, probe_size=16, checkpoint_every=1)  # fmt: skip
    run = train(cfg, tmp_path / "ae", device="cpu", progress=False).run_dir
    layers = ["encoder.fc4", "decoder.fc1"]  # d+1 = 251, 31 (the 1000-wide layers: GBs)
    got = unit_table([run], epochs=[1], probe_size=40, layers=layers)
    x, _ = probe_set(run, 40)
    want = unit_statistics(load_model(run, 1), x, x.flatten(1), layers=layers,
                           likelihood="bernoulli")  # fmt: skip
    assert len(got) == len(want) == 30 + 250
    np.testing.assert_allclose(got["rho_plain"], want["rho_plain"], rtol=1e-9, equal_nan=True)
    # the same through the command line: ``--layers`` names them; without it the 1000-wide
    # layers exceed the memory budget and the error says which flag analyses fewer
    from natgrad.analysis.csvtables import read_csv
    from natgrad.cli import main

    out = tmp_path / "tables"
    args = ["tables", str(run), "--out", str(out), "--epochs", "1", "--probe-size", "40"]
    assert main([*args, "--layers", ",".join(layers)]) == 0
    units = read_csv(out / "units.csv")
    assert sorted(set(units["layer"])) == sorted(layers) and len(units) == len(want)
    np.testing.assert_allclose(units["rho_plain"], want["rho_plain"], rtol=1e-9, equal_nan=True)


def test_tables_name_the_layers_flag_when_the_net_exceeds_the_memory_budget(
    tmp_path, capsys, monkeypatch
):
    """An autoencoder's dense unit blocks exceed a machine with 200 MB free; ``natgrad tables``
    refuses before any work and names ``--layers``."""
    import dataclasses

    import natgrad.memory
    from natgrad.cli import main
    from natgrad.training import default_config, train

    cfg = dataclasses.replace(default_config("mnist-ae"), dataset="digits", epochs=1,
                              train_size=64, probe_size=16, checkpoint_every=1)  # fmt: skip
    run = train(cfg, tmp_path / "ae", device="cpu", progress=False).run_dir
    monkeypatch.setattr(natgrad.memory, "available_memory", lambda: 200 * 2**20)
    code = main(["tables", str(run), "--out", str(tmp_path / "t"), "--epochs", "0"])
    assert code == 2 and "--layers" in capsys.readouterr().err


def test_tables_refuse_to_pool_two_arms_of_one_unit_type_and_seed(tmp_path, capsys):
    """Two runs of ReLU seed 0 that differ in optimizer and rate (``natgrad compare``'s
    ReLU+SGD and ReLU+unit-NG) would be pooled as one replicate; ``natgrad tables`` refuses,
    naming both runs and the settings that differ."""
    import dataclasses

    from natgrad.cli import main
    from natgrad.training import default_config, train

    base = dataclasses.replace(default_config("mnist-fc"), dataset="digits", epochs=1, width=8,
                               depth=2, train_size=64, probe_size=16, checkpoint_every=1)  # fmt: skip
    for name, changes in {
        "relu-sgd-s0": {},
        "relu-unit-ng-s0": dict(optimizer="unit-ng", lr=1e-3),
    }.items():
        train(dataclasses.replace(base, **changes), tmp_path / "runs" / name, device="cpu",
              progress=False)  # fmt: skip
    code = main(["tables", str(tmp_path / "runs"), "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert code == 2 and "relu-sgd-s0" in err and "relu-unit-ng-s0" in err
    assert "optimizer, lr" in err and not (tmp_path / "t").exists()


def test_tables_refuse_replicates_that_differ_or_spans_that_differ(tmp_path, capsys):
    """Seeds are replicates of one arm and the claims come from each run's curves, so
    ``natgrad tables`` refuses, naming the runs: ELU seeds trained at two rates (they were
    pooled), and runs of unequal length (their AUCs over other spans were compared, and the
    shorter runs' unit measures went missing at the longest run's last epoch)."""
    import dataclasses

    from natgrad.cli import main
    from natgrad.training import default_config, train

    base = dataclasses.replace(default_config("mnist-fc"), dataset="digits", epochs=1, width=8,
                               depth=2, train_size=64, probe_size=16, checkpoint_every=1)  # fmt: skip
    runs = tmp_path / "runs"
    for unit in ("elu", "relu"):
        for seed in (0, 1):
            train(dataclasses.replace(base, unit=unit, seed=seed), runs / f"{unit}-s{seed}",
                  device="cpu", progress=False)  # fmt: skip
    other_rate = tmp_path / "other_rate"
    shutil.copytree(runs, other_rate)
    train(dataclasses.replace(base, unit="elu", seed=1, lr=0.5), other_rate / "elu-s1",
          device="cpu", progress=False, resume=False)  # fmt: skip
    assert main(["tables", str(other_rate), "--out", str(tmp_path / "t1")]) == 2
    err = capsys.readouterr().err
    assert "elu-s0" in err and "elu-s1" in err and "differ in lr" in err
    other_schedule = tmp_path / "other_schedule"  # any field of the arm, not a short list
    shutil.copytree(runs, other_schedule)
    train(dataclasses.replace(base, unit="elu", seed=1, lr_schedule=((1, 0.05),)),
          other_schedule / "elu-s1", device="cpu", progress=False, resume=False)  # fmt: skip
    assert main(["tables", str(other_schedule), "--out", str(tmp_path / "t5")]) == 2
    assert "differ in lr_schedule" in capsys.readouterr().err
    longer = tmp_path / "longer"
    shutil.copytree(runs, longer)
    train(dataclasses.replace(base, unit="elu", seed=0, epochs=2), longer / "elu-s0",
          device="cpu", progress=False)  # fmt: skip
    assert main(["tables", str(longer), "--out", str(tmp_path / "t2")]) == 2
    err = capsys.readouterr().err
    assert "2 epochs: elu-s0; 1 epochs: elu-s1, relu-s0, relu-s1" in err
    assert not (tmp_path / "t1").exists() and not (tmp_path / "t2").exists()
    other_net = tmp_path / "other_net"
    shutil.copytree(runs, other_net)
    train(dataclasses.replace(base, unit="relu", seed=0, width=9), other_net / "relu-s0",
          device="cpu", progress=False, resume=False)  # fmt: skip
    assert main(["tables", str(other_net), "--out", str(tmp_path / "t4")]) == 2
    assert "differ in width (width: 8 vs 9)" in capsys.readouterr().err
    # no hidden-fed layer in --layers: every summary would be empty
    assert main(["tables", str(runs), "--out", str(tmp_path / "t3"), "--layers", "fc1"]) == 2
    assert "none is fed by hidden units" in capsys.readouterr().err


def test_a_cached_unit_table_names_the_run_as_it_is_now_and_evicts_whole(demo_dir, tmp_path):
    """A run folder renamed after its analysis reads back under its new name (the cache kept
    the old one, so units.csv and curves.csv named the run apart), and a cache entry replaced
    under new settings goes with its checksum file (they piled up)."""
    run = tmp_path / "before"
    shutil.copytree(find_runs(demo_dir / "runs")[0], run)
    counts: dict = {}
    unit_table([run], epochs=[1], probe_size=32, layers=["fc9"], stats=counts)
    run.rename(tmp_path / "after")
    again = unit_table([tmp_path / "after"], epochs=[1], probe_size=32, layers=["fc9"],
                       stats=counts)  # fmt: skip
    assert counts["cached"] == 1 and set(again["run"]) == {"after"}
    unit_table([tmp_path / "after"], epochs=[1], probe_size=31, layers=["fc9"])
    entries = sorted(p.name for p in (tmp_path / "after" / "analysis").glob("units-e0001-*"))
    assert len(entries) == 2 and entries[1] == entries[0] + ".sha256"


def test_curve_table_of_committed_records_without_activations(tmp_path):
    """A study's committed records (config.json and metrics.jsonl only) give the same curves,
    ``median_all`` NaN; reading activations that are not there is an error naming the file."""
    import dataclasses
    import shutil

    from natgrad.analysis.runs import curve_table
    from natgrad.training import default_config, train

    cfg = dataclasses.replace(default_config("mnist-fc"), dataset="digits", epochs=2, width=8,
                              depth=2, train_size=64, probe_size=16)  # fmt: skip
    run = train(cfg, tmp_path / "full", device="cpu", progress=False).run_dir
    rec = tmp_path / "rec"
    rec.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(run / name, rec / name)
    full, records = curve_table([run]), curve_table([rec], activations=False)
    assert records["median_all"].isna().all() and full["median_all"].notna().all()
    cols = [c for c in full.columns if c not in ("median_all", "run")]
    pd.testing.assert_frame_equal(records[cols], full[cols])
    with pytest.raises(DataFileError, match="summary.jsonl"):
        curve_table([rec])


def test_the_plots_take_a_notebook_users_axes_title_and_layers():
    """``plot_efficiencies(ax=, title=)`` draws into a given axes; ``plot_layer_metric``
    draws only the ``layers`` asked for, under ``title``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from natgrad.analysis.plots import plot_efficiencies, plot_layer_metric

    summary = pd.DataFrame([dict(unit_type=u, n_seeds=3, rho_plain_mean=m, rho_plain_lo=m - 0.1,
                                 rho_plain_hi=m + 0.1) for u, m in (("elu", 0.6), ("relu", 0.4))])  # fmt: skip
    fig, ax = plt.subplots()
    assert plot_efficiencies(summary, ["rho_plain"], ax=ax, title="mine") is fig
    assert ax.get_title() == "mine" and len(fig.axes) == 1
    table = pd.DataFrame([dict(layer=f"fc{i}", layer_index=i, unit_type=u, epoch=e, seed=0,
                               unit=k, s_c=float(i + k)) for i in (1, 2, 3) for u in ("elu", "relu")
                          for e in (0, 1) for k in range(3)])  # fmt: skip
    fig2 = plot_layer_metric(table, "s_c", layers=["fc2", "fc3"], ncols=2, title="two layers")
    titles = [a.get_title() for a in fig2.axes if a.get_visible()]
    assert titles == ["fc2", "fc3"] and fig2._suptitle.get_text() == "two layers"
    plt.close("all")


def test_claims_cover_every_trained_epoch_whichever_epochs_are_analysed(demo_dir, tmp_path):
    """``write_tables(epochs=[0])`` analyses the units at epoch 0 only, but the curves and the
    claims from them (training-loss AUC, test error) cover the runs' every trained epoch: a
    study that analyses an early checkpoint still judges learning speed over its training."""
    from natgrad.analysis import stats
    from natgrad.analysis.summary import write_tables

    runs = sorted(p for p in (demo_dir / "runs").iterdir() if (p / "config.json").is_file())
    write_tables(runs, tmp_path / "t", epochs=[0], sweep=None, probe_size=160)
    t = read_tables(tmp_path / "t")
    assert set(t["units"]["epoch"]) == {0}
    full = curve_table(runs)
    assert t["curves"]["epoch"].max() == full["epoch"].max() >= 1
    claims, _ = stats.claims_per_seed(full)
    for claim in ("train_loss_auc", "test_error"):
        got = t["seeds"].set_index(["unit_type", "seed"])[claim]
        want = claims.set_index(["unit_type", "seed"])[claim]
        assert_close(torch.tensor(got.loc[want.index].to_numpy()), torch.tensor(want.to_numpy()),
                     what=claim, rtol=1e-12)  # fmt: skip


def test_the_analysis_sees_the_data_the_run_trained_on(tmp_path):
    """The unit table's data (``runs.training_set``, ``probe_set``) are the run's own: its
    first ``train_size`` training images and its preprocessing, fitted on them, as training
    had them (built here by hand from the raw data set)."""
    import dataclasses

    from natgrad.analysis.runs import probe_set, training_set
    from natgrad.data import load_dataset, standardise
    from natgrad.training import default_config, train

    cfg = dataclasses.replace(default_config("mnist-fc"), dataset="digits", epochs=1, width=8,
                              depth=2, train_size=64, probe_size=16,
                              preprocess="standardise")  # fmt: skip
    run = train(cfg, tmp_path / "r", device="cpu", progress=False).run_dir
    raw = load_dataset("digits", seed=cfg.seed)
    want = standardise(raw.with_(train_x=raw.train_x[:64], train_y=raw.train_y[:64]))
    x, y = training_set(run)
    assert torch.equal(x, want.train_x) and torch.equal(y, raw.train_y[:64])
    px, py = probe_set(run, 16)  # digits has no validation split: the test split's first 16
    assert torch.equal(px, want.test_x[:16]) and torch.equal(py, raw.test_y[:16])
    assert not torch.equal(px, raw.test_x[:16])  # preprocessed, not the raw images
    assert probe_set(run, split="train-all")[0].shape[0] == 64
    # natgrad tables --probe train-all: the unit Fishers of those 64 inputs (a second route)
    import json

    import natgrad
    from natgrad.analysis.csvtables import read_csv
    from natgrad.analysis.runs import load_model
    from natgrad.cli import main

    assert main(["tables", str(tmp_path / "r"), "--out", str(tmp_path / "t"), "--epochs", "1",
                 "--probe", "train-all"]) == 0  # fmt: skip
    units = read_csv(tmp_path / "t" / "units.csv")
    want_f = natgrad.unit_fishers(load_model(run, 1), want.train_x)
    for layer, f in want_f.items():
        got = units[units["layer"] == layer].sort_values("unit")["n_eff"].to_numpy()
        np.testing.assert_allclose(got, f.n_eff.double().numpy(), rtol=1e-5)
    context = json.loads((tmp_path / "t" / "context.json").read_text())
    assert context["probe"] == "the inputs the runs trained on (all)"
    # a probe size beyond the split takes all of it, and the context says so (it said the
    # size asked for, a helper's find)
    assert main(["tables", str(tmp_path / "r"), "--out", str(tmp_path / "t2"), "--epochs", "1",
                 "--probe", "train-all", "--probe-size", "1000"]) == 0  # fmt: skip
    context = json.loads((tmp_path / "t2" / "context.json").read_text())
    assert context["probe"] == "the inputs the runs trained on (all 64; 1000 were asked for)"
    # a run whose recorded data are not the data loaded for it now: refused, naming it
    meta = json.loads((run / "config.json").read_text())
    for key in ("data_sha256", "held_out_sha256"):  # the probe is the held-out split
        changed = dict(meta, **{key: "0" * 16})
        (run / "config.json").write_text(json.dumps(changed))
        with pytest.raises(DataFileError, match=rf"/r: it was trained and evaluated on other "
                                                rf"data .*\({key} 0{{16}} → "):  # fmt: skip
            probe_set(run, 16)


def test_an_autoencoders_initial_net_is_rebuilt_without_its_checkpoint(tmp_path):
    """``load_model(run, 0)`` of a run without an epoch-0 checkpoint (``checkpoint_initial``
    off, or a run carried with its latest checkpoint only) rebuilds the initial net as
    training built it, the autoencoder (no classes) included."""
    from natgrad.analysis.runs import load_model
    from natgrad.training import default_config, train
    from natgrad.training.engine import initial_model, run_data

    cfg = default_config("mnist-ae", dataset="digits", epochs=1, probe_size=16, batch_size=256,
                         checkpoint_initial=False)  # fmt: skip
    run = train(cfg, tmp_path / "ae", device="cpu", progress=False).run_dir
    assert not (run / "checkpoints" / "epoch_0000.safetensors").exists()
    rebuilt, made = load_model(run, 0), initial_model(cfg, run_data(cfg)).eval()
    x = torch.rand(3, 1, 8, 8, dtype=next(made.parameters()).dtype)
    assert torch.equal(rebuilt(x), made(x)) and rebuilt(x).shape == (3, 64)


def _units(dead_run=("relu", 1), seeds=3):
    rows = []
    for t in ("elu", "relu"):
        for s in range(seeds):
            for u in range(4):
                dead = int((t, s) == dead_run)
                rows.append(dict(unit_type=t, seed=s, epoch=5, layer="fc2", input_from="units",
                                 dead=dead, rho_plain=np.nan if dead else 0.5 + 0.1 * u + 0.01 * s,
                                 estimable=0 if dead else 1, n_eff=np.nan if dead else 20.0,
                                 fan_in=4))  # fmt: skip
    return pd.DataFrame(rows)


def test_a_run_whose_units_all_died_keeps_its_row():
    """``seed_values``: a run whose analysed units are all dead is a replicate with dead share
    1 and NaN medians, not a missing row (which made its dead share vanish from the
    comparison of ``dead``)."""
    sv = stats.seed_values(_units(), ["rho_plain"])
    row = sv[(sv["unit_type"] == "relu") & (sv["seed"] == 1)].iloc[0]
    assert len(sv) == 6 and row["dead"] == 1.0 and np.isnan(row["rho_plain"])
    assert list(sv.columns) == ["unit_type", "seed", "epoch", "rho_plain", "dead", "estimable",
                                "n_eff_over_d1"]  # fmt: skip
    c = stats.paired_comparison(sv, "dead").iloc[0]
    assert c["n"] == 3 and c["diff"] == pytest.approx(-1 / 3)


def test_equal_differences_on_few_seeds_are_not_called_resolved():
    """Every seed's difference the same gives a zero-width CI; the text and the report call it
    resolved only where the sign-flip p allows (2 seeds: p = 0.5; 10 seeds: 0.002)."""
    from natgrad.analysis.endpoints import Endpoint, evaluate
    from natgrad.analysis.report import _resolved

    def values(n, d):
        return pd.DataFrame({"unit_type": ["elu"] * n + ["relu"] * n, "seed": list(range(n)) * 2,
                             "x": [1.0 + d] * n + [1.0] * n})  # fmt: skip

    two, ten = (stats.paired_comparison(values(n, 0.1), "x").iloc[0] for n in (2, 10))
    assert two["ci_method"] == ten["ci_method"] == "exact" and two["lo"] == two["hi"] > 0
    assert "no difference resolved" in two["text"] and "sign-flip p = 0.5" in two["text"]
    assert "higher than" in ten["text"] and not _resolved(two) and _resolved(ten)
    a = pd.DataFrame({"unit_type": [u for u in "abcd" for _ in range(2)], "seed": [0, 1] * 4,
                      "x": [1.0, 1.0, 0, 0, 0, 0, 0, 0]})  # fmt: skip
    inter = evaluate(a, [Endpoint("x", "a", "b", interaction=("c", "d"))]).iloc[0]
    assert inter["text"].endswith("interaction none resolved.")


def test_summaries_keep_a_mean_inside_its_ci_and_name_each_ci_method():
    """An infinite seed value (a singular block's condition number) makes the mean infinite
    and leaves no CI (the CI over the finite values alone excluded the mean); a row's
    ``ci_method`` no longer depends on which metric came last."""
    values = pd.DataFrame({"unit_type": "elu", "seed": range(4), "cond": [1.0, 2.0, 3.0, np.inf],
                           "z": 2.0, "y": [0.1, 0.4, 0.2, 0.3]})  # fmt: skip
    row = stats.group_summary(values, ["cond", "y"]).iloc[0]
    assert row["cond_mean"] == np.inf and np.isnan(row["cond_lo"]) and np.isnan(row["cond_hi"])
    assert row["y_lo"] < row["y_mean"] < row["y_hi"]
    for order in (["y", "z"], ["z", "y"]):  # equal values ("exact") do not name the row
        assert stats.ci_summary(values, ["unit_type"], order)["ci_method"].item() == "t"


def test_a_run_that_diverged_in_its_last_epochs_has_no_final_error():
    """``test_error`` and ``val_error_last`` (means over the last epochs) are NaN for a run
    whose last epochs are NaN (diverged), as its AUC is; they were averaged over the epochs
    left."""
    rows = [dict(run=f"elu-s{s}", unit_type="elu", seed=s, epoch=e, train_loss=1.0 / (e + 1),
                 test_error=0.3, val_error=0.3) for s in (0, 1) for e in range(5)]  # fmt: skip
    curves = pd.DataFrame(rows)
    last = (curves["seed"] == 1) & (curves["epoch"] == 4)
    curves.loc[last, ["train_loss", "test_error", "val_error"]] = np.nan
    claims, _ = stats.claims_per_seed(curves, last=3)
    one = claims.set_index("seed").loc[1]
    assert np.isnan(one["test_error"]) and np.isnan(one["val_error_last"])
    assert claims.set_index("seed").loc[0, "test_error"] == pytest.approx(0.3)
    # curve_table keeps only the epochs a run has: a run that ends early reads the same
    short, _ = stats.claims_per_seed(curves[~last], last=3)
    cols = ["test_error", "val_error_last", "train_loss_auc", "test_error_at_best_val"]
    pd.testing.assert_frame_equal(short[cols], claims[cols])
    # the median's variance over epochs is NaN for it too (it was taken over the epochs it
    # lasted), and the default loss threshold comes from the runs that lasted (a helper's find)
    acts = curves.assign(median_all=curves["epoch"] * 0.1 + curves["seed"])
    acts.loc[last, "median_all"] = np.nan
    claims, threshold = stats.claims_per_seed(acts[~last], last=3)
    assert np.isnan(claims.set_index("seed").loc[1, "median_activation_var"])
    assert claims.set_index("seed").loc[0, "median_activation_var"] > 0
    assert threshold == pytest.approx(1.0 / 5)  # seed 0's final loss, not seed 1's 1/4
    # a run recording activations every k-th epoch (record_every) keeps its variance over
    # the recorded epochs (NaN between them is not a divergence; a reviewer's find)
    sparse = acts.assign(median_all=np.where(acts["epoch"] % 2 == 0, acts["median_all"], np.nan))
    claims, _ = stats.claims_per_seed(sparse[sparse["seed"] == 0], last=3)
    want = sparse[(sparse["seed"] == 0) & (sparse["epoch"] >= 1)]["median_all"].var(ddof=1)
    assert claims["median_activation_var"].item() == pytest.approx(want) and want > 0


def test_a_censored_time_is_not_averaged_in_the_summary():
    """Epochs to loss of a unit type with a run that never reached the level has no mean or
    CI in the summary (it counted that run at the epoch after the last); a type whose runs all
    reached it is averaged."""
    values = pd.DataFrame({"unit_type": ["elu"] * 3 + ["relu"] * 3, "seed": [0, 1, 2] * 2,
                           "epochs_to_loss": [2.0, 3.0, 2.0, 4.0, 6.0, 6.0],
                           "epochs_reached": [1, 1, 1, 1, 0, 0]})  # fmt: skip
    s = stats.group_summary(values, ["epochs_to_loss"]).set_index("unit_type")
    assert s.loc["elu", "epochs_to_loss_mean"] == pytest.approx(7 / 3)
    assert s.loc["relu", ["epochs_to_loss_mean", "epochs_to_loss_lo"]].isna().all()


def test_sign_flip_p_counts_patterns_tied_in_exact_arithmetic():
    """Sign patterns whose means are equal in exact arithmetic but differ in the last bits of
    their float sums are ties: they count as at least as extreme (scipy's relative tie
    tolerance misses them where the mean is near 0, giving p = 0.9375 for an exact p of 1)."""
    from fractions import Fraction

    def exact_p(d):
        q = [Fraction(str(x)) for x in d]  # the decimals as written
        obs = abs(sum(q))
        pats = list(itertools.product([1, -1], repeat=len(q)))
        return sum(abs(sum(s * x for s, x in zip(p, q, strict=True))) >= obs for p in pats) / len(
            pats
        )

    for d in (
        [0.1, 0.2, 0.3, -0.6, 0.7, -0.7, 0.3, -0.3],
        [0.03, -0.17, 0.11, 0.17, -0.03, -0.11, 0.2, -0.2],
        [0.1, 0.2, -0.3, 0.4, 0.05, 0.15],
        [0.1, 0.2, -0.3, 3e-13],  # Σd/Σ|d| at half a 1e-12 step: a rounding grid split a tie
        [1e4, 1e-7, 2e-7, 3e-7],  # genuine differences far below Σ|d|: not ties (p 1/8)
    ):
        assert stats.sign_flip_p(d) == pytest.approx(exact_p(d), abs=1e-12), d


def test_log_loss_auc_of_a_zero_loss_is_minus_infinity():
    """A training loss of exactly 0 (float32 cross-entropy can round to it) has log -inf: the
    log AUC says so rather than standing in -300 for that epoch (which moved a 100-epoch mean
    by -3, a made-up number)."""
    assert stats.loss_auc([1.0, 0.0], log=True) == -math.inf
    assert stats.loss_auc([1.0, 0.0]) == 0.5
    assert math.isnan(stats.loss_auc([1.0, math.nan], log=True))


def test_record_activations_refuses_a_unit_module_used_twice_and_keeps_every_mode():
    """One activation module used at two depths fired its hook twice per forward and was
    recorded as one layer whose means blended both depths; and a submodule the caller froze in
    eval mode came back in train mode (model.train(was) resets every submodule)."""
    from torch import nn

    from natgrad.errors import InputError
    from natgrad.training.recording import record_activations

    act = nn.ELU()
    shared = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 4), act, nn.Linear(4, 2))
    with pytest.raises(InputError, match="'1'.*called 2 times"):
        record_activations(shared, torch.randn(5, 3))
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ELU(), nn.Linear(4, 2)).train()
    net[1].eval()  # frozen statistics, as a fine-tuning caller sets them
    record_activations(net, torch.randn(5, 3))
    assert net.training and not net[1].training and net[0].training


def test_a_paired_comparison_names_seeds_left_out_for_an_infinite_value():
    """A seed whose log AUC is −inf (its training loss reached exactly 0) cannot enter a mean:
    it was dropped without a word, though it is the seed most in that unit type's favour."""
    frame = _pairs([0.3, -0.1, 0.2, 0.25, 0.05])
    frame.loc[0, "rho_plain"] = -math.inf
    row = stats.paired_comparison(frame, "rho_plain").iloc[0]
    assert row["n"] == 4 and "Left out: seed(s) 0 with an infinite value" in row["text"]
    clean = stats.paired_comparison(_pairs([0.3, -0.1, 0.2, 0.25, 0.05]), "rho_plain").iloc[0]
    assert "Left out" not in clean["text"]


def test_tables_read_runs_only_as_far_as_the_study_declares(tmp_path):
    """A run folder trained further by an earlier, longer call (epochs is not part of a run's
    identity, so it counts as finished) was read to its end: a 3-epoch demo reported the
    6-epoch endpoints. ``last_epoch`` cuts every curve and claim at the declared length."""
    from natgrad.analysis import stats
    from natgrad.analysis.summary import write_tables
    from natgrad.training import default_config, default_run_dir, train

    runs = []
    for unit in ("elu", "relu"):
        cfg = default_config("mnist-fc", dataset="digits", unit=unit, epochs=3, probe_size=64)
        runs.append(default_run_dir(cfg, tmp_path / "runs"))
        train(cfg, runs[-1], device="cpu", progress=False)
    full = curve_table(runs)
    last = 2
    write_tables(runs, tmp_path / "t", epochs=[0], sweep=None, probe_size=160, last_epoch=last)
    t = read_tables(tmp_path / "t")
    assert t["curves"]["epoch"].max() == last and t["activations"]["epoch"].max() == last
    claims, _ = stats.claims_per_seed(full[full["epoch"] <= last])
    got = t["seeds"].set_index(["unit_type", "seed"])["train_loss_auc"]
    want = claims.set_index(["unit_type", "seed"])["train_loss_auc"]
    assert_close(torch.tensor(got.loc[want.index].to_numpy()), torch.tensor(want.to_numpy()),
                 what="train_loss_auc over the declared epochs", rtol=1e-12)  # fmt: skip


def test_runs_of_unequal_length_table_alike_up_to_the_declared_epoch(tmp_path):
    """With ``last_epoch`` the span check counts epochs only up to it: a run trained one epoch
    further is not 'another span' (it was refused, with advice to resume the shorter run)."""
    from natgrad.analysis.summary import one_run_per_replicate
    from natgrad.errors import InputError
    from natgrad.training import default_config, default_run_dir, train

    runs = []
    for unit, epochs in (("elu", 3), ("relu", 2)):
        cfg = default_config("mnist-fc", dataset="digits", unit=unit, epochs=epochs, probe_size=64)
        runs.append(default_run_dir(cfg, tmp_path))
        train(cfg, runs[-1], device="cpu", progress=False)
    with pytest.raises(InputError, match="different spans"):
        one_run_per_replicate(runs)
    one_run_per_replicate(runs, last_epoch=2)
    with pytest.raises(InputError, match="different spans"):
        one_run_per_replicate(runs, last_epoch=3)  # the ReLU run did not reach it


def test_a_figure_redrawn_from_the_same_data_has_the_same_bytes(tmp_path, monkeypatch):
    """``save_figure`` writes no creation date: a redraw a second later is byte-identical
    (the committed PDFs change only where their data do)."""
    import time

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from natgrad.analysis.plots import save_figure

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)  # matplotlib would fix the date itself

    def draw(stem):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1.0, 0.5, 0.2])
        return save_figure(fig, tmp_path / stem, formats=("pdf", "png"))

    first = draw("a")
    time.sleep(1.1)  # the PDF's date has a resolution of one second
    second = draw("b")
    for x, y in zip(first, second, strict=True):
        assert x.read_bytes() == y.read_bytes(), x.suffix


def test_the_answer_and_damping_figures_keep_their_text_off_the_data():
    """The answer figure writes each type's n_eff/(d+1) under its name (an annotation inside
    the axes met a CI bar); the damping sweep's legend stands beside the panels, not on the
    lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from natgrad.analysis.plots import plot_answer, plot_damping_sweep

    summary = pd.DataFrame([dict(unit_type=u, n_seeds=3, rho_plain_mean=m, rho_plain_lo=m - 0.1,
                                 rho_plain_hi=m + 0.1, n_eff_over_d1_mean=r, auc_mean=m,
                                 auc_lo=m - 0.01, auc_hi=m + 0.01)
                            for u, m, r in (("elu", 0.6, 9.42), ("relu", 0.4, 11.0))])  # fmt: skip
    fig = plot_answer(summary, "rho_plain", "auc")
    left = fig.axes[0]
    assert [t.get_text().split("\n")[-1] for t in left.get_xticklabels()] == ["9.42", "11"]
    assert not left.texts
    sweep = pd.DataFrame([dict(unit_type=u, seed=s, rel_damping=lam, rho_plain=0.3, rho_centred=0.4,
                               rho_quasidiagonal=0.5) for u in ("elu", "relu") for s in (0, 1)
                          for lam in (1e-4, 1e-3)])  # fmt: skip
    fig2 = plot_damping_sweep(sweep)
    assert all(ax.get_legend() is None for ax in fig2.axes) and len(fig2.legends) == 1
    plt.close("all")
