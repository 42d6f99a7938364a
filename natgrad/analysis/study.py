r"""A study as data: arms × seeds → training configs, one runner, one reader of the curves.

A :class:`Study` names its arms, its seeds, how an (arm, seed) becomes a
:class:`~natgrad.training.TrainConfig`, how its run directory is named, and its declared
endpoints (:class:`~natgrad.analysis.endpoints.Endpoint`); training, reading the curves and
evaluating the endpoints are shared (``docs/architecture.md``). Every study of
:mod:`natgrad.studies` is declared this way.

Example:
    >>> from natgrad.training import default_config
    >>> s = Study("demo", ("elu", "relu"), (0, 1),
    ...           lambda arm, seed: default_config("mnist-fc", dataset="digits", unit=arm,
    ...                                            seed=seed, epochs=1))
    >>> [r.path.name for r in s.plan("runs")]
    ['elu-s0', 'relu-s0', 'elu-s1', 'relu-s1']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from natgrad.errors import InputError

__all__ = ["Study", "StudyRun"]


class StudyRun(NamedTuple):
    arm: str
    seed: int
    config: object  # natgrad.training.TrainConfig
    path: Path


def _default_name(arm: str, seed: int) -> str:
    return f"{arm}-s{seed}"


@dataclass(frozen=True)
class Study:
    r"""The declaration of a study.

    Attributes:
        name: what it is called in reports.
        arms: the arms, in the order of every table.
        seeds: the seeds (the replicates; every arm runs every seed, seed-major); an int n: 0 … n−1.
        config: ``(arm, seed) -> TrainConfig``.
        run_name: ``(arm, seed) -> folder name`` under the study's root (default
            ``"<arm>-s<seed>"``).
        endpoints: the declared comparisons (``role="primary"`` ones are the primary
            endpoints, adjusted by Holm within their family).
    """

    name: str
    arms: tuple[str, ...]
    seeds: tuple[int, ...]
    config: Callable[[str, int], object]
    run_name: Callable[[str, int], str] = _default_name
    endpoints: tuple = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "arms", tuple(self.arms))
        seeds = range(self.seeds) if isinstance(self.seeds, int) else self.seeds  # n: 0 … n−1
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))
        if not self.arms or not self.seeds:
            raise InputError(f"study {self.name!r}: needs at least one arm and one seed")
        if len(set(self.arms)) != len(self.arms):
            raise InputError(f"study {self.name!r}: arms repeat ({list(self.arms)})")

    def plan(self, root: str | Path) -> list[StudyRun]:
        """Every (arm, seed) with its config and run directory, seed-major."""
        root = Path(root)
        return [StudyRun(a, s, self.config(a, s), root / self.run_name(a, s))
                for s in self.seeds for a in self.arms]  # fmt: skip

    def train(self, root: str | Path, **kw) -> dict[str, str]:
        r"""Train (or resume) every run (:func:`natgrad.training.train_plan`, keyword
        arguments passed on); returns ``{run name: divergence message}``."""
        from natgrad.training.plan import train_plan

        runs = self.plan(root)
        return train_plan([r.config for r in runs], [r.path for r in runs], **kw)

    def finished(self, root: str | Path) -> list[StudyRun]:
        """The runs whose metrics hold every epoch of their config."""
        from natgrad.training.plan import complete

        return [r for r in self.plan(root) if complete(r.path, r.config.epochs, r.config)]

    def curves(self, root: str | Path):
        r"""One row per (seed, arm, epoch 0..E): ``train_loss`` (the trainer's running mean),
        ``val_loss``, ``val_error``, ``test_loss``, ``test_error`` and ``seconds`` (training
        time up to that epoch); NaN where the run has not reached (or diverged before) it."""
        import pandas as pd

        from natgrad.training.rundir import RunDir, check_same_run

        rows = []
        for arm, seed, cfg, path in self.plan(root):
            rd = RunDir(path)
            check_same_run(path, cfg)  # its curves are this study's only if its run is
            metrics = rd.read_metrics() if rd.metrics_path.is_file() else []  # not started
            got = {int(r["epoch"]): r for r in metrics if r["epoch"] <= cfg.epochs}
            elapsed = 0.0
            for e in range(cfg.epochs + 1):
                r = got.get(e, {})
                if r:
                    elapsed += float(r.get("train_seconds") or 0.0)
                values = {k: _num(r.get(k)) for k in _CURVES}
                rows.append(dict(seed=seed, arm=arm, epoch=e, **values,
                                 seconds=elapsed if r else math.nan))  # fmt: skip
        return pd.DataFrame(rows)

    def evaluate(self, values, *, group: str = "arm", by=()):
        r"""The declared endpoints on ``values`` (one row per arm and seed, the arm in column
        ``group``; per stratum of the ``by`` columns): :func:`natgrad.analysis.endpoints.evaluate`."""
        from natgrad.analysis.endpoints import evaluate

        if not self.endpoints:
            raise InputError(f"study {self.name!r} declares no endpoints")
        return evaluate(values, list(self.endpoints), group=group, by=by)


_CURVES = ("train_loss", "val_loss", "val_error", "test_loss", "test_error")


def _num(v) -> float:
    return math.nan if v is None else float(v)
