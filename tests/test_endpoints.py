"""Declared endpoints and their statistics: Holm, the censored sign test, CI methods, the
log-loss AUC, test error at the best-validation epoch, g from the training set."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as st
from torch.nn import functional as F

from natgrad.analysis import stats
from natgrad.analysis.endpoints import Endpoint, evaluate
from natgrad.analysis.unitstats import unit_statistics
from natgrad.errors import InputError
from natgrad.testing import assert_close


def test_holm_matches_its_definition_by_brute_force():
    rng = np.random.default_rng(1)
    for m in (1, 2, 3, 5):
        p = rng.uniform(0, 0.2, m)
        adj = stats.holm(p)
        # Holm's adjusted p_i = max over j with p_j <= p_i (in sorted order) of (m - rank_j) p_j
        order = np.argsort(p)
        expected = np.empty(m)
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, (m - rank) * p[i])
            expected[i] = min(1.0, running)
        assert np.allclose(adj, expected)
        assert (adj >= p).all()
    # an endpoint too few seeds could test keeps its place in the family (as p = 1): Holm over
    # the declared two, not over the one that had a p
    assert np.isnan(stats.holm([0.01, np.nan])[1]) and stats.holm([0.01, np.nan])[0] == 0.02
    assert stats.holm([np.nan, 0.01, 0.02]).tolist()[1:] == [0.03, 0.04]


def test_censored_comparison_orders_pairs_and_never_averages():
    # horizon 11: ELU reaches the level in every seed, ReLU in two of five
    v = pd.DataFrame({
        "unit_type": ["elu"] * 5 + ["relu"] * 5, "seed": list(range(5)) * 2,
        "t": [3.0, 4, 5, 4, 11, 6, 11, 11, 5, 11], "ok": [1, 1, 1, 1, 0, 1, 0, 0, 1, 0],
    })  # fmt: skip
    r = stats.censored_comparison(v, "t", "ok").iloc[0]
    # seeds 0-2 ELU earlier, seed 3 later (4 vs 5 is earlier: 4 < 5); seed 4 both censored
    assert (r["earlier"], r["later"], r["ties"]) == (4, 0, 1)
    assert r["censored_ref"] == 1 and r["censored_other"] == 3 and r["median_is_bound"]
    assert math.isclose(r["p"], st.binomtest(4, 4).pvalue)
    assert r["ci_method"] == "none (sign test)"
    # runs of different lengths: ELU's seed 0 censored at its horizon 3 (time 4) cannot be
    # ordered against ReLU's 6 (observed in a longer run), but is later than ReLU's 2; a seed
    # whose reached flag is missing drops out
    w = pd.DataFrame({
        "unit_type": ["elu"] * 3 + ["relu"] * 3, "seed": [0, 1, 2] * 2,
        "t": [4.0, 4, 3, 6, 2, 5], "ok": [0, 0, np.nan, 1, 1, 1],
    })  # fmt: skip
    r = stats.censored_comparison(w, "t", "ok").iloc[0]
    assert (r["n"], r["earlier"], r["later"], r["ties"]) == (2, 0, 1, 1)


def test_paired_comparison_orders_a_censored_time_and_averages_only_observed_ones():
    """``epochs_to_loss`` (registered with its ``epochs_reached`` column): a pair with a
    censored run goes through the censored sign test (no CI, no averaging); a pair whose every
    time was observed is averaged with its t interval as any metric."""
    v = pd.DataFrame({
        "unit_type": ["elu"] * 5 + ["relu"] * 5 + ["srelu"] * 5, "seed": list(range(5)) * 3,
        "epochs_to_loss": [3.0, 4, 5, 4, 11, 6, 11, 11, 5, 11, 2, 3, 3, 2, 4],
        "epochs_reached": [1, 1, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 1, 1, 1],
    })  # fmt: skip
    c = stats.paired_comparison(v, "epochs_to_loss").set_index("other")
    want = stats.censored_comparison(v[v["unit_type"] != "srelu"], "epochs_to_loss",
                                     "epochs_reached").iloc[0]  # fmt: skip
    relu = c.loc["relu"]
    assert relu["ci_method"] == "none (sign test)" and math.isnan(relu["lo"])
    assert (relu["earlier"], relu["later"], relu["ties"]) == (4, 0, 1)
    assert relu["diff"] == want["median_diff"] and relu["p"] == want["p"]
    assert relu["text"] == ("epochs to loss: ELU (α=1) earlier than ReLU in 4 of 5 seeds, later "
                            "in 0, tied in 1 (never reached: ELU (α=1) 1, ReLU 3 seeds); "
                            "compared by order, not averaged: sign test p = 0.125.")  # fmt: skip
    # ELU's seed 4 is censored, so the pair with SReLU is ordered too; drop it and it averages
    assert c.loc["srelu", "ci_method"] == "none (sign test)"
    observed = stats.paired_comparison(v[v["seed"] < 4], "epochs_to_loss").set_index("other")
    assert observed.loc["srelu", "ci_method"] == "t" and observed.loc["srelu", "diff"] == 1.5
    assert observed.loc["relu", "ci_method"] == "none (sign test)"


def test_paired_comparison_names_its_ci_method():
    v = pd.DataFrame({"unit_type": ["elu"] * 6 + ["relu"] * 6, "seed": list(range(6)) * 2,
                      "x": [1.0, 1.3, 1.1, 1.5, 1.2, 1.4, 2.0, 2.1, 2.6, 2.2, 2.4, 2.3]})  # fmt: skip
    row = stats.paired_comparison(v, "x").iloc[0]
    assert row["ci_method"] == "t" and row["lo"] < row["diff"] < row["hi"]
    with stats.mean_ci_method("bootstrap"):  # how the records before 2026-12-06 were written
        old = stats.paired_comparison(v, "x").iloc[0]
    assert old["ci_method"] == "BCa" and old["lo"] < old["diff"] < old["hi"]
    assert old["diff"] == row["diff"] and old["p"] == row["p"]  # only the interval differs
    assert stats.mean_ci_name() == "t"  # the switch ends with its block
    same = v.assign(x=[1.0] * 6 + [2.0] * 6)
    assert stats.paired_comparison(same, "x").iloc[0]["ci_method"] == "exact"


def test_equal_differences_with_float_noise_are_exact_not_a_resolved_t_ci():
    """Test errors are counts / 10000: 20 fewer errors on every seed gives differences equal
    but for their last bits, and the t CI of width ~1e-17 excluded 0 and called ELU better
    from 3 seeds (sign-flip p = 0.25; a helper's hunt). Equal up to rounding is "exact"."""
    e, r = np.array([123, 456, 789]) / 1e4, np.array([143, 476, 809]) / 1e4
    v = pd.DataFrame({"unit_type": ["elu"] * 3 + ["relu"] * 3, "seed": [0, 1, 2] * 2,
                      "test_error": np.r_[e, r]})  # fmt: skip
    assert np.ptp(e - r) > 0  # not bit-for-bit equal
    row = stats.paired_comparison(v, "test_error").iloc[0]
    assert row["ci_method"] == "exact" and row["p"] == 0.25
    assert stats.resolved_sign(row) == 0 and "no difference resolved" in row["text"]
    for method in ("t", "bootstrap"):
        with stats.mean_ci_method(method):
            assert stats.mean_ci(e - r)[2] == "exact"
    # the rounding is the operands': at errors of 0.78 the differences' own size missed it
    e, r = np.array([7842, 6537, 524]) / 1e4, np.array([7862, 6557, 544]) / 1e4
    v = v.assign(test_error=np.r_[e, r])
    assert np.ptp(e - r) > 4 * 3 * np.finfo(float).eps * 20 / 1e4
    assert stats.paired_comparison(v, "test_error").iloc[0]["ci_method"] == "exact"
    # each difference at its own operands' size: one seed's huge values hide no other's spread
    v = v.assign(test_error=np.r_[[1e16, 0.1, 0.2], [1e16, 0.101, 0.209]])
    assert stats.paired_comparison(v, "test_error").iloc[0]["ci_method"] == "t"


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_the_ci_of_a_mean_over_seeds_is_students_t(n):
    """:func:`stats.mean_ci` against SciPy's one-sample t test's interval (a second route),
    and wider than the bootstrap's at these n, which covers less (``bench/ci_coverage.py``)."""
    x = np.random.default_rng(n).normal(0.3, 1.0, n)
    lo, hi, how = stats.mean_ci(x)
    ref = st.ttest_1samp(x, 0.0).confidence_interval(stats.CONFIDENCE)
    assert how == "t"
    assert_close(np.array([lo, hi]), np.array([ref.low, ref.high]), what="t interval")
    if n >= 3:  # BCa is defined
        blo, bhi, _ = stats.bootstrap_ci(x)
        assert hi - lo > bhi - blo
    assert stats.mean_ci([1.0, np.nan, 1.0]) == (1.0, 1.0, "exact")
    assert stats.mean_ci([1.0, np.inf])[2] == "none"
    with pytest.raises(ValueError, match="unknown method 'BCa'"):
        with stats.mean_ci_method("BCa"):
            pass


def test_ci_changes_says_which_readings_moved():
    before = pd.DataFrame({"m": ["a", "b", "c"], "other": "relu", "lo": [0.1, -0.5, -0.1],
                           "hi": [0.4, -0.1, 0.2]})  # fmt: skip
    after = before.assign(lo=[-0.1, -0.6, 0.05], hi=[0.6, -0.05, 0.3]).iloc[::-1]
    c = stats.ci_changes(before, after, ["m", "other"]).set_index("m")
    assert c["before"].to_dict() == {"a": 1, "b": -1, "c": 0}
    assert c["after"].to_dict() == {"a": 0, "b": -1, "c": 1}


def test_endpoints_are_holm_adjusted_within_their_family():
    rng = np.random.default_rng(0)
    seeds = range(8)
    rows = []
    for u, shift in (("elu", 0.0), ("relu", 0.5), ("lrelu", 0.1)):
        for s in seeds:
            rows.append({"unit_type": u, "seed": s, "a": shift + rng.normal(0, 0.1),
                         "b": rng.normal(), "t": 5 + shift * 10 + s % 2, "ok": 1})  # fmt: skip
    v = pd.DataFrame(rows)
    eps = [Endpoint("a", "elu", "relu", "primary"), Endpoint("b", "elu", "relu", "primary"),
           Endpoint("t", "elu", "relu", "primary", reached="ok"),
           Endpoint("a", "elu", "lrelu", "secondary", family="a")]  # fmt: skip
    t = evaluate(v, eps)
    prim = t[t["family"] == "primary"]
    assert_close(torch.tensor(prim["p_holm"].to_numpy()),
                 torch.tensor(stats.holm(prim["p"].to_numpy())))  # fmt: skip
    sec = t[t["family"] == "a"].iloc[0]
    assert sec["p_holm"] == sec["p"]  # a family of one
    assert t.iloc[2]["ci_method"] == "none (sign test)" and t.iloc[2]["earlier"] == 8
    with pytest.raises(ValueError, match="role"):
        Endpoint("a", "elu", "relu", "tertiary")


def test_stratified_endpoints_are_each_strata_row_and_holm_runs_over_the_strata():
    """``by``: each stratum's rows are the endpoints on that stratum alone, its columns lead,
    strata keep their first-seen order, and a family's Holm runs over every stratum."""
    rng = np.random.default_rng(3)
    v = pd.DataFrame([{"lr": lr, "layer": layer, "unit_type": u, "seed": s,
                       "a": (0.3 if u == "relu" else 0.0) + rng.normal(0, 0.1)}
                      for lr in (1e-2, 1e-4) for layer in ("fc2", "fc1")
                      for s in range(6) for u in ("elu", "relu", "lrelu")])  # fmt: skip
    eps = [Endpoint("a", "elu", o, "primary" if o == "relu" else "secondary", family=o)
           for o in ("relu", "lrelu")]  # fmt: skip
    t = evaluate(v, eps, by=["lr", "layer"])
    assert list(zip(t["lr"], t["layer"], t["other"], strict=True))[:4] == [
        (1e-2, "fc2", "relu"),
        (1e-2, "fc2", "lrelu"),
        (1e-2, "fc1", "relu"),
        (1e-2, "fc1", "lrelu"),
    ]
    for (lr, layer), sub in v.groupby(["lr", "layer"]):
        alone = evaluate(sub, eps)
        here = t[(t["lr"] == lr) & (t["layer"] == layer)].reset_index(drop=True)
        pd.testing.assert_frame_equal(here[alone.columns].drop(columns="p_holm"),
                                      alone.drop(columns="p_holm"))  # fmt: skip
    for _, sub in t.groupby("family"):
        assert len(sub) == 4
        assert_close(torch.tensor(sub["p_holm"].to_numpy()),
                     torch.tensor(stats.holm(sub["p"].to_numpy())))  # fmt: skip
    one = evaluate(v[v["layer"] == "fc1"], eps, by="lr")  # a single column by name
    assert list(one["lr"]) == [1e-2, 1e-2, 1e-4, 1e-4] and "layer" not in one


def test_claims_log_auc_and_best_validation_epoch():
    rows = []
    for e, (tr, va, te) in enumerate([(2.0, 0.5, 0.5), (0.1, 0.2, 0.3), (0.01, 0.1, 0.25),
                                      (0.001, 0.15, 0.2)]):  # fmt: skip
        rows.append({"run": "elu-s0", "unit_type": "elu", "seed": 0, "epoch": e,
                     "train_loss": tr, "val_error": va, "test_error": te,
                     "median_all": 0.1})  # fmt: skip
    claims, _ = stats.claims_per_seed(pd.DataFrame(rows), threshold=0.01)
    r = claims.iloc[0]
    assert math.isclose(r["log_train_loss_auc"], np.mean(np.log10([0.1, 0.01, 0.001])))
    # the lowest validation error is at epoch 2; the test error there, not the lowest test error
    assert r["best_val_epoch"] == 2 and r["test_error_at_best_val"] == 0.25
    assert r["epochs_to_loss"] == 2 and r["epochs_reached"] == 1


def test_unit_statistics_with_g_from_other_data_is_that_datas_gradient():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ELU(), torch.nn.Linear(6, 3))
    probe_x, probe_y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    train_x, train_y = torch.randn(300, 4), torch.randint(0, 3, (300,))
    got = unit_statistics(net, probe_x, probe_y, grad_data=(train_x, train_y))
    # the same table from a probe whose own gradient is the training set's: F from the probe,
    # g from the training data, computed directly
    from natgrad.fisher import unit_fisher

    layer = net[2]
    gw, gb = torch.autograd.grad(-F.cross_entropy(net(train_x), train_y),
                                 [layer.weight, layer.bias])  # fmt: skip
    fisher = unit_fisher(net, net[2], probe_x)
    rows = got[got["layer"] == "2"].sort_values("unit")
    expected = fisher.efficiency(gw, gb, "plain", rel_damping=1e-3)
    assert_close(torch.tensor(rows["rho_plain"].to_numpy()), expected, rtol=1e-5)
    # chunked gradient sums equal the one-shot gradient
    small = unit_statistics(net, probe_x, probe_y, grad_data=(train_x[:50], train_y[:50]))
    assert not np.allclose(small["rho_plain"], got["rho_plain"])


