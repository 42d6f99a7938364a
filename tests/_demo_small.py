"""The demo in its smallest mode, run once per test session and shared by the test files
(and by pytest-xdist workers, through a file lock in the session's shared temp folder)."""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock

from natgrad.analysis.demo import DemoConfig, main

#: ELU and ReLU, one seed, epochs 0 and 1, 160 probe inputs (> fan-in + 1 = 129, so blocks
#: of live units with live inputs are nonsingular).
SMALL = DemoConfig(units=("elu", "relu"), seeds=1, epochs=1, checkpoint_every=1, probe_size=160)


def small_demo(tmp_path_factory) -> Path:
    """The output folder of the smallest demo (built on first use)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    out = root / "natgrad-demo-small"
    with FileLock(str(out) + ".lock"):
        if not (out / "summary.txt").exists():
            main(
                DemoConfig(**{**SMALL.__dict__, "out": str(out)}),
                progress=False,
                echo=lambda *a: None,
            )
    return out
