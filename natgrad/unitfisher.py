r"""The ``UnitFisher`` result: the unit Fisher blocks of one layer and the moments they define.

Shapes (stated once for all of natgrad): N inputs, U units of the layer, d fan-in of a unit
(``in_features`` for Linear, ``C_in·kh·kw`` for Conv2d in ``weight.view(U, -1)`` order),
C outputs of the model, S Monte-Carlo samples. The bias is ordered LAST: ã = (a, 1).

For each unit i the block is

.. math::

    F_i = \mathbb{E}_p[\bar\delta^2 \tilde a \tilde a^\top]
        = \begin{pmatrix} A & b \\ b^\top & c \end{pmatrix},\qquad
    c = E_p(\bar\delta^2),\; b = E_p(\bar\delta^2 a),\; A = E_p(\bar\delta^2 a a^\top)

and the reweighted distribution q(z) = δ̄²(z) p(z) / E_p(δ̄²) has
E_q(a) = b / c and Var_q(a) = A / c − E_q(a) E_q(a)ᵀ. For weight-shared units (Conv2d) the
block is the true weight-shared block and these moments are *defined* by the same formulas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from natgrad import linalg, theorems
from natgrad.errors import InputError


@dataclass(frozen=True)
class UnitFisher:
    r"""Unit Fisher blocks of U units of one layer, bias last.

    Attributes:
        matrix: ``[U, d+1, d+1]`` the blocks F_i.
        mean_p: ``[d]`` E_p(a), the mean incoming activation (mean patch for Conv2d).
        n: number of inputs averaged over.
        kind: ``"exact"``, ``"mc"``, ``"empirical"`` or ``"given"`` (from :meth:`from_matrix`).
        likelihood: ``"categorical"``, ``"bernoulli"``, ``"gaussian"`` or ``"given"``.
        layer: the layer's name in ``model.named_modules()``.
        units: ``[U]`` indices of the units within the layer.
        mc_samples: labels sampled per input for ``kind="mc"``.

    Example:
        >>> import torch
        >>> F = UnitFisher.from_matrix(torch.tensor([[[2.0, 1.0], [1.0, 1.0]]]), torch.tensor([1.0]))
        >>> F.c, F.mean_q
        (tensor([1.]), tensor([[1.]]))
    """

    matrix: torch.Tensor
    mean_p: torch.Tensor
    n: int
    kind: str
    likelihood: str
    layer: str
    units: torch.Tensor = field(default=None)  # type: ignore[assignment]
    mc_samples: int | None = None

    def __post_init__(self) -> None:
        m = self.matrix
        if m.ndim != 3 or m.shape[-1] != m.shape[-2] or m.shape[-1] < 2:
            raise InputError(
                f"UnitFisher of layer {self.layer!r}: matrix must have shape [U, d+1, d+1] "
                f"with d >= 1, got {tuple(m.shape)}"
            )
        if self.mean_p.shape != (m.shape[-1] - 1,):
            raise InputError(
                f"UnitFisher of layer {self.layer!r}: mean_p must have shape [d] = "
                f"[{m.shape[-1] - 1}], got {tuple(self.mean_p.shape)}"
            )
        if self.units is None:
            object.__setattr__(self, "units", torch.arange(m.shape[0]))

    @classmethod
    def from_matrix(
        cls,
        matrix: torch.Tensor,
        mean_p: torch.Tensor,
        *,
        layer: str = "given",
        n: int = 0,
    ) -> UnitFisher:
        r"""Wrap any symmetric positive definite ``[U, d+1, d+1]`` tensor (bias last) and the
        incoming mean E_p(a) ``[d]`` (shared by all units of a layer) as a ``UnitFisher``.

        A single block ``[d+1, d+1]`` is promoted to ``U = 1``. Use it for synthetic studies
        and notebooks; the theorem methods work the same as on computed blocks.
        """
        matrix = torch.as_tensor(matrix)
        mean_p = torch.as_tensor(mean_p, dtype=matrix.dtype, device=matrix.device)
        if matrix.ndim == 2:
            matrix = matrix.unsqueeze(0)
        if not torch.isfinite(matrix).all() or not torch.isfinite(mean_p).all():
            raise InputError(f"UnitFisher.from_matrix ({layer!r}): matrix or mean_p has NaN/Inf")
        if not torch.allclose(matrix, matrix.transpose(-1, -2), rtol=1e-6, atol=1e-10):
            raise InputError(f"UnitFisher.from_matrix ({layer!r}): matrix is not symmetric")
        return cls(matrix=matrix, mean_p=mean_p, n=n, kind="given", likelihood="given", layer=layer)

    # --- sizes -------------------------------------------------------------------------
    @property
    def num_units(self) -> int:
        """U, the number of units held."""
        return self.matrix.shape[0]

    @property
    def fan_in(self) -> int:
        """d, the fan-in of each unit (without the bias)."""
        return self.matrix.shape[-1] - 1

    # --- blocks ------------------------------------------------------------------------
    @property
    def A(self) -> torch.Tensor:
        r"""``[U, d, d]`` A = E_p(δ̄² a aᵀ)."""
        return self.matrix[:, :-1, :-1]

    @property
    def b(self) -> torch.Tensor:
        r"""``[U, d]`` b = E_p(δ̄² a)."""
        return self.matrix[:, :-1, -1]

    @property
    def c(self) -> torch.Tensor:
        r"""``[U]`` c = E_p(δ̄²)."""
        return self.matrix[:, -1, -1]

    # --- moments of the reweighted distribution q --------------------------------------
    @property
    def mean_q(self) -> torch.Tensor:
        r"""``[U, d]`` E_q(a) = b / c."""
        return self.b / self.c.unsqueeze(-1)

    @property
    def second_moment_q(self) -> torch.Tensor:
        r"""``[U, d, d]`` E_q(a aᵀ) = A / c."""
        return self.A / self.c[:, None, None]

    @property
    def var_q(self) -> torch.Tensor:
        r"""``[U, d, d]`` Var_q(a) = A / c − E_q(a) E_q(a)ᵀ."""
        m = self.mean_q
        return self.second_moment_q - m.unsqueeze(-1) * m.unsqueeze(-2)

    @property
    def cov_p(self) -> torch.Tensor:
        r"""``[U, d]`` Cov_p(δ̄², a) = b − c E_p(a)."""
        return self.b - self.c.unsqueeze(-1) * self.mean_p

    # --- Theorems 1–2 (natgrad.theorems); damping λ adds λI to F, bias entry included ---------
    def _context(self) -> dict:
        return {"layer": self.layer, "units": self.units}

    def _damped_blocks(self, damping: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        F = linalg.damped(self.matrix, damping)
        return F[:, :-1, :-1], F[:, :-1, -1], F[:, -1, -1]

    def _damped_moments(self, damping: float):
        """E_q(a) [U, d], Var_q(a) [U, d, d], Cov_p(δ̄², a) [U, d] of the damped block F + λI."""
        A, b, c = self._damped_blocks(damping)
        mean_q = b / c.unsqueeze(-1)
        var_q = A / c[:, None, None] - mean_q.unsqueeze(-1) * mean_q.unsqueeze(-2)
        return mean_q, var_q, b - c.unsqueeze(-1) * self.mean_p

    def condition_number(self, damping: float = 0.0) -> torch.Tensor:
        r"""``[U]`` 2-norm condition number of each block F + λI (float64; inf if not PD)."""
        return linalg.condition_number(linalg.damped(self.matrix, damping))

    def inverse(self, damping: float = 0.0) -> torch.Tensor:
        r"""``[U, d+1, d+1]`` (F + λI)⁻¹ by Lemma 1 (:func:`natgrad.theorems.lemma1_inverse`)."""
        return theorems.lemma1_inverse(*self._damped_blocks(damping), **self._context())

    def s(self, form: str = "schur", damping: float = 0.0) -> torch.Tensor:
        r"""``[U]`` s = 1/(c − bᵀA⁻¹b) (``form="schur"``) or, equal by Lemma 2(i),
        E_p(δ̄²)⁻¹(1 + E_q(a)ᵀVar_q(a)⁻¹E_q(a)) (``form="paper"``), of F + λI (Theorem 1).

        Example:
            >>> F = UnitFisher.from_matrix(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0]))
            >>> F.s(), F.s("paper")
            (tensor([2.]), tensor([2.]))
        """
        if form == "schur":
            return theorems.schur_complement(*self._damped_blocks(damping), **self._context())
        if form == "paper":
            c = self._damped_blocks(damping)[2]
            mean_q, var_q, _ = self._damped_moments(damping)
            return theorems.schur_complement_paper(c, mean_q, var_q, **self._context())
        raise InputError(
            f"UnitFisher.s of layer {self.layer!r}: form must be 'schur' or 'paper', got {form!r}"
        )

    def k(self, form: str = "closed", damping: float = 0.0) -> torch.Tensor:
        r"""``[U]`` Theorem 2's k = (E_q(a) − E_p(a))ᵀVar_q(a)⁻¹E_q(a) (``form="closed"``) or
        s·E_p(δ̄²)·Cov_p(δ̄², a)ᵀA⁻¹E_q(a) (``form="paper"``), of F + λI.

        Example:
            >>> F = UnitFisher.from_matrix(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0]))
            >>> F.k(), F.k("paper")
            (tensor([0.]), tensor([0.]))
        """
        mean_q, var_q, cov_p = self._damped_moments(damping)
        if form == "closed":
            return theorems.k_closed(self.mean_p, mean_q, var_q, **self._context())
        if form == "paper":
            A, _, c = self._damped_blocks(damping)
            s = self.s("schur", damping)
            return theorems.k_paper(A, c, s, cov_p, mean_q, **self._context())
        raise InputError(
            f"UnitFisher.k of layer {self.layer!r}: form must be 'closed' or 'paper', got {form!r}"
        )

    def natural_gradient(
        self, grad_weight: torch.Tensor, grad_bias: torch.Tensor, damping: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Unit natural gradient (Δw ``[U, d]``, Δw0 ``[U]``) = (F + λI)⁻¹(g, g0) by Theorem 1.

        ``grad_weight`` is ``[U, d]`` or the layer's own weight shape (e.g. Conv2d
        ``[U, C_in, kh, kw]``, flattened as ``weight.view(U, -1)``); ``grad_bias`` is ``[U]``.
        Gradients of the *whole* layer (more rows than ``num_units``) are sliced by
        ``self.units``. Results are in the promoted dtype of the gradients and the blocks.

        Example:
            >>> F = UnitFisher.from_matrix(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0]))
            >>> F.natural_gradient(torch.tensor([[1.0]]), torch.tensor([0.0]))
            (tensor([[1.]]), tensor([-1.]))
        """
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        return theorems.natural_gradient(*self._damped_blocks(damping), g, g0, **self._context())

    def bias_shift(
        self, grad_weight: torch.Tensor, grad_bias: torch.Tensor, damping: float = 0.0
    ) -> theorems.BiasShift:
        r"""Theorem 2's :class:`~natgrad.theorems.BiasShift` per unit (shift_natural,
        shift_blockdiag, shift_plain, k, corrected_mean) for the gradient (g, g0); gradients
        are accepted as in :meth:`natural_gradient`.

        Example:
            >>> F = UnitFisher.from_matrix(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0]))
            >>> r = F.bias_shift(torch.tensor([[1.0]]), torch.tensor([0.0]))
            >>> r.shift_natural, r.shift_blockdiag, r.shift_plain
            (tensor([0.]), tensor([0.5000]), tensor([1.]))
        """
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        A, b, c = self._damped_blocks(damping)
        return theorems.bias_shift(A, b, c, self.mean_p, g, g0, **self._context())

    def cosine(
        self, grad_weight: torch.Tensor, grad_bias: torch.Tensor, damping: float = 0.0
    ) -> torch.Tensor:
        r"""``[U]`` cosine between the plain gradient (g, g0) and the unit natural gradient
        (Δw, Δw0) of each unit; 1 means the plain gradient already is the natural direction.

        Example:
            >>> F = UnitFisher.from_matrix(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0]))
            >>> F.cosine(torch.tensor([[1.0]]), torch.tensor([0.0]))
            tensor([0.7071])
        """
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        dw, dw0 = theorems.natural_gradient(*self._damped_blocks(damping), g, g0, **self._context())
        return theorems.cosine(g, g0, dw, dw0)

    def unit_grads(self, grad_weight, grad_bias) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(g [U, d], g0 [U])`` from gradients of the layer's weight and bias: ``[U, d]``, the
        layer's own weight shape (flattened as ``weight.view(U, -1)``), or the whole layer's rows
        (sliced by :attr:`units`). Errors name the layer and the expected shapes."""
        U, d = self.num_units, self.fan_in
        gw = torch.as_tensor(grad_weight, device=self.matrix.device)
        gb = torch.as_tensor(grad_bias, device=self.matrix.device)
        expected = (
            f"layer {self.layer!r}: expected grad_weight [U, d] = [{U}, {d}] (or the layer's weight "
            f"shape with {d} entries per unit, or the whole layer's rows, sliced by "
            f"UnitFisher.units) and grad_bias [U] = [{U}]; got grad_weight {tuple(gw.shape)}, "
            f"grad_bias {tuple(gb.shape)}"
        )
        if gw.ndim < 2 or gw[0].numel() != d or gb.ndim != 1 or gb.shape[0] != gw.shape[0]:
            raise InputError(expected)
        gw = gw.reshape(gw.shape[0], d)
        if gw.shape[0] != U:
            if gw.shape[0] < U or int(self.units.max()) >= gw.shape[0]:
                raise InputError(expected)
            units = self.units.to(gw.device)
            gw, gb = gw[units], gb[units]
        return gw, gb

    def __repr__(self) -> str:
        return (
            f"UnitFisher(layer={self.layer!r}, kind={self.kind!r}, likelihood={self.likelihood!r}, "
            f"units={self.num_units}, fan_in={self.fan_in}, n={self.n}, dtype={self.matrix.dtype})"
        )