@pytest.mark.parametrize(("n", "chunk"), list(itertools.product([7, 64], [3, 4096])))
def test_probe_gradients_in_chunks_equal_one_pass(n, chunk):
    from natgrad.analysis.unitstats import probe_gradients
    from natgrad.fisher import unit_fishers

    torch.manual_seed(n)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)
    ).double()
    x, y = torch.randn(n, 3, dtype=torch.float64), torch.randint(0, 2, (n,))
    fishers = unit_fishers(net, x)
    got = probe_gradients(net, x, y, fishers, chunk=chunk)
    ref = torch.autograd.grad(-F.cross_entropy(net(x), y), [net[0].weight, net[0].bias])
    assert_close(got["0"][0], ref[0])
    assert_close(got["0"][1], ref[1])


def test_unit_statistics_of_an_autoencoder_under_bernoulli_match_the_brute_force():
    """An autoencoder's unit table (likelihood="bernoulli": its Fisher and g are those of the
    Bernoulli model of its sigmoid outputs) against per-sample autograd in float64: the
    reference blocks and g = ∇ mean ln p(x | x) give the same ρ(plain)."""
    from natgrad.reference import reference_efficiency, reference_unit_fisher

    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ELU(), torch.nn.Linear(4, 3),
                              torch.nn.ReLU(), torch.nn.Linear(3, 6)).double()  # fmt: skip
    x = torch.rand(50, 6, dtype=torch.float64)
    got = unit_statistics(net, x, x, likelihood="bernoulli", rel_damping=1e-3)
    assert len(got) == 4 + 3 + 6
    for name, layer in (("0", net[0]), ("2", net[2])):
        ref = reference_unit_fisher(net, layer, x, likelihood="bernoulli")
        gw, gb = torch.autograd.grad(-F.binary_cross_entropy_with_logits(net(x), x),
                                     [layer.weight, layer.bias])  # fmt: skip
        g = torch.cat([gw.flatten(1), gb[:, None]], 1)  # ρ is invariant to g's scale
        want = reference_efficiency(ref, g, g, rel_damping=1e-3)
        rows = got[got["layer"] == name].sort_values("unit")
        assert_close(torch.tensor(rows["rho_plain"].to_numpy()), want, rtol=1e-8)
    with pytest.raises(InputError, match="likelihood"):
        unit_statistics(net, x, x, likelihood="poisson")


