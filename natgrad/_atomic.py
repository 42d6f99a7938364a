r"""Atomic, checked outputs: every file natgrad writes goes through here.

A file is written to a temporary in its own folder (:func:`temp_path`), fsynced and moved
into place with :func:`os.replace`, then the folder is fsynced: a process killed at any
moment leaves the old or the new complete file, plus at most one temporary, which
:func:`clean_stale` removes on the next run. Strict JSON (:func:`json_safe`), JSON lines
(:func:`append_jsonl`, :func:`read_jsonl`), CSV tables with a checksum sidecar
(:func:`write_table`, :func:`read_checked`) and whole folders swapped in one step
(:func:`commit_dir`): ``docs/run_layout.md``, "Ownership, safe writes, divergence".

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = write_json(folder / "m.json", {"loss": float("nan"), "epoch": 1})
    >>> (folder / "m.json").read_text()
    '{\n "loss": null,\n "epoch": 1\n}\n'
    >>> _ = write_table(folder / "t.csv", "a,b\n1,2\n3,4\n")
    >>> read_checked(folder / "t.csv").decode().splitlines()
    ['a,b', '1,2', '3,4']
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from natgrad.errors import DataFileError

__all__ = ["SUFFIX", "append_jsonl", "atomic_open", "carry_over", "clean_stale", "commit_dir",
           "dumps_json", "is_temporary", "json_safe", "live_writer", "read_checked", "read_jsonl", "staging_dir", "temp_path",
           "write_bytes", "write_json", "write_safetensors", "write_table",
           "write_text"]  # fmt: skip

SUFFIX = ".natgrad-tmp"
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}" + re.escape(SUFFIX) + "$")
# The temporaries of natgrad <= 0.1's checkpoint writer: ``.<name>.tmp<pid>``.
_LEGACY = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$")


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name next to ``path``: ``.<name>.<pid>.<random>.natgrad-tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{SUFFIX}")


def is_temporary(name: str) -> bool:
    """Whether a file name is one of natgrad's temporaries (:func:`temp_path`, or the legacy
    ``.<name>.tmp<pid>`` form)."""
    return bool(_TEMP.match(name) or _LEGACY.match(name))


def _fsync_dir(folder: Path) -> None:
    # Skipped where the platform has no directory fds or the file system refuses the fsync.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator:
    r"""Open a temporary next to ``path`` for writing; on a clean exit it is fsynced and
    renamed onto ``path``, on an exception it is removed and ``path`` is untouched.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
        >>> with atomic_open(p, "w") as fh:
        ...     _ = fh.write("hello")
        >>> p.read_text()
        'hello'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files; mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def json_safe(obj):
    r"""``obj`` with non-finite floats as ``None``, numpy scalars/arrays as Python values and
    tuples as lists: what strict JSON can hold.

    Example:
        >>> json_safe({"a": (1.0, float("inf")), "b": np.float32(0.5), "c": np.arange(2)})
        {'a': [1.0, None], 'b': 0.5, 'c': [0, 1]}
    """
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k) if not isinstance(k, str) else k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps_json(obj, *, indent: int | None = None) -> str:
    """Strict JSON text of ``obj`` (see :func:`json_safe`); raises ``TypeError`` for objects
    JSON cannot hold."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 1) -> Path:
    """Write ``obj`` as strict JSON (plus a newline) to ``path`` atomically."""
    return write_text(path, dumps_json(obj, indent=indent) + "\n")


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> Path:
    """Write ``tensors`` (``{name: torch.Tensor}``) as a safetensors file atomically."""
    from safetensors.torch import save

    return write_bytes(path, save(tensors, metadata))


# --------------------------------------------------------------------------------------
# JSON lines: append-only, a torn last line is dropped.


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append ``row`` as one strict JSON line and fsync. If the file ends in a torn line (a
    killed writer), that fragment is cut off first so the new line starts on its own."""
    path = Path(path)
    line = (dumps_json(row) + "\n").encode()
    with open(path, "ab+") as fh:
        end = fh.seek(0, os.SEEK_END)
        if end:
            fh.seek(end - 1)
            if fh.read(1) != b"\n":
                fh.seek(0)
                cut = fh.read().rfind(b"\n") + 1
                fh.truncate(cut)
                fh.seek(cut)
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def write_jsonl(path: str | os.PathLike, rows) -> Path:
    """Write ``rows`` as strict JSON lines (one per row) to ``path`` atomically."""
    return write_text(path, "".join(dumps_json(r) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike, *, missing_ok: bool = False) -> list[dict]:
    r"""The rows of a JSON-lines file. A torn last line (no newline, or not JSON: a writer
    killed mid-line) is dropped; a bad line before the last is a :class:`DataFileError`.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.jsonl"
        >>> _ = p.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epo')
        >>> read_jsonl(p)
        [{'epoch': 0}, {'epoch': 1}]
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return []
        raise DataFileError(f"{path}: file not found") from None
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail: text after the last newline (torn)
    rows = []
    for i, raw in enumerate(complete):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            if i == len(complete) - 1 and not tail:
                break  # a torn last line that happens to end in a newline
            raise DataFileError(
                f"{path}: line {i + 1} is not JSON ({exc}); the file is corrupt. Restore it "
                "from a copy, or rerun what wrote it from scratch (a run's records: "
                "--no-resume)."
            ) from None
        if not isinstance(row, dict):
            raise DataFileError(f"{path}: line {i + 1} is not a JSON object")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------
# Checked tables.


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _rows(data: bytes) -> int:
    """Data rows of CSV bytes: lines after the header (quoted newlines are not used)."""
    return max(0, data.count(b"\n") - 1)


def write_table(path: str | os.PathLike, data: bytes | str) -> Path:
    r"""Write CSV ``data`` atomically, then its sidecar ``<name>.sha256`` holding
    ``<sha256>  <rows> rows``, atomically too. A reader (:func:`read_checked`) accepts the
    table only when both agree."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = Path(path)
    write_bytes(path, data)
    write_text(_sidecar(path), f"{hashlib.sha256(data).hexdigest()}  {_rows(data)} rows\n")
    return path


def remove_table(path: str | os.PathLike) -> None:
    """Delete a table of :func:`write_table` and its sidecar (either may be missing)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    _sidecar(path).unlink(missing_ok=True)


def read_checked(path: str | os.PathLike) -> bytes:
    r"""The bytes of a table written by :func:`write_table`, after checking its SHA-256 and
    row count against the sidecar.

    Raises:
        DataFileError: the table or its sidecar is missing, or they disagree (a truncated,
            edited or half-replaced table), naming the file and the rows found.
    """
    path = Path(path)
    side = _sidecar(path)
    if not path.is_file():
        raise DataFileError(f"table {path} does not exist; rebuild the tables")
    data = path.read_bytes()
    try:
        digest, count, *_ = side.read_text().split()
        rows = int(count)
    except FileNotFoundError:
        raise DataFileError(
            f"table {path} has no checksum file {side.name}, so a truncated table could not be "
            "told from a complete one; rebuild the tables"
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise DataFileError(f"{side}: not '<sha256>  <rows> rows'; rebuild the tables") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise DataFileError(
            f"table {path} does not match its checksum {side.name} ({_rows(data)} rows found, "
            f"{rows} written): it is truncated, edited or from another run; rebuild the tables"
        )
    return data


# --------------------------------------------------------------------------------------
# Whole folders and stale temporaries.


@functools.cache
def _renameat2():
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or ``None``."""
    try:  # the process's own symbols include libc's
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False if the
    platform or the file system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def check_replaceable(target: str | os.PathLike, *, files_only: bool = False) -> None:
    r"""Refuse, with a :class:`~natgrad.errors.RunDirError` naming it, an output folder that
    natgrad may not replace as a whole: a symlink (natgrad never writes through links), a
    file, or a folder the user cannot write (its contents would be deleted with the swap);
    with ``files_only`` (a tables folder, :func:`carry_over`) also one that holds folders."""
    from natgrad.errors import RunDirError

    if files_only and Path(target).is_dir() and not Path(target).is_symlink():
        folders = sorted(p.name for p in Path(target).iterdir()
                         if p.is_dir() and not p.is_symlink() and not is_temporary(p.name))  # fmt: skip
        if folders:
            raise RunDirError(
                f"{target} holds folders ({', '.join(folders[:5])}); natgrad replaces a tables "
                "folder as a whole, so it must hold only files. Pick a new or empty --out"
            )

    target = Path(target)
    if str(target).strip() in ("", "."):
        raise RunDirError(f"output folder {str(target)!r}: name a new or natgrad-made folder")
    if target.is_symlink():
        raise RunDirError(f"{target}: is a symlink; natgrad replaces an output folder as a "
                          "whole and never writes through a link. Pick a real folder")  # fmt: skip
    if target.exists() and not target.is_dir():
        raise RunDirError(f"{target}: is a file, not a folder; pick another output folder "
                          "(natgrad will not move or replace a file of yours)")  # fmt: skip
    if target.is_dir() and not os.access(target, os.W_OK | os.X_OK):
        raise RunDirError(f"{target}: is read-only; natgrad will not replace it. Make it "
                          "writable or pick another output folder")  # fmt: skip
    if target.resolve() == Path(target.anchor).resolve():
        raise RunDirError(f"{target}: is the file-system root; pick an output folder")


def commit_dir(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    r"""Put the complete folder ``staging`` in the place of ``target`` in one atomic step.

    ``target`` absent: one rename. Present: the two are exchanged atomically
    (``renameat2(RENAME_EXCHANGE)``, Linux ≥ 3.15) and the old folder, now at ``staging``,
    is deleted. Where the exchange is not available, the old folder is first renamed
    aside; a kill in that instant leaves no ``target`` (never a mixed one) and the old
    folder under a :func:`temp_path` name, which :func:`clean_stale` removes.
    """
    staging, target = Path(staging), Path(target)
    check_replaceable(target)
    if target.is_dir():  # the folder keeps its mode (a 0700 folder stays 0700)
        os.chmod(staging, stat.S_IMODE(target.stat().st_mode))
    _fsync_dir(staging)
    if not target.exists():
        os.replace(staging, target)
    elif not _exchange(staging, target):
        aside = temp_path(target)
        os.replace(target, aside)
        os.replace(staging, target)
        staging = aside
    _fsync_dir(target.parent)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def carry_over(target: str | os.PathLike, staging: str | os.PathLike) -> list[Path]:
    r"""Hard-link (or copy) into ``staging`` every file of ``target`` that ``staging`` does
    not replace (e.g. a report next to the tables), so :func:`commit_dir` drops nothing.

    Raises:
        RunDirError: ``target`` holds a folder: it is not a folder of files that natgrad
            may replace as a whole.
    """
    target, staging = Path(target), Path(staging)
    if not target.is_dir():
        return []
    check_replaceable(target, files_only=True)
    entries = [p for p in target.iterdir() if not is_temporary(p.name)]
    kept = []
    for p in entries:
        dest = staging / p.name
        if dest.exists() or dest.is_symlink():
            continue
        try:
            os.link(p, dest, follow_symlinks=False)
        except OSError:
            shutil.copy2(p, dest, follow_symlinks=False)
        kept.append(dest)
    return kept


def staging_dir(target: str | os.PathLike) -> Path:
    """A new empty temporary folder next to ``target``, for :func:`commit_dir`."""
    tmp = temp_path(target)
    tmp.mkdir(parents=True)
    return tmp


def _alive(pid: int) -> bool:
    if pid == os.getpid() or pid <= 0:
        return False  # our own leftovers from an earlier, failed call; no process's name
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; a pid beyond the OS's range
        return False
    except PermissionError:  # alive, under another user
        pass
    return True


def live_writer(name: str) -> int | None:
    """The process id of the live process, other than this one, writing the natgrad
    temporary named ``name``; ``None`` for a dead writer's leftover (or our own) and for a
    name that is not a temporary. The one rule for what is stale (:func:`clean_stale`)."""
    m = _TEMP.match(name) or _LEGACY.match(name)
    return int(m.group("pid")) if m is not None and _alive(int(m.group("pid"))) else None


def clean_stale(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    r"""Remove the temporaries (files or folders ``.*.<pid>.*.natgrad-tmp``) that killed
    natgrad processes left in ``folder`` (and its sub-folders if ``recursive``); those of a
    live process other than this one are kept. Returns the removed paths.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / ".x.json.999999999.0123abcd.natgrad-tmp").write_text("{")
        >>> [p.name for p in clean_stale(folder)]
        ['.x.json.999999999.0123abcd.natgrad-tmp']
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    candidates = folder.rglob(".*") if recursive else folder.glob(".*")
    for p in sorted(candidates):
        if not is_temporary(p.name) or live_writer(p.name) is not None:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed
