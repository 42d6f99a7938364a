r"""The one owner of reading and writing natgrad's CSV tables: exact floats, written
atomically with a checksum file (:func:`natgrad._atomic.write_table`), read back only after
the checksum and row count agree (:func:`natgrad._atomic.read_checked`), and folders of them
replaced whole (:func:`staged`). Every analysis module (runs, summary, compare) reads and
writes tables through here.
"""

from __future__ import annotations

import io
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from natgrad._atomic import (
    carry_over,
    check_replaceable,
    clean_stale,
    commit_dir,
    read_checked,
    staging_dir,
    write_table,
)

__all__ = ["read_csv", "staged", "write_csv"]


@contextmanager
def staged(out: str | os.PathLike):
    """A new folder next to ``out`` to write into, which then replaces ``out`` in one step
    (:func:`natgrad._atomic.commit_dir`; the other files of ``out``, a report or a README, are
    carried over): a reader or a killed writer sees the old set or the new, never a mix.
    Temporaries a killed writer left next to ``out`` are removed first."""
    out = Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out.parent)
    stage = staging_dir(out)
    try:
        yield stage
        carry_over(out, stage)
        commit_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def write_csv(frame, path: str | os.PathLike) -> Path:
    """``frame`` as CSV (exact floats), atomically, with its checksum file."""
    return write_table(path, frame.to_csv(index=False, float_format="%.17g"))


def read_csv(path: str | os.PathLike):
    """A table written by natgrad, as a DataFrame, after checking its checksum file
    (:func:`natgrad._atomic.read_checked`: a truncated or mismatched table is a
    :class:`~natgrad.errors.DataFileError` naming it)."""
    import pandas as pd

    from natgrad.errors import DataFileError

    data = read_checked(path)
    if not data.strip():  # a table with no columns (e.g. no comparison with one unit type)
        return pd.DataFrame()
    try:
        return pd.read_csv(io.BytesIO(data))
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataFileError(f"{path}: not a readable CSV table ({exc})") from None
