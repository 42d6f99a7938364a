r"""Checkpoints as safetensors + JSON, written atomically; loading never unpickles.

``checkpoints/epoch_XXXX.safetensors`` holds tensors only::

    model.<state_dict key>            parameters and buffers
    optim.<param index>.<key>         optimizer state tensors (e.g. momentum_buffer; the
                                      natural-gradient optimizers' running unit Fisher
                                      ``fisher``/``fisher_diag``/``fisher_bias`` and their
                                      label generator ``natgrad_generator``)
    rng.torch                         torch.get_rng_state(), uint8
    rng.cuda.<i>                      CUDA generator states, uint8 (when on a GPU)
    rng.numpy                         numpy MT19937 key, int64 [624]

``checkpoints/epoch_XXXX.json`` holds the rest (``format``, the model's build options, the
optimizer's param groups and scalar state, RNG scalars, the SHA-256 of the safetensors file
and the run's metadata: ``docs/run_layout.md``).

Both files are written atomically (:mod:`natgrad._atomic`), the JSON last: a checkpoint
exists exactly when its JSON does. The JSON is strict (non-finite numbers are ``null``).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from natgrad._atomic import dumps_json, write_bytes
from natgrad.errors import CheckpointError, InputError
from natgrad.training.rundir import RunDir

__all__ = [
    "FORMAT",
    "checkpoint_paths",
    "latest_epoch",
    "load_checkpoint",
    "read_checkpoint",
    "restore_state",
    "prune_checkpoints",
    "write_checkpoint",
]

FORMAT = "natgrad-checkpoint/1"
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar"}


def checkpoint_paths(run_dir: Path, epoch: int) -> tuple[Path, Path]:
    """``(safetensors, json)`` paths of the checkpoint at ``epoch`` (:class:`RunDir`)."""
    return RunDir(run_dir).checkpoint_paths(epoch)


def latest_epoch(run_dir: Path) -> int | None:
    """The largest epoch with a complete checkpoint (its JSON exists), or ``None``."""
    return RunDir(run_dir).latest_epoch()


def write_checkpoint(run_dir: Path, epoch: int, model, optimizer, info: dict) -> Path:
    """Save model, optimizer and RNG state at ``epoch``; ``info`` goes into the JSON."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.ndim > 0:
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = (
                    float(value) if torch.is_tensor(value) else value
                )
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global state is what we save
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    py_version, py_state, py_gauss = random.getstate()
    blob = st_save(tensors)
    st_path, json_path = checkpoint_paths(run_dir, epoch)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        info,
        format=FORMAT,
        epoch=epoch,
        net=model.net,
        unit=model.unit,
        build_kwargs=model.build_kwargs,
        optimizer={"param_groups": opt["param_groups"], "state": scalars},
        rng={"python": [py_version, list(py_state), py_gauss], "numpy": list(np_state[2:])},
        safetensors_sha256=hashlib.sha256(blob).hexdigest(),
    )
    write_bytes(st_path, blob)
    write_bytes(json_path, dumps_json(meta, indent=1).encode())
    return json_path


def prune_checkpoints(run_dir: Path, keep: int, protect=()) -> list[int]:
    """Delete all but the ``keep`` latest checkpoints of ``run_dir`` (never epoch 0 or an
    epoch in ``protect``); returns the epochs deleted. Each checkpoint goes JSON first, so a
    kill in between leaves a safetensors file that :func:`latest_epoch` does not count; the
    next prune removes such a file when it is older than the latest checkpoint."""
    rd = RunDir(run_dir)
    epochs = rd.checkpoint_epochs()
    gone = [e for e in epochs[:-keep] if e != 0 and e not in set(protect)] if keep > 0 else []
    for epoch in gone:
        st_path, json_path = rd.checkpoint_paths(epoch)
        json_path.unlink(missing_ok=True)
        st_path.unlink(missing_ok=True)
    if keep > 0 and epochs:  # a half-pruned checkpoint a kill left (its JSON already gone)
        for epoch in range(1, epochs[-1]):
            st_path, json_path = rd.checkpoint_paths(epoch)
            if st_path.is_file() and not json_path.exists() and epoch not in set(protect):
                st_path.unlink()
    return gone


def _refuse_pickle(path: Path) -> None:
    head = path.read_bytes()[:4] if path.is_file() else b""
    if path.suffix.lower() in _PICKLE_SUFFIXES or head[:1] == b"\x80" or head[:2] == b"PK":
        raise CheckpointError(
            f"{path}: refusing to load a pickle/torch.save file: unpickling executes "
            "arbitrary code from the file. natgrad checkpoints are a .safetensors + .json "
            "pair written by `natgrad train`; convert a trusted file yourself with "
            "safetensors.torch.save_file(torch.load(path, weights_only=True), ...)."
        )


def _resolve(path: Path, epoch: int | None) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_dir():
        run_dir = path.parent if path.name == "checkpoints" else path
        if epoch is None:
            epoch = latest_epoch(run_dir)
            if epoch is None:
                raise CheckpointError(
                    f"{run_dir / 'checkpoints'}: no checkpoint (epoch_XXXX.json + "
                    ".safetensors) found; train with `natgrad train --run-dir {run_dir}`"
                )
        return checkpoint_paths(run_dir, epoch)
    _refuse_pickle(path)
    if path.suffix not in (".json", ".safetensors"):
        raise CheckpointError(f"{path}: expected a run dir or an epoch_XXXX.json/.safetensors file")
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