def test_an_interaction_endpoint_is_the_paired_difference_in_differences():
    """(reference − other) − (a − b) per seed, over the seeds all four arms have, with the
    CI, p and Holm of every other endpoint; a seed missing one arm, or non-finite, drops
    out. Written out by hand here: a 2 × 2 design (unit × batch norm) of 6 seeds."""
    rng = np.random.default_rng(3)
    x = {arm: rng.normal(size=6) for arm in ("relu", "relu-bn", "elu", "elu-bn")}
    x["elu-bn"][5] = np.inf  # seed 5 drops out
    v = pd.DataFrame([dict(arm=a, seed=s, err=x[a][s]) for a in x for s in range(6)])
    v = v[~((v["arm"] == "relu") & (v["seed"] == 4))]  # seed 4 lacks ReLU: drops out
    ep = Endpoint("err", "relu", "relu-bn", "primary", interaction=("elu", "elu-bn"))
    plain = Endpoint("err", "elu", "elu-bn", "primary")
    t = evaluate(v, [ep, plain], group="arm")
    d = ((x["relu"] - x["relu-bn"]) - (x["elu"] - x["elu-bn"]))[:4]
    lo, hi, how = stats.mean_ci(d)
    row = t.iloc[0]
    assert (row["n"], row["ci_method"], row["interaction"]) == (4, how, "elu − elu-bn")
    assert_close(np.array([row["diff"], row["lo"], row["hi"], row["p"]]),
                 np.array([d.mean(), lo, hi, stats.sign_flip_p(d)]), what="interaction")  # fmt: skip
    assert row["p_holm"] == stats.holm(t["p"].to_numpy())[0]  # one family with the plain one
    assert "(relu − relu-bn) − (elu − elu-bn)" in row["text"]
    assert "Left out: seed(s) 5 with an infinite value" in row["text"]  # it was silent
    with pytest.raises(ValueError, match="interaction takes two arms"):
        Endpoint("err", "relu", "relu-bn", interaction=("elu",))
    with pytest.raises(ValueError, match="interaction takes two arms"):
        Endpoint("t", "relu", "relu-bn", reached="ok", interaction=("elu", "elu-bn"))


