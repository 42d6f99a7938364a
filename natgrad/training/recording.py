r"""Activation recording: each hidden unit's mean activation on a fixed probe set (Fig 2a).

Forward hooks on every unit module (:func:`natgrad.units.hidden_units`) see the unit
outputs ``o`` of shape ``[n, U]`` (fully connected) or ``[n, C, H, W]`` (conv: unit = output
channel) while the probe set runs through the model in eval mode, in chunks. Per unit:

    mean_u = E_{samples[, positions]} o_u                      # [U]

and per layer: ``median`` of the unit means (the average of the two middle values),
``frac_negative`` and ``frac_zero`` (fractions of all recorded values, samples × units ×
positions, that are < 0 and exactly 0), ``units``. ``median_all`` is the median over
every unit of the net: the curve of the paper's Fig 2a.

Stored under ``<run>/activations/`` (``docs/run_layout.md``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from natgrad._atomic import append_jsonl, write_safetensors
from natgrad.errors import DataFileError, InputError
from natgrad.training.rundir import RunDir
from natgrad.units import hidden_units

__all__ = [
    "load_activations",
    "median_abs_mean",
    "probe_indices",
    "record_activations",
    "save_activations",
    "summarise",
]


def median_abs_mean(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Median over the hidden units of ``model`` of |mean activation| on ``x`` (the unit means
    of :func:`record_activations`): how far the units sit from zero mean."""
    return float(torch.cat(list(record_activations(model, x)["means"].values())).abs().median())


def probe_indices(n_train: int, size: int, seed: int) -> torch.Tensor:
    """A fixed, sorted subset of ``min(size, n_train)`` training indices chosen by ``seed``."""
    gen = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    return torch.randperm(n_train, generator=gen)[: min(size, n_train)].sort().values


@torch.no_grad()
def record_activations(model: torch.nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> dict:
    r"""Mean activation of every hidden unit of ``model`` on ``x`` ``[n, …]``.

    Returns:
        ``{"means": {layer: float64 [U]}, "summary": {"median_all", "layers": {...}}}``.
    """
    units = hidden_units(model)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, list[int]] = {name: [0, 0, 0, 0] for name, _ in units}  # n, total, <0, ==0
    calls: dict[str, int] = {}  # per forward: a module used at two depths is two layers

    def hook(name):
        def fn(_module, _inputs, out):
            calls[name] = calls.get(name, 0) + 1
            dims = [0] + list(range(2, out.ndim))  # samples and positions
            s = out.to(torch.float64).sum(dim=dims)  # [U]
            sums[name] = s if name not in sums else sums[name] + s
            c = counts[name]
            c[0] += out.numel() // out.shape[1]
            c[1] += out.numel()
            c[2] += int((out < 0).sum())
            c[3] += int((out == 0).sum())

        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in units]
    modes = [(m, m.training) for m in model.modules()]  # each submodule's own, restored
    model.eval()
    try:
        for start in range(0, x.shape[0], batch_size):
            calls.clear()
            model(x[start : start + batch_size])
            twice = {n: k for n, k in calls.items() if k > 1}
            if twice:
                name, k = next(iter(twice.items()))
                raise InputError(
                    f"record_activations: the activation module {name!r} is called {k} times "
                    "per forward (used at several depths), so its outputs would be averaged "
                    "into one layer; give each depth its own module (natgrad.make_unit)"
                )
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    means = {name: (sums[name] / counts[name][0]).cpu() for name, _ in units}
    return summarise(means, {name: counts[name][1:] for name, _ in units})


def summarise(means: dict[str, torch.Tensor], counts: dict[str, list[int]]) -> dict:
    r"""The record of :func:`record_activations` from the unit means ``{layer: float64 [U]}``
    and ``{layer: [values, values < 0, values == 0]}`` (counts over samples × units ×
    positions).

    Example:
        >>> means = {"act1": torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)}
        >>> r = summarise(means, {"act1": [6, 0, 2]})
        >>> r["summary"]["median_all"], r["summary"]["layers"]["act1"]["frac_zero"]
        (1.0, 0.3333333333333333)
    """
    layers = {
        name: {
            "units": int(means[name].numel()),
            "median": float(means[name].quantile(0.5)),
            "mean": float(means[name].mean()),
            "frac_negative": counts[name][1] / counts[name][0],
            "frac_zero": counts[name][2] / counts[name][0],
        }
        for name in means
    }
    every = torch.cat(list(means.values())) if means else torch.zeros(0, dtype=torch.float64)
    median_all = float(every.quantile(0.5)) if every.numel() else float("nan")
    return {"means": means, "summary": {"median_all": median_all, "layers": layers}}


def save_activations(run_dir: Path, epoch: int, record: dict) -> None:
    """Write ``epoch_XXXX.safetensors`` atomically and append the summary line (strict JSON,
    fsynced; a torn last line of a killed run is dropped by readers and by the next append,
    see :mod:`natgrad._atomic`)."""
    rd = RunDir(run_dir)
    rd.activations_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.mean": m.contiguous() for name, m in record["means"].items()}
    write_safetensors(rd.activation_path(epoch), tensors, {"epoch": str(epoch)})
    append_jsonl(rd.activation_summary_path, {"epoch": epoch, **record["summary"]})


def load_activations(run_dir: Path, epoch: int) -> dict[str, torch.Tensor]:
    """``{layer: mean [U]}`` recorded at ``epoch``."""
    path = RunDir(run_dir).activation_path(epoch)
    if not path.is_file():
        raise DataFileError(f"{path}: no activations recorded at epoch {epoch} in {run_dir}")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise DataFileError(f"{path}: corrupt activation file ({exc}); retrain the run") from None
    return {k[: -len(".mean")]: v for k, v in tensors.items()}