#: The JSON fields every checkpoint holds (:func:`write_checkpoint`) and their types.
_FIELDS = {"config": dict, "metrics": list, "net": str, "unit": str, "build_kwargs": dict,
           "optimizer": dict, "rng": dict}  # fmt: skip


def read_checkpoint(path, epoch: int | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, info)`` of a checkpoint (run dir, its ``checkpoints/`` or a file).

    Raises:
        CheckpointError: missing, corrupt (checksum or format) or pickle files.
    """
    st_path, json_path = _resolve(Path(path), epoch)
    if not json_path.is_file():
        raise CheckpointError(f"{json_path}: checkpoint file not found; list {json_path.parent} "
                              "for epochs")  # fmt: skip
    if not st_path.is_file():
        raise CheckpointError(f"{st_path}: missing beside {json_path.name}; restore it, or "
                              f"delete {json_path.name} to resume from an earlier checkpoint")  # fmt: skip
    try:
        info = json.loads(json_path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{json_path}: corrupt checkpoint JSON ({exc}); delete it and "
                              f"{st_path.name} to resume from an earlier checkpoint") from None  # fmt: skip
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{json_path}: not a {FORMAT} file")
    wrong = [k for k, kind in _FIELDS.items() if not isinstance(info.get(k), kind)]
    if wrong:
        raise CheckpointError(
            f"{json_path}: fields {wrong} are missing or of the wrong type (was it edited?); "
            f"restore the file, or delete {json_path.name} and its .safetensors to resume from "
            "an earlier checkpoint"
        )
    named = re.fullmatch(r"epoch_(\d+)", json_path.stem)
    if named is not None and info.get("epoch") != int(named.group(1)):
        raise CheckpointError(
            f"{json_path}: the file name says epoch {int(named.group(1))} but the checkpoint "
            f"holds epoch {info.get('epoch')!r}; a renamed or mixed-up checkpoint would resume "
            "from the wrong weights. Restore the original names or retrain"
        )
    blob = st_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != info.get("safetensors_sha256"):
        raise CheckpointError(
            f"{st_path}: SHA-256 does not match {json_path.name}; the file is corrupt or was "
            f"modified. Delete {st_path.name} and {json_path.name} to resume from an earlier "
            "checkpoint, or retrain."
        )
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{st_path}: corrupt safetensors file ({exc})") from None
    return tensors, info


def load_checkpoint(path, epoch: int | None = None, *, device: str = "cpu"):
    r"""Rebuild the model of a checkpoint from its JSON and load its weights.

    Args:
        path: a run dir (latest or ``epoch``), its ``checkpoints/`` folder, or an
            ``epoch_XXXX.json`` / ``.safetensors`` file.
        epoch: which epoch of a run dir (default: the latest).
        device: where the model's tensors go.

    Returns:
        ``(model, info)``: a :class:`natgrad.models.PaperNet` in eval mode and the JSON. A
        net trained centred (``centre=true``) comes back with plain Linear/Conv2d layers
        holding w and w0 = v0 − wᵀm: the same function in the original parametrisation.

    Raises:
        CheckpointError: see :func:`read_checkpoint`; never calls ``torch.load``.
    """
    from natgrad.models import build_model

    tensors, info = read_checkpoint(path, epoch)
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    kwargs = dict(info["build_kwargs"])
    dtype = next((v.dtype for v in state.values() if v.is_floating_point()), None)
    if dtype is None:
        raise CheckpointError(f"{path}: the checkpoint holds no model weights")
    try:
        model = build_model(info["net"], info["unit"], **kwargs, dtype=dtype, device="meta")
    except (InputError, TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: its net ({info['net']!r}, unit {info['unit']!r}, "
                              f"{kwargs}) cannot be built: {exc}") from None  # fmt: skip
    centred = any(k.endswith(".centre") for k in state)
    if centred:  # trained with config centre=true: load as centred, hand back plain layers
        from natgrad.optim import centre

        layers = {k[: -len(".weight")] for k in state if k.endswith(".weight")}
        plain = [n for n in layers if f"{n}.bias" in state and f"{n}.centre" not in state]
        model = centre(model, inplace=True, skip=plain)  # plain_first_layer: not centred
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {info['net']}: {exc}") from None
    model = model.to(device).eval()
    if centred:
        from natgrad.optim import uncentre

        model = uncentre(model)
    return model, info


def restore_state(tensors: dict, info: dict, optimizer) -> None:
    """Load optimizer state and every RNG state saved by :func:`write_checkpoint`."""
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, scalars in info["optimizer"]["state"].items():
        state.setdefault(int(idx), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": info["optimizer"]["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    pos, has_gauss, gauss = info["rng"]["numpy"]
    np.random.set_state(  # noqa: NPY002
        ("MT19937", tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss)
    )
    version, py_state, py_gauss = info["rng"]["python"]
    random.setstate((version, tuple(py_state), py_gauss))
