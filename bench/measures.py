r"""Benchmark: every Fisher-efficiency and bias-shift measure of one layer, U = 128 units of
fan-in d = 128 (float64 blocks, CPU), against baselines measured in the same run.

Methods (median of ``--repeats`` runs after one warm-up):

- ``measures``: :meth:`natgrad.UnitFisher.measures`, ρ of all 7 directions, all shifts and
  bias-shift errors from one Cholesky of F_λ per unit;
- ``separate``: the same numbers by the single methods, ``efficiency(kind)`` for every
  kind plus ``bias_shift_error`` of ``plain`` and ``blockdiag`` (each factorises again);
- ``cholesky``: one batched ``torch.linalg.cholesky`` of the ``[U, d+1, d+1]`` stack (the
  floor: ``measures`` cannot be cheaper than its one factorisation);
- ``eigvalsh``: the exact condition numbers (``condition_number(exact=True)``), for scale.

Blocks are E_p[δ̄² ã ãᵀ] of N = 512 shifted activations with random positive weights
(condition numbers ~1e3–1e4), relative damping 1e-4. Run ``python bench/measures.py``.
"""

from __future__ import annotations

import argparse

import torch
from _common import call_time

from natgrad import UnitFisher


def _blocks(U: int, d: int, N: int, seed: int = 0) -> tuple[UnitFisher, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.elu(torch.randn(N, d, generator=gen, dtype=torch.float64) + 0.3)
    w = torch.rand(U, N, generator=gen, dtype=torch.float64) + 0.05  # δ̄² > 0
    at = torch.cat([a, torch.ones(N, 1, dtype=torch.float64)], -1)  # [N, d+1]
    F = torch.einsum("un,ni,nj->uij", w, at, at) / N
    F = (F + F.transpose(-1, -2)) / 2
    g = torch.randn(U, d, generator=gen, dtype=torch.float64)
    g0 = torch.randn(U, generator=gen, dtype=torch.float64)
    return UnitFisher.from_matrix(F, a.mean(0), layer="bench"), g, g0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--fan-in", type=int, default=128)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rel-damping", type=float, default=1e-4)
    args = parser.parse_args()
    F, g, g0 = _blocks(args.units, args.fan_in, args.n)
    lam = args.rel_damping
    kinds = ("plain", "centred", "diagonal", "quasidiagonal", "arrowhead", "blockdiag", "natural")

    def separate():
        for kind in kinds:
            F.efficiency(g, g0, kind, lam)
        for kind in ("plain", "blockdiag"):
            F.bias_shift_error(g, g0, kind, lam)

    methods = {
        "measures": lambda: F.measures(g, g0, lam),
        "separate": separate,
        "cholesky": lambda: torch.linalg.cholesky(F.matrix),
        "eigvalsh": lambda: F.condition_number(exact=True),
    }
    times = {name: call_time(fn, args.repeats) for name, fn in methods.items()}
    print(
        f"U = {args.units}, d = {args.fan_in}, float64, {torch.get_num_threads()} thread(s), "
        f"median of {args.repeats}"
    )
    for name, t in times.items():
        print(f"{name:>9}: {1e3 * t:8.2f} ms   ({t / times['measures']:.2f}× measures)")
    print(f"measures / one Cholesky: {times['measures'] / times['cholesky']:.2f}")


if __name__ == "__main__":
    main()
