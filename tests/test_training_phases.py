"""Training: the epoch-0 checkpoint and cifar-18's dropout phases (config, model, loop)."""

from __future__ import annotations

import shutil

import pytest
import torch
from test_training import write_cifar10
from torch import nn

import natgrad.models as models
from natgrad.analysis.runs import checkpoint_epochs, load_model
from natgrad.errors import InputError
from natgrad.models import build_model, set_dropout_mode
from natgrad.training import (
    apply_overrides,
    default_config,
    load_checkpoint,
    read_checkpoint,
    train,
)
from natgrad.training.config import dropout_mode_at

DIGITS = dict(dataset="digits", probe_size=64, checkpoint_every=1)
TIMING = ("seconds", "train_seconds", "seconds_per_iteration")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# --- epoch-0 checkpoint -------------------------------------------------------------------


def test_initial_checkpoint_is_the_model_built_from_net_and_seed(tmp_path):
    config = default_config("mnist-fc", epochs=1, seed=3, **DIGITS)
    assert config.checkpoint_initial  # the presets write epoch 0
    run = train(config, tmp_path / "run", device="cpu", progress=False).run_dir
    assert (run / "checkpoints" / "epoch_0000.json").is_file()
    model, info = load_checkpoint(run, 0)
    assert info["epoch"] == 0 and info["iteration"] == 0 and len(info["metrics"]) == 1
    built = build_model("mnist-fc", "elu", in_features=64, seed=3, dtype=torch.float32)
    _assert_same_state(_state(model), _state(built))
    assert checkpoint_epochs(run) == [0, 1]
    _assert_same_state(_state(load_model(run, 0)), _state(built))  # the real checkpoint
    # an older run without the epoch-0 checkpoint: rebuilt from config.json, same weights
    old = tmp_path / "old"
    shutil.copytree(run, old)
    for p in (old / "checkpoints").glob("epoch_0000.*"):
        p.unlink()
    assert checkpoint_epochs(old) == [0, 1] and checkpoint_epochs(old, include_initial=False) == [1]
    _assert_same_state(_state(load_model(old, 0)), _state(built))


def test_checkpoint_initial_can_be_switched_off(tmp_path):
    config = apply_overrides(
        default_config("mnist-fc", epochs=1, **DIGITS), ["checkpoint_initial=false"]
    )
    run = train(config, tmp_path / "run", device="cpu", progress=False).run_dir
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch_0001.json",
        "epoch_0001.safetensors",
    ]


def test_resume_from_the_initial_checkpoint_is_exact(tmp_path):
    """A run stopped after epoch 0 (here: epochs=0) resumes to the uninterrupted result."""
    extra = ["momentum=0.9", "dropout=0.3"]  # momentum buffers and dropout's RNG stream
    base = apply_overrides(default_config("mnist-fc", epochs=2, **DIGITS), extra)
    whole = train(base, tmp_path / "whole", device="cpu", progress=False)
    first = train(
        apply_overrides(base, ["epochs=0"]), tmp_path / "split", device="cpu", progress=False
    )
    assert [r["epoch"] for r in first.metrics] == [0]
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir()) == [
        "epoch_0000.json",
        "epoch_0000.safetensors",
    ]
    split = train(base, tmp_path / "split", device="cpu", progress=False)
    a, info_a = read_checkpoint(whole.run_dir, 2)
    b, info_b = read_checkpoint(split.run_dir, 2)
    _assert_same_state(a, b)  # model.*, optim.*, rng.*
    assert _untimed(info_a["metrics"]) == _untimed(info_b["metrics"])
    lines = (split.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [int(line.split('"epoch": ')[1].split(",")[0]) for line in lines] == [0, 1, 2]


# --- dropout phases -----------------------------------------------------------------------

# cifar-18 stack rates (0, .1, .2, .3, .4, .5, .5, 0); layers per conv stack 1, 4, 4, 3, 3, 2, 1
C18_LAYERS = (1, 4, 4, 3, 3, 2, 1)
C18_RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5)


def test_cifar18_preset_phase_schedule():
    cfg = default_config("cifar-18")
    assert cfg.dropout_phases == ((115_000, "every_layer"), (165_000, "every_layer_x1.5"))
    assert cfg.epochs * 50_000 // cfg.batch_size == 205_000  # 165k + 40k more
    modes = [dropout_mode_at(cfg, i) for i in (0, 114_999, 115_000, 164_999, 165_000, 204_999)]
    assert modes == [
        "per_stack",
        "per_stack",
        "every_layer",
        "every_layer",
        *["every_layer_x1.5"] * 2,
    ]
    short = apply_overrides(cfg, ["dropout_phases=3:every_layer,5:every_layer_x1.5", "epochs=1"])
    assert [dropout_mode_at(short, i) for i in range(7)] == (
        ["per_stack"] * 3 + ["every_layer"] * 2 + ["every_layer_x1.5"] * 2
    )
    assert apply_overrides(cfg, ["dropout_phases=none"]).dropout_phases == ()
    assert default_config("cifar-11").dropout_phases == ()
    with pytest.raises(InputError, match="dropout_phases"):
        apply_overrides(cfg, ["dropout_phases=3:everything"])
    with pytest.raises(InputError, match="mnist-fc has no dropout phases"):
        default_config("mnist-fc", dropout_phases=((0, "every_layer"),))


