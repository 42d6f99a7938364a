r"""Exact unit natural gradients and Theorem 2 without the dense block: Woodbury on the factor.

Every unit Fisher natgrad computes is a sum of outer products of R factor rows per unit,

.. math::

    F_u = V_u^\top V_u,\qquad V_u = \tfrac{1}{\sqrt N}\,[\,r_{u1}; \dots; r_{uR}\,]
    \in \mathbb{R}^{R\times(d+1)},

with r = √(δ̄²_nu)·ã_n (Linear, after summing the labels: R = N) or r = g_nku = Σ_p v_nkpu ã_np
(weight-shared Conv2d: one row per input and output column, R = N·K; with
``conv_moments="positions"`` R = N·P). When R < d+1 the factor costs U·R·(d+1) numbers
instead of U·(d+1)², but F_u is then singular (rank ≤ R), so the damped metric
F_λ = F + λI with **λ > 0 is required**, and every solve uses the Woodbury identity

.. math::

    (\lambda I + V^\top V)^{-1} x = \tfrac{1}{\lambda}\big(x - V^\top (\lambda I_R + V V^\top)^{-1} V x\big),

one R×R Cholesky per unit (batched over units, in chunks). The weight block A_λ = λI + V_aᵀV_a
(V_a the first d columns) is inverted the same way, and with b = V_aᵀv_0, c_λ = ‖v_0‖² + λ
(v_0 the bias column) Theorems 1–2 follow exactly as for the dense damped block:
s = e_{d+1}ᵀF_λ⁻¹e_{d+1}, k = s·(b − c_λ E_p(a))ᵀA_λ⁻¹b, shift_natural = (E_p(a), 1)ᵀF_λ⁻¹(g, g0).

Example:
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(30, 4), torch.nn.ELU(), torch.nn.Linear(4, 3))
    >>> W = woodbury_unit_fisher(net, "0", torch.randn(8, 30))   # R = 8 < d+1 = 31
    >>> W.rank, W.fan_in
    (8, 30)
    >>> dw, dw0 = W.natural_gradient(torch.randn(4, 30), torch.randn(4), damping=1e-3)
    >>> dw.shape, dw0.shape
    (torch.Size([4, 30]), torch.Size([4]))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from natgrad import linalg, theorems
from natgrad._layers import resolve_layer
from natgrad.accumulate import MEMORY_BUDGET, LayerAccumulator
from natgrad.engine import PassOptions, compute
from natgrad.errors import InputError
from natgrad.unitfisher import UnitFisher, UnitFisherBase


class WoodburyAccumulator(LayerAccumulator):
    r"""Keeps the factor rows instead of summing them: shared rows ã ``[M, d+1]`` with
    per-unit scales √w ``[M, U]`` (one position per input), or per-unit rows g
    ``[U, N·K, d+1]`` (weight-shared units)."""

    def _allocate(self, dtype, device) -> None:
        self.rows: list[torch.Tensor] = []  # [M, d+1] or [U, R_b, d+1] per batch
        self.scales: list[torch.Tensor] = []  # [M, U] (shared rows only)
        self.parts: list[torch.Tensor] = []
        self.total = True  # marks "allocated" for the base class

    def _reduce_factors(self, u0: int, g: torch.Tensor) -> None:
        self.parts.append((u0, g))

    def _reduce_weighted(self, w: torch.Tensor, at: torch.Tensor) -> None:
        self.rows.append(at)
        self.scales.append(w.sqrt())

    def end_batch(self) -> None:
        super().end_batch()
        if self.parts:  # unit chunks of each column chunk: rows by column, units by chunk
            per_chunk: dict[int, list] = {}
            for u0, g in self.parts:
                per_chunk.setdefault(u0, []).append(g)
            self.rows.append(torch.cat([torch.cat(v, 1) for _, v in sorted(per_chunk.items())], 0))
            self.parts = []

    def result(self, n_total: int, kind: str, likelihood: str, mc) -> WoodburyUnitFisher:
        if self.scales:
            rows, scales = torch.cat(self.rows, 0).unsqueeze(0), torch.cat(self.scales, 0).T
        else:
            rows, scales = torch.cat(self.rows, 1), None
        return WoodburyUnitFisher(
            rows=rows.div_(math.sqrt(n_total)),
            scales=None if scales is None else scales.contiguous(),
            **self.fields(n_total, kind, likelihood, mc),
        )


def woodbury_unit_fisher(
    model: nn.Module,
    layer: str | nn.Module,
    inputs: torch.Tensor | Iterable,
    targets: torch.Tensor | None = None,
    *,
    kind: str = "exact",
    likelihood: str = "categorical",
    mc_samples: int = 1,
    units: Sequence[int] | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    conv_moments: str = "shared",
) -> WoodburyUnitFisher:
    r"""The factor V_u (F_u = V_uᵀV_u, module docstring) of every unit of one layer, from one
    pass with the engine's forward and batched backward; arguments as in
    :func:`natgrad.unit_fisher`. Memory: U·R·(d+1) (conv) or R·(d+1+U) (Linear) numbers.
    """
    name, _ = resolve_layer(model, layer)
    return woodbury_unit_fishers(
        model, inputs, targets, layers=[layer], kind=kind, likelihood=likelihood,
        mc_samples=mc_samples, units={name: units}, generator=generator,
        batch_size=batch_size, conv_moments=conv_moments,
    )[name]  # fmt: skip


def woodbury_unit_fishers(
    model: nn.Module,
    inputs: torch.Tensor | Iterable,
    targets: torch.Tensor | None = None,
    *,
    layers: Sequence[str | nn.Module],
    kind: str = "exact",
    likelihood: str = "categorical",
    mc_samples: int = 1,
    units: dict[str, Sequence[int] | torch.Tensor | None] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    conv_moments: str = "shared",
) -> dict[str, WoodburyUnitFisher]:
    r"""The factors of several layers from ONE pass (one forward, one batched backward per
    batch serve all layers), as :func:`natgrad.unit_fishers` does for dense blocks; arguments
    as in :func:`woodbury_unit_fisher` (``units`` maps layer names to unit indices).
    Returns ``{name: WoodburyUnitFisher}``."""
    spec = dict(resolve_layer(model, layer) for layer in layers)
    units = units or {}
    options = PassOptions(kind=kind, likelihood=likelihood, mc_samples=mc_samples,
                          generator=generator, batch_size=batch_size,
                          structure="diagonal",  # the size check, as above
                          conv_moments=conv_moments)  # fmt: skip
    spec = {name: (module, units.get(name)) for name, module in spec.items()}
    return compute(model, spec, inputs, targets, options, accumulator=WoodburyAccumulator)


@dataclass(frozen=True, repr=False)
class WoodburyUnitFisher(UnitFisherBase):
    r"""Unit Fishers F_u = V_uᵀV_u held as their factors (bias last).

    Attributes:
        rows: ``[U, R, d+1]`` per-unit factor rows, or ``[1, R, d+1]`` rows shared by all
            units (then scaled per unit by ``scales``), already divided by √N.
        scales: ``[U, R]`` per-unit row scales √(δ̄²) for shared rows, else ``None``.
        mean_p, n, kind, likelihood, layer, units, mc_samples, c_sum, c_sq_sum: as in
            :class:`~natgrad.UnitFisher`.
    """

    rows: torch.Tensor
    scales: torch.Tensor | None
    mean_p: torch.Tensor
    n: int
    kind: str
    likelihood: str
    layer: str
    units: torch.Tensor = field(default=None)  # type: ignore[assignment]
    mc_samples: int | None = None
    c_sum: torch.Tensor | None = None
    c_sq_sum: torch.Tensor | None = None
    structure: str = "dense"  # the exact dense block, held as a factor

    _REPR_FIRST, _REPR_AFTER, _REPR_DTYPE = (), ("rank",), "rows"

    def __post_init__(self) -> None:
        if self.units is None:
            object.__setattr__(self, "units", torch.arange(self.num_units))

    @property
    def num_units(self) -> int:
        return self.rows.shape[0] if self.scales is None else self.scales.shape[0]

    @property
    def fan_in(self) -> int:
        return self.rows.shape[-1] - 1

    @property
    def rank(self) -> int:
        """R, the factor rows per unit (an upper bound of the rank of F_u)."""
        return self.rows.shape[1]

    def factor(self, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        r"""``[U_c, R, d+1]`` V_u of units ``lo:hi`` (float64)."""
        if self.scales is None:
            return self.rows[lo:hi].double()
        return self.rows.double() * self.scales[lo:hi].double().unsqueeze(-1)

    @property
    def matrix(self) -> torch.Tensor:
        r"""``[U, d+1, d+1]`` the dense blocks VᵀV, materialised on demand (tests, small layers)."""
        V = self.factor()
        return (V.transpose(1, 2) @ V).to(self.rows.dtype)

    def to_unit_fisher(self) -> UnitFisher:
        return UnitFisher(
            matrix=self.matrix,
            mean_p=self.mean_p,
            n=self.n,
            kind=self.kind,
            likelihood=self.likelihood,
            layer=self.layer,
            units=self.units,
            mc_samples=self.mc_samples,
            c_sum=self.c_sum,
            c_sq_sum=self.c_sq_sum,
        )

    # --- Woodbury solves, in chunks of units --------------------------------------------
    def _check_damping(self, damping: float) -> float:
        if not (isinstance(damping, int | float) and math.isfinite(damping) and damping > 0):
            raise InputError(
                f"layer {self.layer!r}: the Woodbury route needs damping > 0, got {damping!r}: "
                f"each unit's factor has R = {self.rank} rows, so F = VᵀV has rank <= R and is "
                f"singular when R < d+1 = {self.fan_in + 1}; solve F + λI with λ > 0 (or use the "
                "dense route, unit_fisher(), for undamped blocks of full rank)"
            )
        return float(damping)

    def _chunks(self):
        step = max(1, MEMORY_BUDGET // max(1, self.rank * (self.rank + self.fan_in + 1)))
        for lo in range(0, self.num_units, step):
            yield lo, min(self.num_units, lo + step)

    def _solver(self, V: torch.Tensor, lam: float, lo: int):
        r"""x ↦ (λI + VᵀV)⁻¹x for ``V [U_c, R, n]`` and ``x [U_c, n]`` or ``[U_c, n, k]``."""
        G = V @ V.transpose(1, 2)  # [U_c, R, R]
        G.diagonal(dim1=-2, dim2=-1).add_(lam)
        units = self.units[lo : lo + V.shape[0]]
        L = linalg.cholesky(G, layer=self.layer, units=units, what="Woodbury kernel λI + VVᵀ")

        def solve(x: torch.Tensor) -> torch.Tensor:
            vec = x.ndim == 2
            x = x.unsqueeze(-1) if vec else x
            y = x - V.transpose(1, 2) @ linalg.cho_solve(L, V @ x)
            y = y / lam
            return y.squeeze(-1) if vec else y

        return solve

    def _per_unit(self, damping, fn):
        r"""Apply ``fn(lo, hi, V, solve_F, solve_A, lam)`` over unit chunks; concatenate."""
        lam = self._check_damping(damping)
        outs = []
        for lo, hi in self._chunks():
            V = self.factor(lo, hi)
            outs.append(
                fn(lo, hi, V, self._solver(V, lam, lo), self._solver(V[..., :-1], lam, lo), lam)
            )
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))
        return torch.cat(outs)

    def _out(self, x, dtype=None):
        return x.to(dtype or self.rows.dtype)

    def solve(self, rhs: torch.Tensor, damping: float) -> torch.Tensor:
        r"""``[U, d+1]`` (F + λI)⁻¹ rhs for ``rhs`` ``[U, d+1]`` (float64 inside)."""
        rhs = torch.as_tensor(rhs).double()
        return self._out(self._per_unit(damping, lambda lo, hi, V, sF, sA, lam: sF(rhs[lo:hi])))

    def natural_gradient(self, grad_weight, grad_bias, damping: float):
        r"""(Δw ``[U, d]``, Δw0 ``[U]``) = (F + λI)⁻¹(g, g0) by Woodbury, λ > 0."""
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        out = torch.promote_types(g.dtype, self.rows.dtype)
        x = self.solve(torch.cat([g, g0.unsqueeze(-1)], -1).double(), damping).double()
        return x[:, :-1].to(out), x[:, -1].to(out)

    def _bc(self, V, lam):
        """b ``[U_c, d]`` and c_λ ``[U_c]`` of F + λI from the factor."""
        v0 = V[..., -1]  # [U_c, R]
        return (V[..., :-1].transpose(1, 2) @ v0.unsqueeze(-1)).squeeze(-1), v0.square().sum(
            -1
        ) + lam

    def s(self, form: str = "schur", damping: float = 0.0) -> torch.Tensor:
        r"""``[U]`` s = [(F + λI)⁻¹]_{d+1,d+1} (``"schur"``) or (1 + E_qᵀVar_q⁻¹E_q)/c_λ
        (``"paper"``, Var_q⁻¹ by Sherman–Morrison on A_λ/c_λ), λ > 0."""
        if form not in ("schur", "paper"):
            raise InputError(f"layer {self.layer!r}: form must be 'schur' or 'paper', got {form!r}")
        d = self.fan_in

        def fn(lo, hi, V, sF, sA, lam):
            if form == "schur":
                e = torch.zeros(hi - lo, d + 1, dtype=torch.float64)
                e[:, -1] = 1.0
                return sF(e)[:, -1]
            b, c = self._bc(V, lam)
            m = b / c.unsqueeze(-1)
            r = (m * (c.unsqueeze(-1) * sA(m))).sum(-1)  # mᵀ(A_λ/c)⁻¹m
            return (1.0 + r / (1.0 - r)) / c

        return self._out(self._per_unit(damping, fn))

    def k(self, form: str = "closed", damping: float = 0.0) -> torch.Tensor:
        r"""``[U]`` Theorem 2's k of F + λI: (E_q − E_p)ᵀVar_q⁻¹E_q (``"closed"``) or
        s·(b − c_λE_p(a))ᵀA_λ⁻¹b (``"paper"``), λ > 0."""
        if form not in ("closed", "paper"):
            raise InputError(
                f"layer {self.layer!r}: form must be 'closed' or 'paper', got {form!r}"
            )
        mp = self.mean_p.double()

        def fn(lo, hi, V, sF, sA, lam):
            b, c = self._bc(V, lam)
            Ainv_b = sA(b)
            if form == "paper":
                s = 1.0 / (c - (b * Ainv_b).sum(-1))
                return s * ((b - c.unsqueeze(-1) * mp) * Ainv_b).sum(-1)
            m = b / c.unsqueeze(-1)
            Binv_m = c.unsqueeze(-1) * sA(m)  # (A_λ/c)⁻¹m
            return ((m - mp) * Binv_m).sum(-1) / (1.0 - (m * Binv_m).sum(-1))

        return self._out(self._per_unit(damping, fn))

    def bias_shift(self, grad_weight, grad_bias, damping: float) -> theorems.BiasShift:
        r"""Theorem 2's :class:`~natgrad.theorems.BiasShift` of F + λI by Woodbury, λ > 0."""
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        out = torch.promote_types(g.dtype, self.rows.dtype)
        g, g0, mp = g.double(), g0.double(), self.mean_p.double()

        def fn(lo, hi, V, sF, sA, lam):
            b, c = self._bc(V, lam)
            gl, g0l = g[lo:hi], g0[lo:hi]
            both = sA(torch.stack([gl, b], -1))  # [U_c, d, 2]
            Ainv_g, Ainv_b = both[..., 0], both[..., 1]
            s = 1.0 / (c - (b * Ainv_b).sum(-1))
            k = s * ((b - c.unsqueeze(-1) * mp) * Ainv_b).sum(-1)
            corrected = mp - (1.0 + k).unsqueeze(-1) * b / c.unsqueeze(-1)
            return (
                (corrected * Ainv_g).sum(-1) + (1.0 + k) * g0l / c,
                (mp * Ainv_g).sum(-1) + g0l / c,
                (mp * gl).sum(-1) + g0l,
                k,
                corrected,
            )

        parts = self._per_unit(damping, fn)
        return theorems.BiasShift(*(p.to(out) for p in parts))
