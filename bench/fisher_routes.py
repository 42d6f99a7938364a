r"""Benchmark: the two routes of the dense unit Fisher's weighted outer product, same run.

``natgrad.accumulate._add_weighted_outer`` adds Σ_n w_nu ã_n ã_nᵀ to every unit's block. For
wide layers it takes the packed route (one GEMM ``wᵀ [U, N] @ P [N, T]`` over the packed upper
triangles, T = (d+1)(d+2)/2); otherwise the row blocks (one GEMM per block of 64 rows per
chunk of units). This times both on the shapes of the MNIST demo's analysed layers (U = 128
units, d + 1 = 129, float64, one thread) and prints their ratio and agreement.

Run ``python bench/fisher_routes.py`` (``--quick``: N = 1000 only).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from natgrad.accumulate import _add_packed_outer, _add_row_blocks, _mirror_upper


def _time(fn, total, w, at, repeats: int) -> tuple[float, torch.Tensor]:
    times = []
    for _ in range(repeats):
        total.zero_()
        t0 = time.perf_counter()
        fn(total, w, at)
        times.append(time.perf_counter() - t0)
    _mirror_upper(total)
    return statistics.median(times), total.clone()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    u, d1 = 128, 129
    print(f"weighted outer product, U={u}, d+1={d1}, float64, 1 thread, median of {args.repeats}")
    print(f"{'N':>6} {'row blocks [s]':>15} {'packed [s]':>11} {'ratio':>6} {'agree':>9}")
    for n in (1000,) if args.quick else (1000, 5000, 10000):
        gen = torch.Generator().manual_seed(0)
        w = torch.rand(n, u, generator=gen, dtype=torch.float64)
        at = torch.randn(n, d1, generator=gen, dtype=torch.float64)
        total = torch.zeros(u, d1, d1, dtype=torch.float64)
        _time(_add_packed_outer, total, w[:64], at[:64], 1)  # warm-up (scratch buffer)
        t_rows, a = _time(_add_row_blocks, total, w, at, args.repeats)
        t_packed, b = _time(_add_packed_outer, total, w, at, args.repeats)
        agree = float((a - b).abs().max() / a.abs().max())
        print(f"{n:>6} {t_rows:>15.3f} {t_packed:>11.3f} {t_rows / t_packed:>6.2f} {agree:>9.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
