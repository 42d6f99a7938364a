"""``natgrad train --optimizer unit-ng|qd-ng|diag-ng [--centre]``: config, run names,
checkpointed optimizer state and bit-identical resume (in process, on CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from natgrad.errors import InputError
from natgrad.testing import assert_close
from natgrad.training import default_config, load_checkpoint, read_checkpoint, run_name, train

DIGITS = dict(dataset="digits", probe_size=32, checkpoint_every=1, refresh_every=4, batch_size=256)
SETTINGS = {  # optimizer settings: a Fisher refresh that does not align with the epochs
    "unit-ng": dict(optimizer="unit-ng", lr=1e-3, momentum=0.5),
    # the window pays off when its K·N rows are fewer than d+1: a small batch, as in use
    # (lr 1e-3 diverges at batch 32 with the dense running Fisher too)
    "unit-ng-window": dict(
        optimizer="unit-ng", lr=3e-4, momentum=0.5, fisher_window=2, batch_size=32
    ),
    "qd-ng": dict(optimizer="qd-ng", lr=1e-3),
    "diag-ng": dict(optimizer="diag-ng", lr=1e-3, ng_kind="empirical"),
    "centred": dict(centre=True, lr=0.1),
}


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("name", SETTINGS)
def test_resume_is_bit_identical(tmp_path, name):
    r"""2 epochs in one go == 1 epoch, then a resumed second epoch: every tensor of the final
    checkpoint (model, running unit Fisher, momentum, label generator, RNG) is equal."""
    settings = {**DIGITS, **SETTINGS[name]}
    config = default_config("mnist-fc", unit="relu", epochs=2, **settings)
    whole = train(config, tmp_path / "whole", device="cpu", progress=False)
    train(default_config("mnist-fc", unit="relu", epochs=1, **settings),
          tmp_path / "parts", device="cpu", progress=False)  # fmt: skip
    parts = train(config, tmp_path / "parts", device="cpu", progress=False)
    a, info_a = read_checkpoint(tmp_path / "whole", 2)
    b, info_b = read_checkpoint(tmp_path / "parts", 2)
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    if name != "centred":
        kept = ".window_rows" if name.endswith("window") else ".fisher"
        assert any(k.startswith("optim.") and kept in k for k in a)
        assert info_a["optimizer"]["state"] == info_b["optimizer"]["state"]
    losses = [r["train_loss"] for r in whole.metrics]
    assert losses[-1] < losses[0]
    assert [r["train_loss"] for r in parts.metrics] == losses


def test_centred_checkpoint_loads_as_the_same_plain_function(tmp_path):
    config = default_config("mnist-fc", unit="relu", epochs=1, **DIGITS, **SETTINGS["centred"])
    result = train(config, tmp_path, device="cpu", progress=False)
    model, _ = load_checkpoint(tmp_path)
    assert not any(hasattr(m, "centre") for m in model.modules())
    x = torch.rand(5, 1, 8, 8, dtype=torch.float32)
    assert_close(model(x), result.model.eval()(x), what="uncentred checkpoint")


def test_optimizer_config_names_and_errors():
    cfg = default_config("mnist-fc", dataset="digits", optimizer="qd-ng")
    assert run_name(cfg) == "mnist-fc-elu-qd-ng-digits-s0"
    assert run_name(default_config("mnist-fc", dataset="digits", centre=True)).endswith(
        "-centred-digits-s0"
    )
    with pytest.raises(InputError, match="optimizer"):
        default_config("mnist-fc", optimizer="adam")
    with pytest.raises(InputError, match="centre"):
        default_config("mnist-fc", optimizer="unit-ng", centre=True)
    with pytest.raises(InputError, match="plain_lr would be ignored"):  # it was, silently
        default_config("mnist-fc", optimizer="sgd", plain_first_layer=True, plain_lr=0.1)
    assert default_config("mnist-fc", optimizer="unit-ng", plain_lr=0.1).plain_lr == 0.1
    from natgrad.training.config import TrainConfig

    saved = default_config("mnist-fc").to_dict()
    with pytest.raises(InputError, match="integer start"):  # from_dict cut 2.7 to 2
        TrainConfig.from_dict({**saved, "lr_schedule": [[0, saved["lr"]], [2.7, 0.05]]})
    assert TrainConfig.from_dict({**saved, "lr_schedule": [[0, saved["lr"]], [2.0, 0.05]]}
                                 ).lr_schedule == ((0, saved["lr"]), (2, 0.05))  # fmt: skip
    window = default_config("mnist-fc", dataset="digits", optimizer="unit-ng", fisher_window=2)
    assert run_name(window) == "mnist-fc-elu-unit-ng-w2-digits-s0"
    with pytest.raises(InputError, match="fisher_window"):
        default_config("mnist-fc", optimizer="qd-ng", fisher_window=2)
    with pytest.raises(InputError, match="fisher_window"):
        default_config("mnist-fc", optimizer="unit-ng", fisher_window=2, rel_damping=0.0,
                       layer_damping=0.0)  # fmt: skip


@pytest.mark.parametrize("net", ["cifar-11", "mnist-fc"])
@pytest.mark.parametrize("optimizer", ["unit-ng", "qd-ng"])
def test_defaults_train_the_paper_nets_stably_for_an_epoch(tmp_path, optimizer, net):
    """The preconditioner's defaults (rel_damping, layer_damping, refresh every 10 steps) on
    the paper's CNN recipe (cifar-11 at 1/8 width) and on mnist-fc (8 × 128, every layer
    preconditioned, fc1's 785-wide blocks too) from a fresh initialisation, one epoch of
    a 1,280-image MNIST subset (20 steps, two refreshes), at the rates the fair comparison
    validated on mnist-fc (README, "Learning rates"): finite, no large-step warning, and the
    validation loss after the epoch below the initial one. (The epoch's running-mean training
    loss is not a test: at initialisation this net's logits are large, and under unit NG the
    loss of the first steps rises before it falls: 5.7 at epoch 0 against a running mean of
    8.6 over the epoch, where SGD at its rate 0.01 has 3.8; the validation loss falls from
    8.9 to 2.8, SGD's to 2.4.)"""
    import warnings

    from natgrad.errors import LargeStepWarning

    lr = {"unit-ng": 1e-4, "qd-ng": 3e-4}[optimizer]
    extra = {"channel_scale": 0.125, "lr_schedule": ()} if net == "cifar-11" else {}
    cfg = default_config(net, dataset="mnist", unit="elu", seed=0, epochs=1, batch_size=64,
                         train_size=1280, optimizer=optimizer, lr=lr, probe_size=32,
                         checkpoint_every=1, **extra)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", LargeStepWarning)
        train(cfg, tmp_path / "run", device="cpu", progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert all(math.isfinite(r["train_loss"]) for r in rows), rows
    assert rows[1]["val_loss"] < rows[0]["val_loss"], rows
