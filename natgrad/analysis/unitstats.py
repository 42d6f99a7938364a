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
dead                       1 if c = 0 (no gradient passes; every measure NaN)
rel_damping, damping       λ and the unit's absolute damping μ = λ·tr F/(d+1)
rho_<direction>            Fisher efficiency of plain, centred, diagonal, quasidiagonal,
                           arrowhead, blockdiag updates (:mod:`natgrad.measures`)
coupling_cost              1 − rho_blockdiag
shift_error_<direction>    relative bias-shift error of that update (Theorem 2)
s_c, k                     s·c and Theorem 2's k of F_λ (flag: ``estimable``)
corrected_mean_norm        ‖E_p(a) − (1+k)E_q(a)‖₂ of F_λ
mean_q_norm, mean_p_norm   ‖E_q(a)‖₂ (undamped), ‖E_p(a)‖₂
grad_norm                  ‖(g, g0)‖₂
=========================  ==========================================================

s, k and the corrected mean are q-moment quantities: they are estimable only where n_eff ≫
d+1, and the report never averages them into a headline. :func:`damping_sweep` gives the
efficiencies over a range of λ.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from natgrad import measures as ms
from natgrad import theorems
from natgrad.errors import InputError
from natgrad.fisher import unit_fishers
from natgrad.linalg import condition_number
from natgrad.unitfisher import UnitFisher

__all__ = [
    "REL_DAMPING",
    "SWEEP",
    "damping_sweep",
    "layer_statistics",
    "probe_gradients",
    "unit_statistics",
]

REL_DAMPING = 1e-3
r"""Default relative damping λ (``docs/theory.md``, "Damping"): κ(F_λ) ≤ (d+1)/λ + 1 for
EVERY block (≈1.3e5 at d = 128), so every solve keeps ≥ 10 digits, while only directions
whose Fisher eigenvalue is below 1e-3 of the block's mean eigenvalue are changed. The same λ
for every unit and unit type; :data:`SWEEP` shows how the answer moves with it."""

SWEEP = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
"""Relative dampings of :func:`damping_sweep` (the report's sweep)."""

SWEEP_DIRECTIONS = ("plain", "centred", "quasidiagonal", "blockdiag")


def layer_statistics(
    fisher: UnitFisher,
    grad_weight: torch.Tensor,
    grad_bias: torch.Tensor,
    *,
    rel_damping: float = REL_DAMPING,
) -> dict[str, np.ndarray]:
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
    g, g0 = fisher.unit_grads(grad_weight, grad_bias)  # [U, d], [U]
    M = fisher.matrix.to(torch.float64)
    g, g0 = g.to(torch.float64), g0.to(torch.float64)
    mean_p = fisher.mean_p.to(torch.float64)
    U, d = fisher.num_units, fisher.fan_in
    ctx = {"layer": fisher.layer, "units": fisher.units}
    m = ms.measures(M, mean_p, g, g0, rel_damping, **ctx)
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


def probe_gradients(
    model: nn.Module, inputs, targets, fishers: dict[str, UnitFisher], *, chunk: int = 4096
):
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
        loglik = -F.cross_entropy(model(x), targets[s : s + chunk].to(torch.long),
                                  reduction="sum") / n  # fmt: skip
        for t, g in zip(total, torch.autograd.grad(loglik, params), strict=True):
            t += g
    return {name: (total[2 * i], total[2 * i + 1]) for i, name in enumerate(fishers)}


def _prepare(model, inputs, targets, dtype):
    if inputs.shape[0] != targets.shape[0]:
        raise InputError(
            f"unit_statistics: {inputs.shape[0]} probe inputs but {targets.shape[0]} targets"
        )
    model = copy.deepcopy(model).to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model, inputs.to(dtype), targets.to(torch.long)


def _layer_heads(model: nn.Module, fishers: dict[str, UnitFisher]) -> dict[str, dict]:
    all_layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    heads = {}
    for name in fishers:
        index = all_layers.index(name)
        heads[name] = {"layer": name, "layer_index": index,
                       "input_from": "data" if index == 0 else "units"}  # fmt: skip
    return heads


