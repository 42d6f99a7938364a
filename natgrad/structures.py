r"""Structured unit Fishers: quasi-diagonal (Ollivier) and diagonal, in O(U·d) memory
(``docs/scale.md``, "2. Structures").

For one unit the dense block is F = [[A, b], [bᵀ, c]] (bias last). ``"quasidiagonal"`` keeps
diag(A), b and c (Ollivier 2015, arXiv 1303.0818, Sect. 3), U·(2d+1) numbers; ``"diagonal"``
keeps diag(F) only, U·(d+1); the engine computes both without forming F.

**The structure's metric.** The stored numbers define Ollivier's quasi-diagonal metric

.. math::

    Q = \begin{pmatrix} A_Q & b \\ b^\top & c \end{pmatrix},\qquad
    A_Q = \operatorname{diag}(A_{jj} - b_j^2/c) + b b^\top / c,

F's diagonal, bias row and bias entry with the weights coupled only through the bias: its
Var_q(a) = A_Q/c − E_q(a)E_q(a)ᵀ is DIAGONAL with the exact q-variances A_jj/c − E_q(a_j)²,
Q is positive definite exactly when every 2×2 block [[A_jj, b_j], [b_j, c]] is, and Q⁻¹g is
Ollivier's quasi-diagonal update (:func:`natgrad.measures.quasidiagonal_solve`). Theorems 1–2
are block algebra, so with A → A_Q (Sherman–Morrison, O(d)) they hold exactly for Q:
s = (1 + Σ_j b_j²/(c A_jj − b_j²))/c = (1 + E_qᵀVar_q⁻¹E_q)/c, k = Σ_j (E_q − E_p)_j E_q,j /
Var_q,j. Damping λ is applied to F before the structure is taken: the metric is Q(F + λI).
For ``"diagonal"`` b = 0, so s = 1/c and k = 0; E_q(a), Var_q(a) and Cov_p are *not* stored
and raise :class:`~natgrad.errors.StructureError`. ``StructuredUnitFisher.matrix``
materialises Q densely ``[U, d+1, d+1]`` on demand (small layers and tests).

Example:
    >>> import torch
    >>> F = torch.tensor([[[2.0, 0.5, 1.0], [0.5, 3.0, 0.0], [1.0, 0.0, 1.0]]])
    >>> Q = StructuredUnitFisher.from_dense(F, torch.tensor([1.0, 0.0]), "quasidiagonal")
    >>> Q.diagonal, Q.bias_column
    (tensor([[2., 3., 1.]]), tensor([[1., 0.]]))
    >>> Q.natural_gradient(torch.tensor([[1.0, 0.0]]), torch.tensor([0.0]))  # Q⁻¹(g, g0)
    (tensor([[1., 0.]]), tensor([-1.]))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from natgrad import damping as _damping
from natgrad import linalg
from natgrad.accumulate import LayerAccumulator
from natgrad.errors import InputError, SingularBlockError, StructureError
from natgrad.unitfisher import SolvedUnitFisher, UnitFisher

STRUCTURED = ("quasidiagonal", "diagonal")


class StructuredAccumulator(LayerAccumulator):
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


@dataclass(frozen=True, repr=False)
class StructuredUnitFisher(SolvedUnitFisher):
    r"""A quasi-diagonal or diagonal unit Fisher of U units of one layer (bias last).

    Attributes:
        diagonal: ``[U, d+1]`` diag(F) = (diag(A), c).
        bias_column: ``[U, d]`` b = E_p(δ̄² a) (``"quasidiagonal"``), ``None`` for ``"diagonal"``.
        structure: ``"quasidiagonal"`` or ``"diagonal"``.
        mean_p, n, kind, likelihood, layer, units, mc_samples, c_sum, c_sq_sum: as in
            :class:`~natgrad.UnitFisher`.

    The theorem methods solve exactly in the structure's metric (module docstring); damping λ
    is added to F's diagonal before the structure is taken: the metric is Q(F + λI), which is
    not Q(F) + λI (Δ_j = A_jj + λ − b_j²/(c + λ)).
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
    c_sum: torch.Tensor | None = None
    c_sq_sum: torch.Tensor | None = None

    _STORE, _REPR_FIRST = "diagonal", ("structure",)

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
        self._default_units()

    @classmethod
    def from_dense(
        cls, matrix: torch.Tensor, mean_p: torch.Tensor, structure: str, **fields
    ) -> StructuredUnitFisher:
        r"""The structure ``structure`` of dense blocks ``[U, d+1, d+1]`` (or a UnitFisher's)."""
        if isinstance(matrix, UnitFisher):
            keep = ("n", "kind", "likelihood", "layer", "units", "mc_samples")
            fields = matrix._fields(*keep) | fields
            matrix = matrix.matrix
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

    # --- entries -------------------------------------------------------------------------
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
        r"""``[U, d+1, d+1]`` the structure's metric Q(F) (module docstring), materialised
        densely on demand: diag(F) and b exact, weight off-diagonals b_i b_j / c."""
        D, c = self.diag_A, self.c
        if self.bias_column is None:
            return torch.diag_embed(self.diagonal)
        b = self.bias_column
        cs = torch.where(c > 0, c, torch.ones_like(c))[:, None, None]
        A = torch.diag_embed(D - b.square() / cs[..., 0]) + b.unsqueeze(-1) * b.unsqueeze(-2) / cs
        A = torch.where(c[:, None, None] > 0, A, torch.diag_embed(D))
        return linalg.bordered(A, b, c)

    def to_unit_fisher(self, damping: float = 0.0) -> UnitFisher:
        r"""The metric Q(F + λI) as a dense :class:`~natgrad.UnitFisher` (same fields): its
        theorem methods (undamped) give this object's results at damping λ."""
        return UnitFisher(
            matrix=self.matrix if damping == 0 else self.metric(damping), **self._fields()
        )

    # --- the metric Q(F + λI) in float64 --------------------------------------------------
    def _metric(self, damping: float, rel: bool = False):
        r"""Δ ``[U, d]``, b ``[U, d]``, c ``[U]``, diag(A) + λ ``[U, d]`` and λ of Q(F + λI)
        (``rel``: of Q(F_λ), λ → μ = λ·tr(F)/(d+1) per unit) in float64: A_Q = diag(Δ) + bbᵀ/c,
        Δ_j = A_jj + λ − b_j²/(c + λ); raises unless every 2×2 block [[A_jj, b_j], [b_j, c]]
        of F + λI is positive definite (then Q is)."""
        lam = self._damping_of(damping) if rel else _damping.check(damping, "damping")
        reported = lam
        if rel:  # a dead unit (zero block) solves with a stand-in μ: NaN in what is returned
            lam = _damping.solvable(lam, self._zero_blocks())
        D = self.diag_A.double() + (lam.unsqueeze(-1) if rel else lam)
        c = self.c.double() + lam
        b = torch.zeros_like(D) if self.bias_column is None else self.bias_column.double()
        cpos = torch.where(c > 0, c, 1.0)
        delta = D - b.square() / cpos.unsqueeze(-1)
        bad = ~(c > 0) | ~(delta > 0).all(-1)
        if bad.any():
            raise SingularBlockError(
                f"layer {self.layer!r}: the {self.structure} unit Fisher is singular for "
                f"{linalg._names(bad.nonzero().flatten(), self.units)}: c <= 0 or a 2×2 block "
                "[[A_jj, b_j], [b_j, c]] is singular (a dead unit, or an input coordinate that "
                f"never varies). Pass {'rel_damping' if rel else 'damping'} > 0."
            )
        # κ(S) >= max_j (S⁻¹)_jj = max_j D_j / Δ_j for Q scaled to a unit diagonal, S
        # (Q_jj = D_j, and the weight block of Q⁻¹ is diag(Δ)⁻¹): a rigorous lower bound of
        # the condition the dense route warns of (linalg.COND_WARN); 1 for the diagonal
        # structure (b = 0, Δ = D), whose elementwise solve is exact whatever the spread
        bound = (D / delta).amax(-1)
        linalg.warn_nearly_singular(bound, layer=self.layer, units=self.units,
                                    what=f"{self.structure} unit Fisher", damping=damping,
                                    warn_cond=linalg.cond_warn(self._dtype), stacklevel=4)  # fmt: skip
        return delta, b, c, D, reported

    def _zero_blocks(self) -> torch.Tensor:
        return self.diagonal.sum(-1) == 0

    def _damping_of(self, rel_damping: float) -> float | torch.Tensor:
        r"""μ = λ·tr(F)/(d+1) per unit ``[U, 1]`` for a relative damping λ (natgrad.measures)."""
        return _damping.mu(self.diagonal.double().sum(-1), self.fan_in + 1, rel_damping)

    @staticmethod
    def _A_inv(delta, b, c, x):
        r"""A_Q⁻¹x for A_Q = diag(Δ) + bbᵀ/c (Sherman–Morrison), ``x`` ``[U, d]`` or ``[U, d, k]``."""
        vec = x.ndim == 2
        x = x.unsqueeze(-1) if vec else x
        Dx, Db = x / delta.unsqueeze(-1), b / delta  # [U, d, k], [U, d]
        t = (b * Db).sum(-1)  # bᵀΔ⁻¹b
        coef = (b.unsqueeze(-1) * Dx).sum(1) / (c + t).unsqueeze(-1)  # [U, k]
        y = Dx - Db.unsqueeze(-1) * coef.unsqueeze(1)
        return y.squeeze(-1) if vec else y

    @property
    def _dtype(self) -> torch.dtype:
        return self.diagonal.dtype

    def metric(self, damping: float = 0.0) -> torch.Tensor:
        r"""``[U, d+1, d+1]`` the structure's metric Q(F + λI), materialised densely."""
        delta, b, c, _, _ = self._metric(damping)
        A = torch.diag_embed(delta) + b.unsqueeze(-1) * b.unsqueeze(-2) / c[:, None, None]
        return linalg.bordered(A, b, c).to(self.diagonal.dtype)

    @property
    def var_q_diagonal(self) -> torch.Tensor:
        r"""``[U, d]`` Var_q(a_j) = A_jj/c − E_q(a_j)², the q-variances (Q's Var_q is diagonal)."""
        return self.diag_A / self.c.unsqueeze(-1) - self.mean_q.square()

    # --- Theorems 1-2 and natgrad.measures: SolvedUnitFisher over A_Q⁻¹ (Sherman–Morrison)
    def _parts(self, damping: float, rel: bool = False):
        delta, b, c, D, mu = self._metric(damping, rel)

        def apply(lo, hi, u, u0):  # Q(u, u0) ([U, d], [U]) for A_Q = diag(Δ) + bbᵀ/c
            bu = (b * u).sum(-1)
            return delta * u + b * (bu / c + u0).unsqueeze(-1), bu + c * u0

        # A_Q⁻¹b = Δ⁻¹b·c/(c+t) and c − bᵀA_Q⁻¹b = c²/(c+t), t = bᵀΔ⁻¹b: no cancellation
        Db = b / delta
        t = (b * Db).sum(-1)
        bias = Db * (c / (c + t)).unsqueeze(-1), c.square() / (c + t)
        yield 0, self.num_units, lambda x: self._A_inv(delta, b, c, x), apply, D, b, c, bias, mu
