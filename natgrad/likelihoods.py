r"""The three likelihoods natgrad supports, in the form the Fisher engine needs.

The output-space Fisher H = E_y[(∂ ln p/∂o)(∂ ln p/∂o)ᵀ] of each likelihood (categorical
logits: diag(p) − p pᵀ; bernoulli logits: diag(σ(o)(1 − σ(o))); gaussian means: I) and how
the engine uses it: ``docs/theory.md``, "Closed forms of δ̄²". Every estimator is K "columns"
M [K, N, D] of output-space vectors, so that the unit Fisher is (1/N) Σ_n Σ_k g_nk g_nkᵀ with
g_nk the gradient obtained by back-propagating column k of sample n: exact, the columns of a
square root L of H (L Lᵀ = H), K = C or D; mc, the scores of S sampled labels scaled by 1/√S,
K = S; empirical, the score of the observed label, K = 1. Outputs with more than two
dimensions are flattened to [N, D] (bernoulli/gaussian only).

Example:
    >>> import torch
    >>> o = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    >>> L = sqrt_output_fisher("categorical", o)   # [K=2, N=1, C=2]
    >>> (L[:, 0, :].T @ L[:, 0, :])                 # diag(p) − p pᵀ with p = (½, ½)
    tensor([[ 0.2500, -0.2500],
            [-0.2500,  0.2500]], dtype=torch.float64)
"""

from __future__ import annotations

import math

import torch

from natgrad.errors import InputError

LIKELIHOODS = ("categorical", "bernoulli", "gaussian")
KINDS = ("exact", "mc", "empirical")


def check_likelihood(likelihood: str) -> str:
    if likelihood not in LIKELIHOODS:
        raise InputError(
            f"unknown likelihood {likelihood!r}: choose one of {', '.join(LIKELIHOODS)} "
            "('categorical' for softmax cross-entropy logits, 'bernoulli' for sigmoid logits, "
            "'gaussian' for a unit-variance mean)"
        )
    return likelihood


def flatten_output(likelihood: str, output: torch.Tensor) -> torch.Tensor:
    r"""The model output as ``[N, D]`` (``[N, C]`` for categorical)."""
    if output.ndim < 2:
        raise InputError(
            f"the model output has shape {tuple(output.shape)}; natgrad needs a batch "
            "dimension and at least one output per input ([N, C] logits or [N, D])"
        )
    if likelihood == "categorical" and output.ndim != 2:
        raise InputError(
            f"likelihood 'categorical' needs logits of shape [N, C]; the model output has "
            f"shape {tuple(output.shape)}. Flatten it in the model, or use 'bernoulli'/'gaussian'."
        )
    return output.reshape(output.shape[0], -1)


