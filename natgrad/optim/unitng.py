r"""``UnitNaturalGradient``: SGD whose step for each Linear/Conv2d unit is preconditioned by
that unit's own (damped) Fisher block.

For unit i with loss gradient ∇ = (∇_w, ∇_{w0}) (``.grad`` holds the gradient of the LOSS,
the negative mean log-likelihood, so F⁻¹∇ is the descent direction) the step is

.. math::

    \theta_i \leftarrow \theta_i - \eta\, P_i^{-1} \nabla_i,\qquad
    P_i \in \{F_{\lambda,i},\ \text{Ollivier's quasi-diagonal } F_{\lambda,i},\
              \operatorname{diag}(F_{\lambda,i})\}

with F_λ = F + λ·(tr F/(d+1))·I (docs/theory.md; :mod:`natgrad.optim.solves`), ``momentum`` as
in ``torch.optim.SGD`` (a buffer of the preconditioned direction) and weight decay added to
the Linear/Conv2d weights' gradient before preconditioning. ``structure="unit"`` is the unit
natural gradient of Theorem 1 (Ollivier 2015's unit-wise one); ``"blockdiag"`` is it without
the weight–bias coupling b that Theorem 2 corrects, so that training with it isolates the
coupling's share.

F is a running average of the unit Fisher of the training batches: every ``refresh_every``
steps the optimizer runs natgrad's engine (:func:`natgrad.fisher.unit_fishers`: one forward
and one batched backward for all layers; one each per structure where layers over
``memory_budget`` fall back to a cheaper one, each pass with its own dropout masks and, for
``kind="mc"``, its own labels) on the current batch, and sets
F ← ema·F + (1 − ema)·F_batch (the first refresh sets F = F_batch). Only the parts each
structure reads are kept: the dense blocks for ``unit`` and ``blockdiag`` (their solve is
formed once per refresh), the diagonal and the bias column for the others, which the engine
computes without forming dense blocks (:mod:`natgrad.structures`).

Parameters outside Linear/Conv2d layers (batch norm, PReLU slopes), layers without a bias,
layers with a frozen weight or bias and the ``plain_layers`` take the plain SGD step (a
grouped Conv2d, tied weights and a layer the engine cannot read, e.g. one off the path to
the output, are refused unless listed there). A step that fails after its refresh (a NaN
gradient, a singular block, a bad lr) keeps that refresh and moves no weight, so a retry of
the step does not refresh, and count its batch, again; setting
``rel_damping`` or ``layer_damping`` takes effect at the next step. Model buffers
(batch-norm running statistics) are restored after the refresh pass, so it does not count
as a training forward;
dropout in train mode draws its masks from torch's global generator as usual. With batch
norm in training mode, a layer before it gets per-input columns back-propagated through the
batch graph, as in K-FAC: they mix the inputs of the batch, so its blocks approximate rather
than equal a Fisher (a bias right before batch norm, which has no effect, gets c > 0).

Example:
    >>> import torch
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ELU(), torch.nn.Linear(4, 2))
    >>> opt = UnitNaturalGradient(net, lr=0.1, kind="exact", refresh_every=1, ema=0.0)
    >>> x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    >>> torch.nn.functional.cross_entropy(net(x), y).backward()
    >>> opt.step(x)
    >>> sorted(opt.structures.items())
    [('0', 'unit'), ('2', 'unit')]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection
from functools import partial

import torch
from torch import nn

from natgrad import damping
from natgrad._layers import SUPPORTED, is_unit_layer, unit_weights
from natgrad.argtypes import is_finite_number, is_integer
from natgrad.errors import (
    InputError,
    LargeStepWarning,
    LayerUseError,
    NatgradWarning,
    TrainModeWarning,
    UnsupportedLayerError,
)
from natgrad.fisher import unit_fishers
from natgrad.likelihoods import KINDS, check_likelihood
from natgrad.measures import quasidiagonal_apply, quasidiagonal_factor
from natgrad.optim import solves
from natgrad.optim.lowrank import lowrank_apply, lowrank_factor, window_weights
from natgrad.woodbury import WoodburyUnitFisher, woodbury_unit_fishers

__all__ = ["STRUCTURES", "UnitNaturalGradient"]

STRUCTURES = ("unit", "quasidiagonal", "diagonal", "blockdiag")

DENSE_BUDGET = 2**28
"""Default largest dense Fisher state of one layer, in elements (1 GiB in float32)."""

#: The structure a layer over ``memory_budget`` takes instead of a dense one: the O(U·d)
#: structure with the same weight–bias coupling (quasidiagonal keeps b, diagonal drops it).
OVER_BUDGET = {"unit": "quasidiagonal", "blockdiag": "diagonal"}


def _check_hyper(lr, momentum, weight_decay) -> None:
    """lr ≥ 0, momentum in [0, 1), weight_decay ≥ 0, all finite real numbers."""
    for key, value, ok, need in (
        ("lr", lr, lambda v: v >= 0, ">= 0"),
        ("momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)"),
        ("weight_decay", weight_decay, lambda v: v >= 0, ">= 0"),
    ):
        if not (is_finite_number(value) and ok(value)):
            raise InputError(f"UnitNaturalGradient {key}={value!r}: must be a finite number {need}")


#: State keys of the unit Fisher (blocks, structure parts, window rows), kept in their dtype.
_OWN_DTYPE = ("fisher", "window_")


class UnitNaturalGradient(torch.optim.Optimizer):
    r"""Unit-wise natural-gradient SGD (module docstring has the formulas).

    Args:
        model: the network; its Linear/Conv2d layers with a bias are preconditioned.
        lr: learning rate η.
        structure: ``"unit"`` (dense F_λ⁻¹), ``"quasidiagonal"`` (Ollivier), ``"diagonal"``
            or ``"blockdiag"`` (A and c inverted separately: the coupling b set to 0).
        kind: Fisher estimator of the engine: ``"mc"`` (labels sampled from the model),
            ``"exact"`` or ``"empirical"`` (needs ``targets`` in :meth:`step`).
        rel_damping: λ in F_λ = F + λ·(tr F/(d+1))·I, the same for every unit.
        layer_damping: λ_layer, adding λ_layer·(mean over the layer's units of tr F)/(d+1)
            to every unit's diagonal (0: docs/theory.md's F_λ exactly; defaults of both:
            :mod:`natgrad.damping`); a dead unit counts in that mean at its live peers'
            mean (its zero block is taken as theirs, :mod:`natgrad.optim.solves`). Without
            it a unit whose Fisher on the refresh batches was near zero (a ReLU unit active
            on few inputs) but that gets a gradient on a later batch is stepped by
            ~g/(λ·tr F_u), which diverges when the Fisher is refreshed less than every step.
        refresh_every: recompute the batch Fisher every this many steps (1: every step).
        ema: weight of the old average, F ← ema·F + (1 − ema)·F_batch, in [0, 1).
        momentum: SGD momentum on the preconditioned direction.
        weight_decay: L2 on Linear/Conv2d weights, added to the gradient before preconditioning.
        likelihood: ``"categorical"``, ``"bernoulli"`` or ``"gaussian"`` (the loss's model).
        mc_samples: labels sampled per input for ``kind="mc"``.
        seed: seed of the optimizer's own generator for the sampled labels (checkpointed).
        memory_budget: largest dense state U·(d+1)² of a layer, in elements; larger layers
            take the O(U·d) structure with the same weight–bias coupling
            (:data:`OVER_BUDGET`: ``unit`` → ``quasidiagonal``, ``blockdiag`` → ``diagonal``),
            with a :class:`~natgrad.errors.NatgradWarning`.
        window: ``None`` (default): ``unit`` keeps the dense running average above. An
            integer K: ``unit`` keeps the factor rows of the last K refresh batches instead
            and solves F_λ⁻¹g exactly for that windowed Fisher by Woodbury
            (:mod:`natgrad.optim.lowrank`), the route for wide layers. Needs rel_damping or
            layer_damping > 0. With K·N < d+1 every direction the rows do not span is scaled
            by the full 1/μ: cheap, but a poor metric to train with (a one-batch window
            diverged with ELU on Fashion-MNIST; README, "Testing the mechanism").
        plain_layers: names of Linear/Conv2d layers (``model.named_modules()``) that take
            the plain SGD step (e.g. a pixel-fed first layer, which no unit can centre).
        plain_lr_scale: their learning rate as a multiple of ``lr`` (a natural-gradient lr is
            far below a good SGD lr for the same layer); a schedule scales it alike.
        loss_scale: the loss ``.grad`` is of, as a multiple of the negative log-likelihood
            per example (summed over its outputs): 1/D for a mean over D outputs, such as
            ``binary_cross_entropy_with_logits``'s default over D pixels. The natural-gradient
            layers' directions are divided by it (the Fisher of that loss is loss_scale·F),
            so F⁻¹∇ is the per-example step whatever the reduction; the plain layers step on
            ``.grad`` as it is.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        *,
        structure: str = "unit",
        kind: str = "mc",
        rel_damping: float = damping.STEP_DAMPING,
        layer_damping: float = damping.LAYER_DAMPING,
        refresh_every: int = 10,
        ema: float = 0.9,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        likelihood: str = "categorical",
        mc_samples: int = 1,
        seed: int = 0,
        memory_budget: int = DENSE_BUDGET,
        window: int | None = None,
        plain_layers: Collection[str] = (),
        plain_lr_scale: float = 1.0,
        loss_scale: float = 1.0,
    ) -> None:
        if structure not in STRUCTURES:
            raise InputError(f"structure={structure!r}: choose one of {', '.join(STRUCTURES)}")
        if kind not in KINDS:
            raise InputError(f"kind={kind!r}: choose one of {', '.join(KINDS)}")
        check_likelihood(likelihood)
        rel_damping = damping.check(rel_damping, "rel_damping")  # the one rule for a damping
        layer_damping = damping.check(layer_damping, "layer_damping")
        for key, value, ok, need in (
            ("refresh_every", refresh_every, lambda v: is_integer(v) and v >= 1,
             "a positive integer"),
            ("ema", ema, lambda v: is_finite_number(v) and 0.0 <= v < 1.0, "a number in [0, 1)"),
            ("window", window, lambda v: v is None or (is_integer(v) and v >= 1),
             "a positive integer or None"),
            ("plain_lr_scale", plain_lr_scale, lambda v: is_finite_number(v) and v > 0,
             "a finite number > 0"),
            ("loss_scale", loss_scale, lambda v: is_finite_number(v) and v > 0,
             "a finite number > 0"),
            ("seed", seed, lambda v: is_integer(v) and 0 <= v < 2**63, "an integer in [0, 2**63)"),
            ("mc_samples", mc_samples, lambda v: is_integer(v) and v >= 1, "a positive integer"),
        ):  # fmt: skip
            if not ok(value):
                raise InputError(f"{key} must be {need}, got {value!r}")
        if window is not None and structure != "unit":
            raise InputError(f"window={window} is a form of structure='unit' (the windowed "
                             f"unit Fisher); structure={structure!r} keeps no window")  # fmt: skip
        if window is not None and not (rel_damping > 0 or layer_damping > 0):
            raise InputError(f"window={window} needs rel_damping > 0 or layer_damping > 0: "
                             "the windowed unit Fisher has rank <= K·N and is singular "
                             "when that is below d+1")  # fmt: skip
        _check_hyper(lr, momentum, weight_decay)
        from natgrad.optim.centring import is_centred

        self.model = model
        self.loss_scale = float(loss_scale)
        self.layers: dict[str, nn.Module] = {}
        self.structures: dict[str, str] = {}
        too_big = []
        named = dict(model.named_modules())
        unknown = [n for n in plain_layers if not isinstance(named.get(n), SUPPORTED)]
        if isinstance(plain_layers, str) or unknown:
            raise InputError(f"plain_layers={plain_layers!r}: {unknown or plain_layers!r} are not "
                             "Linear/Conv2d layers of the model (names as model.named_modules() "
                             "gives them)")  # fmt: skip
        plain = set(plain_layers)
        for name, m in model.named_modules():
            if not is_unit_layer(m) or name in plain:
                continue
            if not (m.weight.requires_grad and m.bias.requires_grad):
                continue  # frozen, or half frozen: its trainable parameter takes plain SGD
            if is_centred(m):
                raise InputError(
                    f"layer {name!r} is centred (natgrad.optim.centre); the unit Fisher engine "
                    "sees the uncentred parametrisation. Centring is meant for plain SGD: use "
                    "torch.optim.SGD on the centred model, or UnitNaturalGradient on the original"
                )
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise UnsupportedLayerError(
                    f"layer {name!r} is a grouped Conv2d (groups={m.groups}), whose unit Fisher "
                    "natgrad does not compute; list it in plain_layers= to give it plain SGD"
                )
            self.layers[name] = m
            dense = m.weight.shape[0] * (m.weight[0].numel() + 1) ** 2
            cheap = OVER_BUDGET.get(structure)
            if cheap and window is None and dense > memory_budget:
                too_big.append(f"{name} ({dense:,} elements)")
                self.structures[name] = cheap
            else:
                self.structures[name] = structure
        from natgrad.network import shared_parameters

        mine = {id(m) for m in self.layers.values()}
        tied = [held for held in shared_parameters(model) if any(id(m) in mine for *_, m in held)]
        if tied:
            said = " is ".join(f"{n}.{k}" for n, k, _ in tied[0])
            raise InputError(f"UnitNaturalGradient: {said} (tied weights); a "
                             "preconditioned layer needs its own weight and bias, whose "
                             "running Fisher it keeps. Untie them, or list the layers in "
                             "plain_layers=[...] to give them plain SGD")  # fmt: skip
        if too_big:
            warnings.warn(
                f"dense unit Fisher blocks of layers {', '.join(too_big)} exceed the memory "
                f"budget of {memory_budget:,} elements; they use the {OVER_BUDGET[structure]} "
                "structure. Raise memory_budget= to keep them dense.",
                NatgradWarning,
                stacklevel=2,
            )
        weights = {id(w) for w in unit_weights(model)}
        slow = {id(p) for n in plain for p in named[n].parameters()}
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [  # decayed weights, the rest; then both again for the plain layers
            {"params": [p for p in params if (id(p) in weights, id(p) in slow) == (w, s)],
             "weight_decay": weight_decay if w else 0.0,
             **({"lr": lr * plain_lr_scale, "lr_scale": plain_lr_scale} if s else {})}
            for s in (False, True) for w in (True, False)
        ]  # fmt: skip
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay)
        super().__init__([g for g in groups if g["params"]], defaults)
        self.structure, self.kind, self.likelihood = structure, kind, likelihood
        self.rel_damping, self.refresh_every, self.ema = rel_damping, refresh_every, ema
        self.layer_damping = float(layer_damping)
        self.mc_samples = mc_samples
        self.window = window
        self.generator = torch.Generator().manual_seed(int(seed))
        self._factors: dict[str, object] = {}  # per-refresh preconditioners, by layer
        self._factors_for = (self.rel_damping, self.layer_damping)  # the dampings they use
        self.steps = 0
        self._refreshed_at = -1  # the step whose refresh has run (a failed step's, kept)

    # --- state: the running Fisher lives in the state of each layer's weight ---------------
    def state_dict(self) -> dict:
        """``torch.optim`` state plus the step count and the label generator (as tensors)."""
        first = self.param_groups[0]["params"][0]
        self.state[first]["natgrad_steps"] = self.steps
        self.state[first]["natgrad_refreshed_at"] = self._refreshed_at
        self.state[first]["natgrad_generator"] = self.generator.get_state()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts floating state to its parameter's dtype; the unit Fisher's keeps its own
        # (float32 for a half-precision net, whose blocks are summed in float32), or a resumed
        # run would step with a rounded Fisher
        own = {i: {k: v for k, v in st.items() if isinstance(k, str) and k.startswith(_OWN_DTYPE)}
               for i, st in state_dict["state"].items()}  # fmt: skip
        rest = {i: {k: v for k, v in st.items() if k not in own[i]}
                for i, st in state_dict["state"].items()}  # fmt: skip
        super().load_state_dict({**state_dict, "state": rest})
        saved = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(saved, params, strict=True):
            for k, v in own.get(i, {}).items():
                self.state[p][k] = v.to(device=p.device, copy=True)
        first = self.param_groups[0]["params"][0]
        st = self.state[first]
        if "natgrad_steps" in st:
            self.steps = int(st["natgrad_steps"])
        self._refreshed_at = int(st.get("natgrad_refreshed_at", -1))
        if "natgrad_generator" in st:  # load_state_dict casts it to the param dtype
            self.generator.set_state(st["natgrad_generator"].to(torch.uint8).cpu())
        self._factors = {}

    # --- the step ----------------------------------------------------------------------------
    @torch.no_grad()
    def step(
        self,
        inputs: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        closure: Callable[[], torch.Tensor] | None = None,
    ):
        r"""One preconditioned step. ``inputs`` (and ``targets`` for ``kind="empirical"``) is
        the current batch, needed on refresh steps; ``closure`` re-evaluates the loss and
        calls ``backward`` (its loss is returned)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # a step refreshes once: a retry of a step that failed after its refresh (a NaN
        # gradient, a singular block) uses that refresh, so no batch is counted twice
        due = self.steps % self.refresh_every == 0 and self._refreshed_at != self.steps
        refresh = due or not self._has_fisher()
        if refresh and inputs is None:
            raise InputError(
                f"step {self.steps} refreshes the unit Fisher: call opt.step(inputs) with "
                "the current batch (and targets= for kind='empirical')"
            )
        if refresh:
            self._refresh(inputs, targets)
            self._refreshed_at = self.steps
            self._step_warned = False
        directions = self._directions()
        self._check_finite(directions)
        for group in self.param_groups:  # a schedule may have set them since: before any update
            _check_hyper(group["lr"], group["momentum"], group["weight_decay"])
        if not getattr(self, "_step_warned", False):  # at most one warning per refresh period
            self._step_warned = self._check_step_size(directions)
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                d_p = directions.get(p)
                if d_p is None:
                    if p.grad is None:
                        continue
                    d_p = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                if mom:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d_p.detach().clone()
                    else:
                        buf.mul_(mom).add_(d_p)
                    d_p = buf
                p.add_(d_p, alpha=-lr)
        self.steps += 1
        return loss

    def _check_finite(self, directions: dict) -> None:
        """One cheap check per step that every update (preconditioned, or the plain gradient of
        the parameters the engine does not precondition) is finite (the factors themselves are
        checked once per refresh, where they are formed); a
        :class:`~natgrad.errors.DivergedError` names the parameter otherwise."""
        from natgrad.errors import DivergedError

        named = [(n, directions.get(p, p.grad)) for n, p in self.model.named_parameters()]
        named = [(n, d) for n, d in named if d is not None]
        if not named:
            return
        # One pass per tensor (a sum: NaN/Inf propagate) and one sync; the exact per-tensor
        # check only when a sum is not finite (an overflowing sum of finite values is possible)
        if bool(torch.isfinite(torch.stack([d.sum().double() for _, d in named])).all()):
            return
        bad = [n for n, d in named if not bool(torch.isfinite(d).all())]
        if not bad:
            return
        raise DivergedError(
            f"UnitNaturalGradient step {self.steps}: the update of {', '.join(bad[:3])} is not "
            "finite (a NaN/Inf gradient, or a preconditioned step that overflowed); the weights "
            "were not changed. Check the loss and inputs, lower lr or raise rel_damping"
        )

    def _check_step_size(self, directions: dict) -> bool:
        r"""Warn (:class:`~natgrad.errors.LargeStepWarning`) when lr·‖u_W‖ > ‖W‖ for a
        layer's weights W and preconditioned update u_W (:data:`MAX_RELATIVE_STEP`): such a step
        replaces the layer rather than adjusting it, and a NaN follows a few steps later.
        One norm per layer; returns whether it warned."""
        lr = self.param_groups[0]["lr"]
        big = []
        for name, m in self.layers.items():
            u = directions.get(m.weight)
            if u is None:
                continue
            ratio = lr * float(u.norm()) / max(float(m.weight.detach().norm()), 1e-12)
            if ratio > MAX_RELATIVE_STEP:
                big.append(f"{name} ({ratio:.3g}x)")
        if big:
            warnings.warn(
                f"UnitNaturalGradient step {self.steps}: the preconditioned update would move "
                f"the weights of {', '.join(big[:5])}{' …' if len(big) > 5 else ''} by more "
                f"than their own norm (lr {lr:g}, rel_damping {self.rel_damping:g}, "
                f"layer_damping {self.layer_damping:g}); lower lr or raise the damping "
                "before the loss diverges",
                LargeStepWarning,
                stacklevel=3,
            )
        return bool(big)

    def _has_fisher(self) -> bool:
        return all(any(k in self.state[m.weight] for k in _FISHER_KEYS)
                   for m in self.layers.values())  # fmt: skip

    def _refresh(self, inputs, targets) -> None:
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        options = dict(kind=self.kind, likelihood=self.likelihood, mc_samples=self.mc_samples,
                       generator=self.generator)  # fmt: skip
        fishers = {}
        try:
            with warnings.catch_warnings():
                # With batch norm in training mode the refresh back-propagates each input's
                # columns through the batch graph, as K-FAC does: they mix the inputs, so
                # the blocks are a batch-graph approximation, not the Fisher of any model
                # (the class docstring says so; the warning would repeat it every refresh).
                warnings.simplefilter("ignore", TrainModeWarning)
                for structure in dict.fromkeys(self.structures.values()):  # one pass, unless
                    names = [n for n, s in self.structures.items() if s == structure]  # fallback
                    if structure == "unit" and self.window is not None:
                        fishers.update(woodbury_unit_fishers(self.model, inputs, targets,
                                                             layers=names, **options))  # fmt: skip
                        continue
                    engine = "dense" if structure in ("unit", "blockdiag") else structure
                    fishers.update(unit_fishers(self.model, inputs, targets, layers=names,
                                                structure=engine, **options))  # fmt: skip
        except LayerUseError as exc:
            raise LayerUseError(f"UnitNaturalGradient's refresh: {exc}. Here: list such a "
                                "layer in plain_layers=[...] to give it plain SGD") from None  # fmt: skip
        finally:
            for b, saved in buffers:
                b.copy_(saved)
        self._factors = {}
        for name, fisher in fishers.items():
            state = self.state[self.layers[name].weight]
            if isinstance(fisher, WoodburyUnitFisher):  # the window's rows (window=K)
                self._push_window(state, fisher)
                continue
            for key, value in _stored_parts(fisher, self.structures[name]).items():
                old = state.get(key)
                if old is None or self.ema == 0.0:
                    state[key] = value.clone()
                else:
                    old.mul_(self.ema).add_(value, alpha=1.0 - self.ema)

    def _push_window(self, state: dict, fisher: WoodburyUnitFisher) -> None:
        r"""Age the window's batches by one and store the newest as batch 0 (state keys
        ``window_rows_k``, ``window_scales_k``; at most ``window`` batches)."""
        for k in range(self.window - 1, 0, -1):
            for key in ("window_rows", "window_scales"):
                if f"{key}_{k - 1}" in state:
                    state[f"{key}_{k}"] = state[f"{key}_{k - 1}"]
        state["window_rows_0"] = fisher.rows
        if fisher.scales is not None:
            state["window_scales_0"] = fisher.scales
        else:
            state.pop("window_scales_0", None)

    def _directions(self) -> dict[torch.Tensor, torch.Tensor]:
        r"""{param: preconditioned direction} for the weights and biases of every layer."""
        out = {}
        wd = self.param_groups[0]["weight_decay"] if self.param_groups else 0.0
        dampings = (self.rel_damping, self.layer_damping)
        if dampings != self._factors_for:  # set since the factors were formed: form them again
            for key, value in zip(("rel_damping", "layer_damping"), dampings, strict=True):
                damping.check(value, key)  # the one rule for a damping
            self._factors, self._factors_for = {}, dampings
        for name, m in self.layers.items():
            if m.weight.grad is None or m.bias.grad is None:
                continue
            gw = m.weight.grad.reshape(m.weight.shape[0], -1)  # [U, d]
            if wd:
                gw = gw + wd * m.weight.reshape(gw.shape)
            if name not in self._factors:
                self._factors[name] = self._preconditioner(name, m)
            pre = self._factors[name]
            if self.structures[name] == "quasidiagonal":  # O(U·d) elementwise, no concatenation
                u_w, u_0 = quasidiagonal_apply(pre, gw, m.bias.grad)
                out[m.weight], out[m.bias] = u_w.reshape(m.weight.shape), u_0
                continue
            u = pre(torch.cat([gw, m.bias.grad.unsqueeze(-1)], dim=-1))  # [U, d+1]
            out[m.weight] = u[:, :-1].reshape(m.weight.shape)
            out[m.bias] = u[:, -1]
        if self.loss_scale != 1.0:  # (loss_scale·F)⁻¹∇: the metric of the loss .grad is of
            out = {p: u / self.loss_scale for p, u in out.items()}
        return out

    def _preconditioner(self, name: str, m: nn.Module):
        r"""Per-refresh factors of layer ``name``: F_λ⁻¹ (formed in float64) for ``unit``, the
        windowed Woodbury factor, Ollivier's quasi-diagonal coefficients or 1/diag(F_λ); all in
        the weight's dtype, so that a step is a few tensor operations. Returns ``g ↦ u``
        (``[U, d+1]``), or the quasi-diagonal factor."""
        state, structure = self.state[m.weight], self.structures[name]
        lam, kw = self.rel_damping, dict(layer_damping=self.layer_damping, layer=name)
        dtype = m.weight.dtype
        if structure == "unit" and "window_rows_0" in state:
            count = sum(f"window_rows_{k}" in state for k in range(self.window))
            return partial(lowrank_apply, lowrank_factor(
                [state[f"window_rows_{k}"] for k in range(count)],
                [state.get(f"window_scales_{k}") for k in range(count)],
                window_weights(count, self.ema), lam, dtype=dtype, **kw,
            ))  # fmt: skip
        if structure in ("unit", "blockdiag"):  # F_λ⁻¹ once per refresh; a step is a matmul
            fisher = state["fisher"]
            if structure == "blockdiag":
                fisher = solves.without_coupling(fisher)
            if m.weight[0].numel() + 1 <= INVERSE_MAX_D1:
                return partial(
                    solves.unit_apply, solves.unit_inverse(fisher, lam, dtype=dtype, **kw)
                )
            return partial(solves.unit_direction, solves.unit_factor(fisher, lam, **kw))  # wide
        if structure == "quasidiagonal":
            metric = solves.quasidiagonal_metric(state["fisher_diag"], state["fisher_bias"], lam,
                                                 layer_damping=self.layer_damping, layer=name)  # fmt: skip
            return quasidiagonal_factor(*metric, layer=name, hint=solves.STEP_HINT).to(dtype)
        return solves.diagonal_coefficients(state["fisher_diag"], lam, **kw).to(dtype).mul


_FISHER_KEYS = ("fisher", "fisher_diag", "window_rows_0")

#: lr·‖u_W‖ / ‖W‖ above which a step gets a LargeStepWarning (the update outweighs the layer).
MAX_RELATIVE_STEP = 1.0

#: Largest block size d+1 whose F_λ⁻¹ is formed explicitly at refresh. Measured on the
#: 2-core CPU (float64, 128 units): at d+1 = 129 the inverse costs as much as the Cholesky
#: (0.12 s each) and turns every step's two triangular solves into one float32 matmul; at
#: d+1 = 785 (mnist-fc's input layer) it costs 1.7× the Cholesky (3.9 s vs 2.3 s), more
#: than the solves it saves over 10 steps, so wide blocks keep their Cholesky factors.
INVERSE_MAX_D1 = 512


def _stored_parts(fisher, structure: str) -> dict[str, torch.Tensor]:
    r"""What a structure keeps of a batch's unit Fisher: the dense blocks ``[U, d+1, d+1]``,
    or the diagonal ``[U, d+1]`` and bias column ``[U, d]``."""
    if structure in ("unit", "blockdiag"):
        return {"fisher": fisher.matrix}
    diag, col = fisher.diagonal, fisher.bias_column  # natgrad.structures.StructuredUnitFisher
    if structure == "quasidiagonal":
        return {"fisher_diag": diag, "fisher_bias": col}
    return {"fisher_diag": diag}