def test_the_batch_norm_study_declares_its_endpoints():
    """``natgrad.studies.bn_cnn`` declares the docstring's four primaries (three ELU − other
    and the batch-norm interaction) and three secondaries on the test error at the
    best-validation epoch."""
    from natgrad.studies import bn_cnn

    eps = bn_cnn.study().endpoints
    assert [e.description for e in eps if e.role == "primary"] == [
        "elu - relu", "elu - lrelu", "elu - srelu", "(relu - relu-bn) - (elu - elu-bn)"]  # fmt: skip
    assert {e.metric for e in eps} == {"test_error_at_best_val"} and len(eps) == 7
    arms = {a for e in eps for a in (e.reference, e.other, *(e.interaction or ()))}
    assert arms == set(bn_cnn.ARMS)


def test_the_neff_adjusted_comparison_is_a_per_seed_fit_compared_over_seeds():
    """:func:`stats.neff_adjusted` against a second route: per seed, β from the within-unit-
    type deviations (Frisch–Waugh), α_type = ȳ_type − β·mean log(n_eff/(d+1)), then the
    per-seed α differences' mean and t interval (SciPy); a seed with one layer (no fit)
    drops out, and dead units and the data-fed layer are not analysed."""
    rng = np.random.default_rng(7)
    alpha, beta, rows = {"elu": 0.3, "relu": 0.1, "lrelu": 0.2}, 0.05, []
    for seed in range(6):
        for t, a in alpha.items():
            for layer in range(5):
                n_eff = float(rng.uniform(20, 400))
                y = a + beta * math.log(n_eff / 10) + 0.02 * rng.normal()
                rows.append(dict(unit_type=t, seed=seed, layer=f"fc{layer}", input_from="units",
                                 dead=0, fan_in=9, n_eff=n_eff, x=y))  # fmt: skip
    base = pd.DataFrame(rows)
    noise = pd.DataFrame([dict(unit_type="elu", seed=0, layer="fc0", input_from="units", dead=1,
                               fan_in=9, n_eff=50.0, x=99.0),
                          dict(unit_type="elu", seed=0, layer="fc9", input_from="data", dead=0,
                               fan_in=9, n_eff=50.0, x=99.0)]
                         + [dict(unit_type=t, seed=99, layer="fc0", input_from="units", dead=0,
                                 fan_in=9, n_eff=50.0, x=1.0) for t in alpha])  # fmt: skip
    table = stats.neff_adjusted(pd.concat([base, noise], ignore_index=True), "x")
    assert list(table["other"]) == ["relu", "lrelu"] and set(table["n"]) == {6}
    for other in ("relu", "lrelu"):
        d, d0, slopes = [], [], []
        for _, sub in base.groupby("seed"):
            lr = np.log(sub["n_eff"] / 10)
            dy = sub["x"] - sub.groupby("unit_type")["x"].transform("mean")
            dl = lr - lr.groupby(sub["unit_type"]).transform("mean")
            b = float((dy * dl).sum() / (dl * dl).sum())
            level = sub.groupby("unit_type")["x"].mean() - b * lr.groupby(sub["unit_type"]).mean()
            d.append(level["elu"] - level[other])
            means = sub.groupby("unit_type")["x"].mean()
            d0.append(means["elu"] - means[other])
            slopes.append(b)
        row = table[table["other"] == other].iloc[0]
        ci = st.ttest_1samp(d, 0.0).confidence_interval(stats.CONFIDENCE)
        assert row["ci_method"] == "t"
        assert_close(np.array([row["diff"], row["lo"], row["hi"], row["slope"],
                               row["diff_unadjusted"]]),
                     np.array([np.mean(d), ci.low, ci.high, np.median(slopes), np.mean(d0)]),
                     what=f"n_eff-adjusted ELU − {other}")  # fmt: skip
        assert row["p"] == stats.sign_flip_p(np.array(d))
        assert row["lo"] < alpha["elu"] - alpha[other] < row["hi"]