def check_targets(likelihood: str, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""Validate observed targets against the ``[N, D]`` output and return them as the
    engine uses them: ``[N]`` int64 class indices (categorical; any integer dtype is
    accepted, bool and floats are refused) or ``[N, D]`` floats."""
    n = output.shape[0]
    if targets.shape[0] != n:
        raise InputError(
            f"targets have {targets.shape[0]} rows but the inputs have {n}: give one target per input"
        )
    if likelihood == "categorical":
        dt = targets.dtype
        if targets.ndim != 1 or dt.is_floating_point or dt.is_complex or dt == torch.bool:
            raise InputError(
                f"categorical targets must be class indices of shape [N] and an integer dtype "
                f"(any of int8..int64, uint8..); got shape {tuple(targets.shape)} and dtype "
                f"{targets.dtype}. Convert with targets.long() (bool: targets.long() for 0/1 "
                "classes, or use likelihood='bernoulli')"
            )
        targets = targets.to(device=output.device, dtype=torch.long)
        c = output.shape[1]
        if targets.numel() and (targets.min() < 0 or targets.max() >= c):
            raise InputError(
                f"categorical targets must lie in [0, {c - 1}] for {c} logits; got values in "
                f"[{int(targets.min())}, {int(targets.max())}]"
            )
        return targets
    t = targets.reshape(n, -1).to(output.dtype)
    if t.shape != output.shape:
        raise InputError(
            f"{likelihood} targets must have one value per output ({output.shape[1]} per input); "
            f"got shape {tuple(targets.shape)}"
        )
    if not torch.isfinite(t).all():
        raise InputError(f"{likelihood} targets contain NaN/Inf")
    if likelihood == "bernoulli" and ((t < 0) | (t > 1)).any():
        raise InputError("bernoulli targets must lie in [0, 1]")
    return t


def score(likelihood: str, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""∂ ln p(y | z) / ∂o for targets ``[..., N]`` (categorical) or ``[..., N, D]``;
    output ``[N, D]``; returns ``[..., N, D]``."""
    if likelihood == "categorical":
        p = torch.softmax(output, dim=-1)
        onehot = torch.nn.functional.one_hot(targets, output.shape[-1]).to(output.dtype)
        return onehot - p
    if likelihood == "bernoulli":
        return targets - torch.sigmoid(output)
    return targets - output


def log_likelihood(likelihood: str, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""Σ_n ln p(y_n | z_n) over the batch (a scalar; Gaussian up to its constant): the
    quantity whose gradient :func:`score` gives per output, for g = ∇ mean ln p.

    Example:
        >>> o = torch.zeros(2, 3, dtype=torch.float64)
        >>> float(log_likelihood("categorical", o, torch.tensor([0, 2]))) == 2 * math.log(1 / 3)
        True
    """
    if likelihood == "categorical":
        return -torch.nn.functional.cross_entropy(output, targets, reduction="sum")
    output = flatten_output(likelihood, output)
    t = targets.reshape(output.shape).to(output.dtype)
    if likelihood == "bernoulli":
        return -torch.nn.functional.binary_cross_entropy_with_logits(output, t, reduction="sum")
    return -0.5 * ((t - output) ** 2).sum()


def sample_targets(
    likelihood: str,
    output: torch.Tensor,
    mc_samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Draw S labels per input from the model, y ~ p(y | z): ``[S, N]`` class indices
    (categorical) or ``[S, N, D]``. Deterministic given ``generator``; drawn on the
    generator's device (a CPU generator with a GPU model draws on the CPU, the same labels as
    for the model on the CPU) and returned on the output's.

    The draws are taken input by input (all of input n's labels before input n+1's), so with
    a CPU generator the first m inputs' labels do not depend on how many inputs follow: a
    data pass split into batches draws the labels of one pass over the whole set. Gaussian
    noise is therefore Box–Muller on each element's own two uniforms (``torch.randn`` pairs
    elements across the tensor). The draws are made in float64 whatever the model's dtype,
    so a float32 model and its float64 copy (:mod:`natgrad.reference`) draw the same labels."""
    s, dev, dtype = int(mc_samples), output.device, output.dtype
    o = output.detach().to(torch.float64)
    if generator is not None and generator.device != dev:
        o = o.to(generator.device)
    if likelihood == "categorical":
        p = torch.softmax(o, dim=-1)
        return torch.multinomial(p, s, replacement=True, generator=generator).T.to(dev)  # [S, N]
    if likelihood == "bernoulli":
        prob = torch.sigmoid(o).unsqueeze(1).expand(o.shape[0], s, *o.shape[1:])  # [N, S, D]
        y = torch.bernoulli(prob, generator=generator)
        return y.to(dtype).transpose(0, 1).to(dev)  # [S, N, D]
    u = torch.rand((o.shape[0], s, *o.shape[1:], 2), generator=generator, dtype=torch.float64,
                   device=o.device)  # fmt: skip
    radius = torch.sqrt(-2.0 * torch.log1p(-u[..., 0]))  # 1 − u ∈ (0, 1]: finite
    noise = radius * torch.cos(2.0 * math.pi * u[..., 1])  # [N, S, D], standard normal
    return (o.unsqueeze(1) + noise).to(dtype).transpose(0, 1).to(dev)  # [S, N, D]


def sqrt_output_fisher(likelihood: str, output: torch.Tensor) -> torch.Tensor:
    r"""Columns of L with L Lᵀ = H(o) per input: ``[K, N, D]``.

    categorical: L = diag(√p) − p √pᵀ (K = C); bernoulli: diag(√(σ(1−σ))) (K = D);
    gaussian: I (K = D).
    """
    o = output.detach()
    n, d = o.shape
    if likelihood == "categorical":
        p = torch.softmax(o, dim=-1)  # [N, C]
        sp = p.sqrt()
        # L[n, j, k] = δ_jk √p_k − p_j √p_k ; column k is L[n, :, k]
        L = torch.diag_embed(sp) - p.unsqueeze(-1) * sp.unsqueeze(-2)  # [N, C, C]
        return L.permute(2, 0, 1)  # [K=C, N, C]
    if likelihood == "bernoulli":
        sig = torch.sigmoid(o)
        diag = (sig * torch.sigmoid(-o)).sqrt()  # σ(o)(1−σ(o)), without the cancellation
    else:
        diag = torch.ones_like(o)
    eye = torch.eye(d, dtype=o.dtype, device=o.device)
    return eye.unsqueeze(1) * diag.unsqueeze(0)  # [K=D, N, D]


def columns(
    likelihood: str,
    kind: str,
    output: torch.Tensor,
    targets: torch.Tensor | None,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""The output-space columns ``[K, N, D]`` whose back-propagation gives the estimator
    ``kind`` of the unit Fisher (see the module docstring)."""
    if kind == "exact":
        return sqrt_output_fisher(likelihood, output)
    o = output.detach()
    if kind == "empirical":
        return score(likelihood, o, targets).unsqueeze(0)  # [1, N, D]
    y = sample_targets(likelihood, o, mc_samples, generator)
    return score(likelihood, o, y) / math.sqrt(mc_samples)  # [S, N, D]
