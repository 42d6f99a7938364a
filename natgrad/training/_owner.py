r"""Who may write a run directory, and which of its files are natgrad's.

A folder counts as natgrad's when it holds the lock file ``.natgrad.lock`` or a
``config.json`` with a natgrad ``config``; natgrad writes into no other non-empty folder and
deletes only the files it writes (``docs/run_layout.md``, "Ownership, safe writes").

Example:
    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> with claim(run):
    ...     is_natgrad_run(run)
    True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from natgrad._atomic import clean_stale
from natgrad._lock import LOCK_NAME, DirLock
from natgrad.errors import DataFileError, RunDirError
from natgrad.training.rundir import RunDir

__all__ = ["check_usable", "claim", "is_natgrad_run", "remove_own_outputs"]


def check_usable(run: str | os.PathLike) -> None:
    r"""Raise :class:`RunDirError` if ``run`` cannot be a run directory: an empty string
    (which ``Path`` would turn into the current directory), a file (or a path through
    one), or a read-only folder."""
    if isinstance(run, str) and not run.strip():
        raise RunDirError(
            f"--run-dir {run!r} is empty: give a folder for the run's outputs, or leave "
            "--run-dir out for runs/<net>-<unit>-<dataset>-s<seed>"
        )
    run = Path(run)
    for p in (run, *run.parents):
        try:
            exists = p.exists()
        except OSError as exc:  # a parent the user may not enter
            raise RunDirError(
                f"run directory {run}: cannot access {p} ({exc.strerror}); it is not "
                "writable for this user. Pick another --run-dir or fix its permissions"
            ) from None
        if exists:
            if not p.is_dir():
                raise RunDirError(
                    f"run directory {run}: {p} is a file, not a folder; pick another --run-dir"
                )
            if not os.access(p, os.W_OK | os.X_OK):
                what = "is" if p == run else f"would be created inside {p}, which is"
                raise RunDirError(
                    f"run directory {run} {what} not writable; pick another --run-dir or fix "
                    "its permissions"
                )
            return


def is_natgrad_run(run: Path) -> bool:
    """Whether ``run`` was created by natgrad (lock file, a natgrad ``config.json``, or, where
    that is missing or unreadable, a natgrad checkpoint, from which a resume rewrites it)."""
    if (Path(run) / LOCK_NAME).is_file():
        return True
    try:
        return "net" in RunDir(run).read_config()
    except (DataFileError, OSError, UnicodeDecodeError):
        pass
    import json

    from natgrad.training.checkpoint import FORMAT, checkpoint_paths, latest_epoch

    try:
        epoch = latest_epoch(run)
        info = None if epoch is None else json.loads(checkpoint_paths(run, epoch)[1].read_text())
        return isinstance(info, dict) and info.get("format") == FORMAT
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def claim(
    run: Path, what: str = "run directory", *, natgrads: Callable[[Path], bool] = is_natgrad_run
) -> Iterator[DirLock]:
    r"""Own ``run`` for the duration of the ``with`` block: refuse a non-empty folder natgrad
    did not create (``natgrads(folder)``, default :func:`is_natgrad_run`), create the folder,
    take its :class:`natgrad._lock.DirLock` (a second process gets a :class:`RunDirError`
    naming the holder's pid) and remove the temporaries a killed run left."""
    run = Path(run)
    check_usable(run)
    RunDir(run).check_no_links()
    if run.is_dir() and any(run.iterdir()) and not natgrads(run):
        shown = sorted(p.name for p in run.iterdir())[:5]
        raise RunDirError(
            f"{what} {run} is not empty ({', '.join(shown)}, ...) and was not created by "
            "natgrad; natgrad does not write into or delete from other folders. Pick a new or "
            "empty --run-dir"
        )
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"{what} {run}: cannot create it ({exc.strerror})") from None
    with DirLock(run, what) as lock:
        clean_stale(run, recursive=True)
        yield lock


def remove_own_outputs(run: Path) -> list[Path]:
    """Delete natgrad's own outputs in ``run`` (:meth:`RunDir.own_files`, matched by their
    exact names: another tool's ``checkpoints/epoch_10.pt`` stays); returns them."""
    removed = RunDir(run).own_files()
    for p in removed:
        p.unlink()
    return removed
