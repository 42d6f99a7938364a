"""Training: configs, a short real run on digits, recording, checkpoints, kill-and-resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from natgrad import cli
from natgrad.errors import CheckpointError, InputError
from natgrad.testing import assert_close
from natgrad.training import (
    TrainConfig,
    apply_overrides,
    default_config,
    load_activations,
    load_checkpoint,
    lr_at,
    read_checkpoint,
    train,
)
from natgrad.units import UNIT_TYPES

ROOT = Path(__file__).resolve().parents[1]
DIGITS = dict(dataset="digits", probe_size=64, checkpoint_every=1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread per test worker: with `-n 2` on 2 busy cores, two OpenMP threads
    per worker spin against each other and small GEMMs get ~100x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, _one_thread):
    """A 2-epoch mnist-fc/ELU run on the real 8×8 digits (float32, as in training)."""
    run = tmp_path_factory.mktemp("run")
    config = default_config("mnist-fc", epochs=2, **DIGITS)
    return config, train(config, run, device="cpu", progress=False)


def test_presets_hold_the_paper_settings():
    c11 = default_config("cifar-11")
    assert (c11.momentum, c11.weight_decay, c11.batch_size) == (0.9, 5e-4, 100)
    assert [lr_at(c11, iteration=i, epoch=0) for i in (0, 34_999, 35_000, 85_000, 164_999)] == [
        0.01, 0.01, 0.005, 5e-4, 5e-5,
    ]  # fmt: skip
    assert lr_at(default_config("cifar-18"), iteration=70_000, epoch=0) == pytest.approx(1e-4)
    fc = default_config("mnist-fc")
    assert (fc.lr, fc.batch_size, fc.epochs, fc.momentum) == (0.01, 64, 300, 0.0)
    assert default_config("mnist-ae").loss == "bce_logits"
    assert "not stated" in default_config("mnist-ae").notes


def test_overrides_parse_by_type():
    cfg = apply_overrides(
        default_config("cifar-11"),
        ["lr=0.1", "augment=false", "alpha=none", "dropout=0,0.1,0,0,0,0,0",
         "lr_schedule=0:0.1,10:0.01", "schedule_unit=epoch", "epochs=7"],
    )  # fmt: skip
    assert (cfg.lr, cfg.augment, cfg.alpha, cfg.epochs) == (0.1, False, None, 7)
    assert cfg.lr_schedule == ((0, 0.1), (10, 0.01)) and cfg.dropout[1] == 0.1
    assert lr_at(cfg, iteration=10**6, epoch=10) == 0.01
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(InputError, match="key=value"):
        apply_overrides(cfg, ["learning_rate=1"])
    with pytest.raises(InputError, match="cannot parse"):
        apply_overrides(cfg, ["epochs=many"])
    with pytest.raises(InputError, match="loss"):
        default_config("mnist-fc", loss="hinge")


def test_two_epochs_on_digits_loss_falls(digits_run):
    _, result = digits_run
    rows = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[0]["train_loss"] > rows[1]["train_loss"] > rows[2]["train_loss"]
    assert rows[2]["test_error"] < 0.5 and rows[2]["seconds_per_iteration"] > 0
    assert next(result.model.parameters()).dtype == torch.float32
    assert rows == result.metrics


def test_recorded_means_equal_a_manual_forward(digits_run):
    config, result = digits_run
    from safetensors.torch import load_file

    from natgrad.data import load_dataset

    probe = load_file(result.run_dir / "activations" / "probe.safetensors")["indices"]
    x = load_dataset("digits", seed=config.seed).train_x[probe]
    model, info = load_checkpoint(result.run_dir, epoch=2)
    recorded = load_activations(result.run_dir, 2)
    h, expected = x, {}
    with torch.no_grad():
        for name, layer in model.named_children():  # the obvious way, layer by layer
            h = layer(h)
            if isinstance(layer, UNIT_TYPES):
                expected[name] = h.double().mean(0)
    assert list(recorded) == list(expected) == [f"act{i}" for i in range(1, 9)]
    for name in expected:
        assert_close(recorded[name], expected[name], rtol=1e-5, atol=1e-6, what=name)
    summary = [
        json.loads(s)
        for s in (result.run_dir / "activations/summary.jsonl").read_text().splitlines()
    ]
    assert [s["epoch"] for s in summary] == [0, 1, 2]
    every = torch.cat([expected[n] for n in expected])
    assert summary[2]["median_all"] == pytest.approx(float(every.quantile(0.5)), rel=1e-5)
    assert summary[2]["layers"]["act1"]["frac_zero"] == 0.0  # ELU is never exactly 0 here


def test_checkpoint_round_trip(digits_run):
    config, result = digits_run
    model, info = load_checkpoint(result.run_dir / "checkpoints" / "epoch_0002.json")
    for (k, v), (k2, v2) in zip(
        model.state_dict().items(), result.model.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2), k
    assert info["epoch"] == 2 and info["metrics"] == result.metrics
    assert TrainConfig.from_dict(info["config"]) == config
    assert info["torch_version"] == torch.__version__ and "cpu" in info["device"]
    assert not model.training
    _, first = load_checkpoint(result.run_dir, epoch=1)
    assert first["epoch"] == 1


def test_pickles_are_refused(tmp_path):
    pt = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pt)
    with pytest.raises(CheckpointError, match="pickle.*arbitrary code") as info:
        load_checkpoint(pt)
    assert str(pt) in str(info.value) and "safetensors" in str(info.value)
    disguised = tmp_path / "epoch_0001.safetensors"
    disguised.write_bytes(b"\x80\x04K\x01.")  # a pickle under a safetensors name
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(disguised)


def test_corrupt_and_missing_checkpoints(digits_run, tmp_path):
    _, result = digits_run
    run = tmp_path / "copy"
    (run / "checkpoints").mkdir(parents=True)
    for p in (result.run_dir / "checkpoints").glob("epoch_0002.*"):
        (run / "checkpoints" / p.name).write_bytes(p.read_bytes())
    st = run / "checkpoints" / "epoch_0002.safetensors"
    blob = bytearray(st.read_bytes())
    blob[-1] ^= 0xFF
    st.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        load_checkpoint(run)
    (run / "checkpoints" / "epoch_0002.json").write_text("{truncated")
    with pytest.raises(CheckpointError, match="corrupt checkpoint JSON"):
        load_checkpoint(run)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(run, epoch=7)
    # a checkpoint whose metrics history lost rows: a resume rewrote metrics.jsonl from it,
    # losing epochs 1-2 (a helper's find); refused, naming the file and the way out
    config, _ = digits_run
    copy = tmp_path / "resumed"
    shutil.copytree(result.run_dir, copy)
    info = copy / "checkpoints" / "epoch_0002.json"
    meta = json.loads(info.read_text())
    meta["metrics"] = meta["metrics"][:1]
    info.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"epoch_0002.json: its metrics history.*0\.\.2"):
        train(apply_overrides(config, ["epochs=3"]), copy, device="cpu", progress=False)


def test_resume_refuses_a_different_config(digits_run):
    config, result = digits_run
    other = apply_overrides(config, ["lr=0.5"])
    with pytest.raises(InputError, match=r"different config \(\['lr'\]\)"):
        train(other, result.run_dir, device="cpu", progress=False)


def test_records_without_a_checkpoint_are_not_replaced_by_another_config(tmp_path):
    """A folder with a run's records but no checkpoint (a record's copy, copy_runs) was
    silently replaced by a resume of another config (a helper's find); now refused, by
    the sequential and the grid trainer, unless resume=False asks to start over."""
    from natgrad.training.grid import train_grid

    config = default_config("mnist-fc", epochs=1, width=8, depth=2, train_size=64, **DIGITS)
    run = train(config, tmp_path / "r", device="cpu", progress=False).run_dir
    shutil.rmtree(run / "checkpoints")
    records = (run / "metrics.jsonl").read_bytes()
    other = apply_overrides(config, ["lr=0.3"])
    with pytest.raises(InputError, match=r"different config \(lr\).*--no-resume"):
        train(other, run, device="cpu", progress=False)
    with pytest.raises(InputError, match=r"different config \(lr\)"):
        train_grid([other, apply_overrides(other, ["seed=1"])], [run, tmp_path / "s"],
                   device="cpu", progress=False)  # fmt: skip
    assert (run / "metrics.jsonl").read_bytes() == records
    train(other, run, device="cpu", progress=False, resume=False)  # asked: starts over
    assert json.loads((run / "config.json").read_text())["config"]["lr"] == 0.3


def test_a_run_whose_config_json_is_lost_resumes_from_its_checkpoints(tmp_path):
    """A missing or unreadable config.json made natgrad call the folder not its own ("was
    not created by natgrad", a helper's find), though its checkpoints are natgrad's and hold
    the config: the resume goes on and writes config.json again."""
    config = default_config("mnist-fc", epochs=1, width=8, depth=2, train_size=64, **DIGITS)
    run = train(config, tmp_path / "r", device="cpu", progress=False).run_dir
    meta = (run / "config.json").read_text()
    for damage in ("missing", "garbage"):
        if damage == "missing":
            (run / "config.json").unlink()
        else:
            (run / "config.json").write_text("{garbage")
        train(apply_overrides(config, ["epochs=2"]), run, device="cpu", progress=False)
        assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 2
    metrics = [json.loads(row) for row in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in metrics] == [0, 1, 2]  # resumed, not restarted
    assert json.loads(meta)["git_commit"] == json.loads((run / "config.json").read_text())[
        "git_commit"]  # fmt: skip


def test_autoencoder_and_conv_paths(tmp_path):
    """mnist-ae (BCE on pixels) and cifar-11 (conv recording, augmentation, momentum)."""
    ae = default_config("mnist-ae", epochs=1, batch_size=256, **DIGITS)
    res = train(ae, tmp_path / "ae", device="cpu", progress=False)
    assert res.metrics[1]["test_error"] is None and res.metrics[1]["train_loss"] > 0
    assert res.model.decoder.fc4.out_features == 64
    write_cifar10(tmp_path / "cifar")
    c11 = default_config(
        "cifar-11", dataset="cifar10", data_dir=str(tmp_path / "cifar"), epochs=1,
        batch_size=10, preprocess="none", probe_size=8,
    )  # fmt: skip
    res = train(c11, tmp_path / "c11", device="cpu", progress=False)
    means = load_activations(res.run_dir, 1)
    assert means["stack1.act1"].shape == (192,) and means["stack6.act1"].shape == (300,)
    assert np.isfinite(res.metrics[1]["train_loss"])


def write_cifar10(folder: Path, n: int = 6) -> None:
    import pickle

    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [1, 2] * (n // 2),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_cli_reports_errors(capsys):
    code = cli.main(["train", "--net", "mnist-fc", "--set", "bogus=1", "--no-progress"])
    assert code == 2 and "bogus=1" in capsys.readouterr().err


def _train_cmd(run: Path, epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "natgrad", "train", "--net", "mnist-fc", "--unit", "elu",
        "--dataset", "digits", "--epochs", str(epochs), "--checkpoint-every", "1",
        "--run-dir", str(run), "--no-progress", "--threads", "1", "--device", "cpu",
        "--set", "momentum=0.9", "--set", "probe_size=32", "--set", "dropout=0.3",
    ]  # fmt: skip


def test_killed_run_resumes_bit_identical(tmp_path):
    """SIGKILL a real training process after its first checkpoint; resume; compare bits."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    epochs = 8
    log = tmp_path / "whole.log"
    with open(log, "w") as fh:
        whole = subprocess.Popen(_train_cmd(tmp_path / "whole", epochs), cwd=ROOT, env=env,
                                 stdout=fh, stderr=fh)  # fmt: skip
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, epochs), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "epoch_0001.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "checkpoints" / f"epoch_{epochs:04d}.json").exists(), (
        "finished before kill"
    )
    resumed = subprocess.run(
        _train_cmd(killed, epochs), cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert whole.wait() == 0, log.read_text()
    a, info_a = read_checkpoint(tmp_path / "whole", epochs)
    b, info_b = read_checkpoint(killed, epochs)
    assert sorted(a) == sorted(b)
    for key in a:  # model.*, optim.* (momentum buffers), rng.*
        assert torch.equal(a[key], b[key]), key
    drop = ("seconds", "train_seconds", "seconds_per_iteration")
    strip = [
        [{k: v for k, v in r.items() if k not in drop} for r in i["metrics"]]
        for i in (info_a, info_b)
    ]
    assert strip[0] == strip[1]
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == list(range(epochs + 1))


def test_controls_of_a_comparison_train_and_resume(tmp_path):
    r"""The settings a fair comparison needs: ``train_size`` (first n images),
    ``preprocess=standardise`` (training-split statistics), ``keep_checkpoints`` (only the
    latest besides epoch 0 survive, and a resume starts from it), ``plain_first_layer`` with a
    block-diagonal natural gradient (fc1 steps by plain SGD at ``plain_lr``) and with centring
    (fc1 not centred; its checkpoint loads)."""
    from natgrad.data import load_dataset, standardise

    raw = load_dataset("digits", seed=0)
    ds = standardise(raw)
    flat = ds.train_x.flatten(1).double()
    assert flat.mean(0).abs().max() < 1e-5
    live = raw.train_x.flatten(1).double().std(0) > 0.01  # the others are divided by the floor
    assert_close(flat.std(0)[live], torch.ones(int(live.sum()), dtype=torch.float64),
                 rtol=1e-5, what="standardised")  # fmt: skip
    base = dict(DIGITS, epochs=3, train_size=96, keep_checkpoints=1)
    cfg = default_config("mnist-fc", preprocess="standardise", **base)
    res = train(cfg, tmp_path / "std", device="cpu", progress=False)
    assert res.metrics[1]["iterations"] == 2  # 96 images, batch 64
    ckpts = sorted(p.name for p in (tmp_path / "std" / "checkpoints").glob("*.json"))
    assert ckpts == ["epoch_0000.json", "epoch_0003.json"]
    # a kill inside a prune (JSON gone, safetensors not yet) left the file for good (a
    # helper's find): the next prune removes it
    orphan = tmp_path / "std" / "checkpoints" / "epoch_0002.safetensors"
    orphan.write_bytes(b"left by a kill")
    longer = default_config("mnist-fc", preprocess="standardise", **dict(base, epochs=4))
    again = train(longer, tmp_path / "std", device="cpu", progress=False)
    assert [r["epoch"] for r in again.metrics] == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in orphan.parent.iterdir()) == [
        "epoch_0000.json",
        "epoch_0000.safetensors",
        "epoch_0004.json",
        "epoch_0004.safetensors",
    ]
    assert again.metrics[3]["train_loss"] == res.metrics[3]["train_loss"]
    ng = default_config("mnist-fc", unit="relu", optimizer="blockdiag-ng", lr=1e-3,
                        plain_first_layer=True, plain_lr=0.05, **base)  # fmt: skip
    train(ng, tmp_path / "ng", device="cpu", progress=False)  # the step: tests/test_optim.py
    _, info = read_checkpoint(tmp_path / "ng", 3)
    scales = sorted(g.get("lr_scale", 1.0) for g in info["optimizer"]["param_groups"])
    assert scales[-1] == pytest.approx(50.0) and info["optimizer"]["param_groups"][0]["lr"] == 1e-3
    centred = default_config("mnist-fc", centre=True, plain_first_layer=True, **base)
    train(centred, tmp_path / "c", device="cpu", progress=False)
    model, _ = load_checkpoint(tmp_path / "c")
    assert type(model.fc1).__name__ == "Linear"
    with pytest.raises(InputError, match="keep_checkpoints"):
        default_config("mnist-fc", keep_checkpoints=-1)
    with pytest.raises(InputError, match=r"alpha=1e\+39: must be within float32's range"):
        default_config("mnist-fc", unit="elu", alpha=1e39)  # torch raised building the unit
    with pytest.raises(InputError, match="train_size"):
        default_config("mnist-fc", train_size=0)


