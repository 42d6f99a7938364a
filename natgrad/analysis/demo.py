r"""The main job (``natgrad demo`` = ``make demo``): from training to a bias-shift report.

1. Train ``mnist-fc`` (8 hidden × 128, input size adapted to the data) with ELU (α=1),
   ReLU, LReLU (α=0.1) and SReLU for each seed; run j of every unit type starts from the
   same initial weights (:func:`natgrad.models.build_model` draws them from the seed).
   Checkpoints every ``checkpoint_every`` epochs and at the last (:func:`natgrad.training.train`).
2. At epoch 0 and every checkpoint, compute for every layer and unit the exact unit Fisher
   on the run's probe set and Theorems 1–2 (:func:`natgrad.analysis.runs.unit_table`).
3. Write the tables (:func:`natgrad.analysis.summary.write_tables`) and the HTML report
   (:func:`natgrad.analysis.report.render_report`), and print the summary table.

Output layout (default ``reports/demo/``)::

    runs/<net>-<unit>-<dataset>-s<seed>/   run directories (docs/run_layout.md)
    tables/units.csv, curves.csv, activations.csv, epoch_summary.csv, summary.csv,
           comparison.csv
    report.html                            self-contained, figures embedded
    summary.txt                            the summary table printed on the terminal
    demo.json                              the DemoConfig, wall times, device

The default (``digits``, 3 seeds, 20 epochs, probe 512) takes a few minutes on a 2-core CPU.
``--paper`` is the paper's setting (MNIST, 5 seeds, 300 epochs; GPU recommended).
Rerunning reuses finished runs (training resumes from their checkpoints); ``--fresh``
retrains.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from natgrad.errors import InputError

__all__ = ["DemoConfig", "add_arguments", "analysed_epochs", "main", "run"]

UNITS = ("elu", "relu", "lrelu", "srelu")


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the main job; the defaults are the quick CPU run.

    ``threads``: torch's CPU threads while the demo runs (restored afterwards). One thread
    is the fastest for these small nets on a shared 2-core CPU (2–4× faster than two
    threads fighting other processes, measured); 0 keeps torch's setting.
    """

    net: str = "mnist-fc"
    dataset: str = "digits"
    data_dir: str | None = None
    units: tuple[str, ...] = UNITS
    seeds: int = 3
    epochs: int = 20
    checkpoint_every: int = 5
    probe_size: int = 512
    lr: float = 0.01
    batch_size: int = 64
    device: str = "cpu"
    threads: int = 1
    out: str = "reports/demo"
    fresh: bool = False

    def __post_init__(self) -> None:
        if self.seeds < 1 or self.epochs < 1 or self.checkpoint_every < 1 or self.probe_size < 2:
            raise InputError(
                f"demo: seeds, epochs, checkpoint_every must be >= 1 and probe_size >= 2; got "
                f"seeds={self.seeds}, epochs={self.epochs}, checkpoint_every="
                f"{self.checkpoint_every}, probe_size={self.probe_size}"
            )


#: The paper's setting of Fig 2 (PAPER.md): MNIST, 300 epochs, 5 seeds, lr 0.01, batch 64.
PAPER = dict(dataset="mnist", seeds=5, epochs=300, checkpoint_every=25, device="auto")


def analysed_epochs(config: DemoConfig) -> list[int]:
    """Epoch 0, every ``checkpoint_every``-th epoch and the last.

    Example:
        >>> analysed_epochs(DemoConfig(epochs=12, checkpoint_every=5))
        [0, 5, 10, 12]
    """
    return sorted(
        {
            0,
            config.epochs,
            *range(config.checkpoint_every, config.epochs + 1, config.checkpoint_every),
        }
    )


def _train_config(config: DemoConfig, unit: str, seed: int):
    from natgrad.training import default_config

    return default_config(
        config.net, dataset=config.dataset, data_dir=config.data_dir, unit=unit, seed=seed,
        epochs=config.epochs, checkpoint_every=config.checkpoint_every,
        probe_size=config.probe_size, lr=config.lr, batch_size=config.batch_size,
    )  # fmt: skip


def main(config: DemoConfig, *, progress: bool = True, echo=print) -> dict:
    r"""Run the main job; returns ``{"report", "tables", "runs", "summary", "seconds"}``."""
    import torch

    threads = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    try:
        return _main(config, progress, echo)
    finally:
        torch.set_num_threads(threads)


