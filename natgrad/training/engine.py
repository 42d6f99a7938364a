r"""The training core that every runner plugs into: one run at a time
(:mod:`natgrad.training.loop`), the stacked grid (:mod:`natgrad.training.grid`) and
data-parallel (:mod:`natgrad.training.ddp`).

Written once here: the set-up of data, net and optimizer (:func:`setup`), the start of a
run (:func:`open_run`: resume or epoch 0), the epochs of one model (:func:`train_epochs`: the
data order and augmentation of epoch e seeded by ``(seed, e)``, the schedule, the held-out
evaluation, the metrics row, checkpoints) and the divergence error (:func:`diverged_error`).
The run directory, ``metrics.jsonl``'s fields and why a resumed run is bit-identical:
``docs/run_layout.md``.
"""

from __future__ import annotations

import math
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from natgrad._atomic import append_jsonl, read_jsonl, write_json, write_jsonl, write_safetensors
from natgrad._layers import supported_layers, unit_weights
from natgrad.data.preprocess import eval_view, train_view
from natgrad.errors import CheckpointError, DivergedError, InputError
from natgrad.training import _owner
from natgrad.training import checkpoint as ckpt
from natgrad.training.config import TrainConfig, check_lr, dropout_mode_at, lr_at
from natgrad.training.recording import probe_indices, record_activations, save_activations
from natgrad.training.rundir import RunDir, check_same_run

#: Device types whose non-finite-loss check runs once per epoch (no per-step host sync).
DEFERRED_LOSS_CHECK = ("cuda",)
#: What ``train_loss`` in a metrics row is (epochs 1..E; epoch 0 evaluates the initial net on
#: the training set): the one wording, which a study's record quotes so that a record made
#: by another definition can say its own.
#: (The autoencoder's, loss bce_logits, is the mean over its D pixels too: nats per pixel.)
TRAIN_LOSS = "each epoch's training loss, the running mean over its steps; nats per example"


@dataclass
class Run:
    """One run being trained: its config and folder, model, optimizer, data on the device,
    probe indices, the epoch it starts from, its metrics history and ``config.json``."""

    config: TrainConfig
    dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: tuple  # train x, y; test x, y; validation x, y (None without a validation split)
    probe: torch.Tensor
    start: int
    history: list[dict]
    meta: dict

    @property
    def held(self) -> dict:
        """``{"val": (x, y) or None, "test": (x, y)}``: the splits evaluated per epoch."""
        return {"val": None if self.data[4] is None else self.data[4:], "test": self.data[2:4]}


@dataclass
class TrainResult:
    """What :func:`train` returns: the run dir, the trained model and every metrics row."""

    run_dir: Path
    model: nn.Module
    metrics: list[dict]


def describe_device(device: torch.device) -> str:
    """The GPU name, or the CPU model from ``/proc/cpuinfo``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                n = torch.get_num_threads()
                return f"cpu: {line.split(':', 1)[1].strip()} ({n} torch thread{'s' * (n != 1)})"
    except OSError:  # pragma: no cover
        pass
    return "cpu"


def git_commit() -> str | None:
    """The checkout's ``HEAD`` commit, or ``None`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + epoch) * 4 + salt)


def run_data(config: TrainConfig):
    """The data a run sees, the one definition for its training and its analysis: its data set
    with the training split it trains on (``train_split``, the first ``train_size`` images)
    and its preprocessing (fitted on that training split). ``meta["fingerprints"]`` holds
    :func:`data_fingerprints` of the data before its preprocessing: a preprocessing's float
    noise (ZCA's BLAS sums change with the thread count) is not other data, and the
    preprocessing itself is a setting of the config."""
    from natgrad.data import gcn_zca, load_dataset, standardise

    ds = load_dataset(config.dataset, config.data_dir, seed=config.seed,
                      dtype=getattr(torch, config.dtype))  # fmt: skip
    if config.train_split == "train+val":
        ds = ds.with_validation_in_train()
    if config.train_size is not None:
        n, have = config.train_size, ds.train_x.shape[0]
        if n > have:  # it trained on all `have` while config.json said n
            raise InputError(f"config train_size={n}: the {config.dataset} training split "
                             f"({config.train_split}) holds {have} images; pass at most {have}")  # fmt: skip
        ds = ds.with_(train_x=ds.train_x[:n], train_y=ds.train_y[:n])
    fingerprints = data_fingerprints(ds)
    if config.preprocess == "gcn-zca":
        ds = gcn_zca(ds)
    elif config.preprocess == "standardise":
        ds = standardise(ds)
    return ds.with_(meta=dict(ds.meta, fingerprints=fingerprints))


