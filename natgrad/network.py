r"""The whole-network Fisher where it fits: how much of it the unit blocks hold, its spectrum,
and how much the unit natural gradient loses against the full one.

For a classifier with logits z(x; θ) and p = softmax(z), the exact Fisher of all P parameters
is

    F = (1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n,        J_n = ∂z(x_n)/∂θ  [C, P],

computed here by ``torch.func`` (one ``vmap(jacrev)`` per batch, float64) — a route
independent of natgrad's unit Fisher engine, which it reproduces on the unit blocks
(``tests/test_network.py``), at N·C·P memory per batch and P² for the result. Questions of
the literature: the unit blocks' share of the Frobenius mass (Amari, Karakida & Oizumi 2019:
near block-diagonal in wide random nets), the spectrum (Karakida et al. 2019: a few large
outliers), and what the unit natural gradient loses against the full one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from natgrad import damping
from natgrad._layers import batch_statistics_layers, is_unit_layer
from natgrad.errors import InputError, SingularBlockError

__all__ = ["GramSummary", "NetworkFisher", "efficiency", "loglik_gradient", "network_fisher",
           "network_fisher_gram"]  # fmt: skip


@dataclass(frozen=True)
class NetworkFisher:
    r"""The exact Fisher ``matrix`` ``[P, P]`` (float64) of a model's parameters in
    ``named_parameters()`` order, ``names``/``shapes``/``offsets`` of those parameters,
    ``n`` inputs, and ``units``: one ``(layer, unit, index)`` per unit of every Linear/Conv2d
    layer with a bias, ``index`` the positions of its weights then its bias (bias last, as
    natgrad's unit blocks)."""

    matrix: torch.Tensor
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    n: int
    units: tuple[tuple[str, int, torch.Tensor], ...]

    @property
    def num_params(self) -> int:
        return self.matrix.shape[0]

    def _layer_index(self) -> dict[tuple[str, int], torch.Tensor]:
        """``{(layer, d+1): [U, d+1]}`` the parameter positions of a layer's units of one
        size, stacked, so the per-unit work below is batched by layer."""
        out: dict[tuple[str, int], list] = {}
        for name, _, i in self.units:
            out.setdefault((name, i.numel()), []).append(i)
        return {key: torch.stack(idx) for key, idx in out.items()}

    def unit_blocks(self, layer: str) -> torch.Tensor:
        """``[U, d+1, d+1]``: the blocks of ``layer``'s units cut out of the whole Fisher."""
        index = {name: idx for (name, _), idx in self._layer_index().items()}
        if layer not in index:
            raise InputError(f"NetworkFisher: no units of layer {layer!r}; layers: "
                             f"{sorted(index)}")  # fmt: skip
        idx = index[layer]
        return self.matrix[idx.unsqueeze(-1), idx.unsqueeze(-2)]

    def _block_mask(self) -> torch.Tensor:
        mask = torch.zeros_like(self.matrix, dtype=torch.bool)
        for idx in self._layer_index().values():
            mask[idx.unsqueeze(-1), idx.unsqueeze(-2)] = True
        return mask

    def unit_block_share(self) -> float:
        r"""‖F restricted to the unit blocks‖²_F / ‖F‖²_F ∈ [0, 1] (1: block diagonal by units).

        Example:
            >>> F = NetworkFisher(torch.eye(3, dtype=torch.float64), ("w",), ((3,),), (0,), 1,
            ...                   (("l", 0, torch.tensor([0, 1])), ("l", 1, torch.tensor([2]))))
            >>> F.unit_block_share()
            1.0
        """
        total = float(self.matrix.square().sum())
        inside = float(self.matrix[self._block_mask()].square().sum())
        return inside / total if total > 0 else float("nan")

    def spectrum(self) -> torch.Tensor:
        """The eigenvalues of the Fisher, largest first (``eigvalsh``, float64)."""
        return torch.linalg.eigvalsh(self.matrix).flip(0)

    def top_eig_over_mean(self) -> float:
        r"""λ_max / mean eigenvalue, the outlier ratio of Karakida et al. (as
        :meth:`GramSummary.top_eig_over_mean`; here the mean of the computed spectrum)."""
        spec = self.spectrum()
        return float(spec[0] / spec.mean())

    def damping(self, rel_damping: float) -> torch.Tensor:
        r"""``[P]`` the diagonal D of F_λ = F + D: μ_u = λ·tr F_uu/(d+1) on unit u's entries;
        parameters of no unit, and dead units (tr F_uu = 0: no gradient reaches them), get λ
        times the mean diagonal, so that F_λ stays invertible."""
        rel_damping = damping.check(rel_damping)
        diag = self.matrix.diagonal()
        fallback = rel_damping * float(diag.mean())
        out = torch.full_like(diag, fallback)
        for idx in self._layer_index().values():  # [U, d+1]
            mu = damping.mu(diag[idx].sum(-1), idx.shape[-1], rel_damping).unsqueeze(-1)
            out[idx] = torch.where(mu > 0, mu, fallback).expand_as(idx).to(out)
        return out

    def damped(self, rel_damping: float) -> torch.Tensor:
        r"""``[P, P]`` F_λ = F + diag(:meth:`damping`)."""
        return self.matrix + torch.diag(self.damping(rel_damping))

    def per_unit(self, g: torch.Tensor, metric: torch.Tensor, solve=None) -> torch.Tensor:
        r"""``[P]``: each unit's part of ``g`` ``[P]`` taken by ``solve(blocks [U, d+1, d+1],
        g_units [U, d+1])`` (default: the solve with its own block) over its block of
        ``metric`` ``[P, P]``, one batched call per layer; parameters of no unit keep ``g``."""
        solve = solve or (lambda B, gu: torch.linalg.solve(B, gu.unsqueeze(-1)).squeeze(-1))
        u = g.clone()
        for idx in self._layer_index().values():
            u[idx] = solve(metric[idx.unsqueeze(-1), idx.unsqueeze(-2)], g[idx])
        return u

    def unit_metric(self, metric: torch.Tensor) -> torch.Tensor:
        r"""``[P, P]`` ``metric`` restricted to the unit blocks (a parameter of no unit keeps
        its diagonal entry)."""
        out = torch.diag(metric.diagonal())
        for idx in self._layer_index().values():
            block = (idx.unsqueeze(-1), idx.unsqueeze(-2))
            out[block] = metric[block]
        return out

    def unit_vs_full(self, grad: torch.Tensor, rel_damping: float = 1e-3) -> dict[str, float]:
        r"""Fisher efficiencies in the whole-network metric F_λ of the unit natural gradient
        (each unit's own block, damped by its μ_u, solved alone; parameters of no unit take
        the plain step) and of the plain gradient, against the full natural gradient
        F_λ⁻¹g: ``{"rho_unit_ng", "rho_plain"}`` (NaN for g = 0). ``grad`` ``[P]`` in
        parameter order (the gradient of the mean log-likelihood; ρ is invariant to its sign
        convention)."""
        g = grad.to(self.matrix).flatten()
        if g.shape[0] != self.num_params:
            raise InputError(f"unit_vs_full: grad has {g.shape[0]} entries, the Fisher "
                             f"{self.num_params} parameters")  # fmt: skip
        f_lam = self.damped(rel_damping)
        try:
            full = torch.linalg.solve(f_lam, g)
            unit = self.per_unit(g, f_lam)
        except torch.linalg.LinAlgError:
            raise SingularBlockError(
                f"unit_vs_full: F_λ is singular at rel_damping={rel_damping:g} (a dead unit, "
                "or more parameters than the inputs' label directions span); pass "
                "rel_damping > 0"
            ) from None
        return {"rho_unit_ng": efficiency(g, unit, f_lam, full),
                "rho_plain": efficiency(g, g, f_lam, full)}  # fmt: skip


def loglik_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""``[P]`` the gradient of a classifier's mean log-likelihood −CE(model(x), y), in
    ``named_parameters()`` order (the ``grad`` of :meth:`NetworkFisher.unit_vs_full`), of the
    model as :func:`network_fisher` evaluates it: a float64 copy in eval mode (no dropout;
    batch norm on its running statistics, which are left untouched), every parameter, frozen
    ones too."""
    from torch.func import functional_call

    model, _, params, _, x = _prepare(model, x, "loglik_gradient")
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(-loss, list(params.values()))
    return torch.cat([t.flatten() for t in grads])


def efficiency(g: torch.Tensor, u: torch.Tensor, metric: torch.Tensor, nat: torch.Tensor) -> float:
    r"""gᵀu / √(uᵀMu · gᵀM⁻¹g) with ``nat`` = M⁻¹g given (NaN where g = 0 or u = 0)."""
    den = float(u @ metric @ u) * float(g @ nat)
    return float(g @ u) / den**0.5 if den > 0 else float("nan")


def _layer_index(model: nn.Module, offsets: dict[str, int]) -> dict[str, torch.Tensor]:
    r"""``{layer: [U, d+1]}`` the positions of each unit's (weights, bias) in the flat
    parameter vector, for every Linear/Conv2d layer with a bias (one ``arange`` per layer)."""
    out = {}
    for name, module in model.named_modules():
        if not is_unit_layer(module):
            continue
        w0, b0 = offsets[f"{name}.weight"], offsets[f"{name}.bias"]
        n_units, d = module.weight.shape[0], module.weight[0].numel()
        weights = w0 + torch.arange(n_units * d).view(n_units, d)
        out[name] = torch.cat([weights, (b0 + torch.arange(n_units))[:, None]], 1)
    return out


def shared_parameters(model: nn.Module) -> list[list[tuple[str, str, nn.Module]]]:
    r"""Every parameter held by more than one module (tied weights), as its holders
    ``[(module name, parameter name, module), …]`` (each module once, under its first name)."""
    holders: dict[int, list[tuple[str, str, nn.Module]]] = {}
    for name, module in model.named_modules():
        for key, p in module.named_parameters(recurse=False):
            holders.setdefault(id(p), []).append((name, key, module))
    return [held for held in holders.values() if len(held) > 1]


def check_untied(model: nn.Module, what: str) -> None:
    r"""Refuse parameters held by two layers where one of them is a unit layer (a Linear/Conv2d
    with a bias; tied weights, ``b.weight = a.weight``): the flat vector holds a shared tensor
    once, under one name, so the other layer's units have no positions of their own, and the
    tensor's gradient sums both layers' uses. One layer registered twice is one layer."""
    for held in shared_parameters(model):
        if any(is_unit_layer(m) for _, _, m in held):
            layers = " and ".join(repr(n) for n, _, _ in held)
            tied = " is ".join(f"{n}.{k}" for n, k, _ in held)
            raise InputError(
                f"{what}: layers {layers} share a parameter ({tied}: tied weights); the "
                "whole-network Fisher's unit blocks need each unit's own weights and bias. "
                "Untie them (give each layer its own copy) to analyse the model"
            )


def _prepare(model: nn.Module, inputs, what: str):
    r"""A float64 eval copy of ``model``, its parameters (names, offsets in the flat vector,
    detached values), P, and the inputs as float64 (checked finite)."""
    import copy

    check_untied(model, what)
    model = copy.deepcopy(model).to(torch.float64).eval()
    for name, m in batch_statistics_layers(model):  # after eval(): no running statistics
        raise InputError(
            f"{what}: layer {name!r} is a {type(m).__name__} with "
            "track_running_stats=False: it normalises with the batch's statistics even in "
            "eval mode, so one input's logits depend on its batch and a per-input Fisher is "
            "not defined; rebuild it with track_running_stats=True (eval mode then uses the "
            "running statistics)"
        )
    named = dict(model.named_parameters())
    *starts, off = itertools.accumulate((v.numel() for v in named.values()), initial=0)
    offsets = dict(zip(named, starts, strict=True))
    for name, m in model.named_modules():
        if is_unit_layer(m) and (f"{name}.weight" not in offsets or f"{name}.bias" not in offsets):
            raise InputError(
                f"{what}: layer {name!r} has a parametrized weight or bias (weight_norm, "
                "torch.nn.utils.parametrize), so its units have no parameters of their own in "
                "the flat vector; remove the parametrization "
                "(parametrize.remove_parametrizations) to analyse the model"
            )
    x_all = torch.as_tensor(inputs).to(torch.float64)
    if not torch.isfinite(x_all).all():
        raise InputError(f"{what}: the inputs contain NaN/Inf")
    return model, offsets, {k: v.detach() for k, v in named.items()}, off, x_all


def _jacobians(model: nn.Module, params: dict, x_all: torch.Tensor, batch_size: int, what: str):
    r"""Per batch: the logits ``z [B, C]`` and the Jacobians ``J [B, C, P]`` of
    the logits w.r.t. every parameter (``torch.func``: one ``vmap(jacrev)`` per batch)."""
    from torch.func import functional_call, jacrev, vmap

    def logits(p, x):
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(logits), in_dims=(None, 0))
    for s in range(0, x_all.shape[0], batch_size):
        xb = x_all[s : s + batch_size]
        with torch.no_grad():
            z = functional_call(model, params, (xb,))
        if z.ndim != 2:
            raise InputError(f"{what}: the model must return logits [N, C], got "
                             f"{tuple(z.shape)}")  # fmt: skip
        j = jac(params, xb)  # {name: [B, C, *shape]}
        yield z, torch.cat([j[k].reshape(xb.shape[0], z.shape[1], -1) for k in params], -1)


def network_fisher(
    model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 256, max_params: int = 20_000
) -> NetworkFisher:
    r"""The exact whole-network Fisher of a classifier (categorical likelihood on its logits)
    on ``inputs`` ``[N, ...]``, in float64 (module docstring). The model is copied, cast to
    float64 and put in eval mode. Refuses models with more than ``max_params`` parameters
    (the result alone is P² floats).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 2))
        >>> F = network_fisher(net, torch.randn(16, 3))
        >>> F.matrix.shape, len(F.units), round(F.unit_block_share(), 2) <= 1.0
        (torch.Size([26, 26]), 6, True)
    """
    model, offsets, params, total, x_all = _prepare(model, inputs, "network_fisher")
    if total > max_params:
        raise InputError(f"network_fisher: the model has {total} parameters; the dense Fisher "
                         f"({total}² floats) is for nets up to max_params={max_params}. Use the "
                         "unit blocks (natgrad.unit_fishers) or network_fisher_gram for larger "
                         "nets")  # fmt: skip
    names = tuple(params)
    shapes = tuple(tuple(v.shape) for v in params.values())
    matrix = torch.zeros(total, total, dtype=torch.float64)
    n = x_all.shape[0]
    for z, J in _jacobians(model, params, x_all, batch_size, "network_fisher"):
        p = torch.softmax(z, dim=-1)  # [B, C]
        Jp = (p.sqrt().unsqueeze(-1) * J).reshape(-1, total)  # [B·C, P]
        Jm = torch.einsum("bc,bcp->bp", p, J)  # [B, P]: J_nᵀ p_n
        matrix += Jp.T @ Jp - Jm.T @ Jm
    matrix /= n
    matrix = 0.5 * (matrix + matrix.T)
    units = [(name, u, row) for name, idx in _layer_index(model, offsets).items()
             for u, row in enumerate(idx)]  # fmt: skip
    return NetworkFisher(matrix, names, shapes, tuple(offsets[k] for k in names), n, tuple(units))


@dataclass(frozen=True)
class GramSummary:
    r"""What the whole-network Fisher's Gram route gives for nets whose P² Fisher does not
    fit (:func:`network_fisher_gram`): ``trace`` tr F, ``frobenius_sq`` ‖F‖²_F,
    ``unit_block_frobenius_sq`` Σ_u ‖F_uu‖²_F over the units of the Linear/Conv2d layers,
    ``eigenvalues`` the nonzero spectrum of F (largest first; at most N·C of them), ``n``
    inputs, ``num_params`` P."""

    trace: float
    frobenius_sq: float
    unit_block_frobenius_sq: float
    eigenvalues: torch.Tensor
    n: int
    num_params: int

    def unit_block_share(self) -> float:
        r"""‖F restricted to the unit blocks‖²_F / ‖F‖²_F, as :meth:`NetworkFisher.unit_block_share`."""
        total = self.frobenius_sq
        return self.unit_block_frobenius_sq / total if total > 0 else float("nan")

    def top_eig_over_mean(self) -> float:
        r"""λ_max / (tr F / P), the outlier ratio of Karakida et al. (the mean over all P
        eigenvalues, zeros included)."""
        return float(self.eigenvalues[0]) / (self.trace / self.num_params)


def network_fisher_gram(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 64,
                        max_rows: int = 20_000) -> GramSummary:  # fmt: skip
    r"""Whole-network Fisher statistics without the P×P matrix (float64, categorical logits).

    F = VᵀV with V ``[N·C, P]`` the rows J_nᵀ M_nk / √N (M_n the columns of a square root of
    the output Fisher diag p − p pᵀ, :func:`natgrad.likelihoods.sqrt_output_fisher`), so its
    nonzero spectrum is that of the Gram matrix G = V Vᵀ ``[N·C, N·C]``, ‖F‖²_F = ‖G‖²_F,
    tr F = tr G, and each unit block is V_uᵀV_u from V's columns of the unit. Memory: V
    (N·C·P floats) and G ((N·C)²), so the probe size, not the parameter count, is the limit
    (``max_rows`` = N·C).
    """
    from natgrad.likelihoods import sqrt_output_fisher

    what = "network_fisher_gram"
    model, offsets, params, off, x_all = _prepare(model, inputs, what)
    n = x_all.shape[0]
    rows = []
    for z, J in _jacobians(model, params, x_all, batch_size, what):
        if n * z.shape[1] > max_rows:
            raise InputError(f"{what}: N·C = {n * z.shape[1]} rows exceed max_rows={max_rows} "
                             "(the Gram matrix is (N·C)² floats); use a smaller probe")  # fmt: skip
        M = sqrt_output_fisher("categorical", z)  # [K, B, C]
        rows.append(torch.einsum("kbc,bcp->kbp", M, J).reshape(-1, off))
    V = torch.cat(rows) / n**0.5  # [N·K, P]
    G = V @ V.T
    eig = torch.linalg.eigvalsh(G).flip(0).clamp_min(0.0)
    inside = 0.0
    for idx in _layer_index(model, offsets).values():  # one einsum per layer
        Vu = V[:, idx]  # [N·K, U, d+1]
        inside += float(torch.einsum("nui,nuj->uij", Vu, Vu).square().sum())
    return GramSummary(trace=float(G.diagonal().sum()), frobenius_sq=float(G.square().sum()),
                       unit_block_frobenius_sq=inside, eigenvalues=eig, n=n,
                       num_params=off)  # fmt: skip