def unit_statistics(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    layers: list[str] | None = None,
    rel_damping: float = REL_DAMPING,
    sweep: tuple[float, ...] | None = None,
    dtype: torch.dtype = torch.float64,
    batch_size: int | None = None,
    grad_data: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    r"""One row per (layer, unit) of ``model`` (the columns of the module docstring).

    Args:
        model: a classifier with logits ``[N, C]``; copied, cast to ``dtype``, eval mode.
        inputs, targets: ``[N, ...]`` held-out probe inputs and their ``[N]`` labels (the labels
            enter g only: the Fisher is the exact one, an expectation over the model's labels).
        layers: Linear/Conv2d layer names (default: all, in module order).
        rel_damping: λ of F_λ (default :data:`REL_DAMPING`).
        sweep: also return the efficiencies at these λ (see :func:`damping_sweep`).
        dtype: computation dtype (float64 by default).
        batch_size: stream the probe through the Fisher engine in batches of this size.
        grad_data: ``(inputs, targets)`` whose mean loss gradient is g (default: the probe's).
            The training set gives the direction plain SGD follows in expectation, free of
            the probe's sampling noise (``docs/theory.md``, "Measures").

    Returns:
        A :class:`pandas.DataFrame` with ``Σ_layers U`` rows, or ``(units, sweep)`` when
        ``sweep`` is given.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ELU(), torch.nn.Linear(4, 2))
        >>> t = unit_statistics(net, torch.randn(16, 3), torch.randint(0, 2, (16,)))
        >>> len(t), sorted(t["input_from"].unique())
        (6, ['data', 'units'])
    """
    import pandas as pd

    model, x, y = _prepare(model, inputs, targets, dtype)
    fishers = unit_fishers(model, x, layers=layers, batch_size=batch_size)
    if grad_data is not None:
        gx, gy = grad_data
        if gx.shape[0] != gy.shape[0]:
            raise InputError(f"unit_statistics: grad_data has {gx.shape[0]} inputs but "
                             f"{gy.shape[0]} targets")  # fmt: skip
        grads = probe_gradients(model, gx, gy, fishers)
    else:
        grads = probe_gradients(model, x, y, fishers)
    heads = _layer_heads(model, fishers)
    frames, sweeps = [], []
    for name, fisher in fishers.items():
        cols = layer_statistics(fisher, *grads[name], rel_damping=rel_damping)
        frames.append(pd.DataFrame({**{k: [v] * fisher.num_units for k, v in heads[name].items()},
                                    **cols}))  # fmt: skip
        if sweep:
            sweeps.append(_sweep_layer(fisher, grads[name], heads[name], sweep))
    units = pd.concat(frames, ignore_index=True)
    if sweep:
        return units, pd.concat(sweeps, ignore_index=True)
    return units


def _sweep_layer(fisher: UnitFisher, grads, head: dict, sweep):
    import pandas as pd

    g, g0 = fisher.unit_grads(*grads)
    rows = []
    for lam in sweep:
        m = ms.measures(fisher.matrix.double(), fisher.mean_p.double(), g.double(), g0.double(),
                        lam, layer=fisher.layer, units=fisher.units)  # fmt: skip
        rows.append(pd.DataFrame({
            **{k: [v] * fisher.num_units for k, v in head.items()},
            "unit": fisher.units.numpy(), "rel_damping": lam, "dead": m["dead"].numpy().astype(int),
            **{f"rho_{k}": m[f"rho_{k}"].numpy() for k in SWEEP_DIRECTIONS},
        }))  # fmt: skip
    return pd.concat(rows, ignore_index=True)


def damping_sweep(model, inputs, targets, *, layers=None, sweep=SWEEP, dtype=torch.float64):
    r"""One row per (λ, layer, unit): the efficiencies of plain, centred, quasi-diagonal and
    block-diagonal updates at every relative damping in ``sweep``."""
    return unit_statistics(model, inputs, targets, layers=layers, sweep=sweep, dtype=dtype)[1]
