r"""Structured unit Fishers: quasi-diagonal (Ollivier) and diagonal, in O(U·d) memory.

For one unit the dense block is F = [[A, b], [bᵀ, c]] (bias last). The structures keep

- ``"quasidiagonal"`` (Ollivier 2015, "Riemannian metrics for neural networks I"):
  M = [[diag(A), b], [bᵀ, c]], an *arrowhead* matrix: the diagonal of F and its bias row;
- ``"diagonal"``: M = diag(F) (b dropped).

Both are computed by the engine (:func:`natgrad.unit_fisher` with ``structure=``) from the
same single backward as the dense block, without forming it: for a Linear unit
diag(F) = (1/N) Σ_n δ̄²_n ã_n∘ã_n and b = (1/N) Σ_n δ̄²_n a_n (two GEMMs ``[U, N] @ [N, d+1]``);
for a weight-shared (Conv2d) unit the per-sample, per-column gradients g = Σ_p v_p ã_p are
formed in chunks of units (:func:`natgrad.fisher.shared_factors`) and only g∘g and g·g_bias
are summed. Memory: U·(2d+1) (quasi-diagonal) or U·(d+1) (diagonal) numbers.

**Theorems in the structure's metric.** Theorems 1–2 are block algebra that holds for any
positive definite block, so with A replaced by D = diag(A) they hold *exactly* for M:

.. math::

    M^{-1}\binom{g}{g_0}:\quad \Delta w_0 = s\,(g_0 - b^\top D^{-1} g),\quad
    \Delta w = D^{-1}(g - \Delta w_0\, b),\quad s = \frac{1}{c - b^\top D^{-1} b},

an O(d) arrowhead solve, and k = s·(b − c E_p(a))ᵀ D⁻¹ b. Unlike F, the arrowhead M need
not be positive definite (bᵀD⁻¹b can exceed c when the inputs are correlated; seen on
small MLPs): then the methods raise :class:`~natgrad.errors.SingularBlockError` and damping
of the order of the diagonal makes M + λI positive definite. E_q(a) = b/c is the true block's
(b and c are exact entries of F). The structure's Var_q(a) = D/c − E_q(a)E_q(a)ᵀ is diagonal
plus rank one, so the paper's forms of s and k are evaluated by Sherman–Morrison (Lemma 2)
in O(d); they equal the Schur forms exactly. For ``"diagonal"`` M has b = 0, so in its
metric s = 1/c and k = 0; E_q(a), Var_q(a) and Cov_p are *not* stored (the coupling b is
what the structure drops) and raise :class:`~natgrad.errors.StructureError`.

**matrix.** ``StructuredUnitFisher.matrix`` materialises M densely ``[U, d+1, d+1]`` on
demand (it costs what the dense block costs; use it for small layers and tests).

Example:
    >>> import torch
    >>> F = torch.tensor([[[2.0, 0.5, 1.0], [0.5, 3.0, 0.0], [1.0, 0.0, 1.0]]])
    >>> Q = StructuredUnitFisher.from_dense(F, torch.tensor([1.0, 0.0]), "quasidiagonal")
    >>> Q.diagonal, Q.bias_column
    (tensor([[2., 3., 1.]]), tensor([[1., 0.]]))
    >>> Q.natural_gradient(torch.tensor([[1.0, 0.0]]), torch.tensor([0.0]))  # M⁻¹(g, g0)
    (tensor([[1., 0.]]), tensor([-1.]))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from natgrad import linalg, theorems
from natgrad.errors import InputError, SingularBlockError, StructureError
from natgrad.fisher import _LayerAccumulator
from natgrad.unitfisher import UnitFisher

STRUCTURED = ("quasidiagonal", "diagonal")


class StructuredAccumulator(_LayerAccumulator):
    r"""Sums diag(Σ g gᵀ) ``[U, d+1]`` and, for ``"quasidiagonal"``, Σ g_w g_0 ``[U, d]``."""

    def _allocate(self, dtype, device) -> None:
        d1 = self.fan_in + 1
        self.diag = torch.zeros(self.n_units, d1, dtype=dtype, device=device)
        self.cross = (
            torch.zeros(self.n_units, d1 - 1, dtype=dtype, device=device)
            if self.structure == "quasidiagonal"
            else None
        )
        self.total = self.diag  # marks "allocated" for the base class

    def _reduce_factors(self, u0: int, g: torch.Tensor) -> None:
        uc = g.shape[0]
        self.diag[u0 : u0 + uc] += torch.linalg.vecdot(g, g, dim=1)  # Σ_r g_r∘g_r [Uc, d+1]
        if self.cross is not None:  # Σ_r g_r,w · g_r,0 as one bmm: [Uc, 1, R] @ [Uc, R, d]
            self.cross[u0 : u0 + uc] += torch.bmm(g[..., -1:].transpose(1, 2), g[..., :-1])[:, 0]

    def _reduce_weighted(self, w: torch.Tensor, at: torch.Tensor) -> None:
        self.diag += w.T @ at.square()  # [U, M] @ [M, d+1]
        if self.cross is not None:
            self.cross += w.T @ at[:, :-1]  # the bias entry of ã is 1

    def result(self, n_total: int, kind: str, likelihood: str, mc) -> StructuredUnitFisher:
        diag = self.diag.div_(n_total)
        cross = None if self.cross is None else self.cross.div_(n_total)
        return StructuredUnitFisher(
            diagonal=diag,
            bias_column=cross,
            structure=self.structure,
            **self.fields(n_total, kind, likelihood, mc),
        )


@dataclass(frozen=True)
class StructuredUnitFisher:
    r"""A quasi-diagonal or diagonal unit Fisher of U units of one layer (bias last).

    Attributes:
        diagonal: ``[U, d+1]`` diag(F) = (diag(A), c).
        bias_column: ``[U, d]`` b = E_p(δ̄² a) (``"quasidiagonal"``), ``None`` for ``"diagonal"``.
        structure: ``"quasidiagonal"`` or ``"diagonal"``.
        mean_p, n, kind, likelihood, layer, units, mc_samples: as in :class:`~natgrad.UnitFisher`.

    The theorem methods solve exactly in the structure's metric M (module docstring); damping
    λ adds λ to every diagonal entry of M, the bias entry included, as for dense blocks.
    """

    diagonal: torch.Tensor
    bias_column: torch.Tensor | None
    structure: str
    mean_p: torch.Tensor
    n: int
    kind: str
    likelihood: str
    layer: str
    units: torch.Tensor = field(default=None)  # type: ignore[assignment]
    mc_samples: int | None = None

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURED:
            raise InputError(
                f"StructuredUnitFisher of layer {self.layer!r}: structure must be one of "
                f"{STRUCTURED}, got {self.structure!r} (dense blocks are natgrad.UnitFisher)"
            )
        d = self.diagonal.shape[-1] - 1
        if self.diagonal.ndim != 2 or d < 1 or self.mean_p.shape != (d,):
            raise InputError(
                f"StructuredUnitFisher of layer {self.layer!r}: diagonal must be [U, d+1] and "
                f"mean_p [d]; got {tuple(self.diagonal.shape)} and {tuple(self.mean_p.shape)}"
            )
        want = self.diagonal.shape[:1] + (d,)
        if (self.structure == "quasidiagonal") != (self.bias_column is not None) or (
            self.bias_column is not None and self.bias_column.shape != want
        ):
            raise InputError(
                f"StructuredUnitFisher of layer {self.layer!r}: a quasidiagonal structure needs "
                f"bias_column [U, d] = {list(want)}, a diagonal one none"
            )
        if self.units is None:
            object.__setattr__(self, "units", torch.arange(self.diagonal.shape[0]))

    @classmethod
    def from_dense(
        cls, matrix: torch.Tensor, mean_p: torch.Tensor, structure: str, **fields
    ) -> StructuredUnitFisher:
        r"""The structure ``structure`` of dense blocks ``[U, d+1, d+1]`` (or a UnitFisher's)."""
        if isinstance(matrix, UnitFisher):
            src = matrix
            fields = (
                dict(
                    n=src.n,
                    kind=src.kind,
                    likelihood=src.likelihood,
                    layer=src.layer,
                    units=src.units,
                    mc_samples=src.mc_samples,
                )
                | fields
            )
            matrix = src.matrix
        matrix = torch.as_tensor(matrix)
        if matrix.ndim == 2:
            matrix = matrix.unsqueeze(0)
        fields = dict(n=0, kind="given", likelihood="given", layer="given") | fields
        return cls(
            diagonal=torch.diagonal(matrix, dim1=-2, dim2=-1).clone(),
            bias_column=matrix[:, :-1, -1].clone() if structure == "quasidiagonal" else None,
            structure=structure,
            mean_p=torch.as_tensor(mean_p, dtype=matrix.dtype),
            **fields,
        )

    # --- sizes and entries ---------------------------------------------------------------
    @property
    def num_units(self) -> int:
        """U, the number of units held."""
        return self.diagonal.shape[0]

    @property
    def fan_in(self) -> int:
        """d, the fan-in of each unit (without the bias)."""
        return self.diagonal.shape[-1] - 1

    @property
    def diag_A(self) -> torch.Tensor:
        r"""``[U, d]`` diag(A) = E_p(δ̄² a∘a) (Conv2d: the weight-shared block's diagonal)."""
        return self.diagonal[:, :-1]

    @property
    def c(self) -> torch.Tensor:
        r"""``[U]`` c = E_p(δ̄²)."""
        return self.diagonal[:, -1]

    @property
    def b(self) -> torch.Tensor:
        r"""``[U, d]`` b = E_p(δ̄² a) (quasi-diagonal only)."""
        return self._need_b("b")

    def _need_b(self, what: str) -> torch.Tensor:
        if self.bias_column is None:
            raise StructureError(
                f"layer {self.layer!r}: {what} needs the weight-bias coupling b = E_p(δ̄² a), "
                "which the diagonal structure does not keep; compute the unit Fisher with "
                "structure='quasidiagonal' (O(U·d) memory) or 'dense'"
            )
        return self.bias_column

    @property
    def mean_q(self) -> torch.Tensor:
        r"""``[U, d]`` E_q(a) = b / c (exact: b and c are entries of the true block)."""
        return self._need_b("E_q(a) = b/c") / self.c.unsqueeze(-1)

    @property
    def cov_p(self) -> torch.Tensor:
        r"""``[U, d]`` Cov_p(δ̄², a) = b − c E_p(a)."""
        return self._need_b("Cov_p(δ̄², a)") - self.c.unsqueeze(-1) * self.mean_p

    @property
    def var_q(self) -> torch.Tensor:
        raise StructureError(
            f"layer {self.layer!r}: Var_q(a) needs the full A block, which the {self.structure} "
            "structure does not keep (its metric's Var_q is diag(A)/c − E_q E_qᵀ, used inside "
            "s('paper') and k('closed') by Sherman–Morrison); use structure='dense'"
        )

    @property
    def matrix(self) -> torch.Tensor:
        r"""``[U, d+1, d+1]`` the structured block M, materialised densely on demand."""
        m = torch.diag_embed(self.diagonal)
        if self.bias_column is not None:
            m[:, :-1, -1] = self.bias_column
            m[:, -1, :-1] = self.bias_column
        return m

    def to_unit_fisher(self) -> UnitFisher:
        r"""The materialised M as a dense :class:`~natgrad.UnitFisher` (same fields)."""
        return UnitFisher(
            matrix=self.matrix,
            mean_p=self.mean_p,
            n=self.n,
            kind=self.kind,
            likelihood=self.likelihood,
            layer=self.layer,
            units=self.units,
            mc_samples=self.mc_samples,
        )

    unit_grads = UnitFisher.unit_grads

    # --- the metric M + λI in float64 ------------------------------------------------------
    def _context(self) -> dict:
        return {"layer": self.layer, "units": self.units}

    def _damped(self, damping: float):
        """D ``[U, d]``, b ``[U, d]`` (zeros for diagonal), c ``[U]`` of M + λI, float64."""
        linalg.damped(torch.zeros(1, 1, 1), damping)  # validates λ (finite, >= 0)
        D = self.diag_A.double() + damping
        c = self.c.double() + damping
        b = torch.zeros_like(D) if self.bias_column is None else self.bias_column.double()
        bad = ~(D > 0).all(-1) | ~(c > 0)
        if bad.any():
            raise SingularBlockError(
                f"layer {self.layer!r}: the {self.structure} unit Fisher has a zero diagonal "
                f"entry (a weight or bias no input moves) for {linalg._names(bad.nonzero().flatten(), self.units)}. "
                "Pass damping > 0."
            )
        return D, b, c

    def _schur(self, D, b, c):
        """(D⁻¹b [U, d], s [U]) with s = 1/(c − bᵀD⁻¹b), raising if M is not PD."""
        Dinv_b = b / D
        denom = c - (b * Dinv_b).sum(-1)
        bad = ~(denom > 0)
        if bad.any():
            raise SingularBlockError(
                f"layer {self.layer!r}: the {self.structure} unit Fisher is not positive "
                f"definite (c − bᵀdiag(A)⁻¹b <= 0) for {linalg._names(bad.nonzero().flatten(), self.units)}"
                ": unlike the dense block, [[diag(A), b], [bᵀ, c]] can be indefinite when the "
                "inputs are correlated. Pass damping > 0 (of the order of the diagonal)."
            )
        return Dinv_b, 1.0 / denom

    def _out(self, *xs):
        dtype = self.diagonal.dtype
        return tuple(x.to(dtype) for x in xs) if len(xs) > 1 else xs[0].to(dtype)

    # --- Theorems 1-2 in the metric M ----------------------------------------------------------
    def s(self, form: str = "schur", damping: float = 0.0) -> torch.Tensor:
        r"""``[U]`` s = 1/(c − bᵀD⁻¹b) (``"schur"``) or (1 + E_q(a)ᵀV⁻¹E_q(a))/c with the
        structure's V = D/c − E_q E_qᵀ (``"paper"``, Sherman–Morrison), of M + λI."""
        D, b, c = self._damped(damping)
        if form == "schur":
            return self._out(self._schur(D, b, c)[1])
        if form == "paper":
            self._schur(D, b, c)  # positive definiteness
            m = b / c.unsqueeze(-1)
            r = (m * m / (D / c.unsqueeze(-1))).sum(-1)  # mᵀΔ⁻¹m, Δ = D/c
            t = r / (1.0 - r)  # mᵀ(Δ − mmᵀ)⁻¹m
            return self._out((1.0 + t) / c)
        raise InputError(f"layer {self.layer!r}: form must be 'schur' or 'paper', got {form!r}")

    def k(self, form: str = "closed", damping: float = 0.0) -> torch.Tensor:
        r"""``[U]`` Theorem 2's k of M + λI: (E_q − E_p)ᵀV⁻¹E_q (``"closed"``, V as in
        :meth:`s`) or s·(b − c E_p(a))ᵀD⁻¹b (``"paper"``); 0 for the diagonal structure."""
        D, b, c = self._damped(damping)
        Dinv_b, s = self._schur(D, b, c)
        mp = self.mean_p.double()
        if form == "paper":
            return self._out(s * ((b - c.unsqueeze(-1) * mp) * Dinv_b).sum(-1))
        if form == "closed":
            m = b / c.unsqueeze(-1)
            Vinv_m = m / (D / c.unsqueeze(-1))  # Δ⁻¹m
            r = (m * Vinv_m).sum(-1)
            return self._out(((m - mp) * Vinv_m).sum(-1) / (1.0 - r))
        raise InputError(f"layer {self.layer!r}: form must be 'closed' or 'paper', got {form!r}")

    def natural_gradient(
        self, grad_weight: torch.Tensor, grad_bias: torch.Tensor, damping: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""(Δw ``[U, d]``, Δw0 ``[U]``) = (M + λI)⁻¹(g, g0), the arrowhead solve of Theorem 1
        with A → diag(A) (O(U·d)); gradients are accepted as in
        :meth:`natgrad.UnitFisher.natural_gradient`."""
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        out = torch.promote_types(g.dtype, self.diagonal.dtype)
        D, b, c = self._damped(damping)
        g, g0 = g.double(), g0.double()
        Dinv_b, s = self._schur(D, b, c)
        dw0 = s * (g0 - (Dinv_b * g).sum(-1))
        dw = (g - dw0.unsqueeze(-1) * b) / D
        return dw.to(out), dw0.to(out)

    def bias_shift(
        self, grad_weight: torch.Tensor, grad_bias: torch.Tensor, damping: float = 0.0
    ) -> theorems.BiasShift:
        r"""Theorem 2's :class:`~natgrad.theorems.BiasShift` in the metric M + λI (A → diag(A)):
        shift_natural = (E_p − (1+k)E_q)ᵀD⁻¹g + (1+k)g0/c, shift_blockdiag = E_pᵀD⁻¹g + g0/c."""
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        out = torch.promote_types(g.dtype, self.diagonal.dtype)
        D, b, c = self._damped(damping)
        g, g0, mp = g.double(), g0.double(), self.mean_p.double()
        Dinv_b, s = self._schur(D, b, c)
        Dinv_g = g / D
        k = s * ((b - c.unsqueeze(-1) * mp) * Dinv_b).sum(-1)
        corrected = mp - (1.0 + k).unsqueeze(-1) * (b / c.unsqueeze(-1))
        return theorems.BiasShift(
            shift_natural=((corrected * Dinv_g).sum(-1) + (1.0 + k) * g0 / c).to(out),
            shift_blockdiag=((mp * Dinv_g).sum(-1) + g0 / c).to(out),
            shift_plain=((mp * g).sum(-1) + g0).to(out),
            k=k.to(out),
            corrected_mean=corrected.to(out),
        )

    def cosine(
        self, grad_weight: torch.Tensor, grad_bias: torch.Tensor, damping: float = 0.0
    ) -> torch.Tensor:
        r"""``[U]`` Euclidean cosine between (g, g0) and (M + λI)⁻¹(g, g0)."""
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        dw, dw0 = self.natural_gradient(g, g0, damping)
        return theorems.cosine(g, g0, dw, dw0)

    def __repr__(self) -> str:
        return (
            f"StructuredUnitFisher(layer={self.layer!r}, structure={self.structure!r}, "
            f"kind={self.kind!r}, likelihood={self.likelihood!r}, units={self.num_units}, "
            f"fan_in={self.fan_in}, n={self.n}, dtype={self.diagonal.dtype})"
        )
