r"""Carry run directories between sessions: what a study's result folder keeps of its runs.

A session's scratch disk goes with the session; a study that trains over several sessions,
or whose report must rebuild from the repository, copies part of each run directory into
its result folder and back. Which files that is, is decided here once:

- the **records** (:meth:`RunDir.record_files`: config, metrics, the divergence note) are
  what a finished run needs to be read again, by :func:`natgrad.analysis.runs.curve_table`
  or a study's report; plus any named tables of its ``analysis/`` folder (with their
  checksums, without which :func:`natgrad.analysis.csvtables.read_csv` refuses them);
- with ``resume``, also what a run needs to continue in a later session: its activation
  records and its latest checkpoint (:meth:`RunDir.resume_files`).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> src, dest = (Path(tempfile.mkdtemp()) for _ in range(2))
    >>> _ = (src / "relu-s0").mkdir(), (src / "relu-s0" / "config.json").write_text("{}")
    >>> copy_runs(src, dest), sorted(p.name for p in (dest / "relu-s0").iterdir())
    (1, ['config.json'])
"""

from __future__ import annotations

import shutil
from pathlib import Path

from natgrad._atomic import atomic_open
from natgrad.errors import InputError
from natgrad.training.plan import complete
from natgrad.training.rundir import PathLike, RunDir, find_runs

__all__ = ["copy_runs", "finished"]


def finished(run: PathLike) -> bool:
    """Whether ``run`` holds every epoch its config asks for, or stopped on divergence
    (``diverged.json``): either way it will not train again."""
    rd = RunDir(run)
    if rd.diverged_path.is_file():
        return True
    return rd.config_path.is_file() and complete(rd.path, rd.read_config()["epochs"])


def copy_runs(src: PathLike, dest: PathLike, *, runs=None, finished_only: bool = False,
              resume: bool = False, analysis: tuple[str, ...] = (),
              replace: bool = True) -> int:  # fmt: skip
    r"""Copy every run directory at or below ``src`` to the same place below ``dest``: its
    records, the ``analysis`` tables named (e.g. ``("fig3-units.csv",)``, each with its
    ``.sha256``) and, with ``resume``, its activation records and latest checkpoint (the
    older checkpoints a previous copy left in ``dest`` are removed once the new one is
    there; a run without a checkpoint removes none). Each file is written
    atomically (:mod:`natgrad._atomic`). ``runs``: only these
    run directories below ``src`` (default: every one there). ``finished_only``:
    only runs that :func:`finished`. ``replace=False`` keeps every file ``dest`` already
    has (to restore into a folder where runs may be training); with ``resume``, a run is
    copied whole or not at all: where ``src`` holds a later checkpoint than ``dest``'s copy,
    its records and checkpoint replace that copy's (a newer checkpoint beside older records
    resumed with epochs missing from its curves), else ``dest``'s copy is kept. Returns the
    files copied."""
    src, dest = Path(src), Path(dest)
    a, b = src.resolve(), dest.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise InputError(f"copy runs from {src} to {dest}: one folder holds the other, so the "
                         "copies would be copied again; pick a destination outside the runs")  # fmt: skip
    copied = 0
    for run in find_runs(src) if runs is None else map(Path, runs):
        if not run.resolve().is_relative_to(a):
            raise InputError(f"copy runs: {run} is not below {src}; pass run directories "
                             "inside the source folder")  # fmt: skip
        if finished_only and not finished(run):
            continue
        rd, target = RunDir(run), RunDir(dest / run.resolve().relative_to(a))
        keep = replace
        if resume and not replace and target.config_path.is_file():
            mine, theirs = rd.latest_epoch(), target.latest_epoch()
            if mine is None or (theirs is not None and theirs >= mine):
                continue  # dest's copy is as far along: kept whole
            keep = True  # src's is further along: its records go with its checkpoint
        files = rd.resume_files() if resume else rd.record_files()
        files += [p for name in analysis for p in (rd.analysis_path(name),
                                                   rd.analysis_path(f"{name}.sha256"))]  # fmt: skip
        wanted = {target.path / p.relative_to(run) for p in files if p.is_file()}
        # a checkpoint's JSON marks it complete: it goes last, and an older checkpoint goes
        # only once the new one is there, so a copy killed midway leaves a resumable run
        for path in sorted(wanted, key=lambda p: (p.parent.name == "checkpoints" and
                                                  p.suffix == ".json", p)):  # fmt: skip
            if keep or not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(run / path.relative_to(target.path), "rb") as f, atomic_open(path) as g:
                    shutil.copyfileobj(f, g)
                copied += 1
        new = {p for p in wanted if p.parent.name == "checkpoints"}
        if resume and keep:  # src's run whole: dest's other resume files go (not its
            # per-epoch activation records, which the copy does not carry)
            stale = set(target.resume_files() + target.checkpoint_files()) - wanted
            if not new:  # a run with no checkpoint leaves the saved one be
                stale -= set(target.checkpoint_files())
            for path in stale:
                path.unlink()
    return copied
