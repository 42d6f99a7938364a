r"""Argument types of the ``natgrad`` commands: a bad number is refused at parse time with a
one-line message (exit 2), never passed on to slice a tensor or size a loop.

Example:
    >>> positive_int("3"), nonnegative_int("0")
    (3, 0)
    >>> positive_int("-5")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: '-5' is not an integer >= 1
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

__all__ = ["is_finite_number", "is_integer", "nonnegative_int", "positive_float", "positive_int",
           "seed_range"]  # fmt: skip


def is_integer(value) -> bool:
    """An ``int`` (not a ``bool``): how a config or an optimizer argument is checked."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """A finite ``int`` or ``float`` (not a ``bool`` or a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(text: str, lo: int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {lo}") from None
    if value < lo:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {lo}")
    return value


def positive_int(text: str) -> int:
    """An integer ≥ 1 (sizes, counts, threads)."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An integer ≥ 0 (epochs, seeds, 0-means-default options)."""
    return _int_at_least(text, 0)


def seed_range(text: str) -> range:
    """``FIRST:COUNT`` (a piece of a study's seeds: FIRST … FIRST+COUNT−1) or ``COUNT``
    (seeds 0 … COUNT−1).

    Example:
        >>> seed_range("5:3"), seed_range("4")
        (range(5, 8), range(0, 4))
        >>> seed_range("5:0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: '0' is not an integer >= 1
    """
    first, sep, count = text.partition(":")
    start = nonnegative_int(first) if sep else 0
    return range(start, start + positive_int(count if sep else first))


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, dampings)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number > 0")
    return value


def data_folder(text: str) -> str:
    """A ``--data-dir``, made absolute: a run records it, and is resumed or analysed from
    any working directory (a relative one was resolved against wherever that ran)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty --data-dir names no folder")
    return str(Path(text).expanduser().absolute())  # a symlinked folder stays the link
