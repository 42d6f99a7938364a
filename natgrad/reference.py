r"""The brute-force route: unit Fishers by per-sample, per-label autograd in float64.

This module is natgrad's ground truth. It computes every block the slow, obvious way and
shares no computation with the fast engine (:mod:`natgrad.fisher`) beyond label sampling
(:func:`natgrad.likelihoods.sample_targets`, so that both routes see the same MC labels;
tests/test_fisher_oracles.py tests the sampler against the model's distribution); it checks
its arguments as the engine does.

For input z_n and label y, let g_{n,y,i} ∈ R^{d+1} be the gradient of ln p(y | z_n) w.r.t.
the parameters of unit i, (weight row ``weight.view(U, -1)[i]``, then bias): for a Linear
unit g = δ ã, for a Conv2d unit g = Σ_pos δ_pos ã_pos (weight sharing). The three
estimators of the unit Fisher F_i ``[d+1, d+1]`` (``docs/theory.md``, "The unit Fisher
block") are

.. math::

    F_i^{\text{exact}} = \frac1N \sum_n \mathbb{E}_{y\sim p(y|z_n)}[g_{n,y,i} g_{n,y,i}^\top],
    \qquad
    F_i^{\text{mc}} = \frac1N \sum_n \frac1S \sum_{s} g_{n,y_{ns},i} g_{n,y_{ns},i}^\top,
    \qquad
    F_i^{\text{emp}} = \frac1N \sum_n g_{n,y_n,i} g_{n,y_n,i}^\top .

The exact expectation is formed two independent ways:

- categorical: enumerate all C labels, Σ_y p(y | z_n) g_y g_yᵀ;
- bernoulli / gaussian: J_iᵀ H J_i with J_i = ∂o/∂θ_i ``[D, d+1]`` the per-sample Jacobian
  of the flattened output (``torch.func.jacrev``) and H ``[D, D]`` the Hessian of the
  negative log-likelihood w.r.t. the output (``jacrev`` of ``jacrev``). For these exponential
  families with their canonical links the Hessian equals the output Fisher and does not
  depend on y.

Example:
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ELU(), torch.nn.Linear(4, 2))
    >>> F = reference_unit_fisher(model, "0", torch.randn(8, 3))
    >>> F.matrix.shape, F.matrix.dtype, F.kind, F.layer
    (torch.Size([4, 4, 4]), torch.float64, 'exact', '0')
    >>> bool((torch.linalg.eigvalsh(F.matrix) > -1e-12).all())   # positive semidefinite
    True
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrize import is_parametrized

from natgrad._batches import iter_batches
from natgrad._layers import (
    batch_statistics_layers,
    called_twice,
    check_layer,
    check_units,
    find_layer,
    layer_input,
)
from natgrad.errors import InputError
from natgrad.likelihoods import KINDS, check_likelihood, sample_targets
from natgrad.normfisher import NORM_LAYERS, NormUnitFisher, check_norm_layer
from natgrad.unitfisher import UnitFisher

__all__ = [
    "reference_bias_shift_error",
    "reference_direction",
    "reference_efficiency",
    "reference_natural_gradient",
    "reference_unit_fisher",
]


def _layer_name(model: nn.Module, layer: str | nn.Module) -> str:
    """The name of ``layer`` (a module of ``model`` or its name), checked as the engine checks
    it: a Linear/Conv2d layer with a bias, or an affine normalisation layer."""
    name, module = find_layer(model, layer)
    if isinstance(module, NORM_LAYERS):
        check_norm_layer(name, module)
        return name
    check_layer(name, module)
    base = nn.Linear if isinstance(module, nn.Linear) else nn.Conv2d
    if (type(module).forward is not base.forward or is_parametrized(module)
            or not isinstance(module.weight, nn.Parameter)):  # fmt: skip
        raise InputError(
            f"layer {name!r} computes its output from a transformed weight (a parametrisation "
            "such as weight norm, or a forward of its own); the reference differentiates the "
            "parameter module.weight itself, not the weight that multiplies the layer's input, "
            "whose blocks natgrad.unit_fisher gives"
        )
    return name


def _as_tensors(inputs, targets) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``inputs``/``targets`` as :func:`natgrad.unit_fisher` reads them (``_batches``), joined
    into one ``[N, ...]`` tensor and its targets (or ``None``)."""
    batches = list(iter_batches(inputs, targets, None))
    if not batches:
        raise InputError("no data: the iterable of (inputs, targets) batches is empty")
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), None if any(t is None for t in ys) else torch.cat(ys)


