r"""The run directory: its name, its paths and the readers of its files — the one owner.

Nothing else in natgrad builds a run directory's name or opens its files by path; the
training loop writes through these paths and the analysis reads through these readers.
Layout: ``docs/run_layout.md`` (and ``analysis/``: cached unit tables of
:mod:`natgrad.analysis.runs`).

Example:
    >>> from natgrad.training.config import default_config
    >>> import dataclasses
    >>> cfg = dataclasses.replace(default_config("mnist-fc"), dataset="digits", seed=3)
    >>> run_name(cfg)
    'mnist-fc-elu-digits-s3'
    >>> RunDir("runs/x").checkpoint_paths(7)[1].as_posix()
    'runs/x/checkpoints/epoch_0007.json'
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from natgrad.errors import DataFileError, InputError
from natgrad.units import unit_type_key

__all__ = ["RunDir", "default_run_dir", "find_runs", "run_name"]

PathLike = str | os.PathLike

_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.(json|safetensors)$")
_ACTIVATION_FILE = re.compile(r"^epoch_\d+\.safetensors$")


def run_name(config, tag: str | None = None) -> str:
    """``<net>-<unit>[-bn|-ln][-centred|-<optimizer>[-w<K>]]-<dataset>-s<seed>[-<tag>]`` for a
    :class:`TrainConfig` (the optimizer is named unless it is plain SGD; ``-w<K>``: the unit
    natural gradient's Fisher window, ``fisher_window``)."""
    bn = ("-bn" if config.batch_norm else "") + ("-ln" if config.layer_norm else "")
    opt = config.optimizer
    how = "-centred" if config.centre else ("" if opt == "sgd" else f"-{opt}")
    if opt == "unit-ng" and config.fisher_window:
        how += f"-w{config.fisher_window}"
    suffix = f"-{tag}" if tag else ""
    return f"{config.net}-{config.unit}{bn}{how}-{config.dataset}-s{config.seed}{suffix}"


def default_run_dir(config, root: PathLike = "runs", tag: str | None = None) -> Path:
    """``<root>/<run_name(config)>``."""
    return Path(root) / run_name(config, tag)


def find_runs(root: PathLike) -> list[Path]:
    """Every run directory (a folder with ``config.json``) at or below ``root``, sorted."""
    root = Path(root)
    if not root.exists():
        raise DataFileError(f"{root}: no such folder (expected run directories of `natgrad train`)")
    runs = sorted({p.parent for p in root.rglob(RunDir.CONFIG)})
    if not runs:
        raise DataFileError(f"{root}: no run directory (a folder holding config.json) below it")
    return runs


#: The ``config.json`` fields every reader relies on, and their types.
_CONFIG_FIELDS = {"net": str, "unit": str, "dataset": str, "seed": int, "epochs": int}


class RunDir:
    """Paths and readers of one run directory (it need not exist yet)."""

    CONFIG = "config.json"

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    # --- paths -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def diverged_path(self) -> Path:
        return self.path / "diverged.json"

    def read_diverged(self) -> str | None:
        """The message of the divergence a study recorded for this run, or ``None``."""
        if not self.diverged_path.is_file():
            return None
        try:
            return str(json.loads(self.diverged_path.read_text())["message"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataFileError(f"{self.diverged_path}: unreadable ({exc}); delete it to "
                                "train the run again") from None  # fmt: skip

    @property
    def activations_dir(self) -> Path:
        return self.path / "activations"

    @property
    def probe_path(self) -> Path:
        return self.activations_dir / "probe.safetensors"

    @property
    def activation_summary_path(self) -> Path:
        return self.activations_dir / "summary.jsonl"

    def activation_path(self, epoch: int) -> Path:
        return self.activations_dir / f"epoch_{epoch:04d}.safetensors"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_paths(self, epoch: int) -> tuple[Path, Path]:
        """``(safetensors, json)`` of the checkpoint at ``epoch``."""
        base = self.checkpoints_dir / f"epoch_{epoch:04d}"
        return base.with_suffix(".safetensors"), base.with_suffix(".json")

    def own_files(self) -> list[Path]:
        """Every file of this run that natgrad wrote, matched by its exact name (what a fresh
        start may delete; another tool's ``checkpoints/epoch_10.pt`` is not among them)."""
        fixed = [self.config_path, self.metrics_path, self.probe_path, self.activation_summary_path,
                 self.diverged_path]  # fmt: skip
        files = (
            [p for p in fixed if p.is_file()] + self.activation_files() + self.checkpoint_files()
        )
        return sorted(p for p in files if p.is_file())

    def activation_files(self, *, after: int = -1) -> list[Path]:
        """The per-epoch activation records ``activations/epoch_XXXX.safetensors`` of epochs
        above ``after``."""
        if not self.activations_dir.is_dir():
            return []
        return sorted(p for p in self.activations_dir.iterdir()
                      if _ACTIVATION_FILE.match(p.name) and int(p.stem[6:]) > after)  # fmt: skip

    def record_files(self) -> list[Path]:
        """What a finished run needs to be read again: config, metrics and the divergence
        note (those that exist; :mod:`natgrad.training.carry`)."""
        return [p for p in (self.config_path, self.metrics_path, self.diverged_path) if p.is_file()]

    def resume_files(self) -> list[Path]:
        """:meth:`record_files`, the activation records and the latest checkpoint: what the
        run needs to continue in a later session."""
        latest = self.latest_epoch()
        extra = [self.activation_summary_path, self.probe_path,
                 *(self.checkpoint_paths(latest) if latest is not None else ())]  # fmt: skip
        return self.record_files() + [p for p in extra if p.is_file()]

    def checkpoint_files(self) -> list[Path]:
        """The checkpoint files natgrad wrote (``epoch_XXXX.safetensors`` / ``.json``)."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoints_dir.iterdir() if _EPOCH_FILE.match(p.name))

    def check_no_links(self) -> None:
        """Refuse a run directory that is, or holds in natgrad's places, a symlink: natgrad
        would write (and delete its own file names) through it, into another folder."""
        from natgrad.errors import RunDirError

        for p in (self.path, self.activations_dir, self.checkpoints_dir, self.analysis_dir):
            if p.is_symlink():
                raise RunDirError(f"{p}: is a symlink; natgrad does not write or delete through "
                                  "links. Replace it by a real folder or pick another run "
                                  "directory")  # fmt: skip

    @property
    def analysis_dir(self) -> Path:
        """Cached analysis results of this run (``natgrad.analysis.runs``)."""
        return self.path / "analysis"

    def analysis_path(self, name: str) -> Path:
        return self.analysis_dir / name

    # --- readers -----------------------------------------------------------------------
    def read_meta(self) -> dict:
        """The whole ``config.json`` (config, device, git commit, torch version)."""
        path = self.config_path
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataFileError(
                f"{path}: missing; is {self.path} a run directory of `natgrad train`?"
            ) from None
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            raise DataFileError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            raise DataFileError(f"{path}: not a natgrad run config (no 'config' object)")
        cfg = meta["config"]
        wrong = [k for k, kind in _CONFIG_FIELDS.items()
                 if not isinstance(cfg.get(k), kind) or isinstance(cfg.get(k), bool)]  # fmt: skip
        if wrong:
            raise DataFileError(f"{path}: config fields {wrong} are missing or of the wrong type "
                                "(was it edited?); restore it from the run's checkpoint JSON "
                                "('config') or retrain")  # fmt: skip
        return meta

    def read_config(self) -> dict:
        """The ``config`` dict of ``config.json``."""
        return self.read_meta()["config"]

    def identity(self) -> dict:
        """``run``, ``net``, ``unit_type`` (unit and normalisation), ``dataset``, ``seed``."""
        cfg = self.read_config()
        return {
            "run": self.name,
            "net": cfg["net"],
            "unit_type": unit_type_key(
                cfg["unit"], bool(cfg.get("batch_norm")), bool(cfg.get("layer_norm"))
            ),
            "dataset": cfg["dataset"],
            "seed": int(cfg["seed"]),
        }

    def read_metrics(self) -> list[dict]:
        """The rows of ``metrics.jsonl`` (one per epoch); a row without an integer ``epoch`` is
        a :class:`DataFileError` naming the file."""
        rows = _jsonl(self.metrics_path)
        bad = [i for i, r in enumerate(rows)
               if not isinstance(r.get("epoch"), int) or isinstance(r.get("epoch"), bool)]  # fmt: skip
        if bad:
            raise DataFileError(f"{self.metrics_path}: row {bad[0] + 1} has no integer 'epoch' "
                                "(was it edited?); restore the file or retrain the run")  # fmt: skip
        return rows

    def read_activation_summary(self) -> list[dict]:
        """The rows of ``activations/summary.jsonl`` (one per recorded epoch)."""
        return _jsonl(self.activation_summary_path)

    def read_probe_indices(self):
        """``[n]`` int64 indices of the probe set into the training split."""
        from safetensors.torch import load_file

        path = self.probe_path
        if not path.is_file():
            raise DataFileError(f"{path}: missing; the run did not record its probe set")
        try:
            return load_file(path)["indices"]
        except Exception as exc:  # safetensors raises its own error types
            raise DataFileError(f"{path}: not a readable safetensors probe file ({exc})") from None

    def checkpoint_epochs(self) -> list[int]:
        """Sorted epochs with a complete checkpoint (its JSON exists)."""
        return sorted(
            int(m.group(1))
            for p in self.checkpoint_files()
            if (m := _EPOCH_FILE.match(p.name)) and m.group(2) == "json"
        )

    def latest_epoch(self) -> int | None:
        """The largest epoch with a complete checkpoint, or ``None``."""
        epochs = self.checkpoint_epochs()
        return epochs[-1] if epochs else None


def _jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file; a torn last line (a killed writer) is dropped, a bad
    line before it is a :class:`DataFileError` (:func:`natgrad._atomic.read_jsonl`)."""
    from natgrad._atomic import read_jsonl

    if not path.is_file():
        raise DataFileError(f"{path}: missing; the run in {path.parent} did not record it")
    return read_jsonl(path)


def check_same_run(run: str | os.PathLike, config) -> None:
    r"""Refuse (:class:`~natgrad.errors.InputError` naming the fields) a run directory whose
    ``config.json`` holds another run than ``config`` (:meth:`TrainConfig.differs_from`):
    its records are never taken for this one's, nor replaced by a resume. A folder without
    one passes."""
    rd = RunDir(Path(run))
    if rd.config_path.is_file() and (diff := config.differs_from(rd.read_config())):
        raise InputError(f"{run}: holds a run made with a different config ({', '.join(diff)}); "
                         "pick another runs folder, or remove it (or pass --no-resume) to "
                         "retrain")  # fmt: skip
