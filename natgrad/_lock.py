r"""One process per output folder: an OS file lock held for as long as the folder is written.

:class:`DirLock` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``<folder>/.natgrad.lock`` and
writes the holder's pid, host and command into it. The kernel releases the lock when the
process exits, however it dies, so a killed run never leaves a stale lock; a second process
gets a :class:`RunDirError` naming the holder's pid and command at once (it does not wait).
``flock`` locks belong to an open file, so two :class:`DirLock` objects on one folder exclude
each other even inside one process. On platforms without ``fcntl`` (Windows) it is a no-op.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with DirLock(folder, "run directory"):
    ...     try:
    ...         DirLock(folder, "run directory").acquire()
    ...     except RunDirError as exc:
    ...         print("held by pid" in str(exc))
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from natgrad.errors import RunDirError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["LOCK_NAME", "DirLock"]

LOCK_NAME = ".natgrad.lock"


class DirLock:
    r"""Exclusive ownership of ``folder`` by this process (see the module docstring).

    Args:
        folder: an existing directory.
        what: how errors name the folder (``"run directory"``, ``"demo output folder"``).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder") -> None:
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        if self._fd is not None:
            return self
        for _ in range(20):  # a holder may unlink the file between our open and our flock
            self._acquire_once()
            if self._fd is not None:
                return self
        raise RunDirError(f"{self.what} {self.folder}: its lock file keeps being replaced; "
                          "another process is taking it over and over. Try again")  # fmt: skip

    def _acquire_once(self) -> None:
        try:
            nofollow = getattr(os, "O_NOFOLLOW", 0)  # a symlinked lock is refused, never followed
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | nofollow, 0o644)
        except OSError as exc:
            if self.path.is_symlink():
                raise RunDirError(
                    f"{self.what} {self.folder}: its lock file {LOCK_NAME} is a symlink; natgrad "
                    "never writes through links. Remove the link or pick another folder"
                ) from None
            raise RunDirError(
                f"{self.what} {self.folder}: cannot create its lock file {LOCK_NAME} "
                f"({exc.strerror}); pick a writable folder"
            ) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunDirError(
                    f"{self.what} {self.folder} is in use by another natgrad process "
                    f"(held by pid {holder.get('pid', '?')} on {holder.get('host', '?')}: "
                    f"{holder.get('command', '?')}); wait for it to finish, stop it, or "
                    "pick another folder"
                ) from None
        try:  # the file we locked must still be the one at the path (see release)
            same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "command": " ".join(sys.argv) or "python", "since": time.time()}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file while still holding it, then unlock: a finished job leaves no
        lock behind, and a process that opened the old file sees it is gone (acquire)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _read_holder(fd: int) -> dict:
    """The holder's record; waits up to ~0.5 s for a holder that has just taken the lock."""
    for _ in range(10):
        try:
            data = os.pread(fd, 4096, 0)
            info = json.loads(data) if data.strip() else {}
        except (OSError, ValueError):
            info = {}
        if isinstance(info, dict) and "pid" in info:
            return info
        time.sleep(0.05)
    return info if isinstance(info, dict) else {}