def test_the_ci_of_a_ratio_of_means_is_fiellers():
    """:func:`stats.ratio_ci` by a second route: at each end θ of Fieller's interval the
    paired differences x − θy have t-test p = 0.05 exactly (SciPy), and inside it more; a
    denominator whose own CI holds 0 gives the unbounded set; under the bootstrap switch it
    is the bootstrap of the ratio."""
    rng = np.random.default_rng(11)
    y = rng.normal(1.0, 0.2, 6)
    x = 0.3 * y + rng.normal(0.0, 0.05, 6)
    lo, hi, how = stats.ratio_ci(x, y)
    assert how == "Fieller" and lo < x.mean() / y.mean() < hi
    ends = [st.ttest_1samp(x - theta * y, 0.0).pvalue for theta in (lo, hi)]
    assert_close(np.array(ends), np.array([0.05, 0.05]), what="Fieller's ends")
    assert st.ttest_1samp(x - x.mean() / y.mean() * y, 0.0).pvalue > 0.05
    assert stats.ratio_ci(x, y - y.mean()) == (-math.inf, math.inf, "Fieller (unbounded)")
    nlo, nhi, _ = stats.ratio_ci(x, -y)  # a negative denominator: the interval reflected
    assert_close(np.array([nlo, nhi]), np.array([-hi, -lo]), what="Fieller, x̄/(−ȳ)")
    assert stats.ratio_ci([1.0, np.nan], [1.0, 2.0])[2] == "none"
    with stats.mean_ci_method("bootstrap"):
        assert stats.ratio_ci(x, y)[2] == "BCa"


