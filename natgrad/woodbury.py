r"""Exact unit natural gradients and Theorem 2 without the dense block: Woodbury on the factor.

Every unit Fisher natgrad computes is a sum of outer products of R factor rows per unit,

.. math::

    F_u = V_u^\top V_u,\qquad V_u = \tfrac{1}{\sqrt N}\,[\,r_{u1}; \dots; r_{uR}\,]
    \in \mathbb{R}^{R\times(d+1)},

with r = √(δ̄²_nu)·ã_n (Linear: R = N) or r = g_nku (weight-shared Conv2d: R = N·K, or N·P
with ``conv_moments="positions"``). When R < d+1, F_u is singular, so **λ > 0 is required**
and every solve of F_λ = F + λI uses the Woodbury identity (one R×R Cholesky per unit)

.. math::

    (\lambda I + V^\top V)^{-1} x = \tfrac{1}{\lambda}\big(x - V^\top (\lambda I_R + V V^\top)^{-1} V x\big).

The weight block A_λ = λI + V_aᵀV_a is inverted the same way; with b = V_aᵀv_0 and
c_λ = ‖v_0‖² + λ (v_0 the bias column) Theorems 1–2 follow as for the dense damped block
(``docs/scale.md``, "Woodbury").

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

from natgrad import damping as _damping
from natgrad import linalg
from natgrad._layers import resolve_layer
from natgrad.accumulate import MEMORY_BUDGET, LayerAccumulator
from natgrad.engine import PassOptions, compute, layer_spec
from natgrad.errors import InputError, MemoryBudgetError
from natgrad.unitfisher import SolvedUnitFisher, UnitFisher


class WoodburyAccumulator(LayerAccumulator):
    r"""Keeps the factor rows instead of summing them (shapes: :class:`WoodburyUnitFisher`)."""

    def _allocate(self, dtype, device) -> None:
        self.rows: list[torch.Tensor] = []  # [M, d+1] or [U, R_b, d+1] per batch
        self.scales: list[torch.Tensor] = []  # [M, U] (shared rows only)
        self.parts: list[torch.Tensor] = []
        self.total = True  # marks "allocated" for the base class
        self.held = 0  # bytes of the rows (and scales) kept so far
        if not hasattr(self, "pool"):  # the pass's shared count (the engine's), else its own
            self.pool: dict = {}

    def _hold(self, nbytes: int) -> None:
        self.held += nbytes  # running counts: re-summing every batch's rows was quadratic
        self.pool["held"] = self.pool.get("held", 0) + nbytes

    def _reduce_factors(self, u0: int, g: torch.Tensor) -> None:
        self.parts.append((u0, g))
        self._hold(g.numel() * g.element_size())

    def _reduce_weighted(self, w: torch.Tensor, at: torch.Tensor) -> None:
        self.rows.append(at)
        self.scales.append(w.sqrt())
        self._hold((at.numel() + w.numel()) * at.element_size())

    def end_batch(self) -> None:
        super().end_batch()
        self._check_size()
        if self.parts:  # per column chunk, its unit chunks (from u0 = 0; the split into unit
            columns: list[list] = []  # chunks may differ between column chunks of other sizes)
            for u0, g in self.parts:
                if u0 == 0:
                    columns.append([])
                columns[-1].append(g)
            self.rows.append(torch.cat([torch.cat(units, 0) for units in columns], 1))
            self.parts = []

    def _check_size(self) -> None:
        """The rows grow with the data (no up-front size check can see them): refused once
        all the pass's layers' rows, and the copy that joins this layer's, would pass the
        pass's memory budget (``pool["held"]``: the bytes all the pass's layers hold, a count
        the engine shares between its accumulators; each joined copy replaces its rows)."""
        held = self.pool.get("held", self.held)
        if held + self.held > getattr(self, "max_bytes", math.inf):
            others = held - self.held
            also = f" (and the other layers' {others / 2**20:.1f} MiB)" if others else ""
            raise MemoryBudgetError(
                f"layer {self.name!r}: the Woodbury factor rows of {self.count} inputs (or "
                f"positions) hold {self.held / 2**20:.1f} MiB{also}, and joining them needs "
                f"twice that, beyond the memory budget of {self.max_bytes / 2**20:.1f} MiB; "
                "pass fewer inputs, layers or units=, or use the dense route, unit_fisher(), "
                "whose size U·(d+1)² does not grow with the data"
            )

    def result(self, n_total: int, kind: str, likelihood: str, mc) -> WoodburyUnitFisher:
        if self.scales:
            rows, scales = torch.cat(self.rows, 0).unsqueeze(0), torch.cat(self.scales, 0).T
        else:
            rows, scales = torch.cat(self.rows, 1), None
        self.rows, self.scales = [], []  # the joined copy replaces them (the size check's rule)
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
    spec = layer_spec(dict(resolve_layer(model, layer) for layer in layers), units)
    options = PassOptions(kind=kind, likelihood=likelihood, mc_samples=mc_samples,
                          generator=generator, batch_size=batch_size,
                          structure="diagonal",  # the size check, as above
                          conv_moments=conv_moments)  # fmt: skip
    return compute(model, spec, inputs, targets, options, accumulator=WoodburyAccumulator)


@dataclass(frozen=True, repr=False)
class WoodburyUnitFisher(SolvedUnitFisher):
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

    _STORE, _REPR_AFTER = "rows", ("rank",)

    def __post_init__(self) -> None:
        self._default_units()

    @property
    def num_units(self) -> int:
        return self.rows.shape[0] if self.scales is None else self.scales.shape[0]

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
        """The dense blocks VᵀV as a :class:`~natgrad.UnitFisher` (same fields)."""
        return UnitFisher(matrix=self.matrix, **self._fields())

    # --- Woodbury solves, in chunks of units --------------------------------------------
    def _check_damping(self, damping: float, name: str = "damping") -> float:
        lam = _damping.check(damping, name)  # a finite number ≥ 0 of any kind, as the dense route
        if not lam > 0:
            raise InputError(
                f"layer {self.layer!r}: the Woodbury route needs {name} > 0, got {damping!r}: "
                f"each unit's factor has R = {self.rank} rows, so F = VᵀV has rank <= R and is "
                f"singular when R < d+1 = {self.fan_in + 1}; solve F + λI with λ > 0 (or use the "
                "dense route, unit_fisher(), for undamped blocks of full rank)"
            )
        return lam

    def _chunks(self):
        step = max(1, MEMORY_BUDGET // max(1, self.rank * (self.rank + self.fan_in + 1)))
        for lo in range(0, self.num_units, step):
            yield lo, min(self.num_units, lo + step)

    def _kernel(self, V: torch.Tensor, lam, lo: int) -> torch.Tensor:
        r"""``[U_c, R, R]`` the Cholesky factor of λI + VVᵀ for ``V [U_c, R, n]``."""
        lam = torch.as_tensor(lam, dtype=V.dtype)  # a number, or one per unit [U_c]
        G = V @ V.transpose(1, 2)  # [U_c, R, R]
        G.diagonal(dim1=-2, dim2=-1).add_(lam.reshape(-1, 1) if lam.ndim else lam)
        units = self.units[lo : lo + V.shape[0]]
        return linalg.cholesky(
            G, layer=self.layer, units=units, what="Woodbury kernel λI + VVᵀ",
            hint="Its λ is too small against VVᵀ for float64: pass a larger damping (or "
            "rel_damping), or use the dense route, unit_fisher(), when R >= d+1.",
        )  # fmt: skip

    def _solver(self, V: torch.Tensor, lam: float, lo: int, L: torch.Tensor | None = None):
        r"""x ↦ (λI + VᵀV)⁻¹x for ``V [U_c, R, n]``, ``x [U_c, n]`` or ``[U_c, n, k]`` (``L``:
        :meth:`_kernel`'s factor, when the caller has it)."""
        L = self._kernel(V, lam, lo) if L is None else L
        lam = torch.as_tensor(lam, dtype=V.dtype)
        lam = lam.reshape(-1, 1, 1) if lam.ndim else lam

        def solve(x: torch.Tensor) -> torch.Tensor:
            vec = x.ndim == 2
            x = x.unsqueeze(-1) if vec else x
            y = (x - V.transpose(1, 2) @ linalg.cho_solve(L, V @ x)) / lam
            return y.squeeze(-1) if vec else y

        return solve

    @property
    def _dtype(self) -> torch.dtype:
        return self.rows.dtype

    def _parts(self, damping: float, rel: bool = False):
        r"""The parts of F + λI, λ > 0, or (``rel``) of F_λ = F + μI, μ = λ·tr F/(d+1) per unit
        (a unit whose rows are all zero — dead — is given μ = 1 so that the chunk solves; its
        measures and metric directions are NaN, ``SolvedUnitFisher._zero_blocks``)."""
        # F = VᵀV has rank <= R: undamped it is singular, so λ = 0 is refused either way
        lam = self._check_damping(damping, "rel_damping" if rel else "damping")
        for lo, hi in self._chunks():
            V = self.factor(lo, hi)
            diag = V.square().sum(1)  # [U_c, d+1] diagonal of F
            raw = (
                _damping.mu(diag.sum(-1), self.fan_in + 1, lam)
                if rel
                else torch.full_like(diag[:, 0], lam)
            )
            mu = _damping.solvable(raw, raw == 0)  # relative damping of a zero block

            def apply(lo_, hi_, u, u0, V=V, mu=mu):
                x = torch.cat([u, u0.unsqueeze(-1)], -1)
                Fx = (V.transpose(1, 2) @ (V @ x.unsqueeze(-1))).squeeze(-1) + mu.unsqueeze(-1) * x
                return Fx[:, :-1], Fx[:, -1]

            Va, v0 = V[..., :-1], V[..., -1]  # [U_c, R, d], [U_c, R]
            b = (Va.transpose(1, 2) @ v0.unsqueeze(-1)).squeeze(-1)
            c = v0.square().sum(-1) + mu
            D = diag[:, :-1] + mu.unsqueeze(-1)
            L = self._kernel(Va, mu, lo)
            # push-through: A_μ⁻¹b = V_aᵀ(μI + V_aV_aᵀ)⁻¹v0 and c_μ − bᵀA_μ⁻¹b =
            # μ(1 + v0ᵀ(μI + V_aV_aᵀ)⁻¹v0): b lies in V_a's row space, where (x − V_aᵀ…)/μ cancels
            z = linalg.cho_solve(L, v0.unsqueeze(-1)).squeeze(-1)  # [U_c, R]
            bias = (Va.transpose(1, 2) @ z.unsqueeze(-1)).squeeze(-1), mu * (1 + (v0 * z).sum(-1))
            yield lo, hi, self._solver(Va, mu, lo, L), apply, D, b, c, bias, raw

    def _zero_blocks(self) -> torch.Tensor:
        return torch.cat([self.factor(lo, hi).square().sum((1, 2)) == 0
                          for lo, hi in self._chunks()])  # fmt: skip

    def solve(self, rhs: torch.Tensor, damping: float) -> torch.Tensor:
        r"""``[U, d+1]`` (F + λI)⁻¹ rhs for ``rhs`` ``[U, d+1]`` (float64 inside), λ > 0."""
        lam = self._check_damping(damping)
        rhs = torch.as_tensor(rhs).double()
        parts = [
            self._solver(self.factor(lo, hi), lam, lo)(rhs[lo:hi]) for lo, hi in self._chunks()
        ]
        return self._out(torch.cat(parts))
