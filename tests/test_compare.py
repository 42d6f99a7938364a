"""``natgrad compare`` in a small form: every arm trains, shares its initial weights, and the
tables answer the question (the statistics checked against a second route from the curves)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from natgrad import cli
from natgrad.analysis import compare
from natgrad.data import load_dataset  # before a test replaces natgrad.data's
from natgrad.testing import assert_close


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    r"""3 seeds x 2 epochs of every arm on 128 digits (2 steps per epoch), via the CLI."""
    out = tmp_path_factory.mktemp("compare")
    old = torch.get_num_threads()
    try:
        rc = cli.main(["compare", "--seeds", "3", "--epochs", "2", "--train-size", "128",
                       "--out", str(out), "--quiet", "--last-epochs", "1"])  # fmt: skip
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
    assert (
        "- trained as batched models, all seeds together (natgrad.training.stacked): "
        "relu-sgd, elu-sgd; relu-bn;" in text
    )


def test_arms_share_initial_weights(small_run):
    r"""Epoch 0: every ReLU arm without batch norm is the same net (same loss, bit for bit)."""
    import pandas as pd

    c = pd.read_csv(small_run / "curves.csv")
    start = c[c["epoch"] == 0].pivot(index="seed", columns="arm", values="train_loss")
    for arm in ("relu-centred", "relu-qd", "relu-unit-ng"):
        assert (start[arm] == start["relu-sgd"]).all(), arm
    assert (start["elu-unit-ng"] == start["elu-sgd"]).all()
    assert set(c["arm"]) == set(compare.ARMS) and c["seed"].nunique() == 3


def test_effects_and_gap_from_the_curves(small_run):
    r"""Paired effects and the gap fraction recomputed from curves.csv by hand."""
    import pandas as pd

    c = pd.read_csv(small_run / "curves.csv")
    c = c[c["epoch"] >= 1]
    auc = c.groupby(["arm", "seed"])["train_loss"].mean().unstack("seed")  # epochs 1..2
    eff = pd.read_csv(small_run / "effects.csv").set_index(["arm", "metric"])
    for arm in ("elu-sgd", "relu-unit-ng", "relu-bn"):
        assert_close(eff.loc[(arm, "auc"), "effect"], (auc.loc[arm] - auc.loc["relu-sgd"]).mean(),
                     what=arm)  # fmt: skip
        lo, hi = eff.loc[(arm, "auc"), ["ci_low", "ci_high"]]
        assert lo <= eff.loc[(arm, "auc"), "effect"] <= hi
    gap = pd.read_csv(small_run / "gap.csv").set_index("epoch")
    a, b, t = (auc.loc[k].to_numpy() for k in ("relu-sgd", "elu-sgd", "relu-unit-ng"))
    expected = (a.mean() - b.mean()) / (a.mean() - t.mean())
    got = gap.loc[2, "fraction_closed"]
    assert (math.isnan(got) and a.mean() <= t.mean()) or abs(got - expected) < 1e-9


SGD_ARMS = ("relu-sgd", "elu-sgd", "relu-bn", "relu-centred")


def _float64_digits(n: int):
    """The first ``n`` digits training images, in float64."""
    ds = load_dataset("digits", seed=0)
    return ds.with_(train_x=ds.train_x[:n].double(), train_y=ds.train_y[:n],
                    test_x=ds.test_x.double())  # fmt: skip


def test_batched_sgd_arms_equal_sequential_runs(monkeypatch):
    r"""The default trainer (ReLU/ELU+SGD of both seeds as one batched model, ReLU+BN as
    another) gives the curves of every run trained alone: epoch 0 bit for bit, later epochs
    to float64 round-off; the centred arm trains alone either way. (In float32 the two
    differ by up to ~20 % per seed after 2 epochs of the full digits: these deep ReLU nets
    amplify round-off; float64 shows that the two routes compute the same training.)"""
    import natgrad.data

    monkeypatch.setattr(natgrad.data, "load_dataset", lambda *a, **k: _float64_digits(1437))
    config = compare.CompareConfig(seeds=2, epochs=2, arms=SGD_ARMS)
    assert compare.batched_groups(config) == [["relu-sgd", "elu-sgd"], ["relu-bn"]]
    batched = compare.run_compare(config)
    alone = compare.run_compare(config, batched=False)
    key = ["seed", "arm", "epoch"]
    assert batched[key].equals(alone[key]) and len(batched) == 2 * 4 * 3
    first = batched["epoch"] == 0
    cols = ["train_loss", "test_loss", "test_error"]
    assert batched.loc[first, cols].equals(alone.loc[first, cols])
    for col in cols:
        assert_close(torch.tensor(batched[col].to_numpy()), torch.tensor(alone[col].to_numpy()),
                     what=col)  # fmt: skip
    assert (batched.loc[~first, "seconds"] > 0).all()


def test_a_diverging_run_stops_alone_in_a_batched_model():
    r"""A run whose loss is NaN at its first batch stops (NaN rows from epoch 1, as
    ``train_arm`` writes them); the other runs of its batched model train on and equal their
    runs trained alone."""
    config = compare.CompareConfig(seeds=2, epochs=2, arms=SGD_ARMS[:2])
    ds = _float64_digits(192)

    def nets(seed):
        models = compare._models(config, ds, seed)
        if seed == 1:
            with torch.no_grad():
                models["elu-sgd"].fc1.weight[0, 0] = math.nan
        return models

    runs = [(s, arm, m) for s in (0, 1) for arm, m in nets(s).items()]
    got = compare.train_stacked(config, runs, ds)
    alone = [row for s in (0, 1) for arm, m in nets(s).items()
             for row in compare.train_arm(config, arm, m, ds, s)]  # fmt: skip
    key = lambda r: (r["seed"], r["arm"], r["epoch"])  # noqa: E731
    got, alone = sorted(got, key=key), sorted(alone, key=key)
    assert [key(r) for r in got] == [key(r) for r in alone]
    for a, b in zip(got, alone, strict=True):
        if (a["seed"], a["arm"]) == (1, "elu-sgd") and a["epoch"] >= 1:
            assert math.isnan(a["train_loss"]) and math.isnan(b["train_loss"]), key(a)
            continue
        assert_close(torch.tensor([a["train_loss"], a["test_error"]]),
                     torch.tensor([b["train_loss"], b["test_error"]]), what=str(key(a)))  # fmt: skip


def test_gap_fraction_by_hand():
    a, b, c = np.array([3.0, 3.2]), np.array([2.0, 2.2]), np.array([1.0, 1.2])
    assert compare._gap_fraction(a, b, c) == pytest.approx(0.5)
    assert math.isnan(compare._gap_fraction(a, b, a + 1))  # NG no better: undefined


def test_unit_ng_arms_take_the_window_and_the_memory_budget():
    r"""``--window`` and ``--memory-budget`` reach the unit-NG arms' optimizer (and only them):
    a layer over the budget takes the quasi-diagonal step, with a warning naming it."""
    from natgrad.errors import InputError, NatgradWarning
    from natgrad.models import build_model

    def model():
        return build_model("mnist-fc", "relu", num_classes=10, in_shape=(1, 28, 28), seed=0)

    _, opt = compare._optimizer(compare.CompareConfig(window=2), "relu-unit-ng", model(), 0)
    assert opt.window == 2 and set(opt.structures.values()) == {"unit"}
    _, opt = compare._optimizer(compare.CompareConfig(window=2), "relu-qd", model(), 0)
    assert opt.window is None and set(opt.structures.values()) == {"quasidiagonal"}
    budget = compare.CompareConfig(memory_budget=10_000_000)  # 128·785² > 1e7 > 128·129²
    with pytest.warns(NatgradWarning, match="exceed the memory budget"):
        _, opt = compare._optimizer(budget, "elu-unit-ng", model(), 0)
    first, *hidden = opt.structures.values()
    assert first == "quasidiagonal" and set(hidden) == {"unit"}
    with pytest.raises(InputError, match="window"):
        compare.CompareConfig(window=-1)


def test_sign_flip_p_values_by_hand(small_run):
    r"""effects.csv's p-values against the 2^3 sign patterns enumerated by hand."""
    import itertools

    import pandas as pd

    c = pd.read_csv(small_run / "curves.csv")
    c = c[c["epoch"] >= 1]
    auc = c.groupby(["arm", "seed"])["train_loss"].mean().unstack("seed")
    eff = pd.read_csv(small_run / "effects.csv").set_index(["arm", "metric"])
    for arm in ("elu-sgd", "relu-unit-ng"):
        d = (auc.loc[arm] - auc.loc["relu-sgd"]).to_numpy()
        flips = [abs((d * s).mean()) for s in itertools.product((1, -1), repeat=len(d))]
        expected = np.mean([f >= abs(d.mean()) * (1 - 1e-12) for f in flips])
        assert eff.loc[(arm, "auc"), "p_value"] == pytest.approx(expected), arm


