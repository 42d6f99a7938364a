"""Issue 10: hypothesis fuzzing of the command line's ``--set`` values and of
``unit_fisher``'s arguments: a named :class:`~natgrad.errors.NatgradError` or a correct
result, never a raw exception."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natgrad import cli, unit_fisher
from natgrad.errors import NatgradError
from natgrad.reference import reference_unit_fisher
from natgrad.testing import assert_close
from natgrad.training.config import TrainConfig, apply_overrides, default_config

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
TRICKY = ["nan", "-nan", "inf", "-inf", "1e400", "-1", "0", "-0", "1", "2", "0.5", "1.5", "1e-300",
          "3e9", "2**40", "4294967296", "", " ", "none", "null", "true", "false", "abc", "0x10",
          "1_000", "0:0.1,100:nan", "0:0.1,x", "1:", ":", "0,1", "0.5,0.5,2", "115000:bogus",
          "-5:every_layer", "1:0.1:3", "elu", "relu", "mnist", "cifar100", "cifar-11",
          "float64", "bfloat16", "bce_logits", "gcn-zca", "epoch", "é", "\x00"]  # fmt: skip
values = st.one_of(st.sampled_from(TRICKY), st.text(max_size=12), st.floats().map(repr),
                   st.integers(-(2**70), 2**70).map(str))  # fmt: skip
BASE = default_config("mnist-fc", dataset="digits", epochs=1, probe_size=16, checkpoint_every=1)
FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip


def _valid(config: TrainConfig) -> None:
    """What a config that passes validation promises."""
    for key in ("lr", "momentum", "weight_decay"):
        assert math.isfinite(getattr(config, key))
    assert config.lr > 0 and 0 <= config.momentum < 1 and config.weight_decay >= 0
    assert config.alpha is None or math.isfinite(config.alpha)
    assert 0 <= config.seed < 2**32 and config.probe_size >= 1 and config.epochs >= 0
    assert all(0 <= p < 1 for p in config.dropout or ())
    assert all(v > 0 and math.isfinite(v) and s >= 0 for s, v in config.lr_schedule)


@FUZZ
@given(key=st.sampled_from(FIELDS), value=values)
def test_set_values_give_a_named_error_or_a_valid_config(key, value):
    try:
        config = apply_overrides(BASE, [f"{key}={value}"])
    except NatgradError as exc:
        assert key in str(exc)  # the message names the setting
        return
    _valid(config)


# `natgrad train --set key=value` end to end: values that pass validation (training must
# finish, or stop with a named divergence) and values caught later (data, shapes).
E2E = ["lr=3e9", "alpha=3e9", "weight_decay=1e9", "alpha=-1", "loss=bce_logits", "net=mnist-ae",
       "dtype=bfloat16", "preprocess=gcn-zca", "augment=true", "unit=prelu", "dataset=mnist",
       "dataset=cifar10", "schedule_unit=epoch", "lr_schedule=0:1e3", "dropout=0.5,0.5",
       "batch_size=4294967296", "probe_size=4294967296", "eval_batch_size=7"]  # fmt: skip


@pytest.mark.parametrize("item", E2E)
def test_train_cli_named_error_or_a_finished_run(tmp_path, capsys, monkeypatch, item):
    """Exit 0 with strict, finite metrics, or exit 2 with one line; never a traceback."""
    monkeypatch.setenv("NATGRAD_DATA", str(tmp_path / "no-data"))
    run = tmp_path / "r"
    argv = ["train", "--net", "mnist-fc", "--dataset", "digits", "--epochs", "1", "--run-dir",
            str(run), "--no-progress", "--device", "cpu", "--threads", "1",
            "--set", "probe_size=16", "--set", item]  # fmt: skip
    code = cli.main(argv)  # a raw exception fails the test here
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("natgrad train: error:")
        return
    rows = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["test_loss"]) for r in rows)


# --- unit_fisher ------------------------------------------------------------------------


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ELU(), torch.nn.Linear(4, 3))


N = 5
INPUTS = {
    "ok": torch.randn(N, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64),
    "nan": torch.full((N, 3), float("nan"), dtype=torch.float64),
    "empty": torch.zeros(0, 3, dtype=torch.float64),
    "wide": torch.zeros(N, 5, dtype=torch.float64),
    "1-d": torch.zeros(3, dtype=torch.float64),
    "int": torch.ones(N, 3, dtype=torch.long),
    "list": [[0.0, 1.0, 2.0]] * N,
    "none": None,
}
TARGETS = {
    "none": None,
    "int64": torch.tensor([0, 1, 2, 0, 1]),
    "int32": torch.tensor([0, 1, 2, 0, 1], dtype=torch.int32),
    "uint8": torch.tensor([0, 1, 2, 0, 1], dtype=torch.uint8),
    "bool": torch.tensor([0, 1, 1, 0, 1], dtype=torch.bool),
    "float": torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0], dtype=torch.float64),
    "short": torch.tensor([0, 1]),
    "2-d": torch.zeros(N, 3, dtype=torch.float64),
    "negative": torch.tensor([0, -1, 2, 0, 1]),
    "too-large": torch.tensor([0, 1, 7, 0, 1]),
    "list": [0, 1, 2, 0, 1],
}
ARGS = {
    "layer": st.sampled_from(["0", "2", "1", "bogus", 0, None]),
    "kind": st.sampled_from(["exact", "mc", "empirical", "bogus", None, 1]),
    "likelihood": st.sampled_from(["categorical", "bernoulli", "gaussian", "bogus", None]),
    "mc_samples": st.sampled_from([1, 3, 0, -1, 1.5, "2", None, True]),
    "units": st.sampled_from(
        [
            None,
            [0],
            [2, 0],
            [],
            [0.7, 2.9],
            [-1],
            [9],
            ["a"],
            [True],
            torch.tensor([1]),
            np.array([1, 2]),
            1.5,
            "0",
        ]
    ),  # fmt: skip
    "batch_size": st.sampled_from([None, 2, 0, -1, 2.5, "3", True]),
}


@settings(max_examples=400, deadline=None, derandomize=True)
@given(inputs=st.sampled_from(sorted(INPUTS)), targets=st.sampled_from(sorted(TARGETS)),
       **ARGS)  # fmt: skip
def test_unit_fisher_named_error_or_the_reference(inputs, targets, **kwargs):
    net, x, y = _net(), INPUTS[inputs], TARGETS[targets]
    layer = kwargs.pop("layer")
    try:
        got = unit_fisher(net, layer, x, y, generator=torch.Generator().manual_seed(0), **kwargs)
    except NatgradError:
        return
    assert not isinstance(kwargs["batch_size"], bool)  # True is not a batch size
    assert kwargs["kind"] != "mc" or not isinstance(kwargs["mc_samples"], bool)
    assert got.matrix.shape[-1] == (3 if layer == "0" else 4) + 1
    assert torch.isfinite(got.matrix).all()
    want = reference_unit_fisher(net, layer, x, y, kind=kwargs["kind"],
                                 likelihood=kwargs["likelihood"], units=kwargs["units"],
                                 mc_samples=kwargs["mc_samples"],
                                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert_close(got.matrix, want.matrix)


@pytest.mark.parametrize("units", [[0.7, 2.9], [True, False], ["1"]], ids=str)
def test_unit_fisher_units_fuzz_finds_no_silent_truncation(units):
    with pytest.raises(NatgradError, match="units="):
        unit_fisher(_net(), "0", INPUTS["ok"], units=units)


@pytest.mark.parametrize("item", ["lr_schedule=inf:0.1", "dropout_phases=inf:every_layer"])
def test_an_infinite_step_in_a_schedule_is_a_named_error(item):
    """``int(float("inf"))`` raises OverflowError, not ValueError: still a named InputError."""
    from natgrad.errors import InputError

    with pytest.raises(InputError, match=item.split("=")[0]):
        apply_overrides(BASE, [item])