def data_fingerprints(ds) -> dict[str, str]:
    """SHA-256 fingerprints (16 hex digits) of the data a run sees (:func:`run_data`, before
    its preprocessing): ``data_sha256`` of its training inputs and labels and
    ``held_out_sha256`` of its validation and test splits (recorded since 2026-12-07), kept
    with the run, so that a resume or an analysis on other data (another ``data_dir``, other
    files under the same one) is refused (:func:`other_data`) instead of going on."""
    import hashlib

    def sha(*tensors) -> str:
        h = hashlib.sha256()
        for t in tensors:
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.detach().cpu().contiguous().flatten().view(torch.uint8).numpy())
        return h.hexdigest()[:16]

    held_out = [t for t in (ds.val_x, ds.val_y, ds.test_x, ds.test_y) if t is not None]
    return {"data_sha256": sha(ds.train_x, ds.train_y), "held_out_sha256": sha(*held_out)}


def other_data(saved: dict, now: dict[str, str]) -> str:
    """Which of the fingerprints ``now`` (:func:`data_fingerprints`) the run's record ``saved``
    (its ``config.json`` or a checkpoint) holds otherwise, as ``"data_sha256 a → b, …"``
    (empty: none; a fingerprint the run did not record is not compared)."""
    return ", ".join(f"{k} {saved[k]} → {v}" for k, v in now.items()
                     if saved.get(k) is not None and saved[k] != v)  # fmt: skip


def initial_model(config: TrainConfig, ds) -> nn.Module:
    """The run's net with its initial weights (seeded by ``config.seed``), before centring:
    the one construction for training and for rebuilding epoch 0 in the analysis."""
    from natgrad.models import build_model

    return build_model(
        config.net, config.unit, alpha=config.alpha, batch_norm=config.batch_norm,
        num_classes=None if config.loss == "bce_logits" else ds.num_classes,
        in_shape=ds.input_shape, seed=config.seed, dtype=getattr(torch, config.dtype),
        **config.model_options(),
    )  # fmt: skip


def setup(config: TrainConfig, device: torch.device):
    check_lr(config)  # a run's lr applies (a saved record is read without this check)
    ds = run_data(config)
    model = initial_model(config, ds).to(device)
    first = next(iter(supported_layers(model)))
    plain = (first,) if config.plain_first_layer else ()
    if config.centre:  # before the parameter groups: centring replaces the layers
        from natgrad.optim import centre

        model = centre(model, inplace=True, skip=plain)
    decay = unit_weights(model)
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    else:
        from natgrad.optim import UnitNaturalGradient

        structure = {"unit-ng": "unit", "qd-ng": "quasidiagonal", "diag-ng": "diagonal",
                     "blockdiag-ng": "blockdiag"}  # fmt: skip
        plain_lr = config.lr if config.plain_lr is None else config.plain_lr
        optimizer = UnitNaturalGradient(
            model, config.lr, structure=structure[config.optimizer], kind=config.ng_kind,
            rel_damping=config.rel_damping, layer_damping=config.layer_damping,
            refresh_every=config.refresh_every, ema=config.fisher_ema,
            window=config.fisher_window or None,
            momentum=config.momentum, weight_decay=config.weight_decay,
            likelihood="bernoulli" if config.loss == "bce_logits" else "categorical", seed=config.seed,
            plain_layers=plain, plain_lr_scale=plain_lr / config.lr,
            loss_scale=1.0 / math.prod(ds.input_shape) if config.loss == "bce_logits" else 1.0,
            **({} if config.ng_memory_budget is None
               else {"memory_budget": config.ng_memory_budget}),
        )  # fmt: skip
    return ds, model, optimizer


def loss_function(config: TrainConfig):
    """The training loss: cross-entropy, mean over the batch; the autoencoder's binary
    cross-entropy, mean over the batch and the D pixels (its natural-gradient optimizer is
    given loss_scale = 1/D, :func:`setup`)."""
    if config.loss == "bce_logits":
        return lambda out, x, y: nn.functional.binary_cross_entropy_with_logits(out, x.flatten(1))
    return lambda out, x, y: nn.functional.cross_entropy(out, y)


