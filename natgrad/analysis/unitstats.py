r"""Theorems 1–2 and the measures of closeness to the unit natural gradient, per unit: one table.

:func:`unit_statistics` takes a model and a held-out probe set ``(inputs [N, ...], targets
[N])``, computes the exact unit Fisher of the chosen Linear/Conv2d layers in one pass
(:func:`natgrad.fisher.unit_fishers`, categorical likelihood) and, with the gradient

    g = ∂/∂(w, w0) (1/N) Σ_n ln p(y_n | z_n; w)     (minus the mean loss gradient)

returns a :class:`pandas.DataFrame` with one row per (layer, unit). Every solve uses ONE
metric per unit, F_λ = F + λ·(tr F/(d+1))·I with the same relative damping λ for every unit
and unit type (``docs/theory.md``, "Damping"); the columns' meanings are in
:mod:`natgrad.analysis.metrics`:

=========================  ==========================================================
column                     meaning
=========================  ==========================================================
layer, layer_index         the layer's name and position among the weight layers
input_from                 ``"data"`` (first layer) or ``"units"`` (fed by hidden units)
unit, fan_in               unit index within the layer, d
c, n_eff, estimable        E_p(δ̄²); (Σ c_n)²/Σ c_n²; n_eff ≥ 2(d+1)
cond                       exact κ of the undamped block (eigvalsh; inf if singular)
dead                       1 if the block is zero (tr F = 0: no gradient passes; every measure NaN)
rel_damping, damping       λ and the unit's absolute damping μ = λ·tr F/(d+1)
rho_<direction>            Fisher efficiency of plain, centred, diagonal, quasidiagonal,
                           arrowhead, blockdiag updates (:mod:`natgrad.measures`)
coupling_cost              1 − rho_blockdiag
rho_<direction>_jk         (``jackknife=True``) the half-sample jackknife of rho for plain,
                           centred, quasidiagonal, blockdiag: 2ρ(F) − (ρ(F_A) + ρ(F_B))/2
shift_error_<direction>    relative bias-shift error of that update (Theorem 2)
s_c, k                     s·c and Theorem 2's k of F_λ (flag: ``estimable``)
corrected_mean_norm        ‖E_p(a) − (1+k)E_q(a)‖₂ of F_λ
mean_q_norm, mean_p_norm   ‖E_q(a)‖₂ (undamped), ‖E_p(a)‖₂
grad_norm                  ‖(g, g0)‖₂
=========================  ==========================================================

s, k and the corrected mean are q-moment quantities: they are estimable only where n_eff ≫
d+1, and the report never averages them into a headline. :func:`damping_sweep` gives the
efficiencies over a range of λ.

**ρ from a finite probe is biased low** by O((d+1)/n_eff) (the inverse of an estimated block
overshoots); the half-sample jackknife ``rho_<direction>_jk`` removes that term, and
:func:`probe_size_sweep` shows both estimates against the probe size (``docs/theory.md``,
"The finite-probe bias of ρ, and the jackknife").
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from natgrad import measures as ms
from natgrad import theorems
from natgrad.damping import MEASURE_DAMPING
from natgrad.errors import InputError
from natgrad.fisher import unit_fishers
from natgrad.likelihoods import check_likelihood, log_likelihood
from natgrad.linalg import condition_number
from natgrad.models import weight_layers
from natgrad.unitfisher import UnitFisher

__all__ = ["JACKKNIFED", "SWEEP", "damping_sweep", "jackknifed", "layer_statistics",
           "probe_gradients", "probe_size_sweep", "unit_statistics"]  # fmt: skip


SWEEP = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
"""Relative dampings of :func:`damping_sweep` (the report's sweep)."""

JACKKNIFED = ("plain", "centred", "quasidiagonal", "blockdiag")
"""Directions whose efficiency gets a jackknifed column ``rho_<direction>_jk`` (and a column
in the damping sweep)."""


def layer_statistics(fisher: UnitFisher, grad_weight: torch.Tensor, grad_bias: torch.Tensor, *,
                     rel_damping: float = MEASURE_DAMPING) -> dict[str, np.ndarray]:  # fmt: skip
    r"""The per-unit columns (from ``unit`` on) for one layer, as ``{column: ndarray [U]}``.

    One Cholesky of F_λ per unit serves every efficiency and bias-shift error
    (:func:`natgrad.measures.measures`); s·c, k and the corrected mean come from Theorem 2 on
    the same F_λ; κ from one batched ``eigvalsh`` of the undamped blocks. No loop over units.

    Example:
        >>> Fi = UnitFisher.from_matrix(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0]))
        >>> cols = layer_statistics(Fi, torch.tensor([[1.0]]), torch.tensor([0.0]), rel_damping=0.0)
        >>> [round(float(cols[k][0]), 4) for k in ("rho_plain", "rho_natural", "s_c", "k")]
        [0.7071, 1.0, 2.0, 0.0]
    """
    g, g0 = (t.double() for t in fisher.unit_grads(grad_weight, grad_bias))  # [U, d], [U]
    M, mean_p = fisher.matrix.double(), fisher.mean_p.double()
    U, d = fisher.num_units, fisher.fan_in
    m = ms.measures(M, mean_p, g, g0, rel_damping, layer=fisher.layer, units=fisher.units)
    dead = m["dead"] > 0
    live = (~dead).nonzero().flatten()
    nan = np.full(U, np.nan)
    cols: dict[str, np.ndarray] = {
        "unit": fisher.units.cpu().numpy().astype(np.int64),
        "fan_in": np.full(U, d, dtype=np.int64),
        "c": M[:, -1, -1].cpu().numpy(),
        "n_eff": nan.copy() if fisher.n_eff is None else fisher.n_eff.double().cpu().numpy(),
        "cond": condition_number(M).cpu().numpy(),
        "dead": dead.cpu().numpy().astype(np.int64),
        "rel_damping": np.full(U, float(rel_damping)),
        "damping": m["damping"].cpu().numpy(),
    }
    cols["estimable"] = (cols["n_eff"] >= 2 * (d + 1)).astype(np.int64)
    for k in ms.DIRECTIONS:
        cols[f"rho_{k}"] = m[f"rho_{k}"].cpu().numpy()
    cols["coupling_cost"] = 1.0 - cols["rho_blockdiag"]
    for k in ms.DIRECTIONS:
        if k != "natural":
            cols[f"shift_error_{k}"] = m[f"shift_error_{k}"].cpu().numpy()
    cols["shift_natural"] = m["shift_natural"].cpu().numpy()
    for name in ("s_c", "k", "corrected_mean_norm", "mean_q_norm"):
        cols[name] = nan.copy()
    if live.numel():
        Fl = ms.relative_damped(M[live], rel_damping)
        A, b, c = Fl[:, :-1, :-1], Fl[:, :-1, -1], Fl[:, -1, -1]
        sub = {"layer": fisher.layer, "units": fisher.units[live]}
        shift = theorems.bias_shift(A, b, c, mean_p, g[live], g0[live], **sub)
        s = theorems.schur_complement(A, b, c, **sub)
        cols["s_c"][live.numpy()] = (s * c).cpu().numpy()
        cols["k"][live.numpy()] = shift.k.cpu().numpy()
        cols["corrected_mean_norm"][live.numpy()] = shift.corrected_mean.norm(dim=-1).numpy()
        mean_q = M[live, :-1, -1] / M[live, -1, -1].unsqueeze(-1)  # undamped E_q(a)
        cols["mean_q_norm"][live.numpy()] = mean_q.norm(dim=-1).cpu().numpy()
    cols["mean_p_norm"] = np.full(U, float(mean_p.norm()))
    cols["grad_norm"] = torch.cat([g, g0[:, None]], -1).norm(dim=-1).cpu().numpy()
    return cols


def probe_gradients(model: nn.Module, inputs, targets, fishers: dict[str, UnitFisher], *,
                    chunk: int = 4096, likelihood: str = "categorical"):  # fmt: skip
    r"""``{layer: (g_w, g_b)}``: gradients of the mean log-likelihood of ``(inputs, targets)``,
    summed over chunks of ``chunk`` inputs (the same numbers, bounded memory). Each chunk is
    cast to the model's dtype as it is used (a float64 copy of a whole training set would
    cost more than the pass)."""
    modules = dict(model.named_modules())
    params = [p for name in fishers for p in (modules[name].weight, modules[name].bias)]
    dtype = params[0].dtype
    n = inputs.shape[0]
    total = [torch.zeros_like(p) for p in params]
    for s in range(0, n, chunk):
        x = inputs[s : s + chunk].to(dtype)
        y = targets[s : s + chunk]
        y = y.to(torch.long) if likelihood == "categorical" else y.to(dtype)
        loglik = log_likelihood(likelihood, model(x), y) / n
        for t, g in zip(total, torch.autograd.grad(loglik, params), strict=True):
            t += g
    return {name: (total[2 * i], total[2 * i + 1]) for i, name in enumerate(fishers)}


def _prepare(model, inputs, targets, dtype, likelihood="categorical"):
    if inputs.shape[0] != targets.shape[0]:
        raise InputError(
            f"unit_statistics: {inputs.shape[0]} probe inputs but {targets.shape[0]} targets"
        )
    model = copy.deepcopy(model).to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    check_likelihood(likelihood)
    return model, inputs.to(dtype), targets.to(torch.long if likelihood == "categorical" else dtype)


def _layer_heads(model: nn.Module, fishers: dict[str, UnitFisher]) -> dict[str, dict]:
    all_layers = [name for name, _ in weight_layers(model)]
    heads = {}
    for name in fishers:
        index = all_layers.index(name)
        heads[name] = {"layer": name, "layer_index": index,
                       "input_from": "data" if index == 0 else "units"}  # fmt: skip
    return heads


def unit_statistics(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                    layers: list[str] | None = None, rel_damping: float = MEASURE_DAMPING,
                    sweep: tuple[float, ...] | None = None, dtype: torch.dtype = torch.float64,
                    batch_size: int | None = None,
                    grad_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                    jackknife: bool = False, probe_sizes: Sequence[int] | None = None,
                    likelihood: str = "categorical"):  # fmt: skip
    r"""One row per (layer, unit) of ``model`` (the columns of the module docstring).

    Args:
        model: a classifier with logits ``[N, C]`` (or, with ``likelihood``, a net whose
            output is Bernoulli logits or Gaussian means); copied, cast to ``dtype``, eval mode.
        inputs, targets: ``[N, ...]`` held-out probe inputs and their ``[N]`` labels, or their
            ``[N, D]`` targets for ``bernoulli``/``gaussian`` (the targets enter g only: the
            Fisher is the exact one, an expectation over the model's outputs).
        layers: Linear/Conv2d layer names (default: all, in module order).
        rel_damping: λ of F_λ (default :data:`MEASURE_DAMPING`).
        sweep: also return the efficiencies at these λ (see :func:`damping_sweep`).
        dtype: computation dtype (float64 by default).
        batch_size: stream the probe through the Fisher engine in batches of this size.
        grad_data: ``(inputs, targets)`` whose mean loss gradient is g (default: the probe's).
            The training set gives the direction plain SGD follows in expectation, free of
            the probe's sampling noise (``docs/theory.md``, "Measures").
        jackknife: also the columns ``rho_<direction>_jk`` (module docstring): the blocks
            are computed on the probe's two halves and pooled, so the cost is the same pass
            plus two more factorisations per unit.
        probe_sizes: also the table of :func:`probe_size_sweep` for these nested sizes (at
            most N), from the same pass: the blocks are accumulated slice by slice between
            the sizes and pooled, so the sweep adds factorisations only.
        likelihood: ``"categorical"``, ``"bernoulli"`` (an autoencoder's sigmoid logits) or
            ``"gaussian"`` (:mod:`natgrad.likelihoods`): the model whose Fisher and g are taken.

    Returns:
        A :class:`pandas.DataFrame` with ``Σ_layers U`` rows; ``(units, sweep)`` when
        ``sweep`` is given; with ``probe_sizes`` the sweep-by-size table is appended last.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ELU(), torch.nn.Linear(4, 2))
        >>> t = unit_statistics(net, torch.randn(16, 3), torch.randint(0, 2, (16,)))
        >>> len(t), sorted(t["input_from"].unique())
        (6, ['data', 'units'])
    """
    import pandas as pd

    model, x, y = _prepare(model, inputs, targets, dtype, likelihood)
    n = x.shape[0]
    if jackknife and n < 4:
        raise InputError(f"unit_statistics: the jackknife needs a probe of >= 4 inputs, got {n}")
    sizes = _check_sizes(probe_sizes, n) if probe_sizes else []
    bounds = sorted({0, n, *((n // 2,) if jackknife else ()), *sizes, *(m // 2 for m in sizes)})
    chunks = _chunk_fishers(model, x, bounds, layers, batch_size, likelihood)
    fishers = _pool(chunks, 0, len(chunks))
    chunk_grads = _chunk_grads(model, x, y, bounds, fishers, grad_data, likelihood)
    grads = _pool_grads(chunk_grads, bounds, 0, len(chunks))
    heads = _layer_heads(model, fishers)
    frames, sweeps = [], []
    for name, fisher in fishers.items():
        cols = layer_statistics(fisher, *grads[name], rel_damping=rel_damping)
        if jackknife:
            halves = _halves(chunks, chunk_grads, bounds, n, name)
            cols.update(jackknifed(cols, halves, rel_damping))
        frames.append(pd.DataFrame({**heads[name], **cols}))
        if sweep:
            sweeps.append(_sweep_layer(fisher, grads[name], heads[name], sweep))
    units = pd.concat(frames, ignore_index=True)
    out = (units,) + ((pd.concat(sweeps, ignore_index=True),) if sweep else ())
    if sizes:
        out += (_size_rows(chunks, chunk_grads, bounds, sizes, heads, rel_damping),)
    return out[0] if len(out) == 1 else out


def _check_sizes(sizes, n: int) -> list[int]:
    sizes = sorted({int(m) for m in sizes})
    if not sizes or sizes[0] < 4 or sizes[-1] > n:
        raise InputError(f"probe sizes {sizes} must lie in [4, {n}] (the probe's inputs)")
    return sizes


def _chunk_fishers(model, x, bounds, layers, batch_size, likelihood) -> list[dict[str, UnitFisher]]:
    """The unit Fishers of each slice ``x[bounds[i]:bounds[i+1]]`` (one pass in all)."""
    return _Chunks(unit_fishers(model, x[a:b], layers=layers, batch_size=batch_size,
                                likelihood=likelihood)
                   for a, b in zip(bounds[:-1], bounds[1:], strict=True))  # fmt: skip


def _pool(chunks, i0: int, i1: int) -> dict[str, UnitFisher]:
    """The blocks of slices ``i0..i1-1`` pooled (:meth:`UnitFisher.pool`); remembered on
    ``chunks`` (a :class:`_Chunks`), since the sizes and the halves ask for the same pools."""
    if i1 - i0 == 1:
        return chunks[i0]
    if (i0, i1) not in chunks.memo:
        chunks.memo[(i0, i1)] = {name: UnitFisher.pool([c[name] for c in chunks[i0:i1]])
                                 for name in chunks[i0]}  # fmt: skip
    return chunks.memo[(i0, i1)]


class _Chunks(list):
    """The per-slice blocks, with a memo of their pools."""

    def __init__(self, items):
        super().__init__(items)
        self.memo: dict = {}


def _chunk_grads(model, x, y, bounds, fishers, grad_data, likelihood):
    """Per slice, g of the slice's own inputs; or, with ``grad_data``, ONE g (the same
    direction for every slice and size: only the Fisher comes from the probe)."""
    if grad_data is not None:
        gx, gy = grad_data
        if gx.shape[0] != gy.shape[0]:
            raise InputError(f"unit_statistics: grad_data has {gx.shape[0]} inputs but "
                             f"{gy.shape[0]} targets")  # fmt: skip
        return probe_gradients(model, gx, gy, fishers, likelihood=likelihood)
    return [probe_gradients(model, x[a:b], y[a:b], fishers, likelihood=likelihood)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]  # fmt: skip


def _pool_grads(chunk_grads, bounds, i0: int, i1: int):
    """The mean gradient of slices ``i0..i1-1`` (weighted by their sizes)."""
    if isinstance(chunk_grads, dict):
        return chunk_grads
    total = bounds[i1] - bounds[i0]
    weights = [(i, (bounds[i + 1] - bounds[i]) / total) for i in range(i0, i1)]
    return {name: tuple(sum(chunk_grads[i][name][j] * w for i, w in weights) for j in (0, 1))
            for name in chunk_grads[i0]}  # fmt: skip


def _halves(chunks, chunk_grads, bounds, size: int, name: str) -> list:
    """``[(UnitFisher, (g_w, g_b))]`` of layer ``name`` on the two halves of the first ``size``
    probe inputs (pooled slices)."""
    i_half, i_end = bounds.index(size // 2), bounds.index(size)
    return [(_pool(chunks, a, b)[name], _pool_grads(chunk_grads, bounds, a, b)[name])
            for a, b in ((0, i_half), (i_half, i_end))]  # fmt: skip


def jackknifed(cols: dict, halves, rel_damping: float) -> dict[str, np.ndarray]:
    r"""``{rho_<direction>_jk: [U]}``: ρ_J = 2ρ(F) − (ρ(F_A) + ρ(F_B))/2 for the directions
    of :data:`JACKKNIFED`, ``cols`` holding ρ(F) of the whole probe and ``halves`` the pairs
    ``(UnitFisher, (g_w, g_b))`` of its two halves. NaN where a half's block is dead."""
    a, b = (_measures(fisher, grads, rel_damping) for fisher, grads in halves)
    rho = {k: (a[f"rho_{k}"].cpu().numpy(), b[f"rho_{k}"].cpu().numpy()) for k in JACKKNIFED}
    return {f"rho_{k}_jk": 2.0 * cols[f"rho_{k}"] - 0.5 * (ra + rb) for k, (ra, rb) in rho.items()}


def _measures(fisher: UnitFisher, grads, rel_damping: float) -> dict:
    """:func:`natgrad.measures.measures` of ``fisher``'s blocks in float64, for the gradient
    ``grads = (g_w, g_b)``."""
    g, g0 = fisher.unit_grads(*grads)
    return ms.measures(fisher.matrix.double(), fisher.mean_p.double(), g.double(), g0.double(),
                       rel_damping, layer=fisher.layer, units=fisher.units)  # fmt: skip


def probe_size_sweep(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, sizes, *,
                     layers: list[str] | None = None, rel_damping: float = MEASURE_DAMPING,
                     grad_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                     dtype: torch.dtype = torch.float64):  # fmt: skip
    r"""ρ against the probe size: one row per (probe size, layer, unit) with ``fan_in``,
    ``n_eff``, ``dead`` and, for every direction of :data:`JACKKNIFED`, the plain estimate
    ``rho_<direction>`` and the jackknifed ``rho_<direction>_jk`` on the first ``size``
    probe inputs (nested probes), from ONE pass over the largest size (``probe_sizes`` of
    :func:`unit_statistics`).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ELU(), torch.nn.Linear(4, 2))
        >>> t = probe_size_sweep(net, torch.randn(40, 3), torch.randint(0, 2, (40,)), (20, 40))
        >>> sorted(t["probe_size"].unique().tolist()), "rho_plain_jk" in t
        ([20, 40], True)
    """
    x, y = inputs[: max(sizes)], targets[: max(sizes)]
    _check_sizes(sizes, inputs.shape[0])
    return unit_statistics(model, x, y, layers=layers, rel_damping=rel_damping, dtype=dtype,
                           grad_data=grad_data, probe_sizes=sizes)[-1]  # fmt: skip


def _size_rows(chunks, chunk_grads, bounds, sizes, heads, rel_damping):
    """The rows of :func:`probe_size_sweep` from the per-slice blocks and gradients."""
    import pandas as pd

    frames = []
    for size in sizes:
        i_end = bounds.index(size)
        grads = _pool_grads(chunk_grads, bounds, 0, i_end)
        for name, fisher in _pool(chunks, 0, i_end).items():
            m = _measures(fisher, grads[name], rel_damping)
            cols = {f"rho_{k}": m[f"rho_{k}"].cpu().numpy() for k in JACKKNIFED}
            halves = _halves(chunks, chunk_grads, bounds, size, name)
            cols.update(jackknifed(cols, halves, rel_damping))
            frames.append(pd.DataFrame({
                **heads[name], "probe_size": size, "unit": fisher.units.numpy(),
                "fan_in": fisher.fan_in, "n_eff": fisher.n_eff.double().numpy(),
                "estimable": (fisher.n_eff.double().numpy() >= 2 * (fisher.fan_in + 1)).astype(int),
                "dead": m["dead"].numpy().astype(int), **cols,
            }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def _sweep_layer(fisher: UnitFisher, grads, head: dict, sweep):
    import pandas as pd

    rows = []
    for lam in sweep:
        m = _measures(fisher, grads, lam)
        rows.append(pd.DataFrame({
            **head, "unit": fisher.units.numpy(), "rel_damping": lam,
            "dead": m["dead"].numpy().astype(int), **{f"rho_{k}": m[f"rho_{k}"].numpy() for k in JACKKNIFED},
        }))  # fmt: skip
    return pd.concat(rows, ignore_index=True)


def damping_sweep(model, inputs, targets, *, layers=None, sweep=SWEEP, dtype=torch.float64):
    r"""One row per (λ, layer, unit): the efficiencies of plain, centred, quasi-diagonal and
    block-diagonal updates at every relative damping in ``sweep``."""
    return unit_statistics(model, inputs, targets, layers=layers, sweep=sweep, dtype=dtype)[1]
