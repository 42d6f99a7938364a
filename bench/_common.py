"""Helpers of the benchmarks (``python bench/<name>.py`` finds them as ``_common``); nothing
here imports natgrad or torch at module level."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time


def rss() -> int:
    """The resident set size of this process now, in bytes (``VmRSS``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    """The peak resident set size of this process in bytes: since the last
    :func:`reset_peak_rss` (``VmHWM``), else since it started (``ru_maxrss``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the peak that :func:`peak_rss` reads to the resident set size now (Linux
    ``/proc/self/clear_refs``), so a warm-up's peak does not hide a later one; False where
    the kernel does not allow it (then the peak is the process's whole life's)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_child(args: list[str], pythonpath: str, timeout: float | None = None) -> dict:
    """``python *args`` in a fresh one-thread process: the JSON on its last stdout line, else
    ``{"error": stderr's last line (or the timeout), "stderr": all of it}``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=pythonpath)
    cmd = [sys.executable, *args]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "stderr": ""}
    if run.returncode:
        last = (run.stderr.strip().splitlines() or ["?"])[-1][:200]
        return {"error": last, "stderr": run.stderr}
    return json.loads(run.stdout.strip().splitlines()[-1])


def call_time(fn, repeats: int, warmup: int = 1, stat=statistics.median) -> float:
    """``stat`` (the median) of the seconds of ``repeats`` calls of ``fn()`` after ``warmup``
    untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return stat(times)


def machine() -> str:
    """``torch <version>, <processor>``, for a header line."""
    import platform

    import torch

    return f"torch {torch.__version__}, {platform.processor() or platform.machine()}"


def conv_head(cin: int, cout: int, n: int, hw: int):
    """Seed 0: conv(cin→cout, 3×3, same) → ELU → conv(cout→10, 1×1) → global average pool,
    then ``n`` random inputs ``[n, cin, hw, hw]``."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.ELU(),
        nn.Conv2d(cout, 10, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()
    return model, torch.randn(n, cin, hw, hw)


def asdl_unit_fisher(model, x, layer, ignore):
    """ASDL's exact unit-wise Fisher of ``layer`` (``ignore``: modules left out): ``[U, d+1,
    d+1]``, ones appended last = bias last."""
    import asdl

    config = asdl.FisherConfig(
        fisher_type=asdl.FISHER_EXACT,
        fisher_shapes=[asdl.SHAPE_UNIT_WISE],
        loss_type=asdl.LOSS_CROSS_ENTROPY,
        data_size=x.shape[0],
        ignore_modules=ignore,
    )
    maker = asdl.get_fisher_maker(model, config)
    maker.setup_model_call(model, x)
    maker.forward_and_backward()
    return layer.fisher.unit.data