def test_layer_norm_run_is_named_resumes_and_reloads(tmp_path):
    """``layer_norm=True`` (mnist-fc): the run is named ``-ln``, its unit type is
    ``<unit>-ln``, its checkpoint reloads the same function, and the config refuses it for
    other nets or together with batch norm."""
    from natgrad.analysis.runs import load_model
    from natgrad.errors import InputError
    from natgrad.training import default_config, run_name, train
    from natgrad.training.rundir import RunDir

    cfg = default_config("mnist-fc", dataset="digits", unit="selu", layer_norm=True, width=8,
                         depth=2, epochs=1, probe_size=16, checkpoint_every=1)  # fmt: skip
    assert run_name(cfg) == "mnist-fc-selu-ln-digits-s0"
    run = tmp_path / run_name(cfg)
    train(cfg, run, device="cpu", progress=False)
    assert RunDir(run).identity()["unit_type"] == "selu-ln"
    model = load_model(run, 1)
    assert any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    with pytest.raises(InputError, match="layer_norm"):
        default_config("cifar-11", layer_norm=True)
    with pytest.raises(InputError, match="layer_norm"):
        default_config("mnist-fc", layer_norm=True, batch_norm=True)


def test_a_resume_drops_activation_records_past_its_checkpoint(tmp_path, _one_thread, monkeypatch):
    """A run killed after recording epochs past its last checkpoint resumes from that
    checkpoint: the later epochs' activation files are removed with their summary lines (they
    stayed, so a resumed run that then stopped earlier left load_activations a file of the
    killed attempt)."""
    import natgrad.training.loop as loop
    from natgrad.training.rundir import RunDir

    config = default_config("mnist-fc", epochs=3, **DIGITS)
    train(config, tmp_path, device="cpu", progress=False)
    rd = RunDir(tmp_path)
    for epoch in (2, 3):  # the kill came before these checkpoints
        for p in rd.checkpoint_paths(epoch):
            p.unlink()
    assert rd.activation_path(3).is_file()

    def killed_again(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_epochs", killed_again)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path, device="cpu", progress=False)
    assert rd.activation_path(1).is_file()
    assert not rd.activation_path(2).exists() and not rd.activation_path(3).exists()


def test_a_config_refuses_an_alpha_its_unit_refuses():
    """A config with alpha=-1 for ELU validated and then failed at model build: one rule
    (units.check_alpha) now refuses it when the config is made, naming unit and alpha."""
    with pytest.raises(InputError, match=r"unit 'elu': alpha=-1.0 is not allowed"):
        default_config("mnist-fc", unit="elu", alpha=-1.0)
    with pytest.raises(InputError, match=r"unit 'relu' has no alpha parameter"):
        default_config("mnist-fc", unit="relu", alpha=0.2)
    assert default_config("mnist-fc", unit="prelu", alpha=-0.5).alpha == -0.5