def test_recorded_mean_ci_reads_a_folder_or_one_table(tmp_path):
    """A folder's interval is t as soon as one table's is; a table file, a DataFrame or a folder
    of BCa tables (or of tables naming none) read as the bootstrap of the older records."""
    pd.DataFrame({"x": [1], "ci_method": ["BCa"]}).to_csv(tmp_path / "old.csv", index=False)
    assert stats.recorded_mean_ci(tmp_path) == "bootstrap"
    pd.DataFrame({"x": [1], "ci_method": ["t"]}).to_csv(tmp_path / "added.csv", index=False)
    assert stats.recorded_mean_ci(tmp_path) == "t"
    assert stats.recorded_mean_ci(tmp_path / "old.csv") == "bootstrap"
    assert stats.recorded_mean_ci(tmp_path / "added.csv") == "t"
    assert stats.recorded_mean_ci(pd.DataFrame({"ci_method": ["percentile"]})) == "bootstrap"
    # a table that formed no CI (every row "none", as the fair comparison's standardised
    # shares.csv, whose gap is negative) names no method: it reads as the older records
    none = pd.DataFrame({"x": [1, 2], "ci_method": ["none", "none"]})
    assert stats.recorded_mean_ci(none) == "bootstrap"
    none.to_csv(tmp_path / "none.csv", index=False)
    assert stats.recorded_mean_ci(tmp_path / "none.csv") == "bootstrap"
    assert stats.recorded_mean_ci(tmp_path) == "t"  # the t table beside it still decides
