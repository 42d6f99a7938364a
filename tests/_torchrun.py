"""Launch a script or module under ``torchrun --standalone`` from a test (shared helper)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT = 240  # seconds for one torchrun job (fresh interpreters importing torch, 2 ranks)


def torchrun(
    *args: str, nproc: int = 2, timeout: int = TIMEOUT, ok: bool = True
) -> subprocess.CompletedProcess:
    """Run ``torchrun --standalone --nproc-per-node=nproc *args`` from the repository root.

    ``--standalone`` puts the rendezvous store on a free port, so parallel pytest-xdist
    workers never clash; one thread per process; gloo on the loopback interface.
    """
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")]),
        GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", *args]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if ok:  # else the caller checks the failure
        assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc
