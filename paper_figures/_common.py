"""Shared by the figure scripts: style, LaTeX detection, small mode, output folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
STYLE = HERE / "natgrad.mplstyle"
OUT = HERE / "out"


def small_mode(flag: bool = False) -> bool:
    """``--small`` or ``NATGRAD_SMALL=1``: the quick mode CI runs."""
    return flag or os.environ.get("NATGRAD_SMALL", "") not in ("", "0")


def setup_matplotlib() -> bool:
    """Headless backend, the shared style, and LaTeX text only if ``latex`` is on PATH.
    Returns whether LaTeX is used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.style.use(STYLE)
    usetex = shutil.which("latex") is not None
    plt.rcParams["text.usetex"] = usetex
    return usetex