def _main(config: DemoConfig, progress: bool, echo) -> dict:
    import torch
    from tqdm.auto import tqdm

    from natgrad.analysis.report import load_tables, render_report, summary_text
    from natgrad.analysis.summary import write_tables
    from natgrad.training import default_run_dir, describe_device, train

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(unit, seed) for seed in range(config.seeds) for unit in config.units]
    runs = []
    bar = tqdm(jobs, desc="training", unit="run", disable=not progress, dynamic_ncols=True)
    for unit, seed in bar:
        bar.set_postfix(unit=unit, seed=seed)
        cfg = _train_config(config, unit, seed)
        run_dir = default_run_dir(cfg, out / "runs")
        res = train(cfg, run_dir, device=config.device, resume=not config.fresh, progress=False)
        runs.append(res.run_dir)
    t_train = time.perf_counter() - t0
    tables = write_tables(runs, out / "tables", epochs=analysed_epochs(config), progress=progress)
    t_tables = time.perf_counter() - t0 - t_train
    device = describe_device(torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else
                                          (config.device if config.device != "auto" else "cpu")))  # fmt: skip
    context = {
        "command": "python -m natgrad demo " + " ".join(_cli_args(config)),
        "device": device,
        "runs": f"{len(runs)} ({', '.join(config.units)} × {config.seeds} seeds), {config.net} on {config.dataset}",
        "analysed epochs": analysed_epochs(config),
        "probe set": f"{config.probe_size} training inputs per seed",
        "wall time": f"training {t_train:.1f} s, unit Fishers and tables {t_tables:.1f} s",
    }
    report = render_report(out / "tables", out / "report.html", context=context)
    seconds = time.perf_counter() - t0
    summary = summary_text(load_tables(out / "tables")["summary"])
    meta = {"config": asdict(config), "seconds": {"train": t_train, "tables": t_tables, "total": seconds},
            "device": device}  # fmt: skip
    (out / "demo.json").write_text(json.dumps(meta, indent=1))
    (out / "summary.txt").write_text(summary + "\n")
    echo(summary)
    echo(f"report: {report}  (tables in {out / 'tables'}; {seconds:.1f} s)")
    return {
        "report": report,
        "tables": tables,
        "runs": runs,
        "summary": summary,
        "seconds": seconds,
    }


def _cli_args(config: DemoConfig) -> list[str]:
    default = DemoConfig()
    args = []
    for f in (
        "dataset",
        "data_dir",
        "seeds",
        "epochs",
        "checkpoint_every",
        "probe_size",
        "lr",
        "device",
        "threads",
        "out",
    ):
        v = getattr(config, f)
        if v != getattr(default, f) and v is not None:
            args.append(f"--{f.replace('_', '-')} {v}")
    if config.units != default.units:
        args.append("--units " + ",".join(config.units))
    return args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    parser.add_argument(
        "--dataset",
        default=None,
        help=f"digits (default), fashion-mnist or mnist (paper: {PAPER['dataset']})",
    )
    parser.add_argument(
        "--data-dir", default=None, help="folder with the IDX files (mnist, fashion-mnist)"
    )
    parser.add_argument("--paper", action="store_true",
                        help="the paper's setting: MNIST, 5 seeds, 300 epochs, device auto (GPU recommended)")  # fmt: skip
    parser.add_argument(
        "--epochs", type=int, default=None, help=f"epochs per run (default {d.epochs})"
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help=f"seeds per unit type (default {d.seeds})"
    )
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help=f"analyse epoch 0, every N-th epoch and the last (default {d.checkpoint_every})")  # fmt: skip
    parser.add_argument(
        "--probe-size",
        type=int,
        default=None,
        help=f"probe inputs per seed (default {d.probe_size})",
    )
    parser.add_argument(
        "--units", default=None, help=f"comma-separated units (default {','.join(d.units)})"
    )
    parser.add_argument(
        "--lr", type=float, default=None, help=f"SGD learning rate (default {d.lr})"
    )
    parser.add_argument("--device", default=None, help="cpu (default), cuda or auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch CPU threads (default {d.threads}; 0: torch's)",
    )
    parser.add_argument("--out", default=None, help=f"output folder (default {d.out})")
    parser.add_argument(
        "--fresh", action="store_true", help="retrain instead of reusing runs in --out"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The :class:`DemoConfig` of parsed arguments (``--paper`` first, then explicit flags)."""
    config = replace(DemoConfig(), **PAPER) if args.paper else DemoConfig()
    changes = {k: getattr(args, k) for k in ("dataset", "data_dir", "epochs", "seeds", "checkpoint_every",
                                             "probe_size", "lr", "device", "threads", "out") if getattr(args, k) is not None}  # fmt: skip
    if args.units:
        changes["units"] = tuple(u.strip().lower() for u in args.units.split(",") if u.strip())
    if args.fresh:
        changes["fresh"] = True
    return replace(config, **changes)


def run(args: argparse.Namespace) -> int:
    """``natgrad demo``: exit 0, or 2 with the error's message (which names the file, run
    dir or setting at fault) for natgrad's own errors."""
    import sys

    from natgrad.errors import NatgradError

    try:
        main(config_from_args(args), progress=not args.no_progress)
    except NatgradError as exc:
        print(f"natgrad demo: error: {exc}", file=sys.stderr)
        return 2
    return 0