def test_tables_rebuilt_from_curves_and_run_record(tmp_path):
    r"""``--tables-from DIR`` rebuilds every table exactly, without training, on curves where
    the gap is defined (unit-NG below SGD, ELU between): the gap, the shares of every arm and
    the ELU+unit-NG − ReLU+unit-NG effect are all finite and recomputed."""
    import pandas as pd

    config = compare.CompareConfig(seeds=4, epochs=2, last_epochs=1)
    level = {"relu-sgd": 1.0, "elu-sgd": 0.8, "relu-centred": 0.6, "relu-qd": 0.5,
             "relu-unit-ng": 0.2, "elu-unit-ng": 0.3, "relu-bn": 0.7}  # fmt: skip
    rng = np.random.default_rng(0)
    rows = [dict(seed=s, arm=a, epoch=e, train_loss=(2.0 if e == 0 else lv / e) + 0.01 * rng.random(),
                 test_loss=lv, test_error=0.1 * lv + 0.001 * s, seconds=float(e))
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
    ng = eff[(eff["arm"] == "elu-unit-ng") & (eff["reference"] == "relu-unit-ng")]
    assert len(ng) == 2 and (ng["effect"] > 0).all()  # ELU+unit-NG above ReLU+unit-NG here
    for n in names:
        (tmp_path / n).unlink()
    assert cli.main(["compare", "--tables-from", str(tmp_path)]) == 0
    for name, table in before.items():
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / name), table, check_exact=True)
    text = (tmp_path / "answer.md").read_text()
    assert "quasi-diagonal step (over the memory budget): fc1; unit blocks" in text
    assert "rel_damping 0.1, layer_damping 0.3" in text
    assert cli.main(["compare", "--tables-from", str(tmp_path / "missing")]) == 2
