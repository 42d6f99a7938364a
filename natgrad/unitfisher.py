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

    def __repr__(self) -> str:
        return (
            f"UnitFisher(layer={self.layer!r}, kind={self.kind!r}, likelihood={self.likelihood!r}, "
            f"units={self.num_units}, fan_in={self.fan_in}, n={self.n}, dtype={self.matrix.dtype})"
        )