def test_cifar18_dropout_modules_per_mode():
    net = build_model("cifar-18", "elu", device="meta")
    for mode in ("per_stack", "every_layer", "every_layer_x1.5"):
        ps = set_dropout_mode(net, mode)
        assert ps == {n: m.p for n, m in net.named_modules() if isinstance(m, nn.Dropout)}
        for s, (layers, rate) in enumerate(zip(C18_LAYERS, C18_RATES, strict=True), start=1):
            stack = {n.split(".")[1]: p for n, p in ps.items() if n.startswith(f"stack{s}.")}
            if rate == 0:
                assert stack == {}, s
                continue
            # one dropout after the unit of every layer but the last, one after the pooling
            assert sorted(stack) == sorted(["drop", *(f"drop{i}" for i in range(1, layers))])
            on = {"per_stack": rate, "every_layer": rate, "every_layer_x1.5": 1.5 * rate}[mode]
            assert stack["drop"] == pytest.approx(on)
            inner = 0.0 if mode == "per_stack" else on
            assert all(stack[f"drop{i}"] == pytest.approx(inner) for i in range(1, layers))
    assert max(set_dropout_mode(net, "every_layer_x1.5").values()) == pytest.approx(0.75)
    capped = build_model("cifar-11", dropout=(0, 0.7, 0, 0, 0, 0.95, 0), device="meta")
    ps = set_dropout_mode(capped, "every_layer_x1.5")
    assert ps["stack2.drop1"] == pytest.approx(0.9) and ps["stack6.drop"] == pytest.approx(0.95)
    with pytest.raises(InputError, match="dropout mode"):
        set_dropout_mode(net, "sometimes")


def test_inner_dropout_modules_change_nothing_at_p0():
    """The p=0 modules: same weights, same train-mode output, same RNG stream."""
    net = build_model("cifar-11", "elu", seed=5)
    assert isinstance(net.stack2.drop1, nn.Dropout) and net.stack2.drop1.p == 0.0
    plain = nn.Sequential(*[
        nn.Sequential(*[m for n, m in stack.named_children() if not n.startswith("drop") or n == "drop"])
        for stack in net.children()
    ])  # fmt: skip
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    a, state_a = net.train()(x), torch.get_rng_state()
    torch.manual_seed(1)
    b, state_b = plain.train()(x), torch.get_rng_state()
    assert torch.equal(a, b) and torch.equal(state_a, state_b)


def test_loop_applies_phases_by_iteration_and_resumes_exactly(tmp_path):
    """cifar-11 on 30 fake images, batch 10 → 3 iterations per epoch; phases at it 2 and 4."""
    write_cifar10(tmp_path / "cifar")
    cfg = default_config(
        "cifar-11", dataset="cifar10", data_dir=str(tmp_path / "cifar"), epochs=2,
        batch_size=10, preprocess="none", probe_size=8, checkpoint_every=1,
        dropout_phases=((2, "every_layer"), (4, "every_layer_x1.5")),
    )  # fmt: skip
    seen: list[tuple[float, float]] = []
    build = models.build_model

    def build_and_watch(*args, **kwargs):  # the loop builds its model through this
        net = build(*args, **kwargs)
        inner, outer = net.stack2.drop1, net.stack6.drop
        inner.register_forward_pre_hook(
            lambda m, _: seen.append((inner.p, outer.p)) if m.training else None
        )
        return net

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "build_model", build_and_watch)
        whole = train(cfg, tmp_path / "whole", device="cpu", progress=False)
    assert seen == [(0.0, 0.5)] * 2 + [(0.1, 0.5)] * 2 + [(pytest.approx(0.15), 0.75)] * 2
    assert {m.p for m in whole.model.modules() if isinstance(m, nn.Dropout)} >= {0.75}
    # stop after epoch 1 (mid-phase), resume: the same bits as the uninterrupted run
    train(apply_overrides(cfg, ["epochs=1"]), tmp_path / "split", device="cpu", progress=False)
    split = train(cfg, tmp_path / "split", device="cpu", progress=False)
    a, info_a = read_checkpoint(whole.run_dir, 2)
    b, info_b = read_checkpoint(split.run_dir, 2)
    _assert_same_state(a, b)
    assert _untimed(info_a["metrics"]) == _untimed(info_b["metrics"])
