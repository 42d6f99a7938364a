"""Shared pytest configuration: float64 by default and the opt-in Monte-Carlo marker."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-montecarlo",
        action="store_true",
        default=False,
        help="also run the slow statistical Monte-Carlo convergence tests",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-montecarlo"):
        return
    skip = pytest.mark.skip(reason="Monte-Carlo convergence test: opt in with --run-montecarlo")
    for item in items:
        if "montecarlo" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _float64_and_seed():
    """Correctness tests run in float64 with a fixed seed; restore the defaults afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def lock_holder():
    """``hold(folder)``: a context manager running another process that holds ``folder``'s
    natgrad lock (:class:`natgrad._lock.DirLock`) until the block ends (then SIGKILL: the
    kernel releases the lock); yields that process, whose pid the refusals name."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    @contextlib.contextmanager
    def hold(folder):
        holder = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(f"""
                import time
                from natgrad._lock import DirLock
                DirLock({str(folder)!r}, "run directory").acquire()
                print("locked", flush=True)
                time.sleep(60)
            """)],
            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()),
        )  # fmt: skip
        try:
            assert holder.stdout.readline().strip() == "locked"
            yield holder
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            holder.stdout.close()

    return hold
