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
block is the true weight-shared block and these moments are *defined* by the same formulas
(``docs/theory.md``, "The unit Fisher block").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import torch

from natgrad import linalg, theorems
from natgrad import measures as _measures
from natgrad.errors import InputError, SingularBlockError


@runtime_checkable
class UnitFisherLike(Protocol):
    r"""What every unit Fisher result of natgrad offers, whatever it stores: dense blocks
    (:class:`UnitFisher`), O(U·d) structures (:class:`~natgrad.structures.StructuredUnitFisher`),
    Woodbury factor rows (:class:`~natgrad.woodbury.WoodburyUnitFisher`) or shards on disk
    (:class:`~natgrad.planner.ShardedUnitFisher`); the measures (``measures``, ``efficiency``,
    ``bias_shift_error``, ``direction``) exist for all four. ``damping`` adds λ to every diagonal entry,
    ``rel_damping`` λ·tr F/(d+1) (``docs/theory.md``, "Damping")."""

    layer: str
    units: torch.Tensor

    @property
    def num_units(self) -> int: ...

    @property
    def fan_in(self) -> int: ...

    @property
    def n_eff(self) -> torch.Tensor | None: ...

    def s(self, form: str = "schur", damping: float = 0.0) -> torch.Tensor: ...

    def k(self, form: str = "closed", damping: float = 0.0) -> torch.Tensor: ...

    def natural_gradient(
        self, grad_weight, grad_bias, damping: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def bias_shift(self, grad_weight, grad_bias, damping: float = 0.0) -> theorems.BiasShift: ...

    def cosine(self, grad_weight, grad_bias, damping: float = 0.0) -> torch.Tensor: ...

    def measures(self, grad_weight, grad_bias, rel_damping: float = 0.0) -> dict: ...

    def efficiency(self, grad_weight, grad_bias, direction, rel_damping: float = 0.0): ...

    def bias_shift_error(self, grad_weight, grad_bias, direction, rel_damping: float = 0.0): ...

    def direction(self, grad_weight, grad_bias, kind: str, rel_damping: float = 0.0): ...


#: The fields every result type carries besides its storage (:class:`UnitFisher`'s attributes).
FIELDS = ("mean_p", "n", "kind", "likelihood", "layer", "units", "mc_samples", "c_sum", "c_sq_sum")


def held_rows(F, grad_weight, grad_bias, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The rows of the units ``F`` holds (``F.layer``, ``F.units``, ``F.num_units``,
    ``F.fan_in``) from gradients of its layer's weight and bias, as ``(g [U, d], g0 [U])``:
    given ``[U, d]`` (or the weight's shape), or the whole layer's rows, sliced by ``F.units``.
    A result holding units 0..U−1 (the whole layer, or its first U units) cannot tell the
    layer's rows from another layer's wider gradient, so it takes ``[U, d]`` only."""
    U, d, units = F.num_units, F.fan_in, F.units
    gw, gb = torch.as_tensor(grad_weight, device=device), torch.as_tensor(grad_bias, device=device)
    expected = (
        f"layer {F.layer!r}: expected grad_weight [U, d] = [{U}, {d}] (or the layer's weight "
        f"shape with {d} entries per unit, or the whole layer's rows, sliced by "
        f"UnitFisher.units) and grad_bias [U] = [{U}]; got grad_weight {tuple(gw.shape)}, "
        f"grad_bias {tuple(gb.shape)}"
    )
    if gw.ndim < 2 or gw[0].numel() != d or gb.ndim != 1 or gb.shape[0] != gw.shape[0]:
        raise InputError(expected)
    gw = gw.reshape(gw.shape[0], d)
    if gw.shape[0] != U:
        if bool((units.cpu() == torch.arange(U)).all()):
            raise InputError(f"{expected}; this result holds units 0..{U - 1}, so pass their "
                             f"rows (grad_weight[:{U}], grad_bias[:{U}])")  # fmt: skip
        if gw.shape[0] < U or int(units.max()) >= gw.shape[0]:
            raise InputError(expected)
        gw, gb = gw[units.to(gw.device)], gb[units.to(gw.device)]
    bad = ~(torch.isfinite(gw).all(dim=-1) & torch.isfinite(gb))
    if bool(bad.any()):
        which = F.units[bad.cpu()].tolist()
        raise InputError(
            f"layer {F.layer!r}: the gradient of unit(s) {which[:5]}"
            f"{' …' if len(which) > 5 else ''} holds NaN or Inf; every measure of it would be "
            "meaningless. Check the loss and the inputs that produced it"
        )
    return gw, gb


class UnitFisherBase:
    r"""What the in-memory unit Fisher results share. A subclass stores the :data:`FIELDS`
    besides its storage ``_STORE`` (``[U, …, d+1]``) and defines the theorem methods: over
    dense blocks (:class:`UnitFisher`) or over solves with the weight block
    (:class:`SolvedUnitFisher`)."""

    #: The tensor that holds the units (rows) and d+1 columns (last axis); the repr names its
    #: dtype. Fields the repr names after ``layer`` / after ``fan_in``.
    _STORE = "matrix"
    _REPR_FIRST: tuple[str, ...] = ()
    _REPR_AFTER: tuple[str, ...] = ()

    def _default_units(self) -> None:
        if self.units is None:
            object.__setattr__(self, "units", torch.arange(self.num_units))

    @property
    def num_units(self) -> int:
        """U, the number of units held."""
        return getattr(self, self._STORE).shape[0]

    @property
    def fan_in(self) -> int:
        """d, the fan-in of each unit (without the bias)."""
        return getattr(self, self._STORE).shape[-1] - 1

    def _context(self) -> dict:
        """What a solve's messages name, and its warning threshold (of the stored dtype)."""
        store = getattr(self, self._STORE)
        return {
            "layer": self.layer,
            "units": self.units,
            "warn_cond": linalg.cond_warn(store.dtype),
        }

    def _fields(self, *names: str) -> dict:
        """``{name: value}`` of :data:`FIELDS` (or of ``names``), to build another result."""
        return {k: getattr(self, k) for k in names or FIELDS}

    @property
    def n_eff(self) -> torch.Tensor | None:
        r"""``[U]`` effective sample size n_eff = (Σ_n c_n)² / Σ_n c_n² of each unit's block,
        c_n the bias entry of input n's own block (δ̄²_n for a Linear unit). It lies in
        [1, N]; the δ̄²-weighted moments E_q(a), Var_q(a), and so s, k and the corrected mean,
        are estimable only where n_eff ≫ d+1. NaN for a dead unit (all c_n = 0); ``None``
        for blocks from :meth:`from_matrix` (no per-input weights known).

        Example:
            >>> F = UnitFisher.from_matrix(torch.eye(2), torch.zeros(1))
            >>> F.n_eff is None
            True
        """
        if self.c_sum is None or self.c_sq_sum is None:
            return None
        if self.c_sum.shape != (self.num_units,) or self.c_sq_sum.shape != (self.num_units,):
            raise InputError(
                f"UnitFisher of layer {self.layer!r}: c_sum and c_sq_sum must have shape "
                f"[U] = [{self.num_units}], got {tuple(self.c_sum.shape)} and "
                f"{tuple(self.c_sq_sum.shape)}; slice them with the blocks"
            )
        s, s2 = self.c_sum.to(torch.float64), self.c_sq_sum.to(torch.float64)
        return torch.where(s2 > 0, s.square() / torch.where(s2 > 0, s2, 1.0), torch.nan)

    def unit_grads(self, grad_weight, grad_bias) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(g [U, d], g0 [U])`` from gradients of the layer's weight and bias: ``[U, d]``, the
        layer's own weight shape (flattened as ``weight.view(U, -1)``), or the whole layer's rows
        (sliced by :attr:`units`; see :func:`held_rows`). Errors name the layer and the shapes."""
        return held_rows(self, grad_weight, grad_bias, device=self.mean_p.device)

    def cosine(self, grad_weight, grad_bias, damping: float = 0.0) -> torch.Tensor:
        r"""``[U]`` Euclidean cosine between the plain gradient (g, g0) and the unit natural
        gradient (Δw, Δw0) of each unit in this result's metric; 1 means the plain gradient
        already is the natural direction. Not invariant to reparametrisations of the unit:
        the Fisher efficiency (``efficiency(..., "plain")``) is the measure to report.

        Example:
            >>> F = UnitFisher.from_matrix(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0]))
            >>> F.cosine(torch.tensor([[1.0]]), torch.tensor([0.0]))
            tensor([0.7071])
        """
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        dw, dw0 = self.natural_gradient(g, g0, damping)
        return theorems.cosine(g, g0, dw, dw0)

    def _update(self, direction, g, g0, rel_damping):
        """(u_w, u_0) of ``direction``: a kind name (see :meth:`direction`) or a pair shaped
        like the gradients."""
        if isinstance(direction, str):
            return self.direction(g, g0, direction, rel_damping)
        if not isinstance(direction, (tuple, list)) or len(direction) != 2:
            raise InputError(
                f"layer {self.layer!r}: direction must be a kind name "
                f"({', '.join(_measures.DIRECTIONS)}) or a pair (u_w [U, d], u_0 [U]), "
                f"got {type(direction).__name__}"
            )
        return self.unit_grads(*direction)

    def __repr__(self) -> str:
        items = [("layer", repr(self.layer))]
        items += [(k, repr(getattr(self, k))) for k in self._REPR_FIRST]
        items += [("kind", repr(self.kind)), ("likelihood", repr(self.likelihood)),
                  ("units", self.num_units), ("fan_in", self.fan_in)]  # fmt: skip
        items += [(k, getattr(self, k)) for k in self._REPR_AFTER]
        items += [("n", self.n), ("dtype", getattr(self, self._STORE).dtype)]
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in items)})"


def check_form(layer, what: str, form: str, forms: tuple[str, ...]) -> None:
    if form not in forms:
        raise InputError(f"layer {layer!r}: {what}'s form must be "
                         f"{' or '.join(map(repr, forms))}, got {form!r}")  # fmt: skip


def _theorem1_parts(g, g0, b, schur, Ainv_g, Ainv_b):
    """Theorem 1 from the A-solves: (Δw, Δw0, s) with s = 1/schur, schur = c − bᵀA⁻¹b, and
    bᵀA⁻¹g as (A⁻¹b)ᵀg (A⁻¹b from the closed form, A⁻¹g may carry the solve's cancellation)."""
    s = 1.0 / schur
    return *theorems.theorem1_from_solves(g0, b, s, Ainv_g, Ainv_b, linalg.rowdot(Ainv_b, g)), s


class SolvedUnitFisher(UnitFisherBase):
    r"""Theorems 1–2 and the measures written once over solves with each unit's weight block,
    for the results that never hold a dense block (a structure, Woodbury rows). A subclass
    gives :meth:`_parts` and ``_dtype``, the dtype of its storage. With m = E_q(a) = b/c and
    B = A/c (Var_q = B − mmᵀ): s = 1/(c − bᵀA⁻¹b), or (1 + E_qᵀVar_q⁻¹E_q)/c with Var_q⁻¹ by
    Sherman–Morrison; Theorem 1 and Theorem 2's k = s·(b − c·E_p)ᵀA⁻¹b = (E_q − E_p)ᵀVar_q⁻¹E_q
    and shifts from A⁻¹g, A⁻¹b (:func:`natgrad.theorems.theorem1_from_solves`).

    A⁻¹b and the Schur complement c − bᵀA⁻¹b come from each subclass's own closed form, never
    as ``solve_A(b)`` and a subtraction: b lies where A is large (in the span of the rows
    that make A), so that route cancels (to relative errors of 1 where t = bᵀΔ⁻¹b ≫ c for a
    structure, or μ ≪ ‖V‖² for Woodbury rows); the forms with ``solve_A(b)`` stay as the
    second routes (``s(form="paper")``, ``k(form="paper")``)."""

    _dtype: torch.dtype

    def _parts(self, damping: float, rel: bool = False):  # pragma: no cover - subclasses define it
        r"""Per chunk of units: ``(lo, hi, solve_A, apply, D, b, c, bias, mu)`` of the metric
        damped by λ (``rel``: by μ = λ·tr F/(d+1) per unit, F_λ): x ↦ A_λ⁻¹x,
        (u, u0) ↦ F_λ(u, u0), the weight block's diagonal ``D`` ``[U_c, d]``, b, c_λ, ``bias``
        = (A_λ⁻¹b ``[U_c, d]``, c_λ − bᵀA_λ⁻¹b ``[U_c]``) by a stable closed form, and μ
        ``[U_c]`` (0 for a dead unit), float64."""
        raise NotImplementedError

    def _zero_blocks(self) -> torch.Tensor:  # pragma: no cover - subclasses define it
        r"""``[U]`` bool: the units whose block is zero (tr F = 0): dead, no metric. Their solves
        take a stand-in μ (:func:`natgrad.damping.solvable`) so that their chunk solves, and
        every measure of theirs is NaN, as :func:`natgrad.measures.measures` gives for dense
        blocks (damped or not)."""
        raise NotImplementedError

    def _per_unit(self, damping: float, fn):
        parts = self._parts(damping)
        outs = [fn(lo, hi, solve, b, c, bias) for lo, hi, solve, _, _, b, c, bias, _ in parts]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))
        return torch.cat(outs)

    def _out(self, x, dtype=None):
        return x.to(dtype or self._dtype)

    def s(self, form: str = "schur", damping: float = 0.0) -> torch.Tensor:
        r"""``[U]`` s = 1/(c − bᵀA⁻¹b) (``"schur"``) or (1 + E_qᵀVar_q⁻¹E_q)/c (``"paper"``) of
        this result's metric (damped by λ = ``damping``)."""
        check_form(self.layer, "s", form, ("schur", "paper"))

        def fn(lo, hi, solve, b, c, bias):
            if form == "schur":
                return 1.0 / bias[1]
            m = b / c.unsqueeze(-1)
            r = (m * (c.unsqueeze(-1) * solve(m))).sum(-1)  # mᵀB⁻¹m
            return (1.0 + r / (1.0 - r)) / c

        return self._out(self._per_unit(damping, fn))

    def k(self, form: str = "closed", damping: float = 0.0) -> torch.Tensor:
        r"""``[U]`` Theorem 2's k: (E_q − E_p)ᵀVar_q⁻¹E_q (``"closed"``) or
        s·(b − c·E_p(a))ᵀA⁻¹b (``"paper"``)."""
        check_form(self.layer, "k", form, ("closed", "paper"))
        mp = self.mean_p.double()

        def fn(lo, hi, solve, b, c, bias):
            if form == "paper":
                Ainv_b = solve(b)
                return theorems.k_from_solves(1.0 / (c - (b * Ainv_b).sum(-1)), b, c, mp, Ainv_b)
            Ainv_b, schur = bias  # B⁻¹E_q = A⁻¹b and 1 − E_qᵀB⁻¹E_q = schur/c, E_q = b/c
            m = b / c.unsqueeze(-1)
            return ((m - mp) * Ainv_b).sum(-1) * c / schur

        return self._out(self._per_unit(damping, fn))

    def _theorem1(self, grad_weight, grad_bias, damping):
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        out = torch.promote_types(g.dtype, self._dtype)
        g, g0 = g.double(), g0.double()

        def fn(lo, hi, solve, b, c, bias):
            Ainv_g, (Ainv_b, schur) = solve(g[lo:hi]), bias
            dw, dw0, s = _theorem1_parts(g[lo:hi], g0[lo:hi], b, schur, Ainv_g, Ainv_b)
            return dw, dw0, Ainv_g, Ainv_b, s, b, c

        return (g, g0, out), self._per_unit(damping, fn)

    def natural_gradient(self, grad_weight, grad_bias, damping: float = 0.0):
        r"""(Δw ``[U, d]``, Δw0 ``[U]``) = M⁻¹(g, g0) by Theorem 1, M this result's metric
        damped by λ; gradients as in :meth:`natgrad.UnitFisher.natural_gradient`."""
        (_, _, out), (dw, dw0, *_) = self._theorem1(grad_weight, grad_bias, damping)
        return dw.to(out), dw0.to(out)

    def bias_shift(self, grad_weight, grad_bias, damping: float = 0.0) -> theorems.BiasShift:
        r"""Theorem 2's :class:`~natgrad.theorems.BiasShift` in this result's metric:
        shift_natural = (E_p − (1+k)E_q)ᵀA⁻¹g + (1+k)g0/c, shift_blockdiag = E_pᵀA⁻¹g + g0/c."""
        (g, g0, out), (_, _, Ainv_g, Ainv_b, s, b, c) = self._theorem1(
            grad_weight, grad_bias, damping
        )
        mp = self.mean_p.double()
        return theorems.bias_shift_from_solves(mp, g, g0, b, c, Ainv_g, Ainv_b, s, out,
                                               linalg.rowdot(Ainv_b, g))  # fmt: skip

    # --- natgrad.measures in this result's metric F_λ (μ = λ·tr F/(d+1), natgrad.damping) ---
    def _directions(self, kinds, g, g0, rel_damping) -> tuple[dict, list]:
        r"""``{kind: (u [U, d], u0 [U])}`` in F_λ for every kind of ``kinds`` (float64; a
        kind whose metric is singular — the arrowhead can be where F_λ is not — is left out
        of a batch of several) and the parts of :meth:`_parts`."""
        out: dict = {k: ([], []) for k in kinds}
        parts = list(self._parts(rel_damping, rel=True))
        mp = self.mean_p.double()
        for lo, hi, solve_A, _, D, b, c, (Ainv_b, schur), _ in parts:
            gl, g0l = g[lo:hi], g0[lo:hi]
            Ainv_g = solve_A(gl)
            ctx = {"layer": self.layer, "units": self.units[lo:hi]}
            for kind in kinds:
                if kind == "plain":
                    u = (gl, g0l)
                elif kind == "centred":
                    u = _measures.centred_direction(mp, gl, g0l)
                elif kind == "diagonal":
                    u = (gl / D, g0l / c)
                elif kind == "quasidiagonal":
                    u = _measures.quasidiagonal_solve(D, b, c, gl, g0l, **ctx)
                elif kind == "arrowhead":
                    try:
                        u = _measures.arrowhead_solve(D, b, c, gl, g0l, **ctx)
                    except SingularBlockError:
                        if len(kinds) == 1:
                            raise
                        out.pop(kind, None)
                        continue
                elif kind == "blockdiag":
                    u = (Ainv_g, g0l / c)
                else:  # natural: Theorem 1
                    u = _theorem1_parts(gl, g0l, b, schur, Ainv_g, Ainv_b)[:2]
                if kind in out:
                    out[kind][0].append(u[0])
                    out[kind][1].append(u[1])
        return {k: (torch.cat(a), torch.cat(b)) for k, (a, b) in out.items()}, parts

    def direction(self, grad_weight, grad_bias, kind: str, rel_damping: float = 0.0):
        r"""The update (u_w ``[U, d]``, u_0 ``[U]``) of ``kind`` (:data:`natgrad.measures.DIRECTIONS`)
        in this result's metric F_λ: ``plain``, ``centred`` (as for dense blocks), ``diagonal``
        diag(F_λ)⁻¹g, ``quasidiagonal`` (Ollivier's, from diag(A_λ), b, c_λ), ``arrowhead``,
        ``blockdiag`` (A_λ⁻¹g, g0/c_λ), ``natural`` F_λ⁻¹g (Theorem 1). The kinds that need
        the metric are NaN for a dead unit (no metric), as for dense blocks."""
        if kind not in _measures.DIRECTIONS:
            raise InputError(f"layer {self.layer!r}: unknown direction {kind!r}; choose one of "
                             f"{', '.join(_measures.DIRECTIONS)}")  # fmt: skip
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        out = torch.promote_types(g.dtype, self._dtype)
        dirs, parts = self._directions((kind,), g.double(), g0.double(), rel_damping)
        u, u0 = dirs[kind]
        if kind not in ("plain", "centred"):  # these two do not read the metric
            dead = self._zero_blocks()
            u, u0 = torch.where(dead[:, None], torch.nan, u), torch.where(dead, torch.nan, u0)
        return u.to(out), u0.to(out)

    def _rho_and_error(self, parts, g, g0, u, u0, n, n0):
        Fu, Fu0 = [], []
        for lo, hi, _, apply, *_ in parts:
            a, a0 = apply(lo, hi, u[lo:hi], u0[lo:hi])
            Fu.append(a)
            Fu0.append(a0)
        Fu, Fu0 = torch.cat(Fu), torch.cat(Fu0)
        num = (g * u).sum(-1) + g0 * u0
        den = ((u * Fu).sum(-1) + u0 * Fu0) * ((g * n).sum(-1) + g0 * n0)
        rho = torch.where(den > 0, num / den.clamp_min(1e-300).sqrt(), torch.nan)
        mp = self.mean_p.double()
        nat = (mp * n).sum(-1) + n0
        shift = (mp * u).sum(-1) + u0
        return rho, shift, (shift - nat).abs() / nat.abs()

    def _against_natural(self, grad_weight, grad_bias, direction, rel_damping):
        g, g0 = (x.double() for x in self.unit_grads(grad_weight, grad_bias))
        u, u0 = (x.double() for x in self._update(direction, g, g0, rel_damping))
        dirs, parts = self._directions(("natural",), g, g0, rel_damping)
        dead = self._zero_blocks()
        got = self._rho_and_error(parts, g, g0, u, u0, *dirs["natural"])
        return tuple(torch.where(dead, torch.nan, x) for x in got)

    def efficiency(self, grad_weight, grad_bias, direction, rel_damping: float = 0.0):
        r"""``[U]`` ρ(u) = gᵀu / √(uᵀF_λu · gᵀF_λ⁻¹g) in this result's metric; 1 for
        ``natural``, NaN for a dead unit. ``direction``: a kind name or a pair (u_w, u_0)."""
        return self._out(self._against_natural(grad_weight, grad_bias, direction, rel_damping)[0])

    def bias_shift_error(self, grad_weight, grad_bias, direction, rel_damping: float = 0.0):
        r"""``[U]`` |shift(u) − shift_natural| / |shift_natural| in this result's metric (NaN
        for a dead unit)."""
        return self._out(self._against_natural(grad_weight, grad_bias, direction, rel_damping)[2])

    def measures(self, grad_weight, grad_bias, rel_damping: float = 0.0) -> dict:
        r"""``rho_<kind>``, ``shift_<kind>`` for every direction, ``shift_error_<kind>`` for every
        one but ``natural`` (the keys of :func:`natgrad.measures.measures`; the arrowhead left
        out where it is singular), ``damping`` (μ) and ``n_eff`` where known,
        all ``[U]`` float64, in this result's metric F_λ."""
        g, g0 = (x.double() for x in self.unit_grads(grad_weight, grad_bias))
        dirs, parts = self._directions(_measures.DIRECTIONS, g, g0, rel_damping)
        n, n0 = dirs["natural"]
        out = {}
        for kind, (u, u0) in dirs.items():
            rho, shift, err = self._rho_and_error(parts, g, g0, u, u0, n, n0)
            out[f"rho_{kind}"], out[f"shift_{kind}"] = rho, shift
            if kind != "natural":  # the keys of natgrad.measures.measures
                out[f"shift_error_{kind}"] = err
        out["damping"] = torch.cat([p[-1] for p in parts])
        dead = self._zero_blocks()
        for key in out:  # a dead unit (a zero block) has no metric: NaN, as for dense blocks
            out[key] = torch.where(dead, torch.nan, out[key]) if key != "damping" else out[key]
        out["dead"] = dead.to(torch.float64)
        if self.n_eff is not None:
            out["n_eff"] = self.n_eff
        return out