@torch.no_grad()
def evaluate(model, x, y, loss_fn, config: TrainConfig) -> tuple[float, float | None]:
    """Mean loss and error rate (``None`` for the autoencoder) over ``x`` in eval mode."""
    was = model.training
    model.eval()
    total, wrong = torch.zeros((), dtype=torch.float64, device=x.device), 0
    for s in range(0, x.shape[0], config.eval_batch_size):
        xb, yb = x[s : s + config.eval_batch_size], y[s : s + config.eval_batch_size]
        xb = eval_view(xb, config.dataset)
        out = model(xb)
        total += loss_fn(out, xb, yb).double() * xb.shape[0]
        if config.loss == "cross_entropy":
            wrong += int((out.argmax(1) != yb).sum())
    model.train(was)
    n = max(x.shape[0], 1)
    return float(total) / n, (wrong / n if config.loss == "cross_entropy" else None)


def probe_record(model, train_x, probe, config: TrainConfig) -> dict:
    """The activation record of the training probe, in the view the net is evaluated on
    (:func:`natgrad.data.eval_view`: ImageNet's centre 224)."""
    return record_activations(model, eval_view(train_x[probe], config.dataset))


def held_out_metrics(model, held: dict, loss_fn, config: TrainConfig) -> dict:
    """The metrics row's ``val_loss``, ``val_error``, ``test_loss``, ``test_error``
    (``None`` for a split the data set lacks, and for the autoencoder's error)."""
    row = {}
    for split, xy in held.items():
        loss, err = (None, None) if xy is None else evaluate(model, *xy, loss_fn, config)
        row[f"{split}_loss"], row[f"{split}_error"] = loss, err
    return row


def check_held_out(run: Path, row: dict, epoch: int, step: int, per_epoch: int, lr: float):
    """A non-finite validation or test loss in ``row`` is a :class:`DivergedError`."""
    for split in ("val", "test"):
        value = row.get(f"{split}_loss")
        if value is not None and not math.isfinite(value):
            raise diverged_error(run, epoch, step, per_epoch, lr, f"{split} loss", value)


def save_checkpoint(run: Run, epoch: int, per_epoch: int) -> None:
    """Write ``run``'s checkpoint of epoch ``epoch``, then keep only ``keep_checkpoints``
    latest ones (0: all; epoch 0 and ``checkpoint_epochs`` always stay)."""
    info = dict(run.meta, iteration=epoch * per_epoch, metrics=run.history)
    ckpt.write_checkpoint(run.dir, epoch, run.model, run.optimizer, info)
    if run.config.keep_checkpoints:
        ckpt.prune_checkpoints(run.dir, run.config.keep_checkpoints, run.config.checkpoint_epochs)


def record_due(config: TrainConfig, epoch: int) -> bool:
    """Whether epoch ``epoch`` records the probe's activations (every ``record_every``-th and
    the last)."""
    return epoch % config.record_every == 0 or epoch == config.epochs


def epoch_order(config: TrainConfig, n: int, epoch: int) -> torch.Tensor:
    """``[n]`` the order in which a run visits its ``n`` training inputs in ``epoch``, the
    same for every runner (sequential, grid, data-parallel), so that they agree and resume
    each other's runs."""
    return torch.randperm(n, generator=epoch_generator(config.seed, epoch, 0))


def checkpoint_due(config: TrainConfig, epoch: int) -> bool:
    """Whether epoch ``epoch`` ends with a checkpoint (every ``checkpoint_every``-th, the
    last, and those in ``checkpoint_epochs``)."""
    return (epoch % config.checkpoint_every == 0 or epoch == config.epochs
            or epoch in config.checkpoint_epochs)  # fmt: skip


def rewrite_jsonl(path: Path, max_epoch: int) -> None:
    """Keep only the rows with ``epoch <= max_epoch`` (a killed run's tail, a torn last
    line included, is dropped), rewritten atomically."""
    if not path.exists():
        return
    keep = [
        r for r in read_jsonl(path) if isinstance(r.get("epoch"), int) and r["epoch"] <= max_epoch
    ]
    write_jsonl(path, keep)


