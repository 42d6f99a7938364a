r"""R fully connected nets of one architecture as ONE batched model, trained by SGD.

The model of :mod:`natgrad.training.grid`: the R nets' parameters are stacked along a
leading run axis and each layer of every net is one batched GEMM,

.. math::

    h^{(l)}_{r} = f_{r}\big(h^{(l-1)}_{r} W^{(l)\top}_{r} + b^{(l)}_{r}\big),\qquad
    L = \sum_{r} L_r(\theta_r),

``[R, B, d_in] @ [R, d_in, d_out]`` (``torch.baddbmm``). The nets do not interact:
∂L/∂θ_r = ∂L_r/∂θ_r, so one backward gives every net its own gradient, and a net whose loss
is NaN does not touch the others. Each net keeps its unit type (nets with one unit type
should be contiguous along the run axis: each contiguous stretch is one kernel per layer),
its batch-norm statistics and its SGD settings (lr, momentum, weight decay), in the
arithmetic of ``torch.optim.SGD``: g ← g + λ_r θ (decayed weights), v ← μ_r v + g (v = g
at the first step), θ ← θ − η_r v.

What is batched: ``nn.Sequential`` nets of Flatten, Linear, the units ELU/ReLU/LReLU/SReLU/SELU
(:data:`BATCHED_UNITS`; PReLU has a parameter per net), ``BatchNorm1d`` (affine, tracking
running statistics) and dropout with p = 0: :func:`batched_plan` says whether a net is.

Example:
    >>> from natgrad.models import build_model
    >>> nets = [build_model("mnist-fc", u, in_features=64, seed=0) for u in ("elu", "relu")]
    >>> stack = StackedNets(nets)
    >>> stack.forward(torch.zeros(2, 5, 1, 8, 8)).shape
    torch.Size([2, 5, 10])
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from itertools import pairwise

import torch
from torch import nn

from natgrad.errors import InputError
from natgrad.units import SReLU

__all__ = ["BATCHED_UNITS", "StackedNets", "batched_plan"]

#: Unit modules the batched forward applies (PReLU has a parameter per run: not batched).
BATCHED_UNITS = (nn.ELU, nn.ReLU, nn.LeakyReLU, SReLU, nn.SELU, nn.GELU)


def unit_signature(module: nn.Module) -> tuple:
    """What makes two unit modules compute the same function (type and settings)."""
    return type(module), module.extra_repr()


def batched_plan(model: nn.Module) -> list[tuple[str, str]] | None:
    """``[(kind, name)]`` of the leaf modules in forward order: flatten, linear, bn, unit, skip;
    ``None`` when the model has a module the batched forward does not implement."""
    steps = []
    for name, mod in model.named_modules():
        if any(True for _ in mod.children()):
            if not isinstance(mod, nn.Sequential):
                return None
            continue
        if isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1:
            steps.append(("flatten", name))
        elif isinstance(mod, nn.Linear):
            steps.append(("linear", name))
        elif isinstance(mod, BATCHED_UNITS):
            steps.append(("unit", name))
        elif (isinstance(mod, nn.BatchNorm1d) and mod.affine and mod.track_running_stats
              and mod.momentum is not None):  # fmt: skip
            steps.append(("bn", name))
        elif isinstance(mod, nn.Dropout) and mod.p == 0:
            steps.append(("skip", name))
        else:
            return None
    return steps


def unit_order(models: Sequence[nn.Module]) -> list[int]:
    """Indices of ``models`` sorted by unit type (stable): each unit type then acts on one
    contiguous slice of the run axis."""

    def key(i: int) -> str:
        units = [m for m in models[i].modules() if isinstance(m, BATCHED_UNITS)]
        return repr(unit_signature(units[0])) if units else ""

    return sorted(range(len(models)), key=key)


def _per_run(values, r: int, what: str) -> list[float]:
    out = [float(values)] * r if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(out) != r:
        raise InputError(f"StackedNets: {len(out)} values of {what} for {r} nets")
    return out


class StackedNets:
    r"""R nets with one batchable architecture (:func:`batched_plan`), stacked.

    Args:
        models: the nets; their parameters and buffers are copied (the modules are left as
            they are: :meth:`copy_to` writes a net's current state back).
        momentum, weight_decay: SGD settings, one for all nets or one per net.
        decayed: names of the parameters weight decay applies to (default: every parameter,
            as ``torch.optim.SGD(model.parameters(), weight_decay=…)``).
        loss: ``"cross_entropy"`` (class labels) or ``"bce_logits"`` (the inputs are the
            targets, the autoencoder's).

    Raises:
        InputError: the nets do not share a batchable architecture, or a setting has the
            wrong number of values.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        *,
        momentum: float | Sequence[float] = 0.0,
        weight_decay: float | Sequence[float] = 0.0,
        decayed: Collection[str] | None = None,
        loss: str = "cross_entropy",
    ):
        models = list(models)
        plans = [batched_plan(m) for m in models]
        if not models or any(p is None or p != plans[0] for p in plans):
            raise InputError("StackedNets: these nets do not share a batchable architecture "
                             "(nn.Sequential of Flatten, Linear, BatchNorm1d, ELU/ReLU/LReLU/"
                             "SReLU/SELU, Dropout(0))")  # fmt: skip
        if loss not in ("cross_entropy", "bce_logits"):
            raise InputError(f"StackedNets: loss {loss!r} is not 'cross_entropy' or 'bce_logits'")
        self.plan, self.R, self.loss = plans[0], len(models), loss
        first = models[0]
        self.names = [n for n, _ in first.named_parameters()]
        # Linear weights are held transposed, [R, d_in, d_out]: the batched products then
        # read and write contiguous memory (their gradients too, which the SGD step adds).
        self.transposed = {f"{name}.weight" for kind, name in self.plan if kind == "linear"}
        params = [dict(m.named_parameters()) for m in models]
        self.params = {
            n: self._stack(n, [p[n].detach() for p in params]).requires_grad_() for n in self.names
        }
        self.leaves = [self.params[n] for n in self.names]
        names = set(self.names) if decayed is None else set(decayed)
        self.decayed = {n: n in names for n in self.names}
        self.wd = _per_run(weight_decay, self.R, "weight_decay")
        self.momentum = _per_run(momentum, self.R, "momentum")
        self.use_momentum = any(m != 0 for m in self.momentum)
        self.bufs: dict[str, torch.Tensor] | None = None  # momentum buffers, from step 1
        # Batch norm: running statistics [R, U] and step counts [R] (per-run buffers).
        self.bn = {name: first.get_submodule(name) for kind, name in self.plan if kind == "bn"}
        self.buffers = {}
        for name in self.bn:
            mods = [m.get_submodule(name) for m in models]
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                self.buffers[f"{name}.{key}"] = torch.stack([getattr(m, key) for m in mods])
        # The unit slices of each unit layer: [(start, stop, module)] over the run axis.
        self.units = {}
        for name in (name for kind, name in self.plan if kind == "unit"):
            mods = [m.get_submodule(name) for m in models]
            sig = [unit_signature(m) for m in mods]
            bounds = [0, *(i for i in range(1, self.R) if sig[i] != sig[i - 1]), self.R]
            self.units[name] = [(s, e, mods[s]) for s, e in pairwise(bounds)]

    def _stack(self, name: str, per_run: list[torch.Tensor]) -> torch.Tensor:
        """``[R, ...]`` from the nets' tensors, Linear weights as ``[R, d_in, d_out]``."""
        if name in self.transposed:
            return torch.stack([t.T for t in per_run])
        return torch.stack(per_run)

    def _slice(self, name: str, stacked: torch.Tensor, i: int) -> torch.Tensor:
        """Net i's tensor in its module's layout (a view)."""
        return stacked[i].T if name in self.transposed else stacked[i]

    # --- the batched model --------------------------------------------------------------
    def forward(self, x: torch.Tensor, *, training: bool = False) -> torch.Tensor:
        """``[R, B, ...]`` inputs → ``[R, B, C]`` outputs of every net. ``training``: batch
        norm normalises by the batch's statistics and updates the running ones
        (``nn.BatchNorm1d.train()``), else by the running ones."""
        h = x
        for kind, name in self.plan:
            if kind == "bn":
                h = self._batch_norm(name, h, training)
                continue
            if kind == "flatten":
                h = h.flatten(2)
            elif kind == "linear":
                wt, b = self.params[f"{name}.weight"], self.params[f"{name}.bias"]
                h = torch.baddbmm(b.unsqueeze(1), h, wt)  # [R, B, d_in] @ [R, d_in, d_out]
            elif kind == "unit":
                segs = self.units[name]
                if len(segs) == 1:
                    h = segs[0][2](h)
                else:  # split, not slices: its backward is one cat, not a zero-fill per slice
                    parts = h.split([e - s for s, e, _ in segs])
                    h = torch.cat([m(p) for p, (_, _, m) in zip(parts, segs, strict=True)])
        return h

    def _batch_norm(self, name: str, h: torch.Tensor, training: bool) -> torch.Tensor:
        r"""``nn.BatchNorm1d`` of every net on ``h`` ``[R, B, U]``: torch's batch norm on the
        ``[B, R·U]`` layout, whose channels are the (net, unit) pairs, with the nets' γ, β and
        running statistics as views of their ``[R, U]`` stacks (updated in place in training,
        as the module updates its own): per channel the arithmetic of the single net."""
        mod = self.bn[name]
        r, b, u = h.shape
        if training and b < 2:
            raise InputError(f"batch norm {name!r}: a training batch of {b} input has no "
                             "variance; use batch_size >= 2")  # fmt: skip
        out = nn.functional.batch_norm(
            h.transpose(0, 1).reshape(b, r * u),
            self.buffers[f"{name}.running_mean"].view(-1),
            self.buffers[f"{name}.running_var"].view(-1),
            self.params[f"{name}.weight"].reshape(-1), self.params[f"{name}.bias"].reshape(-1),
            training, mod.momentum, mod.eps,
        )  # fmt: skip
        if training:
            self.buffers[f"{name}.num_batches_tracked"].add_(1)
        return out.view(b, r, u).transpose(0, 1).contiguous()

    def losses(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[R]`` the mean loss of each net on its batch (``x``, ``y``: ``[R, B, ...]``)."""
        if self.loss == "bce_logits":
            loss = nn.functional.binary_cross_entropy_with_logits(
                out, x.flatten(2), reduction="none"
            )
        else:
            loss = nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
        return loss.reshape(out.shape[0], -1).mean(1)

    # --- SGD ------------------------------------------------------------------------------
    def load_momentum(self, per_run: Sequence[dict[str, torch.Tensor | None]]) -> None:
        """Momentum buffers by parameter name, one dict per net in the modules' layout (a
        missing or ``None`` buffer is zero): what a resumed ``torch.optim.SGD`` holds."""
        if not self.use_momentum:
            return
        self.bufs = {}
        for n in self.names:
            per = []
            for i, bufs in enumerate(per_run):
                buf = bufs.get(n)
                like = self._slice(n, self.params[n], i)
                per.append(torch.zeros_like(like) if buf is None else buf.detach())
            self.bufs[n] = self._stack(n, per)

    def momentum_buffers(self, i: int) -> dict[str, torch.Tensor] | None:
        """Net i's momentum buffers in its modules' layout (copies), ``None`` before step 1."""
        if self.bufs is None or self.momentum[i] == 0:
            return None
        return {n: self._slice(n, self.bufs[n], i).clone(memory_format=torch.contiguous_format)
                for n in self.names}  # fmt: skip

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor], lrs: Sequence[float]) -> None:
        r"""``torch.optim.SGD`` (dampening 0, no Nesterov) with per-net η, μ, λ; ``grads``
        in the order of :attr:`leaves`.

        A setting shared by every net is applied as torch's foreach SGD applies it (same
        ops, same rounding); one that differs between nets as a ``[R, 1, ...]`` tensor.
        """
        params = self.leaves
        grads = list(grads)
        if any(self.wd):  # g + λ_r θ; torch's add(alpha=) when λ is the same for every net
            for i, n in enumerate(self.names):
                if self.decayed[n] and len(set(self.wd)) == 1:
                    grads[i] = grads[i].add(params[i], alpha=self.wd[0])
                elif self.decayed[n]:
                    grads[i] = grads[i] + self._column(self.wd, params[i]) * params[i]
        if self.use_momentum:
            if self.bufs is None:
                self.bufs = {n: g.clone() for n, g in zip(self.names, grads, strict=True)}
            else:
                bufs = [self.bufs[n] for n in self.names]
                if len(set(self.momentum)) == 1:
                    torch._foreach_mul_(bufs, self.momentum[0])
                else:
                    for buf in bufs:
                        buf.mul_(self._column(self.momentum, buf))
                torch._foreach_add_(bufs, grads)
            grads = [self.bufs[n] for n in self.names]
        if len(set(lrs)) == 1:
            torch._foreach_add_(params, grads, alpha=-lrs[0])
        else:
            for p, g in zip(params, grads, strict=True):
                p.sub_(self._column(lrs, p) * g)

    def _column(self, values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        """Per-net ``values`` as a ``[R, 1, ...]`` tensor that broadcasts against ``like``."""
        t = torch.tensor(values, dtype=like.dtype, device=like.device)
        return t.view((self.R,) + (1,) * (like.ndim - 1))

    @torch.no_grad()
    def copy_to(self, i: int, model: nn.Module) -> None:
        """Write net i's current parameters and buffers into ``model`` (its architecture)."""
        params = dict(model.named_parameters())
        for n in self.names:
            params[n].copy_(self._slice(n, self.params[n], i))
        buffers = dict(model.named_buffers())
        for n, stacked in self.buffers.items():
            buffers[n].copy_(stacked[i])