def _mean_xhat(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    r"""``[U]`` the mean over inputs and positions of each unit's x̂, from the layer input
    ``x`` by the normalisation's own formula (eval-mode batch norm: running statistics),
    written here apart from the engine's (:func:`natgrad.normfisher.normalised`)."""
    if isinstance(m, nn.LayerNorm):
        dims = tuple(range(x.ndim - len(m.normalized_shape), x.ndim))
        mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
        return ((x - mean) / torch.sqrt(var + m.eps)).reshape(-1, m.weight.numel()).mean(0)
    if isinstance(m, nn.GroupNorm):
        g = x.reshape(x.shape[0], m.num_groups, -1)
        mean, var = g.mean(-1, keepdim=True), g.var(-1, unbiased=False, keepdim=True)
        xh = ((g - mean) / torch.sqrt(var + m.eps)).reshape(x.shape)
    else:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        xh = (x - m.running_mean.view(shape)) / torch.sqrt(m.running_var.view(shape) + m.eps)
    return xh.transpose(0, 1).reshape(x.shape[1], -1).mean(1)  # channel first, then mean


def _patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    r"""Incoming activations of the layer input ``x`` as ``[N, P, d]`` (P positions)."""
    if isinstance(module, nn.Linear):
        return x.reshape(x.shape[0], -1, x.shape[-1])
    kh, kw = module.kernel_size
    if isinstance(module.padding, str):
        if module.padding == "valid":
            pad = (0, 0, 0, 0)
        else:  # "same" (stride 1): total padding dilation·(k − 1), the extra one on the right
            th, tw = module.dilation[0] * (kh - 1), module.dilation[1] * (kw - 1)
            pad = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    else:
        ph, pw = module.padding
        pad = (pw, pw, ph, ph)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, pad, mode=mode)
    cols = F.unfold(x, (kh, kw), dilation=module.dilation, stride=module.stride)  # [N, d, P]
    return cols.transpose(1, 2)  # [N, P, d]


