r"""Memory budgets of the unit Fisher engine: what a result costs, what is free, what fits.

A result of U units of fan-in d costs U·(d+1)² elements (``dense``), U·(2d+1)
(``quasidiagonal``: diag(F) and b) or U·(d+1) (``diagonal``); the temporaries of a pass are
bounded separately (:func:`temp_budget`). :func:`check_budget` compares the result with
``max_memory`` before the pass (``docs/scale.md``, "Memory of the dense route").

Example:
    >>> result_elements("dense", units=4, fan_in=3), result_elements("quasidiagonal", 4, 3)
    (64, 28)
    >>> format_bytes(3 * 2**30)
    '3.00 GiB'
"""

from __future__ import annotations

import math
import os

from natgrad.errors import InputError, MemoryBudgetError

STRUCTURES = ("dense", "quasidiagonal", "diagonal")

DEFAULT_FRACTION = 0.5
"""Default ``max_memory``: this fraction of ``MemAvailable`` (``/proc/meminfo``) at call time."""

TEMP_FLOOR = 256 * 2**20
"""Bytes the temporaries of a data pass may always use (sub-batches, unit chunks), even when
the result is smaller than that."""

STRUCTURED_TEMP = 64 * 2**20
"""Default bytes of a structured (quasi-diagonal or diagonal) pass's temporaries: its result
is O(U·d), so the pass streams the batch in sub-batches whose per-sample patches and error
signals stay within this, and the memory it adds does not grow with the batch
(``bench/conv_scale.py``, peers part). An explicit ``max_memory`` overrides it."""


def check_structure(structure: str) -> str:
    if structure not in STRUCTURES:
        raise InputError(
            f"unknown structure {structure!r}: choose one of {', '.join(STRUCTURES)} ('dense': "
            "the full (d+1)² block per unit; 'quasidiagonal': Ollivier's diag(A), b, c; "
            "'diagonal': diag(F) only)"
        )
    return structure


def result_elements(structure: str, units: int, fan_in: int) -> int:
    r"""Elements of a result of ``units`` units of fan-in d = ``fan_in`` (module docstring)."""
    d1 = fan_in + 1
    if structure == "dense":
        return units * d1 * d1
    if structure == "quasidiagonal":
        return units * (2 * fan_in + 1)
    return units * d1


def available_memory() -> int:
    """Bytes the kernel reports as available (``MemAvailable`` of ``/proc/meminfo``; psutil's
    ``virtual_memory().available`` where there is no ``/proc``)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # pragma: no cover - platforms without /proc
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def resolve_max_memory(max_memory: int | float | None) -> int:
    """``max_memory`` in bytes: as given, or :data:`DEFAULT_FRACTION` of :func:`available_memory`."""
    if max_memory is None:
        return int(DEFAULT_FRACTION * available_memory())
    if not (isinstance(max_memory, int | float) and math.isfinite(max_memory) and max_memory > 0):
        raise InputError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    return int(max_memory)


def format_bytes(n: float) -> str:
    """Human-readable bytes (binary units)."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.2f} {unit}"
    return f"{n / 1024:.2f} TiB"


def temp_budget(
    result_bytes: int, max_memory: int, structure: str = "dense", explicit: bool = True
) -> int:
    """Bytes the temporaries of a pass may use: the larger of :data:`TEMP_FLOOR` and a quarter
    of the result (:data:`STRUCTURED_TEMP` for a structured result when ``max_memory`` was
    not given, ``explicit=False``), but never more than what ``max_memory`` leaves beside the
    result (or 1/8 of ``max_memory`` where that is less)."""
    floor = TEMP_FLOOR if structure == "dense" or explicit else STRUCTURED_TEMP
    wanted = max(floor, result_bytes // 4)
    return min(wanted, max(max_memory - result_bytes, max_memory // 8))


_OUT_DIR_HINT = (
    "; or compute one layer with unit_fisher(..., out_dir=...), which streams its "
    "units in chunks to safetensors shards on disk"
)  # unit_fishers takes no out_dir


def check_budget(layers: dict, structure: str, itemsize: int, max_memory: int, *, sharded: bool):
    r"""Raise :class:`~natgrad.errors.MemoryBudgetError` unless the results of ``layers``
    (``{name: (units, fan_in)}``) fit in ``max_memory`` less :data:`TEMP_FLOOR` (with
    ``sharded``, an ``out_dir``: the largest single unit's block). The message names the bytes
    needed, the budget, and per layer the ``units=`` count and the structures that would fit."""
    room = max_memory - min(TEMP_FLOOR, max_memory // 4)

    def size(s: str, u: int, d: int) -> int:
        return result_elements(s, u, d) * itemsize

    if sharded:  # one unit's block at a time
        total = max(size(structure, 1, d) for _, d in layers.values())
    else:
        total = sum(size(structure, u, d) for u, d in layers.values())
    if total <= room:
        return
    fixes = []
    for name, (u, d) in layers.items():
        fit = min(u, max(0, room // size(structure, 1, d)))
        verdict = f"units= with at most {fit} units fits" if fit else "not even one unit fits"
        cheaper = [f"structure={s!r} ({format_bytes(size(s, u, d))})" for s in STRUCTURES
                   if s != structure and size(s, u, d) <= room]  # fmt: skip
        fixes.append(
            f"layer {name!r} ({u} units, fan-in {d}: {format_bytes(size(structure, u, d))}): "
            + ("fits on its own" if fit == u else verdict)
            + (", or " + " or ".join(cheaper) if cheaper else "")
        )
    raise MemoryBudgetError(
        f"the {structure} unit Fisher needs {format_bytes(total)} ({total} bytes) but the budget "
        f"leaves {format_bytes(room)} (max_memory={max_memory} bytes less temporaries). "
        + "; ".join(fixes)
        + ("" if sharded else _OUT_DIR_HINT)
        + "."
    )
