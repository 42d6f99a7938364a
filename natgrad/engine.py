r"""The unit Fisher engine's pass over the data: exact, Monte-Carlo and empirical unit Fisher blocks.

:func:`compute` runs it for :mod:`natgrad.fisher` (the API), :mod:`natgrad.planner` and
:mod:`natgrad.woodbury`; the sums live in :mod:`natgrad.accumulate`.

For unit i of a Linear or Conv2d layer with incoming activations ã = (a, 1) ∈ R^{d+1} (bias
last) the unit Fisher information matrix is (``docs/theory.md``, "The unit Fisher block")

.. math::

    F_i = \frac{1}{N}\sum_n \sum_k g_{nki}\, g_{nki}^\top,\qquad
    g_{nki} = \sum_{p} v_{nkpi}\, \tilde a_{np},\qquad v_{nk\cdot} = J_{n}^\top M_{nk}

where J_n = ∂o/∂net (o the model output of input n, net the layer's net inputs at every
position p) and M_nk are output-space columns (``natgrad.likelihoods.columns``): the columns
of a square root of the output Fisher H for ``kind="exact"``, the scores of S sampled labels
divided by √S for ``"mc"``, and the score of the observed label for ``"empirical"``.

Per batch: one forward pass, with hooks capturing each requested layer's input and output,
and one batched backward (``torch.autograd.grad(..., is_grads_batched=True)``) of all K
columns at once, giving v for every unit of every requested layer (never J per unit); the
accumulators reduce v (``docs/theory.md``, "How the engine avoids forming J";
:mod:`natgrad.accumulate`).

Shapes: N inputs, K columns, P positions, U units, d fan-in, D model outputs.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from natgrad import likelihoods as lik
from natgrad import memory
from natgrad._batches import iter_batches
from natgrad._distributed import all_reduce_accumulators
from natgrad._layers import batchnorm_guard, called_twice, layer_input
from natgrad.accumulate import MEMORY_BUDGET, LayerAccumulator, block_dtype
from natgrad.errors import InputError, LayerUseError, NatgradError
from natgrad.structures import StructuredAccumulator

CONV_MOMENTS = ("shared", "positions")


@dataclass(frozen=True)
class PassOptions:
    r"""How one pass over the data computes the unit Fisher (the arguments of
    :func:`natgrad.unit_fisher` that are not the model, layers or data)."""

    kind: str = "exact"
    likelihood: str = "categorical"
    mc_samples: int = 1
    generator: torch.Generator | None = None
    batch_size: int | None = None
    structure: str = "dense"
    conv_moments: str = "shared"
    max_memory: float | None = None


def layer_spec(chosen: dict, units: dict | None) -> dict:
    r"""``{name: (module, units or None)}`` for :func:`compute` from the layers ``chosen``
    (``{name: module}``) and ``units`` (``{name: indices}``); a ``units`` key that names no
    chosen layer (a typo, a module for its name) is an error, not all units silently."""
    if not chosen:
        raise InputError("no layers to compute: layers= is empty")
    units = units or {}
    unknown = set(units) - set(chosen)
    if unknown:
        raise InputError(f"units= names layers that are not computed: {sorted(map(str, unknown))} "
                         f"(computed: {sorted(chosen)}; give layer names as keys)")  # fmt: skip
    return {n: (m, units.get(n)) for n, m in chosen.items()}


def compute(model, spec, inputs, targets, options: PassOptions, *, accumulator=None) -> dict:
    r"""One pass over ``inputs`` (and ``targets``) filling an accumulator per layer of ``spec``
    (``{name: (module, units or None)}``); returns ``{name: result}`` (:class:`UnitFisher`, or
    what ``accumulator``'s ``result`` makes)."""
    kind, likelihood, mc_samples = options.kind, options.likelihood, options.mc_samples
    generator, batch_size, structure = options.generator, options.batch_size, options.structure
    conv_moments, max_memory = options.conv_moments, options.max_memory
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
        accumulator = LayerAccumulator if structure == "dense" else StructuredAccumulator
    accs = {
        name: accumulator(name, module, u, structure=structure, conv_moments=conv_moments)
        for name, (module, u) in spec.items()
    }
    # Up-front: does the result fit? Then the temporaries get what is left (natgrad.memory).
    budget = memory.resolve_max_memory(max_memory)
    itemsize = block_dtype(next(iter(spec.values()))[0].weight.dtype).itemsize
    sizes = {name: (acc.n_units, acc.fan_in) for name, acc in accs.items()}
    memory.check_budget(sizes, structure, itemsize, budget, sharded=False)
    result_bytes = sum(
        memory.result_elements(structure, u, d) * itemsize for u, d in sizes.values()
    )
    temp_elems = memory.temp_budget(result_bytes, budget, structure, max_memory is not None)
    temp_elems //= itemsize
    pool: dict = {}
    for acc in accs.values():
        acc.budget = max(1, temp_elems // 8)  # each of a chunk's ~3 temporaries
        acc.max_bytes = budget  # what the results that grow with the data may reach,
        acc.pool = pool  # all of them together (a shared count, no reference between them)
    n_total = 0
    batches = iter_batches(inputs, targets, batch_size)
    first = next(batches, None)
    if first is not None:  # one input's temporaries, from a forward outside the capture
        per_sample, per_column = _per_sample_elements(model, accs, first[0][:1], options)
        batches = itertools.chain([first], batches)
    with _Capture(model, accs) as capture:
        for b, (x_all, y_all) in enumerate(batches):
            step = max(1, temp_elems // (2 * per_sample))  # half for the batch's own
            for s0 in range(0, x_all.shape[0], step):
                x = x_all[s0 : s0 + step]
                y = None if y_all is None else y_all[s0 : s0 + step]
                _accumulate_batch(capture, accs, x, y, b, options, temp_elems, per_column)
                n_total += x.shape[0]
    n_total = all_reduce_accumulators(accs.values(), n_total)  # sums over ranks, if any
    if n_total == 0:
        raise InputError("no inputs: the data is empty; pass at least one input")
    return {
        name: acc.result(n_total, kind, likelihood, mc_samples if kind == "mc" else None)
        for name, acc in accs.items()
    }


def _accumulate_batch(capture, accs, x, y, b, opt: PassOptions, temp_elems, per_column=0):
    """One forward and the batched backward of all columns (in chunks) for one (sub-)batch;
    a column costs, per input, the hooked layers' signals and ``per_column`` elements of
    activation gradients on its way back through the net."""
    out = capture.forward(x)
    o = lik.flatten_output(opt.likelihood, out)  # [N, D]
    if y is not None:
        y = lik.check_targets(opt.likelihood, o, y)
    elif opt.kind == "empirical":
        raise InputError(
            f"kind='empirical' needs observed targets, but batch {b} has none; "
            "pass (inputs, targets) batches or use kind='exact'/'mc'"
        )
    cols = lik.columns(opt.likelihood, opt.kind, o, y, opt.mc_samples, opt.generator)  # [K, N, D]
    nets = [capture.outputs[name] for name in accs]
    for acc in accs.values():
        acc.begin_batch(capture.inputs[acc.name])
    width = sum(a.width for a in accs.values()) + per_column  # Σ_layers P·U, the net's
    chunk = max(1, min(MEMORY_BUDGET, temp_elems) // max(1, o.shape[0] * width))
    for k0 in range(0, cols.shape[0], chunk):
        grad_out = cols[k0 : k0 + chunk].reshape(-1, *out.shape)  # [K_c, *out]
        grads = _batched_grad(out, nets, grad_out)
        for acc, g in zip(accs.values(), grads, strict=True):
            acc.add_columns(g)
        del grads
    for acc in accs.values():
        acc.end_batch()


def _per_sample_elements(model: nn.Module, accs: dict, x1: torch.Tensor, opt: PassOptions
                         ) -> tuple[int, int]:  # fmt: skip
    r"""``(per input, per column and input)``: the elements of the temporaries one input costs
    in a pass, its activations (kept for the backward, cloned at the hooked layers, and their
    gradients), its K output columns ``[K, D]`` (K = D for the exact Fisher; twice: a chunk
    is copied), and per requested layer the unfolded patches ``[P, d]`` (×4 for
    ``conv_moments="positions"``) and the error signals ``[P, U]`` of one column; and the
    activation gradients one column's backward holds per input at a time (the gradients into
    and out of the widest module; the earlier ones are freed as it goes back). Measured by
    forwards of copies of one input in eval mode (shapes only; batch-norm statistics are not
    touched)."""
    acts = [0, 0]  # Σ and max over the leaf modules of one input's output elements
    shapes: dict[str, tuple[int, ...]] = {}
    targets = {id(acc.module): name for name, acc in accs.items()}
    n_probe = [2]

    def hook(module, args, kwargs, out):
        name = targets.get(id(module))
        if name is not None:  # refused unless its rows are one per copy
            x = layer_input(name, module, args, kwargs, n_probe[0])
        if n_probe[0] != 2 or not isinstance(out, torch.Tensor):
            return  # sizes from the first probe only
        acts[0] += out[0].numel()
        acts[1] = max(acts[1], out[0].numel())
        if name is not None:
            shapes[name] = (x[0].numel(), out[0].numel())

    handles = [
        m.register_forward_hook(hook, with_kwargs=True)
        for m in model.modules()
        if id(m) in targets or not any(True for _ in m.children())
    ]
    was_training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            # copies of one input, 2 then 3: a layer's rows are one per input only if its
            # count matches both (a layer applied sequence-first, [T, N, d], matches at most
            # one; one input alone would refuse a model that squeezes the batch axis away)
            out = model(torch.cat([x1, x1]))
            n_probe[0] = 3
            model(torch.cat([x1, x1, x1]))
    except LayerUseError:
        raise
    except Exception:  # the real pass reports errors with their context
        return 1, 0
    finally:
        for h in handles:
            h.remove()
        for m, flag in was_training.items():
            m.training = flag
    d = out[0].numel() if isinstance(out, torch.Tensor) and out.ndim else 1
    k = d if opt.kind == "exact" else opt.mc_samples if opt.kind == "mc" else 1
    total = 3 * acts[0] + 2 * k * d
    for name, acc in accs.items():
        if name not in shapes:
            continue
        n_out = shapes[name][1]
        positions = max(1, n_out // acc.module.weight.shape[0])
        factor = 4 if acc.conv_moments == "positions" else 1
        total += positions * acc.fan_in * factor + n_out
    return max(1, total), 2 * acts[1]


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


class _Capture(contextlib.ExitStack):
    """Forward hooks that capture each requested layer's input and output, name the first
    module whose output is non-finite, and let gradients reach the layers' outputs; all undone
    (and batch-norm statistics restored, :func:`batchnorm_guard`) on leaving the ``with``."""

    def __init__(self, model: nn.Module, accs: dict):
        super().__init__()
        self.model, self.accs = model, accs
        self.targets = {id(acc.module): acc.name for acc in accs.values()}

    def __enter__(self):
        self.enter_context(batchnorm_guard(self.model))
        self.enter_context(torch.enable_grad())
        for acc in self.accs.values():
            for p in (acc.module.weight, acc.module.bias):
                self.callback(p.requires_grad_, p.requires_grad)
                p.requires_grad_(True)
        for name, module in self.model.named_modules():
            if id(module) in self.targets:
                handle = module.register_forward_hook(self._capture_hook(name), with_kwargs=True)
            elif not any(True for _ in module.children()):
                handle = module.register_forward_hook(functools.partial(self._note_bad, name))
            else:
                continue
            self.callback(handle.remove)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.first_bad: str | None = None
        self.n = x.shape[0]  # the rows every hooked layer's input must have
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
            raise LayerUseError(
                f"layers {missing} were not called in the model's forward pass; leave them "
                "out (unit_fishers(..., layers=[...]) takes the layers to compute)"
            )
        if self.first_bad is not None or not torch.isfinite(out).all():
            where = f"layer {self.first_bad!r}" if self.first_bad else "the model output"
            raise InputError(
                f"non-finite activations (NaN/Inf) first appear in the output of {where}; "
                "check that layer's weights and the input scale"
            )
        return out

    def _note_bad(self, name: str, module, args, out) -> None:
        """Forward hook (with ``name`` bound): remember the first module with a non-finite
        output."""
        if (
            self.first_bad is None
            and isinstance(out, torch.Tensor)
            and out.is_floating_point()
            and not torch.isfinite(out).all()
        ):
            self.first_bad = name

    def _capture_hook(self, name):
        def hook(module, args, kwargs, out):
            if name in self.outputs:
                raise called_twice(name)
            self._note_bad(name, module, args, out)
            self.inputs[name] = layer_input(name, module, args, kwargs, self.n).detach()
            self.outputs[name] = out
            # A clone, so that an in-place activation after the layer cannot overwrite the
            # net inputs whose gradients we take.
            return out.clone()

        return hook
