r"""The unit Fisher engine: exact, Monte-Carlo and empirical unit Fisher blocks.

For unit i of a Linear or Conv2d layer with incoming activations ã = (a, 1) ∈ R^{d+1} (bias
last) the unit Fisher information matrix is (``docs/theory.md``, "The unit Fisher block")

.. math::

    F_i = \frac{1}{N}\sum_n \sum_k g_{nki}\, g_{nki}^\top,\qquad
    g_{nki} = \sum_{p} v_{nkpi}\, \tilde a_{np},\qquad v_{nk\cdot} = J_{n}^\top M_{nk}

where J_n = ∂o/∂net (o the model output of input n, net the layer's net inputs at every
position p) and M_nk are output-space columns (``natgrad.likelihoods.columns``): the columns
of a square root of the output Fisher H for ``kind="exact"``, the scores of S sampled labels
divided by √S for ``"mc"``, and the score of the observed label for ``"empirical"``.

How it is computed, per batch:

1. one forward pass, with hooks capturing each requested layer's input and output;
2. one batched backward (``torch.autograd.grad(..., is_grads_batched=True)``) of all K
   columns at once, giving v for every unit of every requested layer (never J per unit);
3. for a layer with one position per input (Linear), sum over the columns BEFORE the outer
   product: δ̄²_ni = Σ_k v_nki², and F_i = (1/N) Σ_n δ̄²_ni ã_n ã_nᵀ for all units as one
   GEMM ``[U·(d+1), N] @ [N, d+1]`` of cost 2·N·U·(d+1)²;
4. for weight-shared units (Conv2d, or Linear applied along extra dimensions) the block does
   not factor: per-sample gradients g = Σ_p v_p ã_p come from one ``bmm`` over samples and
   the block from one ``bmm`` over units, in chunks that bound memory.

Shapes: N inputs, K columns, P positions, U units, d fan-in, D model outputs.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from natgrad import likelihoods as lik
from natgrad import memory
from natgrad._batches import iter_batches
from natgrad._distributed import all_reduce_accumulators
from natgrad._layers import (
    batchnorm_guard,
    check_layer,
    check_units,
    incoming,
    net_positions,
    resolve_layer,
    supported_layers,
)
from natgrad.errors import InputError, NatgradError, UnsupportedLayerError
from natgrad.unitfisher import UnitFisher

# Largest temporary a chunk may allocate, in elements (2**25 floats = 128 MiB in float32).
MEMORY_BUDGET = 2**25


def unit_fisher(
    model: nn.Module,
    layer: str | nn.Module,
    inputs: torch.Tensor | Iterable,
    targets: torch.Tensor | None = None,
    *,
    kind: str = "exact",
    likelihood: str = "categorical",
    mc_samples: int = 1,
    units: Sequence[int] | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    structure: str = "dense",
    conv_moments: str = "shared",
    max_memory: int | None = None,
    out_dir: str | None = None,
) -> UnitFisher:
    r"""Unit Fisher information matrices of every unit of one Linear/Conv2d layer.

    .. math::

        F_i = E_p\big[E_y[(\textstyle\sum_p \delta_p \tilde a_p)
              (\textstyle\sum_p \delta_p \tilde a_p)^\top]\big]
            = \begin{pmatrix} A & b \\ b^\top & c \end{pmatrix}

    which for a Linear unit is E_p[δ̄² ã ãᵀ] with δ̄² = E_y[δ²] (ELU paper, Section 2).

    Args:
        model: any ``nn.Module``; its output is the logits ``[N, C]`` (categorical), logits
            ``[N, *]`` (bernoulli) or unit-variance means ``[N, *]`` (gaussian). It is run as
            given: call ``model.eval()`` first for dropout or batch-norm nets (batch-norm
            layers in training mode get a :class:`~natgrad.errors.TrainModeWarning`; their
            running statistics are restored afterwards).
        layer: an ``nn.Linear``/``nn.Conv2d`` inside ``model`` (with a bias), or its name.
        inputs: ``[N, ...]`` tensor, or an iterable of ``(inputs, targets)`` batches (e.g. a
            DataLoader). Streaming gives the same matrix as one big batch.
        targets: observed labels, needed for ``kind="empirical"``: ``[N]`` class indices or
            ``[N, *]`` floats shaped like the output.
        kind: ``"exact"`` (closed-form expectation over the model's y ~ p(y|z)), ``"mc"``
            (``mc_samples`` labels drawn from the model per input) or ``"empirical"``
            (observed labels; the biased "empirical Fisher").
        likelihood: ``"categorical"``, ``"bernoulli"`` or ``"gaussian"``.
        mc_samples: S, labels sampled per input for ``kind="mc"``.
        units: integer indices of the units to compute (default all); the backward pass is
            shared. Floats and bools are an :class:`~natgrad.errors.InputError`.
        generator: ``torch.Generator`` for the labels of ``kind="mc"``.
        batch_size: split a tensor ``inputs`` into batches of this size (default: all at once;
            a batch whose temporaries would exceed the memory budget is split further, which
            gives the same matrix; only ``kind="mc"`` draws its labels per sub-batch then).
        structure: ``"dense"`` (the full block), ``"quasidiagonal"`` (Ollivier: diag(A), b, c)
            or ``"diagonal"`` (diag(F)); the last two cost O(U·d) memory, are computed from
            the same backward without forming a block, and return a
            :class:`~natgrad.structures.StructuredUnitFisher`.
        conv_moments: ``"shared"`` (the true weight-shared block of ``docs/theory.md``) or
            ``"positions"`` (positions treated as separate samples, K-FAC-for-conv style:
            F = (1/N) Σ_n Σ_p δ̄²_np ã_np ã_npᵀ, the cross-position terms dropped); the same
            for units with one position (Linear). See :mod:`natgrad.structures`.
        max_memory: bytes the result and its temporaries may use (default
            :data:`natgrad.memory.DEFAULT_FRACTION` of the available memory). A result that
            does not fit raises :class:`~natgrad.errors.MemoryBudgetError` naming the bytes
            and the ``units=``/``structure=``/``out_dir=`` that would fit.
        out_dir: a folder: stream the units in chunks that fit ``max_memory`` (one data pass
            per chunk), write each chunk's blocks to a safetensors shard there, and return a
            lazily loading :class:`~natgrad.planner.ShardedUnitFisher`.

    Returns:
        :class:`~natgrad.UnitFisher` with ``matrix`` ``[U, d+1, d+1]`` (bias last; Conv2d:
        d = C_in·kh·kw in ``weight.view(U, -1)`` order), ``mean_p`` ``[d]`` and the moments.
        The dtype and device are the model's.

    Example:
        >>> import torch
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ELU(), torch.nn.Linear(4, 2))
        >>> F = unit_fisher(net, net[0], torch.randn(8, 3))
        >>> F.matrix.shape, F.mean_q.shape
        (torch.Size([4, 4, 4]), torch.Size([4, 3]))
    """
    name, module = resolve_layer(model, layer)
    options = dict(structure=structure, conv_moments=conv_moments, max_memory=max_memory)
    if out_dir is not None:
        from natgrad.planner import sharded_unit_fisher

        return sharded_unit_fisher(
            model,
            name,
            module,
            units,
            inputs,
            targets,
            out_dir,
            kind=kind,
            likelihood=likelihood,
            mc_samples=mc_samples,
            generator=generator,
            batch_size=batch_size,
            **options,
        )
    return _compute(
        model,
        {name: (module, units)},
        inputs,
        targets,
        kind,
        likelihood,
        mc_samples,
        generator,
        batch_size,
        **options,
    )[name]


def unit_fishers(
    model: nn.Module,
    inputs: torch.Tensor | Iterable,
    targets: torch.Tensor | None = None,
    *,
    layers: Sequence[str | nn.Module] | None = None,
    kind: str = "exact",
    likelihood: str = "categorical",
    mc_samples: int = 1,
    units: dict[str, Sequence[int] | torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    structure: str = "dense",
    conv_moments: str = "shared",
    max_memory: int | None = None,
) -> dict[str, UnitFisher]:
    r"""Unit Fishers of every Linear/Conv2d layer (or of ``layers``) from ONE pass over the
    data: one forward and one batched backward per batch serve all layers.

    Arguments are those of :func:`unit_fisher`; ``units`` maps layer names to unit indices
    (``out_dir=`` streaming is per layer: call :func:`unit_fisher` for each).
    Returns ``{name: UnitFisher}`` in ``named_modules()`` order.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> {k: v.matrix.shape for k, v in unit_fishers(net, torch.randn(8, 3)).items()}
        {'0': torch.Size([4, 4, 4]), '2': torch.Size([2, 5, 5])}
    """
    if layers is None:
        chosen = supported_layers(model)
        if not chosen:
            raise UnsupportedLayerError("the model has no nn.Linear or nn.Conv2d layer")
        no_bias = [n for n, m in chosen.items() if m.bias is None]
        if no_bias:
            raise UnsupportedLayerError(
                f"layers {no_bias} have no bias, which the unit Fisher of Theorems 1-2 needs; "
                "pass layers=[...] naming only layers with a bias"
            )
        for n, m in chosen.items():
            check_layer(n, m)
    else:
        chosen = dict(resolve_layer(model, layer) for layer in layers)
    units = units or {}
    unknown = set(units) - set(chosen)
    if unknown:
        raise InputError(f"units= names layers that are not computed: {sorted(unknown)}")
    spec = {n: (m, units.get(n)) for n, m in chosen.items()}
    return _compute(
        model,
        spec,
        inputs,
        targets,
        kind,
        likelihood,
        mc_samples,
        generator,
        batch_size,
        structure=structure,
        conv_moments=conv_moments,
        max_memory=max_memory,
    )


# --------------------------------------------------------------------------------------
# The pass over the data.


CONV_MOMENTS = ("shared", "positions")


def _compute(
    model,
    spec,
    inputs,
    targets,
    kind,
    likelihood,
    mc_samples,
    generator,
    batch_size,
    *,
    structure="dense",
    conv_moments="shared",
    max_memory=None,
    accumulator=None,
):
    lik.check_likelihood(likelihood)
    if kind not in lik.KINDS:
        raise InputError(f"unknown kind {kind!r}: choose one of {', '.join(lik.KINDS)}")
    if kind == "mc" and (
        isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1
    ):
        raise InputError(f"mc_samples must be a positive integer, got {mc_samples!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator (or None), got "
                         f"{type(generator).__name__}; e.g. torch.Generator().manual_seed(0)")  # fmt: skip
    meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if meta:
        raise InputError(f"the model's parameters are on the meta device ({meta[0]}, …): they "
                         "hold no values. Materialise the model (e.g. load its weights) first")  # fmt: skip
    if kind == "empirical" and targets is None and isinstance(inputs, torch.Tensor):
        raise InputError(
            "kind='empirical' uses the observed labels: pass targets=, or use kind='exact' "
            "(the true Fisher) or kind='mc'"
        )
    memory.check_structure(structure)
    if conv_moments not in CONV_MOMENTS:
        raise InputError(
            f"unknown conv_moments {conv_moments!r}: choose 'shared' (the true weight-shared "
            "block) or 'positions' (positions treated as separate samples)"
        )
    if accumulator is None:
        accumulator = _LayerAccumulator
        if structure != "dense":
            from natgrad.structures import StructuredAccumulator as accumulator
    accs = {
        name: accumulator(name, module, u, structure=structure, conv_moments=conv_moments)
        for name, (module, u) in spec.items()
    }
    # Up-front: does the result fit? Then the temporaries get what is left (natgrad.memory).
    budget = memory.resolve_max_memory(max_memory)
    itemsize = next(iter(spec.values()))[0].weight.element_size()
    sizes = {name: (acc.n_units, acc.fan_in) for name, acc in accs.items()}
    memory.check_budget(sizes, structure, itemsize, budget, sharded=False)
    result_bytes = sum(
        memory.result_elements(structure, u, d) * itemsize for u, d in sizes.values()
    )
    temp_elems = memory.temp_budget(result_bytes, budget) // itemsize
    for acc in accs.values():
        acc.budget = max(1, temp_elems // 8)  # each of a chunk's ~3 temporaries
    n_total = 0
    batches = iter_batches(inputs, targets, batch_size)
    first = next(batches, None)
    if first is not None:  # one input's temporaries, from a forward outside the capture
        per_sample = _per_sample_elements(model, accs, first[0][:1])
        batches = itertools.chain([first], batches)
    with _Capture(model, accs) as capture:
        for b, (x_all, y_all) in enumerate(batches):
            step = max(1, temp_elems // (2 * per_sample))  # half for the batch's own
            for s0 in range(0, x_all.shape[0], step):
                x = x_all[s0 : s0 + step]
                y = None if y_all is None else y_all[s0 : s0 + step]
                _accumulate_batch(
                    capture, accs, x, y, b, kind, likelihood, mc_samples, generator, temp_elems
                )
                n_total += x.shape[0]
    n_total = all_reduce_accumulators(accs.values(), n_total)  # sums over ranks, if any
    if n_total == 0:
        raise InputError("no inputs: the data is empty; pass at least one input")
    return {
        name: acc.result(n_total, kind, likelihood, mc_samples if kind == "mc" else None)
        for name, acc in accs.items()
    }


def _accumulate_batch(capture, accs, x, y, b, kind, likelihood, mc_samples, generator, temp_elems):
    """One forward and the batched backward of all columns (in chunks) for one (sub-)batch."""
    out = capture.forward(x)
    o = lik.flatten_output(likelihood, out)  # [N, D]
    if y is not None:
        y = lik.check_targets(likelihood, o, y)
    elif kind == "empirical":
        raise InputError(
            f"kind='empirical' needs observed targets, but batch {b} has none; "
            "pass (inputs, targets) batches or use kind='exact'/'mc'"
        )
    cols = lik.columns(likelihood, kind, o, y, mc_samples, generator)  # [K, N, D]
    nets = [capture.outputs[name] for name in accs]
    for acc in accs.values():
        acc.begin_batch(capture.inputs[acc.name])
    width = sum(a.width for a in accs.values())  # Σ_layers P·U
    chunk = max(1, min(MEMORY_BUDGET, temp_elems) // max(1, o.shape[0] * width))
    for k0 in range(0, cols.shape[0], chunk):
        grad_out = cols[k0 : k0 + chunk].reshape(-1, *out.shape)  # [K_c, *out]
        grads = _batched_grad(out, nets, grad_out)
        for acc, g in zip(accs.values(), grads, strict=True):
            acc.add_columns(g)
        del grads
    for acc in accs.values():
        acc.end_batch()


def _per_sample_elements(model: nn.Module, accs: dict, x1: torch.Tensor) -> int:
    r"""Elements of the temporaries one input costs in a pass: its activations (kept for the
    backward, cloned at the hooked layers, and their gradients) and, per requested layer, the
    unfolded patches ``[P, d]`` (×4 for ``conv_moments="positions"``) and the error signals
    ``[P, U]`` of one column. Measured by a forward of one input in eval mode (shapes only;
    batch-norm statistics are not touched)."""
    acts = [0]
    shapes: dict[str, tuple[int, ...]] = {}
    targets = {id(acc.module): name for name, acc in accs.items()}

    def hook(module, args, out):
        if isinstance(out, torch.Tensor):
            acts[0] += out[0].numel()
            if id(module) in targets:
                shapes[targets[id(module)]] = (args[0][0].numel(), out[0].numel())

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if id(m) in targets or not any(True for _ in m.children())
    ]
    was_training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(x1)
    except Exception:  # the real pass reports errors with their context
        return 1
    finally:
        for h in handles:
            h.remove()
        for m, flag in was_training.items():
            m.training = flag
    total = 3 * acts[0]
    for name, acc in accs.items():
        if name not in shapes:
            continue
        n_out = shapes[name][1]
        positions = max(1, n_out // acc.module.weight.shape[0])
        factor = 4 if acc.conv_moments == "positions" else 1
        total += positions * acc.fan_in * factor + n_out
    return max(1, total)


def _batched_grad(out, nets, grad_out):
    r"""Vector-Jacobian products of K output columns at once: ``[K, *net]`` per layer."""
    try:
        with warnings.catch_warnings():
            # A missing vmap batching rule falls back to a loop inside torch; that is slower
            # but still correct, so it is not an error for natgrad's users.
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            return torch.autograd.grad(
                out, nets, grad_out, retain_graph=True, is_grads_batched=True, allow_unused=True
            )
    except RuntimeError:
        # Some ops have no batched backward at all: one backward per column (K of them).
        per_column = [
            torch.autograd.grad(out, nets, go, retain_graph=True, allow_unused=True)
            for go in grad_out
        ]
        return tuple(
            None if cols[0] is None else torch.stack(cols) for cols in zip(*per_column, strict=True)
        )


class _Capture(contextlib.AbstractContextManager):
    """Forward hooks that capture each requested layer's input and output, name the first
    module whose output is non-finite, and let gradients reach the layers' outputs."""

    def __init__(self, model: nn.Module, accs: dict):
        self.model, self.accs = model, accs
        self.targets = {id(acc.module): acc.name for acc in accs.values()}
        self.handles: list = []
        self.saved_grad: list[tuple[torch.Tensor, bool]] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        self._stack.enter_context(batchnorm_guard(self.model))
        self._stack.enter_context(torch.enable_grad())
        for acc in self.accs.values():
            for p in (acc.module.weight, acc.module.bias):
                self.saved_grad.append((p, p.requires_grad))
                p.requires_grad_(True)
        for name, module in self.model.named_modules():
            if id(module) in self.targets:
                self.handles.append(module.register_forward_hook(self._capture_hook(name)))
            elif not any(True for _ in module.children()):
                self.handles.append(module.register_forward_hook(self._finite_hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        for p, flag in self.saved_grad:
            p.requires_grad_(flag)
        self._stack.close()
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.first_bad: str | None = None
        try:
            out = self.model(x)
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, NatgradError):
                raise
            raise InputError(
                f"the model's forward pass failed on inputs of shape {tuple(x.shape)} and dtype "
                f"{x.dtype} ({type(exc).__name__}: {exc}); check the input shape and dtype"
            ) from exc
        if not isinstance(out, torch.Tensor):
            raise InputError(
                f"the model returned a {type(out).__name__}; natgrad needs a single output tensor"
            )
        missing = [n for n in self.targets.values() if n not in self.outputs]
        if missing:
            raise InputError(f"layers {missing} were not called in the model's forward pass")
        if self.first_bad is not None or not torch.isfinite(out).all():
            where = f"layer {self.first_bad!r}" if self.first_bad else "the model output"
            raise InputError(
                f"non-finite activations (NaN/Inf) first appear in the output of {where}; "
                "check that layer's weights and the input scale"
            )
        return out

    def _note_bad(self, name: str, out) -> None:
        if (
            self.first_bad is None
            and isinstance(out, torch.Tensor)
            and out.is_floating_point()
            and not torch.isfinite(out).all()
        ):
            self.first_bad = name

    def _finite_hook(self, name):
        def hook(module, args, out):
            self._note_bad(name, out)

        return hook

    def _capture_hook(self, name):
        def hook(module, args, out):
            if name in self.outputs:
                raise InputError(
                    f"layer {name!r} is called more than once in one forward pass; natgrad's "
                    "unit Fisher needs each layer to be applied once per input"
                )
            self._note_bad(name, out)
            self.inputs[name] = args[0].detach()
            self.outputs[name] = out
            # A clone, so that an in-place activation after the layer cannot overwrite the
            # net inputs whose gradients we take.
            return out.clone()

        return hook


class _LayerAccumulator:
    r"""Sums Σ_n Σ_k g gᵀ ``[U, d+1, d+1]``, Σ a ``[d]`` and, for n_eff, Σ_n c_n and Σ_n c_n²
    ``[U]`` (c_n = Σ_k g_nk,bias², the bias entry of input n's own block) over batches.

    The structure-specific parts are three methods that subclasses
    (:class:`natgrad.structures.StructuredAccumulator`, :mod:`natgrad.woodbury`) replace:
    :meth:`_allocate`, :meth:`_reduce_weighted` (one position per input: weights
    w ``[M, U]`` of rows ã ``[M, d+1]``) and :meth:`_reduce_factors` (weight-shared:
    per-sample gradients g ``[U_c, N·K, d+1]`` of units ``u0:u0+U_c``).
    """

    def __init__(
        self, name: str, module: nn.Module, units, *, structure="dense", conv_moments="shared"
    ):
        self.name, self.module = name, module
        self.structure, self.conv_moments = structure, conv_moments
        n_units = module.weight.shape[0]
        self.units = None if units is None else check_units(name, units, n_units)
        self.n_units = n_units if self.units is None else self.units.numel()
        self.fan_in = module.weight[0].numel()
        self.total: torch.Tensor | None = None  # [U, d+1, d+1]
        self.sum_a: torch.Tensor | None = None  # [d]
        self.c_sum: torch.Tensor | None = None  # [U] Σ_n c_n
        self.c_sq_sum: torch.Tensor | None = None  # [U] Σ_n c_n²
        self.count = 0
        self.width = n_units
        self.budget = MEMORY_BUDGET  # elements one temporary of a chunk may use

    def _allocate(self, dtype, device) -> None:
        d1 = self.fan_in + 1
        self.total = torch.zeros(self.n_units, d1, d1, dtype=dtype, device=device)

    def begin_batch(self, x: torch.Tensor) -> None:
        a = incoming(self.module, x)  # [N, P, d], a view of the unfolded patches
        n, p, d = a.shape
        self.width = p * self.module.weight.shape[0]
        self.a = a
        self.sum_a = a.sum((0, 1)) if self.sum_a is None else self.sum_a + a.sum((0, 1))
        self.count += n * p
        if self.total is None:
            self._allocate(a.dtype, a.device)
        # One position per input (Linear), or positions treated as separate samples: the
        # columns are summed into δ̄² [N, P, U] before any outer product.
        self.weighted = p == 1 or self.conv_moments == "positions"
        if self.weighted:
            self.delta2 = torch.zeros(n, p, self.n_units, dtype=a.dtype, device=a.device)
        else:  # [N, U] c_n = Σ_k (Σ_p v_nkp)², the bias entry of input n's own block
            self.c_n = torch.zeros(n, self.n_units, dtype=a.dtype, device=a.device)

    def add_columns(self, g: torch.Tensor | None) -> None:
        if g is None:
            raise InputError(
                f"layer {self.name!r} does not influence the model output, so its unit Fisher "
                "is zero; pick a layer on the path to the output"
            )
        if not torch.isfinite(g.sum()) and not torch.isfinite(g).all():  # sum: one cheap pass
            raise InputError(
                f"the back-propagated error signals of layer {self.name!r} contain NaN/Inf; "
                "check the layers above it and the output scale"
            )
        v = net_positions(self.module, g)  # [K, N, P, U]
        if self.units is not None:
            v = v.index_select(-1, self.units.to(v.device))
        if self.weighted:  # sum over columns before any outer product
            self.delta2 += v.square().sum(0)  # [N, P, U]
        else:
            k, n, p, u_all = v.shape
            d1 = self.fan_in + 1
            step = max(1, self.budget // max(1, n * k * max(p, d1)))
            for u0 in range(0, u_all, step):
                g = shared_factors(v[..., u0 : u0 + step], self.a)  # [Uc, N·K, d+1]
                uc = g.shape[0]
                self.c_n[:, u0 : u0 + uc] += g[..., -1].reshape(uc, n, k).square().sum(-1).T
                self._reduce_factors(u0, g)

    def _reduce_factors(self, u0: int, g: torch.Tensor) -> None:
        r"""F_u += Σ_nk g gᵀ for the units u0:u0+U_c, ``g`` ``[U_c, N·K, d+1]``: on and above
        the diagonal row blocks only (about half the FLOPs; :func:`_mirror_upper` fills in)."""
        total = self.total[u0 : u0 + g.shape[0]]
        gt = g.transpose(1, 2)  # [U_c, d+1, N·K]
        for r0 in range(0, g.shape[-1], _ROW_BLOCK):
            r1 = min(g.shape[-1], r0 + _ROW_BLOCK)
            total[:, r0:r1, r0:].baddbmm_(gt[:, r0:r1], g[..., r0:])
        self.upper_only = True

    def _reduce_weighted(self, w: torch.Tensor, at: torch.Tensor) -> None:
        r"""F_u += Σ_m w_mu ã_m ã_mᵀ (upper block triangle), ``w`` ``[M, U]``, ``at`` ``[M, d+1]``."""
        _add_weighted_outer(self.total, w, at, self.budget)
        self.upper_only = True

    def end_batch(self) -> None:
        # c_n: δ̄²_n summed over positions for weighted rows, else Σ_k g_nk,bias²; float64 sums
        c_n = (self.delta2.sum(1) if self.weighted else self.c_n).to(torch.float64)  # [N, U]
        self.c_sum = c_n.sum(0) if self.c_sum is None else self.c_sum + c_n.sum(0)
        c2 = c_n.square().sum(0)
        self.c_sq_sum = c2 if self.c_sq_sum is None else self.c_sq_sum + c2
        if self.weighted:
            n, p, d = self.a.shape
            step = max(1, self.budget // max(1, p * (d + 1)))  # samples per chunk of rows
            for n0 in range(0, n, step):
                a = self.a[n0 : n0 + step].reshape(-1, d)  # [M, d]
                at = torch.cat([a, torch.ones_like(a[:, :1])], dim=-1)  # [M, d+1]
                self._reduce_weighted(self.delta2[n0 : n0 + step].reshape(-1, self.n_units), at)
                del a, at
        self.a = self.delta2 = self.c_n = None

    def result(self, n_total: int, kind: str, likelihood: str, mc: int | None) -> UnitFisher:
        matrix = self.total.div_(n_total)
        if getattr(self, "upper_only", False):
            _mirror_upper(matrix)
        else:
            _symmetrise_(matrix, self.budget)  # exact symmetry, in place
        return UnitFisher(matrix=matrix, **self.fields(n_total, kind, likelihood, mc))

    def fields(self, n_total: int, kind: str, likelihood: str, mc: int | None) -> dict:
        """The ``UnitFisher`` fields other than the blocks."""
        units = self.units if self.units is not None else torch.arange(self.n_units)
        return dict(
            mean_p=self.sum_a / self.count,
            n=n_total,
            kind=kind,
            likelihood=likelihood,
            layer=self.name,
            units=units,
            mc_samples=mc,
            c_sum=self.c_sum,
            c_sq_sum=self.c_sq_sum,
        )


def shared_factors(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    r"""Per-sample, per-column gradients of weight-shared units, g_nku = Σ_p v_nkpu ã_np.

    ``v`` ``[K, N, P, U_c]`` (error signals of U_c units), ``a`` ``[N, P, d]`` (incoming
    patches, bias column NOT appended: its entry is Σ_p v_nkpu). Returns ``[U_c, N·K, d+1]``.
    Temporaries: ``[N, K·U_c, P]``, ``[N, K·U_c, d]`` and the result.
    """
    k, n, p, uc = v.shape
    d = a.shape[-1]
    vt = v.permute(1, 0, 3, 2).reshape(n, k * uc, p)  # [N, K·Uc, P]
    out = torch.empty(uc, n, k, d + 1, dtype=v.dtype, device=v.device)
    ga = torch.bmm(vt, a)  # [N, K·Uc, d]
    out[..., :d] = ga.view(n, k, uc, d).permute(2, 0, 1, 3)
    del ga
    out[..., d] = vt.sum(-1).view(n, k, uc).permute(2, 0, 1)
    return out.view(uc, n * k, d + 1)


def _symmetrise_(matrix: torch.Tensor, budget: int = MEMORY_BUDGET) -> None:
    r"""matrix ← (matrix + matrixᵀ)/2 in place, in chunks of units (one chunk-sized copy)."""
    d1 = matrix.shape[-1]
    step = max(1, budget // (d1 * d1))
    for u0 in range(0, matrix.shape[0], step):
        m = matrix[u0 : u0 + step]
        m.add_(m.transpose(-1, -2).clone()).mul_(0.5)


# Rows per block of the symmetric product: small enough that skipping the blocks below the
# diagonal saves most of the lower triangle, large enough for efficient GEMMs.
_ROW_BLOCK = 64


def _add_weighted_outer(
    total: torch.Tensor, w: torch.Tensor, at: torch.Tensor, budget: int = MEMORY_BUDGET
) -> None:
    r"""total[u] += Σ_n w[n, u] ã_n ã_nᵀ on and above the diagonal blocks only.

    ``total`` ``[U, d+1, d+1]``, ``w`` ``[N, U]``, ``at`` ``[N, d+1]``. For the row block
    r of every unit in a chunk of units, one GEMM ``[U_c·h, N] @ [N, d+1−r0]`` computes
    the rows r0..r1 from column r0 on, so the total cost is about (B+1)/(2B) of the full
    2·N·U·(d+1)² for B row blocks. :func:`_mirror_upper` fills the rest.
    """
    n, d1 = at.shape
    w_t = w.T.contiguous()  # [U, N]
    at_t = at.T.contiguous()  # [d+1, N]
    step = max(1, budget // (_ROW_BLOCK * max(n, d1)))
    for u0 in range(0, w_t.shape[0], step):
        wc = w_t[u0 : u0 + step]  # [U_c, N]
        uc = wc.shape[0]
        for r0 in range(0, d1, _ROW_BLOCK):
            r1 = min(d1, r0 + _ROW_BLOCK)
            scaled = wc.unsqueeze(1) * at_t[r0:r1].unsqueeze(0)  # [U_c, h, N]
            rows = torch.mm(scaled.view(-1, n), at[:, r0:])  # [U_c·h, d+1−r0]
            total[u0 : u0 + uc, r0:r1, r0:] += rows.view(uc, r1 - r0, d1 - r0)


def _mirror_upper(total: torch.Tensor) -> None:
    r"""Copy the blocks above the diagonal blocks to below them (exact symmetry)."""
    d1 = total.shape[-1]
    for r0 in range(0, d1, _ROW_BLOCK):
        r1 = min(d1, r0 + _ROW_BLOCK)
        total[:, r1:, r0:r1] = total[:, r0:r1, r1:].transpose(-1, -2)
        diag = total[:, r0:r1, r0:r1]
        diag.copy_(0.5 * (diag + diag.transpose(-1, -2)))
