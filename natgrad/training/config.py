r"""Typed training configurations, one per paper experiment, overridable by ``key=value``
strings (``natgrad train --set lr=0.1``).

The presets (:data:`PRESETS`) and natgrad's readings of what the paper leaves open (each
preset's ``notes`` names them; cifar-18's dropout phases included): ``docs/paper.md``,
"Training settings". A schedule is a tuple of ``(start, lr)`` pairs in ``schedule_unit``
(``"iteration"`` or ``"epoch"``, counted from 0); before the first start the base ``lr``
holds. ``dropout_phases``: ``(start_iteration, mode)`` pairs (0-based iterations, whatever
``schedule_unit`` says; ``per_stack`` before the first), set from the iteration count, so
that a resumed run is exact (``docs/run_layout.md``, "Dropout phases"). Weight decay applies
to the weights of Linear/Conv2d layers only (not biases, batch norm or PReLU slopes).

Every loop evaluates the test split each epoch and, where the data set has one, the
validation split (``val_loss``, ``val_error``): selection uses validation, never test
(``train_split="train+val"``: MNIST's 60k training images of the paper, no validation
curve). ``keep_checkpoints`` = k is for runs checkpointed every epoch, so that they resume
exactly without keeping every epoch's optimizer state. The other settings are described
where :class:`TrainConfig` declares them.

Example:
    >>> cfg = apply_overrides(default_config("mnist-fc"), ["epochs=3", "dataset=digits"])
    >>> cfg.epochs, cfg.dataset, cfg.lr
    (3, 'digits', 0.01)
    >>> lr_at(default_config("cifar-11"), iteration=40_000, epoch=80)
    0.005
    >>> [dropout_mode_at(default_config("cifar-18"), it) for it in (114_999, 115_000, 165_000)]
    ['per_stack', 'every_layer', 'every_layer_x1.5']
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from dataclasses import dataclass

from natgrad.argtypes import is_finite_number, is_integer
from natgrad.damping import LAYER_DAMPING, STEP_DAMPING
from natgrad.errors import InputError

__all__ = [
    "OPTIMIZERS",
    "TrainConfig",
    "apply_overrides",
    "default_config",
    "dropout_mode_at",
    "lr_at",
]

OPTIMIZERS = ("sgd", "unit-ng", "qd-ng", "diag-ng", "blockdiag-ng")
"""``sgd`` (torch), or :class:`natgrad.optim.UnitNaturalGradient` with structure ``unit``,
``quasidiagonal``, ``diagonal`` or ``blockdiag`` (settings ``ng_kind``, ``rel_damping``,
``layer_damping``, ``refresh_every``, ``fisher_ema``, ``fisher_window``; ``momentum`` and
``weight_decay`` as for SGD)."""


#: Config fields that leave what a run trains unchanged (:meth:`TrainConfig.differs_from`).
NOT_THE_RUN = ("epochs", "data_dir", "keep_checkpoints", "notes")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved as ``config.json`` in the run dir."""

    net: str = "mnist-fc"
    unit: str = "elu"
    alpha: float | None = None
    batch_norm: bool = False
    layer_norm: bool = False  # mnist-fc: layer norm after every hidden Linear (not in the paper)
    dataset: str = "mnist"
    data_dir: str | None = None
    seed: int = 0
    epochs: int = 300
    batch_size: int = 64
    optimizer: str = "sgd"  # or unit-ng / qd-ng / diag-ng (natgrad.optim.UnitNaturalGradient)
    centre: bool = False  # centred Linear/Conv2d units (natgrad.optim.centre), m updated per step
    centre_rate: float = 0.1  # m <- m + rate·(batch mean − m)
    ng_kind: str = "mc"  # the natural-gradient optimizers' Fisher: mc, exact or empirical
    rel_damping: float = STEP_DAMPING  # λ: F + (λ tr F + λ_layer mean_layer tr F)/(d+1)·I
    layer_damping: float = LAYER_DAMPING  # λ_layer (natgrad.damping owns both defaults)
    refresh_every: int = 10  # steps between refreshes of the running unit Fisher
    fisher_ema: float = 0.9  # F <- ema·F + (1 − ema)·F_batch
    fisher_window: int = 0  # unit-ng: 0 the dense running F; K the last K refreshes (Woodbury)
    ng_memory_budget: int | None = None  # larger dense layers: unit-ng QD, blockdiag-ng diagonal
    plain_first_layer: bool = False  # the first Linear/Conv2d is neither centred nor preconditioned
    plain_lr: float | None = None  # its lr under a natural-gradient optimizer (None: lr)
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_schedule: tuple[tuple[int, float], ...] = ()
    schedule_unit: str = "iteration"
    dropout: tuple[float, ...] | None = None  # per stack; None: the net's default
    width: int | None = None  # mnist-fc: units per hidden layer (None: the paper's 128)
    depth: int | None = None  # mnist-fc: hidden layers (None: the paper's 8)
    channel_scale: float | None = None  # cifar-*: every conv width × this (None: the paper's)
    dropout_phases: tuple[tuple[int, str], ...] = ()  # (start iteration, mode); cifar-*
    loss: str = "cross_entropy"  # or "bce_logits" (autoencoder)
    preprocess: str = "none"  # or "gcn-zca", "standardise"
    augment: bool = False  # random crops + flips (natgrad.data.train_view): CIFAR 4-pixel pad; ImageNet 224 of 256
    dtype: str = "float32"
    probe_size: int = 512
    record_every: int = 1
    checkpoint_every: int = 10
    checkpoint_initial: bool = True  # also checkpoint the initial weights as epoch 0
    checkpoint_epochs: tuple[int, ...] = ()  # more epochs to checkpoint (the analysed ones)
    keep_checkpoints: int = 0  # 0: keep all; k: the k latest (and epoch 0, checkpoint_epochs)
    train_split: str = "train"  # or "train+val": the validation split joins the training set
    train_size: int | None = None  # the first n training images only (None: all)
    eval_batch_size: int = 1000
    notes: str = ""

    def __post_init__(self) -> None:
        from natgrad.models import DROPOUT_MODES, STACK_DROPOUT
        from natgrad.units import UNIT_NAMES

        checks = {
            "unit": (self.unit, UNIT_NAMES),
            "net": (self.net, tuple(PRESETS)),
            "optimizer": (self.optimizer, OPTIMIZERS),
            "ng_kind": (self.ng_kind, ("mc", "exact", "empirical")),
            "schedule_unit": (self.schedule_unit, ("iteration", "epoch")),
            "loss": (self.loss, ("cross_entropy", "bce_logits")),
            "preprocess": (self.preprocess, ("none", "gcn-zca", "standardise")),
            "dtype": (self.dtype, ("float32", "float64", "bfloat16")),
            "train_split": (self.train_split, ("train", "train+val")),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise InputError(f"config {key}={value!r}: choose one of {', '.join(allowed)}")
        if (self.loss == "bce_logits") != (self.net == "mnist-ae"):
            raise InputError(
                f"config loss={self.loss!r} does not fit net {self.net!r}: the autoencoder "
                "mnist-ae trains with bce_logits (it reconstructs its input), the classifiers "
                "with cross_entropy"
            )
        for start, mode in self.dropout_phases:
            if mode not in DROPOUT_MODES or not is_integer(start) or start < 0:
                raise InputError(f"config dropout_phases: ({start}, {mode!r}) needs an integer start >= 0 "
                                 f"and a mode in {', '.join(DROPOUT_MODES)}")  # fmt: skip
        if self.layer_norm and (self.net != "mnist-fc" or self.batch_norm):
            raise InputError(f"config layer_norm=True: for mnist-fc only and not with batch_norm "
                             f"(net {self.net!r}, batch_norm={self.batch_norm})")  # fmt: skip
        for name in ("width", "depth"):
            value = getattr(self, name)
            if value is not None and (self.net != "mnist-fc" or int(value) < 1):
                raise InputError(f"config {name}={value!r}: a positive size, for mnist-fc only "
                                 f"(net {self.net!r})")  # fmt: skip
        if self.channel_scale is not None and not (
            self.net.startswith("cifar-") and self.channel_scale > 0
        ):
            raise InputError(f"config channel_scale={self.channel_scale!r}: a positive factor, "
                             f"for the cifar-* nets only (net {self.net!r})")  # fmt: skip
        if self.dropout_phases and self.net not in STACK_DROPOUT:
            raise InputError(f"config dropout_phases: {self.net} has no dropout phases; "
                             f"they exist for {', '.join(STACK_DROPOUT)}")  # fmt: skip
        if self.plain_lr is not None and self.optimizer == "sgd":
            raise InputError(f"config plain_lr={self.plain_lr!r}: the plain layers' rate under a "
                             "natural-gradient optimizer; with optimizer=sgd every layer takes "
                             "lr, so plain_lr would be ignored (drop it)")  # fmt: skip
        if self.centre and self.optimizer != "sgd":
            raise InputError(f"config centre=true goes with optimizer=sgd (centring is the plain "
                             f"step in centred coordinates), not {self.optimizer!r}")  # fmt: skip
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Every numeric setting: type, finiteness and range, named as ``--set`` names it."""

        def bad(key, value, need):
            return InputError(f"config {key}={value!r}: must be {need} (--set {key}=...)")

        minimum = {"epochs": 0, "batch_size": 1, "probe_size": 1, "record_every": 1,
                   "checkpoint_every": 1, "eval_batch_size": 1, "seed": 0,
                   "refresh_every": 1, "fisher_window": 0, "keep_checkpoints": 0}  # fmt: skip
        for key, lo in minimum.items():
            value = getattr(self, key)
            if not is_integer(value):
                raise bad(key, value, f"an integer >= {lo}")
            if value < lo:
                raise bad(key, value, f">= {lo}")
        for key in ("train_size", "ng_memory_budget"):
            value = getattr(self, key)
            if value is not None and not (is_integer(value) and value >= 1):
                raise bad(key, value, "an integer >= 1 or none")
        if self.seed >= 2**32:
            raise bad("seed", self.seed, "< 2**32")
        for key, ok, need in (
            ("lr", lambda v: v > 0, "a finite number > 0"),
            ("momentum", lambda v: 0 <= v < 1, "a finite number in [0, 1)"),
            ("weight_decay", lambda v: v >= 0, "a finite number >= 0"),
            ("alpha", lambda v: True, "a finite number or none"),
            ("plain_lr", lambda v: v > 0, "a finite number > 0 or none"),
            ("centre_rate", lambda v: 0 < v <= 1, "a finite number in (0, 1]"),
            ("fisher_ema", lambda v: 0 <= v < 1, "a finite number in [0, 1)"),
            ("rel_damping", lambda v: v >= 0, "a finite number >= 0"),
            ("layer_damping", lambda v: v >= 0, "a finite number >= 0"),
        ):
            value = getattr(self, key)
            if key in ("alpha", "plain_lr") and value is None:
                continue
            if not is_finite_number(value) or not ok(value):
                raise bad(key, value, need)
        import torch

        from natgrad.units import check_alpha

        check_alpha(self.unit, self.alpha)  # the units' own rule, before any model is built
        big = torch.finfo(getattr(torch, self.dtype)).max
        if self.alpha is not None and abs(self.alpha) > big:  # torch overflowed building it
            raise bad("alpha", self.alpha, f"within {self.dtype}'s range (|alpha| <= {big:.3g})")
        if self.fisher_window and self.optimizer != "unit-ng":
            raise bad("fisher_window", self.fisher_window, "0 unless optimizer=unit-ng")
        if self.fisher_window and not (self.rel_damping > 0 or self.layer_damping > 0):
            raise bad("fisher_window", self.fisher_window,
                      "0 when rel_damping = layer_damping = 0 (the window's Fisher is singular)")  # fmt: skip
        for start, lr in self.lr_schedule:
            if not is_finite_number(lr) or lr <= 0 or not is_integer(start) or start < 0:
                raise bad("lr_schedule", self.lr_schedule,
                          "start:lr pairs with integer start >= 0 and lr > 0")  # fmt: skip
        for key in ("lr_schedule", "dropout_phases"):  # a later phase listed first never applied
            starts = [s for s, _ in getattr(self, key)]
            if any(b <= a for a, b in itertools.pairwise(starts)):
                raise bad(key, getattr(self, key), "phases with strictly increasing starts")
        if not all(is_integer(e) and e >= 0 for e in self.checkpoint_epochs):
            raise bad("checkpoint_epochs", self.checkpoint_epochs, "integers >= 0, comma-separated")
        if self.dropout is not None and not all(
            is_finite_number(p) and 0 <= p < 1 for p in self.dropout
        ):
            raise bad("dropout", self.dropout, "rates in [0, 1)")

    def model_options(self) -> dict:
        """The per-net options of :func:`natgrad.models.build_model` this config sets
        (``dropout``, ``width``, ``depth``, ``channel_scale``, ``layer_norm``): the one place
        that maps a run's config to its network's build options."""
        out = {} if self.dropout is None else {"dropout": tuple(self.dropout)}
        out.update({k: getattr(self, k) for k in ("width", "depth", "channel_scale")
                    if getattr(self, k) is not None})  # fmt: skip
        if self.layer_norm:
            out["layer_norm"] = True
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def differs_from(self, saved: dict) -> list[str]:
        """The fields in which a run's saved config (``config.json``'s ``config``, or a
        checkpoint's) differs from this one, aside from those that leave what it trains
        unchanged (:data:`NOT_THE_RUN`: epochs, for a run resumed for more, where the data
        files lie, how many checkpoints are kept, notes): what makes it another run."""
        mine = {k: v for k, v in self.to_dict().items() if k not in NOT_THE_RUN}
        theirs = TrainConfig.from_dict(saved).to_dict()
        return sorted(k for k, v in mine.items() if theirs[k] != v)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise InputError(f"unknown config keys {sorted(unknown)}; known: {sorted(names)}")
        data = dict(data)
        # a start is kept as given (an integral float as its int): a fraction is refused, not cut
        data["lr_schedule"] = tuple((_whole(s), float(v)) for s, v in data.get("lr_schedule", ()))
        data["dropout_phases"] = tuple(
            (_whole(s), str(m)) for s, m in data.get("dropout_phases", ())
        )
        if data.get("dropout") is not None:
            data["dropout"] = tuple(float(p) for p in data["dropout"])
        data["checkpoint_epochs"] = tuple(data.get("checkpoint_epochs", ()))
        return cls(**data)


_IT = "iteration"
PRESETS: dict[str, dict] = {
    "mnist-fc": dict(
        dataset="mnist", epochs=300, batch_size=64, lr=0.01,
        notes="paper: He init, SGD lr 0.01, batch 64, 300 epochs; momentum not stated (0)",
    ),
    "mnist-ae": dict(
        dataset="mnist", epochs=500, batch_size=64, lr=1e-3, loss="bce_logits",
        notes="paper: SGD batch 64, 500 epochs, lr in {1e-2,1e-3,1e-4,1e-5}; loss not "
        "stated (natgrad: sigmoid + binary cross-entropy on pixels); momentum 0",
    ),
    "cifar-11": dict(
        dataset="cifar100", epochs=330, batch_size=100, lr=0.01, momentum=0.9,
        weight_decay=5e-4, preprocess="gcn-zca", augment=True, checkpoint_every=10,
        lr_schedule=((0, 0.01), (35_000, 0.005), (85_000, 5e-4), (135_000, 5e-5)),
        schedule_unit=_IT,
        notes="paper: 165k iterations; batch not stated (100, the 18-layer setting) -> "
        "330 epochs of 500 iterations",
    ),
    "cifar-18": dict(
        dataset="cifar100", epochs=410, batch_size=100, lr=0.01, momentum=0.9,
        weight_decay=5e-4, preprocess="gcn-zca", augment=True, checkpoint_every=10,
        lr_schedule=((0, 0.01), (35_000, 1e-3), (70_000, 1e-4), (105_000, 1e-5), (140_000, 1e-6),
                     (175_000, 1e-7)),
        schedule_unit=_IT,
        dropout_phases=((115_000, "every_layer"), (165_000, "every_layer_x1.5")),
        notes="paper: lr 0.01 /10 every 35k it, batch 100; main run length not stated "
        "(165k, as cifar-11). Dropout phases: for the main run's last 50k it (115k-165k) "
        "every layer of a stack is followed by dropout at the stack's rate (after the unit "
        "of each layer but the last; the last keeps the stack's dropout after pooling); then "
        "40k additional it (165k-205k, hence 410 epochs) with every rate p -> max(p, min(1.5p, "
        "0.9)) (0.5 -> 0.75; the cap never binds for the paper's rates)",
    ),
    "imagenet-15": dict(
        dataset="imagenet", epochs=0, batch_size=128, lr=0.01, momentum=0.9,
        weight_decay=5e-4, lr_schedule=((0, 0.01), (100_000, 1e-3), (200_000, 1e-4)),
        schedule_unit=_IT, checkpoint_every=1, augment=True,
        notes="paper: L2 5e-4, dropout 0.5 in the 4096 FC layers, 256 resize, per-pixel mean "
        "subtracted, random 224 crops + flips (natgrad: load_dataset subtracts the training "
        "mean image; the trainer crops, evaluation takes the centre 224); batch, lr and "
        "length not stated (natgrad: 128, 0.01 /10 every 100k it; set epochs). Data: "
        "natgrad.data.load_imagenet reads the train/val folder tree eagerly (small subsets via "
        "limit_per_class); full-scale ImageNet needs a streaming loader natgrad does not have",
    ),
}  # fmt: skip


def default_config(net: str, **overrides) -> TrainConfig:
    """The paper's settings for ``net`` (:data:`PRESETS`), with ``overrides``."""
    if net not in PRESETS:
        raise InputError(f"no training preset for {net!r}; choose one of {', '.join(PRESETS)}")
    return check_lr(TrainConfig.from_dict({"net": net, **PRESETS[net], **overrides}))


def _parse(key: str, text: str, hint) -> object:
    text = text.strip()
    if text.lower() in ("none", "null") and type(None) in typing.get_args(hint):
        return None
    if key == "lr_schedule":
        pairs = [p.split(":") for p in text.split(",") if p]
        return tuple((_whole(float(s)), float(v)) for s, v in pairs)
    if key == "dropout":
        return tuple(float(p) for p in text.split(","))
    if key == "checkpoint_epochs":
        return tuple(int(e) for e in text.split(",") if e.strip())
    if key == "dropout_phases":
        if text.lower() in ("", "none", "()"):
            return ()
        pairs = [p.split(":") for p in text.split(",") if p]
        return tuple((_whole(float(s)), m.strip()) for s, m in pairs)
    base = next((t for t in (bool, int, float, str) if t in (hint, *typing.get_args(hint))), str)
    if base is bool:
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError("expected true/false")
        return text.lower() in ("1", "true", "yes")
    return base(text)


def _whole(value):
    """``value`` as an ``int`` where it is integral, else as it is (for the check to refuse)."""
    return int(value) if is_finite_number(value) and float(value).is_integer() else value


def apply_overrides(config: TrainConfig, items: list[str] | None, **fields) -> TrainConfig:
    """Apply ``fields`` (e.g. the CLI's own flags), then ``key=value`` strings (which win);
    ``lr_schedule=0:0.01,35000:0.005``, ``dropout=0,0.1``,
    ``dropout_phases=115000:every_layer,165000:every_layer_x1.5``. The result is checked as
    a whole (:func:`check_lr`: ``--lr`` with ``--set lr_schedule=`` is one change)."""
    hints = typing.get_type_hints(TrainConfig)
    changes = dict(fields)
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in hints:
            raise InputError(f"--set {item!r}: expected key=value with key in {sorted(hints)}")
        if key == "net":  # the net brings its preset (epochs, schedule, dropout phases)
            raise InputError(f"--set {item!r}: choose the net with --net, which takes its preset")
        try:
            changes[key] = _parse(key, value, hints[key])
        except (ValueError, OverflowError) as exc:  # e.g. lr_schedule=inf:0.1
            raise InputError(f"--set {item!r}: cannot parse {value!r} for {key} ({exc})") from None
    return check_lr(dataclasses.replace(config, **changes))


def _piecewise(phases, t, before):
    """The value of the last ``(start, value)`` of ``phases`` with ``start <= t``, else ``before``."""
    return next((value for start, value in reversed(phases) if t >= start), before)


def check_lr(config: TrainConfig) -> TrainConfig:
    """``config``, refused where ``lr`` never applies: an ``lr_schedule`` whose first phase
    starts at 0 with another rate (cifar-11/18, imagenet-15: ``--lr 0.05`` trained at 0.01,
    and plain_lr was scaled against the ignored lr). Checked where a config is made or a run
    set up, not when a saved record is read (a record made before the check still loads)."""
    first = config.lr_schedule[0] if config.lr_schedule else None
    if first is not None and first[0] == 0 and first[1] != config.lr:
        raise InputError(f"config lr={config.lr!r}: lr_schedule's first phase starts at 0 with "
                         f"rate {first[1]!r}, so lr would never apply; set the first phase "
                         f"(--set lr_schedule=0:{config.lr!r},...) or lr={first[1]!r}")  # fmt: skip
    return config


def lr_at(config: TrainConfig, *, iteration: int, epoch: int) -> float:
    """Learning rate at 0-based ``iteration`` (or ``epoch``) under the piecewise schedule."""
    t = iteration if config.schedule_unit == "iteration" else epoch
    return _piecewise(config.lr_schedule, t, config.lr)


def dropout_mode_at(config: TrainConfig, iteration: int) -> str:
    """Dropout mode at 0-based ``iteration`` under ``config.dropout_phases`` (see
    :func:`natgrad.models.set_dropout_mode`); ``"per_stack"`` before the first phase."""
    return _piecewise(config.dropout_phases, iteration, "per_stack")