def seed_globals(seed: int) -> None:
    """The global RNG states a run holds after epoch 0 (and, as these nets draw nothing from
    them, at every checkpoint): what its checkpoints store."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global state is what is saved
    random.seed(seed)


def diverged_error(
    run: Path, epoch: int, step: int, per_epoch: int, lr: float, what: str, value
) -> DivergedError:
    last = ckpt.latest_epoch(run)
    where = (f"the last good checkpoint is {ckpt.checkpoint_paths(run, last)[1]} (epoch {last})"
             if last is not None else "no checkpoint was written before it")  # fmt: skip
    return DivergedError(
        f"run {run}: training diverged at epoch {epoch}, step {step} of {per_epoch} "
        f"(iteration {(epoch - 1) * per_epoch + step - 1 if epoch else 0}): the {what} is "
        f"{float(value)} with lr {lr}; {where}; metrics.jsonl ends at the last finite epoch. "
        "Lower the learning rate (--lr / --set lr=...) and rerun with --no-resume",
        run=Path(run),
    )


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA if torch sees a GPU, else CPU; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"--device {device!r}: not a device; use auto, cpu or cuda[:N]") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: natgrad trains on cpu or cuda[:N] (or auto)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' asked for but torch sees no GPU; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"--device {device!r}: torch sees {torch.cuda.device_count()} GPU(s)")
    return dev


def metrics_row(epoch: int, per_epoch: int, lr: float, train_loss: float, evals: dict,
                seconds: float, train_seconds: float) -> dict:  # fmt: skip
    """The metrics row of epoch ``epoch`` (module docstring): the one place it is built."""
    return dict(epoch=epoch, iterations=epoch * per_epoch, lr=lr, train_loss=train_loss, **evals,
                seconds=seconds, train_seconds=train_seconds,
                seconds_per_iteration=train_seconds / per_epoch)  # fmt: skip


def open_run(config: TrainConfig, run: Path, dev: torch.device, ds, model, optimizer,
             start: int | None, trainer: dict | None = None, *, lead: bool = True,
             resume: bool = False) -> Run:  # fmt: skip
    """Everything before the first epoch of a run set up by :func:`setup`: resume from the
    checkpoint of epoch ``start`` (checked against ``config``), or (``None``) start over,
    removing natgrad's earlier outputs (with ``resume``, the records of another config in a
    run without a checkpoint are refused instead); write ``config.json`` (with ``trainer``);
    for a fresh run, epoch 0: the probe's indices and activations, the initial losses (a
    non-finite one is a :class:`DivergedError`) as the first metrics row, the global seeds
    and the initial checkpoint. ``lead=False`` (a DDP rank other than 0) writes nothing."""
    val = (None, None) if ds.val_x is None else (ds.val_x.to(dev), ds.val_y.to(dev))
    data = (ds.train_x.to(dev), ds.train_y.to(dev), ds.test_x.to(dev), ds.test_y.to(dev), *val)
    probe = probe_indices(data[0].shape[0], config.probe_size, config.seed)
    rd, fresh, fingerprints = RunDir(run), start is None, ds.meta["fingerprints"]
    if fresh:
        if lead:
            if resume:  # no checkpoint to resume: records of this run only are replaced
                check_same_run(run, config)
            _owner.remove_own_outputs(run)  # natgrad's own files only (RunDir.own_files)
        start, history = 0, []
    else:
        if start > config.epochs:  # nothing to train, and config.json would say fewer epochs
            raise InputError(f"{run}: already trained to epoch {start}, beyond epochs = "
                             f"{config.epochs}; ask for at least {start} epochs, or pass "
                             "--no-resume to train it anew")  # fmt: skip
        tensors, info = ckpt.read_checkpoint(run, start)
        where = ckpt.checkpoint_paths(run, start)[1]
        try:
            diff = config.differs_from(info["config"])
        except InputError as exc:  # a config of another version, or edited
            raise CheckpointError(f"{where}: its config cannot be read ({exc}); pick another "
                                  "--run-dir or pass --no-resume") from None  # fmt: skip
        if diff:
            raise InputError(f"{run}: its checkpoints were made with a different config "
                             f"({diff}); pick another --run-dir or pass --no-resume")  # fmt: skip
        try:
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            ckpt.restore_state(tensors, info, optimizer)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise CheckpointError(f"{where}: the checkpoint's state does not restore "
                                  f"({type(exc).__name__}: {exc}); delete {where.name} and its "
                                  ".safetensors to resume from an earlier checkpoint, or pass "
                                  "--no-resume") from None  # fmt: skip
        if differ := other_data(info, fingerprints):
            imagenet = (" (natgrad loads ImageNet's splits in one fixed class-mixed order, "
                        "centred on the exact mean of their bytes, since 2026-12-07: a run "
                        "trained before cannot resume)") if config.dataset == "imagenet" else ""  # fmt: skip
            raise InputError(f"{run}: its checkpoints were trained or evaluated on other data "
                             f"({differ}; data_dir {config.data_dir!r}): resume with the data "
                             f"it trained on, or pass --no-resume{imagenet}")  # fmt: skip
        history = info["metrics"]
        if [r.get("epoch") if isinstance(r, dict) else None for r in history] != list(
            range(start + 1)
        ):  # the metrics.jsonl it rewrites below comes from here: it must be whole
            raise CheckpointError(f"{where}: its metrics history does not hold epochs 0..{start} "
                                  f"in order; delete {where.name} and its .safetensors to resume "
                                  "from an earlier checkpoint, or pass --no-resume")  # fmt: skip
        if lead:  # the records past the checkpoint go; its own history is the metrics' truth
            rd.diverged_path.unlink(missing_ok=True)  # trained again: a new divergence rewrites it
            write_jsonl(rd.metrics_path, history)
            rewrite_jsonl(rd.activation_summary_path, start)
            for path in rd.activation_files(after=start):  # a killed attempt's, past it
                path.unlink()
    meta = {"config": config.to_dict(), "device": describe_device(dev),
            "git_commit": git_commit(), "torch_version": torch.__version__,
            **fingerprints,
            **({"trainer": trainer} if trainer else {})}  # fmt: skip
    if lead:
        write_json(rd.config_path, meta)
    r = Run(config, Path(run), model, optimizer, data, probe, start, history, meta)
    if fresh and lead:
        train_x, train_y = data[:2]
        loss_fn = loss_function(config)
        rd.activations_dir.mkdir(exist_ok=True)
        write_safetensors(rd.probe_path, {"indices": probe})
        save_activations(run, 0, probe_record(model, train_x, probe.to(dev), config))
        tr_loss, _ = evaluate(model, train_x, train_y, loss_fn, config)
        per_epoch = math.ceil(train_x.shape[0] / config.batch_size)
        if not math.isfinite(tr_loss):
            raise diverged_error(run, 0, 0, per_epoch, config.lr, "initial training loss", tr_loss)
        evals = held_out_metrics(model, r.held, loss_fn, config)
        check_held_out(run, evals, 0, 0, per_epoch, config.lr)
        row = metrics_row(0, per_epoch, lr_at(config, iteration=0, epoch=0), tr_loss, evals, 0.0,
                          0.0) | {"seconds_per_iteration": None}  # fmt: skip
        history.append(row)
        append_jsonl(rd.metrics_path, row)
    if fresh:
        seed_globals(config.seed)
    if fresh and lead and config.checkpoint_initial:  # after seeding: resuming from it is exact
        ckpt.write_checkpoint(run, 0, model, optimizer, dict(meta, iteration=0, metrics=history))
    return r


def train_epochs(run: Run, dev: torch.device, *, desc: str, progress: bool, forward=None,
                 update=None, ddp: bool = False, lead: bool = True, on_epoch=None) -> None:  # fmt: skip
    """Train ``run`` from epoch ``run.start + 1`` to ``config.epochs``, appending each epoch's
    metrics row (and activations, checkpoints when due) to its folder and ``run.history``.

    ``forward(xb, yb)`` gives the loss to back-propagate and the batch's summed loss in
    float64 (default: the model's batch mean); ``update(xb, yb)`` steps the optimizer
    (default: ``optimizer.step``, then centred layers move their centres). A non-finite loss
    is a :class:`DivergedError`, checked per step where that is free and once per epoch on
    the devices of :data:`DEFERRED_LOSS_CHECK`. ``ddp`` (:mod:`natgrad.training.ddp`): the
    epoch's loss sum and first non-finite step are all-reduced, ``lead``'s held-out losses
    broadcast, so that every rank stops together at a divergence, and the ranks meet at a
    barrier after each epoch, which only ``lead`` evaluates and writes. ``on_epoch(epoch)`` runs
    before each epoch's first step (DDP's ranks > 0 seed their dropout stream there).
    """
    from tqdm.auto import tqdm

    config, model, optimizer = run.config, run.model, run.optimizer
    loss_fn = loss_function(config)
    train_x, train_y = run.data[:2]
    rd, probe = RunDir(run.dir), run.probe.to(dev)
    n, bs = train_x.shape[0], config.batch_size
    per_epoch = math.ceil(n / bs)
    if forward is None:

        def forward(xb, yb):
            loss = loss_fn(model(xb), xb, yb)
            return loss, loss.detach().double() * xb.shape[0]

    if update is None:

        def update(xb, yb):  # the natural-gradient optimizers refresh their Fisher from xb
            if config.optimizer == "sgd":
                optimizer.step()
            else:
                optimizer.step(xb, yb if config.loss == "cross_entropy" else xb.flatten(1))
            if config.centre:
                from natgrad.optim import update_centres

                update_centres(model, rate=config.centre_rate)

    bar = tqdm(total=(config.epochs - run.start) * per_epoch, disable=not progress, unit="it",
               desc=desc, dynamic_ncols=True)  # fmt: skip
    model.train()
    dropout_mode = None
    for epoch in range(run.start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        if on_epoch is not None:
            on_epoch(epoch)
        perm = epoch_order(config, n, epoch).to(dev)
        aug = epoch_generator(config.seed, epoch, 1)
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        bad_step = torch.full((), -1, dtype=torch.long, device=dev)  # first non-finite (GPU)
        for b in range(per_epoch):
            it = (epoch - 1) * per_epoch + b
            lr = lr_at(config, iteration=it, epoch=epoch - 1)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if config.dropout_phases and dropout_mode != dropout_mode_at(config, it):
                from natgrad.models import set_dropout_mode

                dropout_mode = dropout_mode_at(config, it)
                set_dropout_mode(model, dropout_mode)
            idx = perm[b * bs : (b + 1) * bs]  # the global batch under DDP
            xb, yb = train_x[idx], train_y[idx]
            # the whole global batch, as one process augments it (crops, flips)
            xb = train_view(xb, config.dataset, aug, augment=config.augment)
            optimizer.zero_grad(set_to_none=True)
            loss, total = forward(xb, yb)
            finite = torch.isfinite(loss.detach())
            if ddp or dev.type in DEFERRED_LOSS_CHECK:  # no per-step host sync (GPU, ranks)
                bad_step = torch.where((bad_step < 0) & ~finite, b, bad_step)
            elif not finite:
                raise diverged_error(
                    run.dir, epoch, b + 1, per_epoch, lr, "training loss", loss.item()
                )
            loss.backward()
            update(xb, yb)
            loss_sum += total
            bar.update(1)
        if ddp:  # every rank learns the first step any rank found non-finite
            torch.distributed.all_reduce(loss_sum)
            first = torch.where(bad_step < 0, per_epoch, bad_step)
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
            bad_step = torch.where(first < per_epoch, first, -1)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t_train = time.perf_counter() - t0
        if int(bad_step) >= 0:
            step = int(bad_step) + 1
            raise diverged_error(run.dir, epoch, step, per_epoch, lr, "training loss", float("nan"))
        evals = held_out_metrics(model, run.held, loss_fn, config) if lead else None
        if ddp:
            shared = [evals]
            torch.distributed.broadcast_object_list(shared, src=0)
            evals = shared[0]
        check_held_out(run.dir, evals, epoch, per_epoch, per_epoch, lr)
        if lead:
            if record_due(config, epoch):
                save_activations(run.dir, epoch, probe_record(model, train_x, probe, config))
            row = metrics_row(epoch, per_epoch, lr, float(loss_sum) / n, evals,
                              time.perf_counter() - t0, t_train)  # fmt: skip
            run.history.append(row)
            append_jsonl(rd.metrics_path, row)
            bar.set_postfix(epoch=epoch, loss=f"{row['train_loss']:.4f}",
                            test_loss=f"{evals['test_loss']:.4f}")  # fmt: skip
            if checkpoint_due(config, epoch):
                save_checkpoint(run, epoch, per_epoch)
        if ddp:
            torch.distributed.barrier()
    bar.close()
