r"""Train a grid of runs (unit types × seeds × settings) as ONE batched model.

A study is a grid of small nets that share an architecture: trained one at a time, each
step is a handful of small GEMMs and dozens of tiny kernel launches. :func:`train_grid`
stacks the R runs' parameters along a leading run axis and takes every step of every run
at once, with batched GEMMs:

.. math::

    h^{(l)}_{r} = f_{r}\big(h^{(l-1)}_{r} W^{(l)\top}_{r} + b^{(l)}_{r}\big),\qquad
    L = \sum_{r} L_r(\theta_r)

``[R, B, d_in] @ [R, d_in, d_out]`` per layer (``torch.baddbmm``). The runs do not interact:
∂L/∂θ_r = ∂L_r/∂θ_r, so one backward gives every run its own gradient. Each run keeps

- its seed: the initial weights, the data split (digits) and the probe set come from the
  same :func:`natgrad.training.loop` code as a sequential run;
- its data order: the epoch-e permutation of run r is drawn from the generator seeded by
  ``(seed_r, e)``, exactly as the sequential loop draws it;
- its unit type: runs are ordered by unit so that each unit type acts on a contiguous
  slice of the run axis (one kernel per unit type and layer, no masks);
- its optimizer: SGD with momentum and weight decay (weights of Linear layers only), with
  per-run lr, momentum and decay, in the arithmetic of ``torch.optim.SGD``:
  g ← g + λ_r θ (decayed weights), v ← μ_r v + g (v = g at the first step),
  θ ← θ − η_r v.

Every run writes the run directory of a sequential run (:mod:`natgrad.training.loop`):
``config.json``, ``metrics.jsonl``, ``activations/`` and ``checkpoints/``, in the same format,
with its own model, its own momentum buffers and the RNG states a sequential run would hold
(the global generators seeded by ``seed_r``: these nets draw nothing from them). Epoch 0,
activation recordings and checkpoints go through the sequential code on a per-run
``PaperNet`` holding the run's slice. A grid-trained run can therefore be resumed by
:func:`~natgrad.training.train`, and the other way round. The one difference: ``seconds``,
``train_seconds`` and ``seconds_per_iteration`` are the grid's wall time divided by R (the
runs trained together), and ``config.json`` records ``trainer: {"name": "grid", "runs": R}``.

Results equal the sequential trainer's up to float round-off (batched and single GEMMs sum
in different orders), not bit for bit.

What is batched: fully connected nets (``mnist-fc``, ``mnist-ae``: Flatten, Linear, the
units ELU/ReLU/LReLU/SReLU/SELU, batch norm (``BatchNorm1d``: per-run γ, β and running
statistics), dropout with p = 0) without augmentation or dropout phases, grouped by (net,
data set, batch size, epochs, dtype, loss, batch norm) and by the epoch each run resumes
from. Any other config, and any group of one, is trained by
:func:`~natgrad.training.train`, so ``train_grid(configs)`` always means "``train`` each".

Example:
    >>> from natgrad.training import default_config
    >>> cfgs = [default_config("mnist-fc", dataset="digits", unit=u) for u in ("elu", "relu")]
    >>> [grid_key(c) is not None for c in cfgs]
    [True, True]
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from natgrad._atomic import append_jsonl, write_json
from natgrad.errors import InputError
from natgrad.training import _owner
from natgrad.training import checkpoint as ckpt
from natgrad.training.config import TrainConfig, lr_at
from natgrad.training.loop import (
    TrainResult,
    _diverged,
    _epoch_generator,
    _epoch_zero,
    _resume,
    _setup,
    describe_device,
    git_commit,
    resolve_device,
    seed_globals,
    train,
)
from natgrad.training.recording import (
    probe_indices,
    record_activations,
    save_activations,
    summarise,
)
from natgrad.training.rundir import RunDir, default_run_dir
from natgrad.units import SReLU, hidden_units

__all__ = ["grid_key", "train_grid"]

#: Unit modules the batched forward applies (PReLU has a parameter per run: not batched).
_BATCHED_UNITS = (nn.ELU, nn.ReLU, nn.LeakyReLU, SReLU, nn.SELU)


def grid_key(config: TrainConfig) -> tuple | None:
    """What runs must share to train as one batched model, or ``None`` when ``config`` is
    trained sequentially (conv nets, PReLU, dropout, augmentation, the natural-gradient
    optimizers and centring of natgrad.optim). Runs with and without batch norm form separate
    grids."""
    dropout_off = config.dropout is None or all(p == 0 for p in config.dropout)
    if (
        not config.net.startswith("mnist-")
        or config.optimizer != "sgd"
        or config.centre
        or config.unit == "prelu"
        or config.augment
        or config.dropout_phases
        or not dropout_off
    ):
        return None
    return (config.net, config.dataset, config.data_dir, config.preprocess, config.dtype,
            config.batch_size, config.epochs, config.loss, config.eval_batch_size,
            config.batch_norm)  # fmt: skip


def train_grid(
    configs: Sequence[TrainConfig],
    run_dirs: Sequence[str | Path | None] | None = None,
    *,
    device: str = "auto",
    resume: bool = True,
    progress: bool = True,
) -> list[TrainResult]:
    r"""Train every config, batching those that share an architecture; same contract as
    ``[train(c, d, device=device, resume=resume, progress=progress) for c, d in …]``.

    Args:
        configs: the runs.
        run_dirs: one output folder per config (``None`` entries or no list:
            :func:`~natgrad.training.default_run_dir`); they must differ.
        device, resume, progress: as for :func:`~natgrad.training.train`.

    Returns:
        One :class:`~natgrad.training.TrainResult` per config, in the order given.

    Raises:
        InputError: two configs share a run dir, or a run dir holds checkpoints of a
            different config (with ``resume``).
    """
    configs = list(configs)
    dirs = list(run_dirs) if run_dirs is not None else [None] * len(configs)
    if len(dirs) != len(configs):
        raise InputError(f"train_grid: {len(configs)} configs but {len(dirs)} run dirs")
    runs = [
        default_run_dir(c) if d is None else Path(d) for c, d in zip(configs, dirs, strict=True)
    ]
    seen: dict[Path, int] = {}
    for i, run in enumerate(runs):
        j = seen.setdefault(run.resolve(), i)
        if j != i:
            raise InputError(
                f"train_grid: configs {j} and {i} both write {run}; give each its own run dir"
            )
    dev = resolve_device(device)
    cohorts: dict[tuple, list[int]] = {}
    for i, (config, run) in enumerate(zip(configs, runs, strict=True)):
        key = grid_key(config)
        start = ckpt.latest_epoch(run) if resume else None
        cohorts.setdefault((i,) if key is None else (key, start), []).append(i)
    results: list[TrainResult | None] = [None] * len(configs)
    for members in cohorts.values():
        if len(members) == 1:
            i = members[0]
            results[i] = train(configs[i], runs[i], device=device, resume=resume, progress=progress)
            continue
        trainer = {"name": "grid", "runs": len(members)}
        opened, unique = [], []
        with contextlib.ExitStack() as owned:  # every run dir of the cohort, as train() does
            for i in members:
                owned.enter_context(_owner.claim(runs[i]))
            for i in members:
                run = _open_run(configs[i], runs[i], dev, resume, trainer)
                run.data = tuple(_dedupe(t, unique) for t in run.data)  # one copy of shared data
                opened.append(run)
            grid = _Grid(opened, dev)
            for i, res in zip(members, grid.train(progress), strict=True):
                results[i] = res
    return results  # type: ignore[return-value]


@dataclass
class _Run:
    """One run of a grid: its config and folder, data, per-run model and optimizer."""

    config: TrainConfig
    dir: Path
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # train x, y; test x, y
    model: nn.Module
    optimizer: torch.optim.SGD
    probe: torch.Tensor
    start: int
    history: list[dict]
    meta: dict


def _open_run(config: TrainConfig, run: Path, dev, resume: bool, trainer: dict) -> _Run:
    """Everything :func:`~natgrad.training.train` does before its first epoch, for one run:
    set up, resume or start over, and (fresh) epoch 0 and the initial checkpoint."""
    ds, model, optimizer = _setup(config, dev)
    run.mkdir(parents=True, exist_ok=True)
    rd = RunDir(run)
    data = (ds.train_x.to(dev), ds.train_y.to(dev), ds.test_x.to(dev), ds.test_y.to(dev))
    train_x, train_y, test_x, test_y = data
    probe = probe_indices(train_x.shape[0], config.probe_size, config.seed)
    start = ckpt.latest_epoch(run) if resume else None
    fresh = start is None
    if start is not None:
        history = _resume(config, run, model, optimizer, start)
    else:
        _owner.remove_own_outputs(run)  # natgrad's own files only (RunDir.own_files)
        start, history = 0, []
    meta = {"config": config.to_dict(), "device": describe_device(dev),
            "git_commit": git_commit(), "torch_version": torch.__version__,
            "trainer": trainer}  # fmt: skip
    write_json(rd.config_path, meta)
    if fresh:
        history = _epoch_zero(config, run, model, optimizer, data, probe, meta)
    return _Run(config, run, data, model, optimizer, probe, start, history, meta)


def _unit_signature(module: nn.Module) -> tuple:
    return type(module), module.extra_repr()


def _plan(model: nn.Module) -> list[tuple[str, str]]:
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
        elif isinstance(mod, _BATCHED_UNITS):
            steps.append(("unit", name))
        elif (isinstance(mod, nn.BatchNorm1d) and mod.affine and mod.track_running_stats
              and mod.momentum is not None):  # fmt: skip
            steps.append(("bn", name))
        elif isinstance(mod, nn.Dropout) and mod.p == 0:
            steps.append(("skip", name))
        else:
            return None
    return steps


def _dedupe(t: torch.Tensor, unique: list[torch.Tensor]) -> torch.Tensor:
    """An equal tensor already in ``unique`` (appending ``t`` if none is)."""
    for u in unique:
        if u.shape == t.shape and u.dtype == t.dtype and torch.equal(u, t):
            return u
    unique.append(t)
    return t


def _shared_or_stacked(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """One tensor if every run has the same data (``shared``), else the ``[R, ...]`` stack."""
    if all(t is tensors[0] for t in tensors[1:]):
        return tensors[0], True
    return torch.stack(tensors), False


class _Grid:
    r"""R runs with one architecture and one start epoch, trained as one batched model."""

    def __init__(self, runs: list[_Run], dev: torch.device):
        plans = [_plan(r.model) for r in runs]
        if any(p is None or p != plans[0] for p in plans):  # pragma: no cover - grid_key guards
            raise InputError("train_grid: these runs do not share a batchable architecture")
        # Order the runs by unit type, so that each unit acts on one slice of the run axis.
        order = sorted(range(len(runs)), key=lambda i: repr(_unit_signature(_units(runs[i])[0])))
        self.order = order
        self.runs = [runs[i] for i in order]
        self.dev, self.plan = dev, plans[0]
        self.R = len(self.runs)
        first = self.runs[0]
        self.start, self.epochs = first.start, first.config.epochs
        self.n, self.bs = first.data[0].shape[0], first.config.batch_size
        if any(r.data[0].shape[0] != self.n for r in self.runs):
            raise InputError("train_grid: runs of one grid have different training set sizes")
        self.data = [_shared_or_stacked([r.data[k] for r in self.runs]) for k in range(4)]
        # Parameters [R, ...], per-run SGD settings [R], momentum buffers (None until step 1).
        # Linear weights are held transposed, [R, d_in, d_out]: the batched products then
        # read and write contiguous memory (their gradients too, which the SGD step adds).
        self.names = [n for n, _ in first.model.named_parameters()]
        self.transposed = {f"{name}.weight" for kind, name in self.plan if kind == "linear"}
        params = [dict(r.model.named_parameters()) for r in self.runs]
        self.params = {
            n: self._stack(n, [p[n].detach() for p in params]).requires_grad_() for n in self.names
        }
        decayed = {id(p) for p in first.optimizer.param_groups[0]["params"]}
        self.decayed = {n: id(params[0][n]) in decayed for n in self.names}
        self.wd = [r.config.weight_decay for r in self.runs]
        self.momentum = [r.config.momentum for r in self.runs]
        self.use_momentum = any(r.config.momentum != 0 for r in self.runs)
        self.bufs: dict[str, torch.Tensor] | None = None
        if self.use_momentum and self.start > 0:
            self.bufs = {}
            for n in self.names:
                per = []
                for r, p in zip(self.runs, params, strict=True):
                    buf = r.optimizer.state.get(p[n], {}).get("momentum_buffer")
                    per.append(torch.zeros_like(p[n]) if buf is None else buf.detach())
                self.bufs[n] = self._stack(n, per)
        # Batch norm: running statistics [R, U] and step counts [R] (per-run buffers).
        self.bn = {name: first.model.get_submodule(name) for kind, name in self.plan
                   if kind == "bn"}  # fmt: skip
        self.buffers = {}
        for name in self.bn:
            mods = [r.model.get_submodule(name) for r in self.runs]
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                self.buffers[f"{name}.{key}"] = torch.stack([getattr(m, key) for m in mods])
        probes = [r.data[0][r.probe.to(dev)] for r in self.runs]
        same = len({p.shape for p in probes}) == 1
        self.probe_x = torch.stack(probes) if same else None  # [R, n_probe, ...]
        self.unit_names = [name for name, _ in hidden_units(first.model)]
        # The unit slices of each unit layer: [(start, stop, module)] over the run axis.
        self.units = {}
        for kind, name in self.plan:
            if kind == "unit":
                mods = [r.model.get_submodule(name) for r in self.runs]
                segs: list[list] = []
                for i, m in enumerate(mods):
                    if segs and _unit_signature(segs[-1][2]) == _unit_signature(m):
                        segs[-1][1] = i + 1
                    else:
                        segs.append([i, i + 1, m])
                self.units[name] = [tuple(s) for s in segs]

    def _stack(self, name: str, per_run: list[torch.Tensor]) -> torch.Tensor:
        """``[R, ...]`` from the runs' tensors, Linear weights as ``[R, d_in, d_out]``."""
        if name in self.transposed:
            return torch.stack([t.T for t in per_run])
        return torch.stack(per_run)

    def _slice(self, name: str, stacked: torch.Tensor, i: int) -> torch.Tensor:
        """Run i's tensor in its module's layout (a view)."""
        return stacked[i].T if name in self.transposed else stacked[i]

    # --- the batched model --------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, capture: dict | None = None, *, training: bool = False
    ) -> torch.Tensor:
        """``[R, B, ...]`` inputs → ``[R, B, C]`` outputs of every run; ``capture`` receives
        the unit outputs ``[R, B, U]`` by layer name. ``training``: batch norm normalises by
        the batch's statistics and updates the running ones (``nn.BatchNorm1d.train()``),
        else by the running ones."""
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
                if capture is not None:
                    capture[name] = h
        return h

    def _batch_norm(self, name: str, h: torch.Tensor, training: bool) -> torch.Tensor:
        r"""``nn.BatchNorm1d`` of every run on ``h`` ``[R, B, U]``: torch's batch norm on the
        ``[B, R·U]`` layout, whose channels are the (run, unit) pairs, with the runs' γ, β and
        running statistics as views of their ``[R, U]`` stacks (updated in place in training,
        as the module updates its own): per channel the arithmetic of the sequential run."""
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
        """``[R]`` the mean loss of each run on its batch (as the sequential loss_fn)."""
        r, b = out.shape[:2]
        if self.runs[0].config.loss == "bce_logits":
            target = x.flatten(2)
            loss = nn.functional.binary_cross_entropy_with_logits(out, target, reduction="none")
            return loss.flatten(1).mean(1)
        loss = nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
        return loss.view(r, b).mean(1)

    def _gather(self, which: int, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` ``[R, B]`` of data tensor ``which`` (0 train x, 1 train y) per run."""
        t, shared = self.data[which]
        if shared:
            return t[idx]
        return t[torch.arange(self.R, device=self.dev).unsqueeze(1), idx]

    @torch.no_grad()
    def _step(self, grads, lrs: list[float]) -> None:
        r"""``torch.optim.SGD`` (dampening 0, no Nesterov) with per-run η, μ, λ.

        A setting shared by every run is applied as torch's foreach SGD applies it (same
        ops, same rounding); one that differs between runs as a ``[R, 1, ...]`` tensor.
        """
        params = [self.params[n] for n in self.names]
        grads = list(grads)
        decayed = [i for i, n in enumerate(self.names) if self.decayed[n]]
        if decayed and any(self.wd):
            for i in decayed:
                grads[i] = self._per_run(self.wd, params[i], grads[i])
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

    def _column(self, values: list[float], like: torch.Tensor) -> torch.Tensor:
        """Per-run ``values`` as a ``[R, 1, ...]`` tensor that broadcasts against ``like``."""
        t = torch.tensor(values, dtype=like.dtype, device=like.device)
        return t.view((self.R,) + (1,) * (like.ndim - 1))

    def _per_run(self, coef: list[float], p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """g + coef_r · p; torch's ``add(alpha=)`` when coef is the same for every run."""
        if len(set(coef)) == 1:
            return g.add(p, alpha=coef[0])
        return g + self._column(coef, p) * p

    @torch.no_grad()
    def _test_metrics(self) -> list[tuple[float, float | None]]:
        """Per run: mean test loss and error rate, batched over runs (``_evaluate``'s sums)."""
        (tx, shared), (ty, _) = self.data[2], self.data[3]
        nt = tx.shape[0] if shared else tx.shape[1]
        ebs = self.runs[0].config.eval_batch_size
        total = torch.zeros(self.R, dtype=torch.float64, device=self.dev)
        wrong = torch.zeros(self.R, dtype=torch.long, device=self.dev)
        ce = self.runs[0].config.loss == "cross_entropy"
        for s in range(0, nt, ebs):
            if shared:
                xb = tx[s : s + ebs].expand(self.R, *tx[s : s + ebs].shape)
                yb = ty[s : s + ebs].expand(self.R, -1)
            else:
                xb, yb = tx[:, s : s + ebs], ty[:, s : s + ebs]
            out = self.forward(xb)
            total += self.losses(out, xb, yb).double() * xb.shape[1]
            if ce:
                wrong += (out.argmax(-1) != yb).sum(1)
        n = max(nt, 1)
        return [
            (float(t) / n, int(w) / n if ce else None) for t, w in zip(total, wrong, strict=True)
        ]

    @torch.no_grad()
    def _records(self) -> list[dict]:
        r"""Per run, :func:`~natgrad.training.recording.record_activations` of its probe set,
        from one batched forward: the unit means E_probe(o_u) and the counts of o < 0, o = 0."""
        if self.probe_x is None:  # probe sets of different sizes: one run at a time
            out = []
            for i, run in enumerate(self.runs):
                self._materialise(i, run.optimizer.param_groups[0]["lr"])
                out.append(record_activations(run.model, run.data[0][run.probe.to(self.dev)]))
            return out
        captured: dict[str, torch.Tensor] = {}
        self.forward(self.probe_x, captured)
        means, counts = {}, {}
        for name in self.unit_names:
            h = captured[name]  # [R, n, U]
            means[name] = (h.to(torch.float64).sum(1) / h.shape[1]).cpu()  # [R, U]
            neg = (h < 0).flatten(1).sum(1).tolist()
            zero = (h == 0).flatten(1).sum(1).tolist()
            counts[name] = [[h[0].numel(), a, b] for a, b in zip(neg, zero, strict=True)]
        return [
            summarise({n: means[n][i] for n in self.unit_names},
                      {n: counts[n][i] for n in self.unit_names})
            for i in range(self.R)
        ]  # fmt: skip

    @torch.no_grad()
    def _materialise(self, i: int, lr: float) -> None:
        """Copy run i's slice into its ``PaperNet`` and its momentum into its optimizer."""
        run = self.runs[i]
        params = dict(run.model.named_parameters())
        for n in self.names:
            params[n].copy_(self._slice(n, self.params[n], i))
        buffers = dict(run.model.named_buffers())
        for n, stacked in self.buffers.items():
            buffers[n].copy_(stacked[i])
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        if run.config.momentum != 0 and self.bufs is not None:
            for n in self.names:
                buf = self._slice(n, self.bufs[n], i).clone(memory_format=torch.contiguous_format)
                run.optimizer.state[params[n]]["momentum_buffer"] = buf

    # --- the loop -----------------------------------------------------------------------
    def train(self, progress: bool) -> list[TrainResult]:
        """Train every run to its last epoch; results in the order the runs were given."""
        from tqdm.auto import tqdm

        per_epoch = math.ceil(self.n / self.bs)
        bar = tqdm(total=(self.epochs - self.start) * per_epoch, disable=not progress, unit="it",
                   desc=f"grid of {self.R} runs", dynamic_ncols=True)  # fmt: skip
        leaves = [self.params[n] for n in self.names]
        with ThreadPoolExecutor(max_workers=min(self.R, 16)) as pool:
            self._epochs(per_epoch, leaves, bar, pool)
        bar.close()
        for i in range(self.R):  # the final weights, also when no epoch was left to train
            self._materialise(i, self.runs[i].optimizer.param_groups[0]["lr"])
        by_input = [None] * self.R
        for pos, i in enumerate(self.order):
            run = self.runs[pos]
            by_input[i] = TrainResult(run_dir=run.dir, model=run.model, metrics=run.history)
        return by_input

    def _epochs(self, per_epoch: int, leaves: list, bar, pool: ThreadPoolExecutor) -> None:
        for epoch in range(self.start + 1, self.epochs + 1):
            t0 = time.perf_counter()
            perm = torch.stack([
                torch.randperm(self.n, generator=_epoch_generator(r.config.seed, epoch, 0))
                for r in self.runs
            ]).to(self.dev)  # fmt: skip
            loss_sum = torch.zeros(self.R, dtype=torch.float64, device=self.dev)
            lrs = None
            for b in range(per_epoch):
                it = (epoch - 1) * per_epoch + b
                lrs = [lr_at(r.config, iteration=it, epoch=epoch - 1) for r in self.runs]
                idx = perm[:, b * self.bs : (b + 1) * self.bs]  # [R, B]
                xb, yb = self._gather(0, idx), self._gather(1, idx)
                loss = self.losses(self.forward(xb, training=True), xb, yb)  # [R]
                grads = torch.autograd.grad(loss.sum(), leaves)
                self._step(grads, lrs)
                loss_sum += loss.detach().double() * idx.shape[1]
                bar.update(1)
            if self.dev.type == "cuda":
                torch.cuda.synchronize(self.dev)
            t_train = time.perf_counter() - t0
            tests = self._test_metrics()
            records = self._records() if any(
                epoch % r.config.record_every == 0 or epoch == r.config.epochs for r in self.runs
            ) else None  # fmt: skip
            seconds = (time.perf_counter() - t0) / self.R
            jobs = []
            for i, run in enumerate(self.runs):
                cfg = run.config
                record = epoch % cfg.record_every == 0 or epoch == cfg.epochs
                te_loss, te_err = tests[i]
                row = dict(epoch=epoch, iterations=epoch * per_epoch, lr=lrs[i],
                           train_loss=float(loss_sum[i]) / self.n, test_loss=te_loss,
                           test_error=te_err, seconds=seconds, train_seconds=t_train / self.R,
                           seconds_per_iteration=t_train / self.R / per_epoch)  # fmt: skip
                for what in ("train_loss", "test_loss"):  # checked once per epoch, as on a GPU
                    if not math.isfinite(row[what]):
                        raise _diverged(run.dir, epoch, per_epoch, per_epoch, lrs[i],
                                        what.replace("_", " "), row[what])  # fmt: skip
                run.history.append(row)
                jobs.append((run.dir, epoch, records[i] if record else None, row))
            # Each run's files in the sequential order (activations, metrics, checkpoint); the
            # runs' writes in parallel, as their fsyncs then share the file system's commits.
            for future in [pool.submit(_write, *job) for job in jobs]:
                future.result()
            for i, run in enumerate(self.runs):  # checkpoints read the global RNG: one by one
                cfg = run.config
                if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
                    self._materialise(i, lrs[i])
                    info = dict(run.meta, iteration=epoch * per_epoch, metrics=run.history)
                    seed_globals(cfg.seed)
                    ckpt.write_checkpoint(run.dir, epoch, run.model, run.optimizer, info)
            bar.set_postfix(epoch=epoch)


def _write(run_dir: Path, epoch: int, record: dict | None, row: dict) -> None:
    """An epoch's activation record (if any) and metrics row, as the sequential loop writes."""
    if record is not None:
        save_activations(run_dir, epoch, record)
    append_jsonl(RunDir(run_dir).metrics_path, row)


def _units(run: _Run) -> list[nn.Module]:
    return [m for m in run.model.modules() if isinstance(m, _BATCHED_UNITS)]