@dataclass(frozen=True, repr=False)
class UnitFisher(UnitFisherBase):
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
        c_sum, c_sq_sum: ``[U]`` Σ_n c_n and Σ_n c_n² over the inputs, c_n the bias entry of
            input n's own block (δ̄²_n for a Linear unit; for Conv2d Σ_k (Σ_pos v_nk,pos)²);
            float64 sums, so blocks computed on shards add up. ``None`` for
            :meth:`from_matrix`.
        structure: ``"dense"``, always, for this class; the O(U·d) structures are
            :class:`natgrad.structures.StructuredUnitFisher` (``unit_fisher(structure=...)``).

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
    c_sum: torch.Tensor | None = None
    c_sq_sum: torch.Tensor | None = None
    structure: str = "dense"

    def __post_init__(self) -> None:
        m = self.matrix
        if self.structure != "dense":
            raise InputError(
                f"UnitFisher of layer {self.layer!r} holds dense blocks (structure='dense'), got "
                f"structure={self.structure!r}; structured results are StructuredUnitFisher"
            )
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
        self._default_units()

    @classmethod
    def from_matrix(
        cls,
        matrix: torch.Tensor,
        mean_p: torch.Tensor,
        *,
        layer: str = "given",
        n: int = 0,
    ) -> UnitFisher:
        r"""Wrap any symmetric positive definite ``[U, d+1, d+1]`` tensor (bias last; one block
        ``[d+1, d+1]`` is promoted to U = 1) and the incoming mean E_p(a) ``[d]`` (shared by
        all units of a layer) as a ``UnitFisher``."""
        matrix = torch.as_tensor(matrix)
        mean_p = torch.as_tensor(mean_p, dtype=matrix.dtype, device=matrix.device)
        if matrix.ndim == 2:
            matrix = matrix.unsqueeze(0)
        if not (torch.isfinite(matrix.sum()) or torch.isfinite(matrix).all()) or not (
            torch.isfinite(mean_p).all()
        ):  # the sum: one cheap pass; isfinite only when it overflows or is NaN
            raise InputError(f"UnitFisher.from_matrix ({layer!r}): matrix or mean_p has NaN/Inf")
        if not torch.allclose(matrix, matrix.transpose(-1, -2), rtol=1e-6, atol=1e-10):
            raise InputError(f"UnitFisher.from_matrix ({layer!r}): matrix is not symmetric")
        return cls(matrix=matrix, mean_p=mean_p, n=n, kind="given", likelihood="given", layer=layer)

    @classmethod
    def pool(cls, parts) -> UnitFisher:
        r"""The blocks of the union of disjoint input sets, from each set's blocks.

        F = Σ_i n_i F_i / Σ_i n_i and E_p(a) likewise (both are means over inputs); the
        n_eff sums add. Every part must come from the same layer, units, kind and likelihood
        (e.g. :func:`natgrad.fisher.unit_fishers` on consecutive slices of a probe).

        Example:
            >>> import torch
            >>> a = UnitFisher(torch.eye(2)[None], torch.zeros(1), 1, "exact", "categorical", "l")
            >>> b = UnitFisher(3 * torch.eye(2)[None], torch.ones(1), 3, "exact", "categorical", "l")
            >>> p = UnitFisher.pool([a, b]); p.matrix[0, 0, 0].item(), p.mean_p.item(), p.n
            (2.5, 0.75, 4)
        """
        parts = list(parts)
        if not parts:
            raise InputError("UnitFisher.pool: no parts to pool")
        first = parts[0]
        keep = ("layer", "kind", "likelihood", "mc_samples")
        for p in parts[1:]:
            same = p._fields(*keep) == first._fields(*keep) and p.matrix.shape == first.matrix.shape
            if not same or not torch.equal(p.units, first.units):
                raise InputError(
                    f"UnitFisher.pool: part {p!r} does not match {first!r}; pool blocks of the "
                    "same layer, units, kind and likelihood"
                )
        if any(p.n < 1 for p in parts):
            raise InputError("UnitFisher.pool: every part needs n >= 1 inputs (from_matrix "
                             "blocks carry no count)")  # fmt: skip
        n = sum(p.n for p in parts)
        matrix = parts[0].matrix * (parts[0].n / n)  # one new tensor, the rest added in place
        mean_p = parts[0].mean_p * (parts[0].n / n)
        for p in parts[1:]:
            matrix.add_(p.matrix, alpha=p.n / n)
            mean_p.add_(p.mean_p, alpha=p.n / n)
        sums = {}
        for key in ("c_sum", "c_sq_sum"):
            vals = [getattr(p, key) for p in parts]
            sums[key] = None if any(v is None for v in vals) else sum(vals)
        return cls(
            matrix=matrix, mean_p=mean_p, n=n, units=first.units, **sums, **first._fields(*keep)
        )

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
    def _damped(self, damping: float) -> UnitFisher:
        """This result with the blocks F + λI (its blocks and moments are the damped ones)."""
        return replace(self, matrix=linalg.damped(self.matrix, damping))

    def _damped_q(self, damping: float) -> UnitFisher:
        """:meth:`_damped`, refused (naming the units) where c = E_p(δ̄²) <= 0: q, the inputs
        reweighted by δ̄², is not defined there, and every moment of q is 0/0."""
        F = self._damped(damping)
        if (bad := ~(F.c > 0)).any():
            raise SingularBlockError(
                f"{linalg.layer_prefix(self.layer)}c = E_p(δ̄²) is 0 for "
                f"{linalg._names(bad.nonzero().flatten(), self.units)}: its reweighted "
                "distribution q is not defined (a dead unit, whose block is zero, or a Conv2d "
                "unit whose position signals cancel). Pass damping > 0, or drop these units."
            )
        return F

    def condition_number(
        self, damping: float = 0.0, *, exact: bool = True, rel_damping: float = 0.0
    ) -> torch.Tensor:
        r"""``[U]`` 2-norm condition number λ_max/λ_min of each block F + λI (absolute
        ``damping``) or F_λ = F + λ·tr(F)/(d+1)·I (``rel_damping``), float64, ``inf`` if not
        positive definite. ``exact=True`` uses ``eigvalsh``; ``exact=False`` the Cholesky
        estimate (max_j L_jj / min_j L_jj)², a lower bound that runs ~100× low on trained
        blocks.

        Example:
            >>> UnitFisher.from_matrix(torch.diag(torch.tensor([1.0, 4.0])), torch.zeros(1)).condition_number()
            tensor([4.], dtype=torch.float64)
        """
        F = linalg.damped(self.matrix, damping)
        if rel_damping:
            F = _measures.relative_damped(F, rel_damping)
        if exact:
            return linalg.condition_number(F)
        L, info = torch.linalg.cholesky_ex(F.to(torch.float64))
        return torch.where(info == 0, linalg.condition_estimate(L), torch.inf)

    def inverse(self, damping: float = 0.0) -> torch.Tensor:
        r"""``[U, d+1, d+1]`` (F + λI)⁻¹ by Lemma 1 (:func:`natgrad.theorems.lemma1_inverse`)."""
        F = self._damped(damping)
        return theorems.lemma1_inverse(F.A, F.b, F.c, **self._context())

    def s(self, form: str = "schur", damping: float = 0.0) -> torch.Tensor:
        r"""``[U]`` s = 1/(c − bᵀA⁻¹b) (``form="schur"``) or, equal by Lemma 2(i),
        E_p(δ̄²)⁻¹(1 + E_q(a)ᵀVar_q(a)⁻¹E_q(a)) (``form="paper"``), of F + λI (Theorem 1).

        Example:
            >>> F = UnitFisher.from_matrix(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0]))
            >>> F.s(), F.s("paper")
            (tensor([2.]), tensor([2.]))
        """
        check_form(self.layer, "s", form, ("schur", "paper"))
        F = self._damped(damping) if form == "schur" else self._damped_q(damping)
        if form == "schur":
            return theorems.schur_complement(F.A, F.b, F.c, **self._context())
        return theorems.schur_complement_paper(F.c, F.mean_q, F.var_q, **self._context())

    def k(self, form: str = "closed", damping: float = 0.0) -> torch.Tensor:
        r"""``[U]`` Theorem 2's k = (E_q(a) − E_p(a))ᵀVar_q(a)⁻¹E_q(a) (``form="closed"``) or
        s·E_p(δ̄²)·Cov_p(δ̄², a)ᵀA⁻¹E_q(a) (``form="paper"``), of F + λI.

        Example:
            >>> F = UnitFisher.from_matrix(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0]))
            >>> F.k(), F.k("paper")
            (tensor([0.]), tensor([0.]))
        """
        check_form(self.layer, "k", form, ("closed", "paper"))
        F = self._damped_q(damping) if form == "closed" else self._damped(damping)
        if form == "closed":
            return theorems.k_closed(self.mean_p, F.mean_q, F.var_q, **self._context())
        s = self.s("schur", damping)
        return theorems.k_paper(F.A, F.c, s, F.cov_p, F.mean_q, **self._context())

    def natural_gradient(
        self, grad_weight: torch.Tensor, grad_bias: torch.Tensor, damping: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Unit natural gradient (Δw ``[U, d]``, Δw0 ``[U]``) = (F + λI)⁻¹(g, g0) by Theorem 1
        (Ollivier's unit-wise natural gradient; :func:`natgrad.theorems.natural_gradient`).

        Gradients are taken as :meth:`unit_grads` takes them (``[U, d]``, the layer's weight
        shape, or the whole layer's rows); results are in their promoted dtype with the blocks'.

        Example:
            >>> F = UnitFisher.from_matrix(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0]))
            >>> F.natural_gradient(torch.tensor([[1.0]]), torch.tensor([0.0]))
            (tensor([[1.]]), tensor([-1.]))
        """
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        F = self._damped(damping)
        return theorems.natural_gradient(F.A, F.b, F.c, g, g0, **self._context())

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
        F = self._damped(damping)
        return theorems.bias_shift(F.A, F.b, F.c, self.mean_p, g, g0, **self._context())

    # --- how close is an update to the unit natural gradient (natgrad.measures) ----------
    def direction(
        self, grad_weight, grad_bias, kind: str, rel_damping: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The update (u_w ``[U, d]``, u_0 ``[U]``) of ``kind`` (plain, centred, diagonal,
        quasidiagonal, arrowhead, blockdiag, natural: defined in :mod:`natgrad.measures`) for
        the gradient (g, g0) in the metric F_λ = F + λ·(tr F/(d+1))·I, λ = ``rel_damping``.
        Gradients are accepted as in :meth:`natural_gradient`.

        Example:
            >>> F = UnitFisher.from_matrix(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0]))
            >>> F.direction(torch.tensor([[1.0]]), torch.tensor([0.0]), "centred")
            (tensor([[1.]]), tensor([-1.]))
        """
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        return _measures.direction(
            self.matrix, self.mean_p, g, g0, kind, rel_damping, **self._context()
        )

    def efficiency(
        self, grad_weight, grad_bias, direction, rel_damping: float = 0.0
    ) -> torch.Tensor:
        r"""``[U]`` Fisher efficiency ρ(u) = gᵀu / √(uᵀF_λu · gᵀF_λ⁻¹g) ∈ [−1, 1] of an update
        u for the gradient g = (g_w, g0) (:func:`natgrad.measures.efficiency`); ``direction``
        is a kind name (see :meth:`direction`) or a pair (u_w, u_0) shaped like the gradients.

        Example:
            >>> F = UnitFisher.from_matrix(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0]))
            >>> g, g0 = torch.tensor([[1.0]]), torch.tensor([0.0])
            >>> F.efficiency(g, g0, "plain"), F.efficiency(g, g0, "natural")
            (tensor([0.7071]), tensor([1.]))
        """
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        u, u0 = self._update(direction, g, g0, rel_damping)
        return _measures.efficiency(self.matrix, g, g0, u, u0, rel_damping, **self._context())

    def bias_shift_error(
        self, grad_weight, grad_bias, direction, rel_damping: float = 0.0
    ) -> torch.Tensor:
        r"""``[U]`` relative bias-shift error |shift(u) − shift_natural| / |shift_natural|,
        shift(u) = E_p(a)ᵀu_w + u_0 the change of the unit's mean net input and shift_natural
        that of F_λ⁻¹g (Theorem 2); ``direction`` as in :meth:`efficiency`.

        Example:
            >>> F = UnitFisher.from_matrix(torch.eye(2) * 2, torch.tensor([1.0]))
            >>> F.bias_shift_error(torch.tensor([[1.0]]), torch.tensor([0.0]), "plain")
            tensor([1.])
        """
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        u, u0 = self._update(direction, g, g0, rel_damping)
        return _measures.bias_shift_error(
            self.matrix, self.mean_p, g, g0, u, u0, rel_damping, **self._context()
        )

    def measures(self, grad_weight, grad_bias, rel_damping: float = 0.0) -> dict[str, torch.Tensor]:
        r"""Every measure at once from ONE Cholesky of F_λ per unit (the keys of
        :func:`natgrad.measures.measures`), plus ``n_eff`` where known; ``[U]`` float64 each.

        Example:
            >>> F = UnitFisher.from_matrix(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0]))
            >>> r = F.measures(torch.tensor([[1.0]]), torch.tensor([0.0]))
            >>> round(float(r["rho_plain"]), 4), round(float(r["shift_blockdiag"]), 12)
            (0.7071, 0.5)
        """
        g, g0 = self.unit_grads(grad_weight, grad_bias)
        out = _measures.measures(self.matrix, self.mean_p, g, g0, rel_damping, **self._context())
        if self.n_eff is not None:
            out["n_eff"] = self.n_eff
        return out