def _log_likelihood(likelihood: str, o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""ln p(y | o) up to a constant for one input: o ``[D]``; y a class index or ``[D]``."""
    if likelihood == "categorical":
        return -F.cross_entropy(o.unsqueeze(0), y.reshape(1), reduction="sum")
    if likelihood == "bernoulli":
        return -F.binary_cross_entropy_with_logits(o, y, reduction="sum")
    return -0.5 * ((y - o) ** 2).sum()


def reference_unit_fisher(
    model: nn.Module,
    layer: str | nn.Module,
    inputs,
    targets: torch.Tensor | None = None,
    *,
    kind: str = "exact",
    likelihood: str = "categorical",
    mc_samples: int = 1,
    units: Sequence[int] | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> UnitFisher:
    r"""Unit Fisher blocks ``[U, d+1, d+1]`` (bias last) of ``layer`` by brute force.

    A float64 deep copy of ``model`` is evaluated one input at a time (as given: call
    ``.eval()`` first for dropout/batch norm) and the estimator ``kind`` formed as in the
    module docstring (``"mc"``: the S = ``mc_samples`` labels are drawn once on the whole
    ``[N, D]`` output with ``generator``). ``mean_p`` ``[d]`` is E_p(a), the layer input
    captured by a forward hook (for Conv2d, patches averaged over inputs and positions).
    The arguments are those of :func:`natgrad.unit_fisher`; ``layer`` may also be an affine
    normalisation layer (a :class:`~natgrad.normfisher.NormUnitFisher` is returned).

    Returns:
        A float64 :class:`~natgrad.unitfisher.UnitFisher`.
    """
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
    check_likelihood(likelihood)
    name = _layer_name(model, layer)
    x, y_obs = _as_tensors(inputs, targets)
    n = x.shape[0]  # ≥ 1: iter_batches refuses empty and non-finite inputs
    if kind == "empirical" and y_obs is None:
        raise InputError("kind='empirical' needs the observed targets")
    if kind == "mc" and int(mc_samples) < 1:
        raise InputError(f"mc_samples must be >= 1, got {mc_samples}")
    x = x.to(torch.float64)

    batch_stats = [n for n, _ in batch_statistics_layers(model)]
    if batch_stats:
        raise InputError(
            f"batch-norm layers {batch_stats} normalise with the batch's statistics (training "
            "mode or track_running_stats=False), and the reference evaluates one input at a "
            "time, where those are not defined; call model.eval() on a net with running "
            "statistics"
        )
    model64 = copy.deepcopy(model).to(torch.float64)
    module = dict(model64.named_modules())[name]
    weight, bias = module.weight, module.bias
    weight.requires_grad_(True), bias.requires_grad_(True)  # the copy's: a frozen layer too
    norm = isinstance(module, NORM_LAYERS)  # (γ, β) units: one input each, their own x̂
    if norm and units is not None:
        raise InputError(f"layer {name!r}: units= is not supported for normalisation layers")
    n_units = weight.numel() if norm else weight.shape[0]
    d = 1 if norm else weight[0].numel()

    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(  # per-input autograd: any rows (folded batches too)
        lambda m, args, kwargs, out: captured.append(layer_input(name, m, args, kwargs, None)),
        with_kwargs=True,
    )
    try:
        with torch.no_grad():
            output = model64(x)  # [N, *]
        if len(captured) > 1:  # as the engine refuses it (its Fisher is of a shared parameter)
            raise called_twice(name)
        if norm:
            mean_p = _mean_xhat(module, captured[0])  # [U]
        else:
            mean_p = _patches(module, captured[0]).mean(dim=(0, 1))  # [d]
    finally:
        handle.remove()
    if likelihood == "categorical" and output.ndim != 2:
        raise InputError(f"categorical needs [N, C] logits, got {tuple(output.shape)}")
    output = output.reshape(n, -1)  # [N, D]

    if kind == "mc":
        sampled = sample_targets(likelihood, output, int(mc_samples), generator)  # [S, N(, D)]
    if y_obs is not None and likelihood != "categorical":
        y_obs = y_obs.reshape(n, -1).to(torch.float64)  # [N, D]
    elif y_obs is not None and not (y_obs.dtype.is_floating_point or y_obs.dtype == torch.bool):
        y_obs = y_obs.long()  # class indices of any integer dtype

    def unit_grads(o: torch.Tensor, y: torch.Tensor, retain: bool) -> torch.Tensor:
        gw, gb = torch.autograd.grad(
            _log_likelihood(likelihood, o, y), (weight, bias), retain_graph=retain
        )
        return torch.cat([gw.reshape(n_units, -1), gb.reshape(n_units, 1)], dim=-1)  # [U, d+1]

    def add_outer(g: torch.Tensor, weight: float | torch.Tensor = 1.0) -> None:
        # total += weight · g gᵀ per unit, in place (no [U, d+1, d+1] temporary)
        total.baddbmm_(g.unsqueeze(-1), g.unsqueeze(-2), alpha=float(weight))

    params = {f"{name}.weight": weight, f"{name}.bias": bias}
    total = torch.zeros(n_units, d + 1, d + 1, dtype=torch.float64)
    c_sum = torch.zeros(n_units, dtype=torch.float64)
    c_sq_sum = torch.zeros(n_units, dtype=torch.float64)
    for i in range(n):
        bias_before = total[:, -1, -1].detach().clone()
        xi = x[i : i + 1]
        if kind == "exact" and likelihood != "categorical":

            def flat_out(p, xi=xi):
                return torch.func.functional_call(model64, p, (xi,)).reshape(-1)  # [D]

            o = flat_out(params).detach()
            jac = torch.func.jacrev(flat_out)(params)
            J = torch.cat(
                [
                    jac[f"{name}.weight"].reshape(o.numel(), n_units, -1),
                    jac[f"{name}.bias"].reshape(o.numel(), n_units, 1),
                ],
                dim=-1,
            ).transpose(0, 1)  # [U, D, d+1]
            y_any = torch.sigmoid(o) if likelihood == "bernoulli" else o.clone()
            nll = lambda oo, y_any=y_any: -_log_likelihood(likelihood, oo, y_any)  # noqa: E731
            # Hessian by reverse-over-reverse (torch.func.hessian would use forward AD)
            H = torch.func.jacrev(torch.func.jacrev(nll))(o)  # [D, D]
            total.baddbmm_(J.transpose(-1, -2) @ H, J)  # += Jᵀ H J per unit
        elif kind == "exact":  # categorical: enumerate the C labels
            o = model64(xi).reshape(-1)  # [D]
            p = torch.softmax(o.detach(), dim=-1)
            for c in range(o.numel()):
                add_outer(unit_grads(o, torch.tensor(c), retain=True), p[c])
        elif kind == "mc":
            o, s_total = model64(xi).reshape(-1), len(sampled)
            for s in range(s_total):
                add_outer(unit_grads(o, sampled[s, i], retain=s + 1 < s_total), 1.0 / s_total)
        else:
            add_outer(unit_grads(model64(xi).reshape(-1), y_obs[i], retain=False))
        # c_n: the bias entry of input n's own block, what this input added to it
        c_n = total[:, -1, -1].detach() - bias_before
        c_sum, c_sq_sum = c_sum + c_n, c_sq_sum + c_n**2
    matrix = total.detach() / n  # [U, d+1, d+1]

    fields = dict(n=n, kind=kind, likelihood=likelihood, layer=name,
                  mc_samples=int(mc_samples) if kind == "mc" else None)  # fmt: skip
    if norm:
        return NormUnitFisher(matrix=matrix, mean_xhat=mean_p, c_sum=c_sum, c_sq_sum=c_sq_sum,
                              **fields)  # fmt: skip
    unit_idx = torch.arange(n_units)
    if units is not None:
        unit_idx = check_units(name, units, n_units)
        matrix, c_sum, c_sq_sum = matrix[unit_idx], c_sum[unit_idx], c_sq_sum[unit_idx]
    return UnitFisher(matrix=matrix, mean_p=mean_p, units=unit_idx, c_sum=c_sum,
                      c_sq_sum=c_sq_sum, **fields)  # fmt: skip


def reference_natural_gradient(matrix, grad: torch.Tensor) -> torch.Tensor:
    r"""Unit natural gradient F_i⁻¹ (g_i, g0_i) by a direct solve (Theorem 1's left side).

    Args:
        matrix: ``[U, d+1, d+1]`` blocks (bias last) or a :class:`UnitFisher`.
        grad: ``[U, d+1]`` gradients (weight row, then bias) of each unit.

    Returns:
        ``[U, d+1]`` the solution of F_i x_i = g_i per unit.

    Example:
        >>> import torch
        >>> F = torch.tensor([[[2.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
        >>> reference_natural_gradient(F, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
        tensor([[ 1., -1.]], dtype=torch.float64)
    """
    m = matrix.matrix if isinstance(matrix, UnitFisher) else torch.as_tensor(matrix)
    g = torch.as_tensor(grad, dtype=m.dtype)
    return torch.linalg.solve(m, g.unsqueeze(-1)).squeeze(-1)


# --- update directions and their measures, by explicit dense matrices (``docs/theory.md``, "Measures")


def _f64(matrix, *xs) -> list[torch.Tensor]:
    """The float64 blocks ``[U, d+1, d+1]`` of a tensor or a :class:`UnitFisher`, then ``xs``
    as float64 tensors."""
    m = matrix.matrix if isinstance(matrix, UnitFisher) else matrix
    return [torch.as_tensor(x, dtype=torch.float64) for x in (m, *xs)]


def _damped_dense(F: torch.Tensor, rel_damping: float) -> torch.Tensor:
    """F + λ·(tr F/(d+1))·I for one block ``[d+1, d+1]``, built explicitly."""
    n = F.shape[-1]
    return F + rel_damping * torch.trace(F) / n * torch.eye(n, dtype=F.dtype)


def reference_direction(
    matrix, mean_p, grad: torch.Tensor, kind: str, rel_damping: float = 0.0
) -> torch.Tensor:
    r"""``[U, d+1]`` the update of ``kind`` for the gradients ``grad`` ``[U, d+1]`` (weight row,
    then bias), one unit at a time from explicit matrices of the metric
    F_λ = F + λ·(tr F/(d+1))·I and ``torch.linalg.solve``:

    - ``plain`` g; ``centred`` T Tᵀ g with the matrix T = [[I, 0], [−E_p(a)ᵀ, 1]];
    - ``diagonal`` solve(diag(F_λ), g); ``arrowhead`` solve(M, g), M = F_λ with its weight
      block's off-diagonal entries zeroed; ``blockdiag`` solve(D, g), D = F_λ with b zeroed;
      ``natural`` solve(F_λ, g);
    - ``quasidiagonal`` (Ollivier 2015, arXiv 1303.0818): for each weight j the 2×2 system
      [[A_jj, b_j], [b_j, c]] (x_j, y_j) = (g_j, g0) is solved, u_j = x_j, and the bias is
      u_0 = (g0 − Σ_j b_j u_j)/c.

    Example:
        >>> F = torch.tensor([[[2.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
        >>> reference_direction(F, torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]), "blockdiag")
        tensor([[0.5000, 0.0000]], dtype=torch.float64)
    """
    blocks, mp, grad = _f64(matrix, mean_p, grad)
    out = []
    for i in range(blocks.shape[0]):
        F = _damped_dense(blocks[i], rel_damping)
        g = grad[i]
        n = F.shape[-1]
        m = mp if mp.ndim == 1 else mp[i]
        if kind == "plain":
            u = g.clone()
        elif kind == "centred":
            T = torch.eye(n, dtype=torch.float64)
            T[-1, :-1] = -m
            u = T @ T.T @ g
        elif kind == "diagonal":
            u = torch.linalg.solve(torch.diag(torch.diagonal(F)), g)
        elif kind == "arrowhead":
            M = torch.diag(torch.diagonal(F))
            M[:-1, -1], M[-1, :-1] = F[:-1, -1], F[-1, :-1]
            u = torch.linalg.solve(M, g)
        elif kind == "blockdiag":
            D = F.clone()
            D[:-1, -1] = 0.0
            D[-1, :-1] = 0.0
            u = torch.linalg.solve(D, g)
        elif kind == "natural":
            u = torch.linalg.solve(F, g)
        elif kind == "quasidiagonal":
            u = torch.zeros(n, dtype=torch.float64)
            for j in range(n - 1):
                pair = torch.tensor([[F[j, j], F[j, -1]], [F[-1, j], F[-1, -1]]])
                u[j] = torch.linalg.solve(pair, torch.stack([g[j], g[-1]]))[0]
            u[-1] = (g[-1] - F[-1, :-1] @ u[:-1]) / F[-1, -1]
        else:
            raise InputError(f"unknown direction {kind!r}")
        out.append(u)
    return torch.stack(out)


def reference_efficiency(
    matrix, grad: torch.Tensor, update: torch.Tensor, rel_damping: float = 0.0
) -> torch.Tensor:
    r"""``[U]`` ρ(u) = gᵀu / √(uᵀF_λu · gᵀF_λ⁻¹g) per unit by an explicit F_λ and a solve;
    ``grad`` and ``update`` are ``[U, d+1]`` (bias last).

    Example:
        >>> F = torch.tensor([[[2.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
        >>> reference_efficiency(F, torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, -1.0]]))
        tensor([1.], dtype=torch.float64)
    """
    blocks, grad, update = _f64(matrix, grad, update)
    out = []
    for i in range(blocks.shape[0]):
        F = _damped_dense(blocks[i], rel_damping)
        g, u = grad[i], update[i]
        out.append(g @ u / torch.sqrt((u @ F @ u) * (g @ torch.linalg.solve(F, g))))
    return torch.stack(out)


def reference_bias_shift_error(
    matrix, mean_p, grad: torch.Tensor, update: torch.Tensor, rel_damping: float = 0.0
) -> torch.Tensor:
    r"""``[U]`` |shift(u) − shift_natural| / |shift_natural| per unit, shift(u) = E_p(a)ᵀu_w
    + u_0 and shift_natural that of solve(F_λ, g).

    Example:
        >>> F = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
        >>> reference_bias_shift_error(F, torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]),
        ...                            torch.tensor([[1.0, 0.0]]))
        tensor([1.], dtype=torch.float64)
    """
    blocks, mp, grad, update = _f64(matrix, mean_p, grad, update)
    out = []
    for i in range(blocks.shape[0]):
        m = torch.cat([mp if mp.ndim == 1 else mp[i], torch.ones(1, dtype=torch.float64)])
        natural = m @ torch.linalg.solve(_damped_dense(blocks[i], rel_damping), grad[i])
        out.append((m @ update[i] - natural).abs() / natural.abs())
    return torch.stack(out)
