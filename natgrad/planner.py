r"""The memory planner: unit Fishers larger than memory, streamed in unit chunks to disk.

``unit_fisher(..., out_dir=folder, max_memory=bytes)`` splits the requested units into
chunks whose result fits ``max_memory`` (less the temporaries of a pass, see
:mod:`natgrad.memory`), makes **one data pass per chunk** (the forward and batched backward
are repeated; only the chunk's units are reduced), and writes each chunk's blocks to a
safetensors shard in ``folder``::

    folder/
      index.json                       layer, structure, kind, likelihood, n, fan_in, shards
      <layer>.units_000000-000127.safetensors   matrix [U_c, d+1, d+1] (or diagonal,
                                                bias_column), units [U_c], mean_p [d]

Files are written atomically, the index last, so a folder with an ``index.json`` is
complete; rewriting a folder (new settings, or after an interrupted run) removes the shards
the new index does not list once that index is in place. The result, a
:class:`ShardedUnitFisher`, loads one shard at a time (``docs/scale.md``, "The planner").

``inputs`` must be iterable more than once (a tensor, a list of batches, a DataLoader) when
there is more than one chunk. For ``kind="mc"`` the generator's state is restored before
each pass, so every chunk sees the same sampled labels when its (sub-)batches are the same:
pass ``batch_size=`` to pin them. Without a ``generator`` one is seeded from the global RNG,
so that the chunks share one label draw.

Example:
    >>> import tempfile, torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ELU(), torch.nn.Linear(4, 2))
    >>> from natgrad import unit_fisher
    >>> with tempfile.TemporaryDirectory() as d:
    ...     F = unit_fisher(net, "0", torch.randn(8, 6), out_dir=d, max_memory=700)
    ...     len(F.shards), F.num_units, F.natural_gradient(torch.ones(4, 6), torch.ones(4), 0.1)[1].shape
    (2, 4, torch.Size([4]))
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from natgrad import likelihoods, memory, theorems
from natgrad._atomic import (
    atomic_open,
    dumps_json,
    is_temporary,
    live_writer,
    temp_path,
    write_bytes,
)
from natgrad._layers import check_units
from natgrad.accumulate import block_dtype
from natgrad.argtypes import is_integer
from natgrad.engine import PassOptions, compute
from natgrad.errors import CheckpointError, InputError, MemoryBudgetError, RunDirError
from natgrad.unitfisher import UnitFisher, held_rows

INDEX = "index.json"
#: The temporary safetensors' save_file writes beside its target (a shard write killed).
_SAFETENSORS_TMP = re.compile(r"\.tmp[0-9A-Za-z]{6}")
FORMAT = "natgrad-unit-fisher-shards/1"


def sharded_unit_fisher(
    model, name, module, units, inputs, targets, out_dir, options: PassOptions
) -> ShardedUnitFisher:
    r"""Plan unit chunks that fit ``max_memory``, one data pass per chunk, shards in
    ``out_dir``; returns the lazily loading :class:`ShardedUnitFisher`."""
    structure, max_memory = options.structure, options.max_memory
    generator, conv_moments = options.generator, options.conv_moments

    memory.check_structure(structure)
    budget = memory.resolve_max_memory(max_memory)
    n_units, d = module.weight.shape[0], module.weight[0].numel()
    all_units = torch.arange(n_units) if units is None else check_units(name, units, n_units)
    itemsize = block_dtype(module.weight.dtype).itemsize
    memory.check_budget({name: (1, d)}, structure, itemsize, budget, sharded=True)
    room = budget - min(memory.TEMP_FLOOR, budget // 4)
    per_unit = memory.result_elements(structure, 1, d) * itemsize
    step = max(1, int(0.8 * room) // per_unit)
    chunks = [all_units[i : i + step] for i in range(0, all_units.numel(), step)]
    if len(chunks) > 1 and not isinstance(inputs, torch.Tensor) and iter(inputs) is inputs:
        raise InputError(
            f"layer {name!r}: the planner needs {len(chunks)} passes over the data (unit chunks "
            f"of {step} that fit max_memory={budget} bytes), but inputs is a one-shot iterator; "
            "pass a tensor, a list of batches or a DataLoader"
        )
    folder, stale, marker = _claim_folder(out_dir, name)
    try:
        if (folder / INDEX).exists():
            (folder / INDEX).unlink()  # the folder is rewritten: no stale index over new shards
        if generator is None and options.kind == "mc":  # one label draw for every chunk's pass,
            seed = int(torch.randint(2**62, (1,)))  # from (and reproducible under) the global RNG
            generator = torch.Generator().manual_seed(seed)
        state = generator.get_state() if generator is not None else None
        shards = []
        for chunk in chunks:
            if generator is not None:
                generator.set_state(state)
            F = compute(model, {name: (module, chunk)}, inputs, targets,
                        replace(options, max_memory=budget, generator=generator))[name]  # fmt: skip
            file = _shard_name(name, int(chunk[0]), int(chunk[-1]))
            blocks = ("matrix",) if structure == "dense" else ("diagonal", "bias_column")
            tensors = {"units": chunk.clone()}
            for key in ("mean_p", "c_sum", "c_sq_sum", *blocks):  # c_sum, c_sq_sum: for n_eff
                if getattr(F, key) is not None:
                    tensors[key] = getattr(F, key).contiguous()
            with atomic_open(folder / file) as fh:  # straight to the temporary: no in-memory copy
                save_file(tensors, fh.name, metadata={"format": FORMAT, "layer": name})
                # safetensors wrote a temporary of its own and renamed it onto fh.name: fsync that
                # file (atomic_open fsyncs the one it opened, which the rename replaced)
                with open(fh.name, "rb") as written:
                    os.fsync(written.fileno())
            shards.append({"file": file, "units": chunk.tolist()})
            meta = {
                "n": F.n,
                "kind": F.kind,
                "likelihood": F.likelihood,
                "mc_samples": F.mc_samples,
            }
            del F, tensors
        index = {
            "format": FORMAT,
            "layer": name,
            "structure": structure,
            "conv_moments": conv_moments,
            "fan_in": d,
            "dtype": str(block_dtype(module.weight.dtype)).removeprefix("torch."),
            "max_memory": budget,
            **meta,
            "shards": shards,
        }
        write_bytes(folder / INDEX, dumps_json(index, indent=1).encode())
        for file in sorted(stale - {s["file"] for s in shards}):  # only once the new index is in
            with contextlib.suppress(FileNotFoundError):
                (folder / file).unlink()
        return ShardedUnitFisher.load(folder)
    finally:
        marker.unlink(missing_ok=True)


# Unit ranges are zero-padded to six digits and grow past them (a layer of >= 10**6 units).
_RANGE = r"\.units_\d{6,}-\d{6,}\.safetensors"
_SHARD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*" + _RANGE + "$")
# What a shard of the planner holds (tensor names), for shards written before the metadata.
_SHARD_KEYS = {"units", "mean_p", "c_sum", "c_sq_sum", "matrix", "diagonal", "bias_column"}


def _shard_name(layer: str, first: int, last: int) -> str:
    return f"{_slug(layer)}.units_{first:06d}-{last:06d}.safetensors"


def _own_leftover(path: Path, layer: str) -> bool:
    """Whether ``path`` is a shard natgrad's planner wrote for ``layer`` that no index lists
    (a run killed before its index, or one replaced before the clean-up): named by the
    planner's pattern for this layer, a plain file, and a safetensors file whose metadata
    names the planner's format and this layer (or, unmarked, holding only a shard's tensors)."""
    if not re.fullmatch(re.escape(_slug(layer)) + _RANGE, path.name):
        return False
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta, keys = fh.metadata(), set(fh.keys())
    except Exception:  # not a safetensors file (safetensors raises its own error types)
        return False
    if meta is not None:
        return meta.get("format") == FORMAT and meta.get("layer") == layer
    return {"units", "mean_p"} <= keys <= _SHARD_KEYS


def _slug(name: str) -> str:
    """A layer name as a plain file-name stem (``a/b`` → ``a_b``; never a path, never hidden)."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", name or "layer").lstrip(".")
    return slug or "layer"


def _claim_folder(out_dir, layer: str) -> tuple[Path, set[str], Path]:
    """``out_dir`` made ready for shards: not empty as a name, not a file or a symlink, and
    either new, empty, or a shard folder natgrad wrote (its ``index.json`` and the shards
    that index lists, this layer's shards left by an interrupted run (:func:`_own_leftover`),
    plus the temporaries of dead writers); anything else is refused, never overwritten, and
    so is a folder another live process is writing into. Returns the folder, natgrad's shard
    files in it, for the caller to remove once its new index is written (those the new index
    does not list), and the marker temporary the caller holds while it writes (made before
    the folder is read, so that two planners cannot both pass the check)."""
    if out_dir is None or str(out_dir).strip() == "":
        raise InputError(f"layer {layer!r}: out_dir={out_dir!r}; give a folder for the shards")
    folder = Path(out_dir)
    if folder.is_symlink():
        raise RunDirError(f"{folder}: is a symlink; give unit_fisher(out_dir=...) a real folder")
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"{folder}: is a file, not a folder; pick another out_dir")
    folder.mkdir(parents=True, exist_ok=True)
    marker = temp_path(folder / INDEX)  # held while this planner writes, from before it looks:
    marker.touch()  # a second one, which would take the shards for leftovers, is refused
    try:
        return folder, _claimed(folder, layer, marker), marker
    except BaseException:
        marker.unlink(missing_ok=True)
        raise


def _claimed(folder: Path, layer: str, marker: Path) -> set[str]:
    """:func:`_claim_folder`'s check of what ``folder`` holds (beside this planner's
    ``marker``); returns natgrad's shard files in it."""
    names = {p.name for p in folder.iterdir()} - {marker.name}
    if not names:
        return set()
    for n in sorted(names):  # a live writer's temporary: its safetensors' ones are its too
        if (pid := live_writer(n)) is not None:
            raise RunDirError(f"{folder}: process {pid} is writing into it ({n}); wait for it "
                              f"to finish or pick another out_dir (if no natgrad process {pid} "
                              f"runs, remove {n})")  # fmt: skip
    listed: set[str] = set()
    if INDEX in names:
        try:
            listed = {s["file"] for s in _validated(folder / INDEX)["shards"]}
        except CheckpointError as exc:
            raise RunDirError(f"{folder}: holds an {INDEX} that natgrad did not write ({exc}); "
                              "pick an empty or new out_dir") from None  # fmt: skip
    leftovers = {n for n in names - listed - {INDEX} if _own_leftover(folder / n, layer)}
    temporaries = {n for n in names if is_temporary(n) or _SAFETENSORS_TMP.fullmatch(n)}
    own = {INDEX} | listed | leftovers | temporaries
    foreign = sorted(names - own)
    if foreign:
        raise RunDirError(f"{folder}: holds files natgrad's shard planner did not write "
                          f"({', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''}); "
                          "pick an empty or new out_dir")  # fmt: skip
    for link in (folder / n for n in own if (folder / n).is_symlink()):
        raise RunDirError(f"{link}: is a symlink; natgrad does not write through links")
    return listed | leftovers | temporaries


def _validated(path: Path) -> dict:
    """The shard index at ``path``, checked in full: format, every field the loader reads
    (layer, structure, kind, likelihood, dtype, mc_samples, positive sizes), shard files named
    as plain file names inside the folder (never a path elsewhere) and each unit in one shard
    only (the shards' own units are checked against the index as each is read)."""
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(
            f"{path}: no readable unit-Fisher shard index ({e}); the folder is incomplete "
            "or not written by natgrad's planner: recompute with unit_fisher(out_dir=...)"
        ) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        got = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise CheckpointError(f"{path}: format {got!r}, expected {FORMAT!r}")

    def is_int(v, lo: int) -> bool:
        return is_integer(v) and v >= lo

    def shard_ok(s) -> bool:
        return (isinstance(s, dict) and isinstance(s.get("file"), str)
                and _SHARD.match(s["file"]) is not None and isinstance(s.get("units"), list)
                and len(s["units"]) > 0 and all(is_int(u, 0) for u in s["units"]))  # fmt: skip

    def dtype_ok(v) -> bool:  # a floating torch dtype's name: "float32", "bfloat16", ...
        dtype = getattr(torch, v, None) if isinstance(v, str) else None
        return isinstance(dtype, torch.dtype) and dtype.is_floating_point

    def mc_ok(v) -> bool:  # the samples per input of kind="mc", None for the other kinds
        return is_int(v, 1) if index.get("kind") == "mc" else v is None or is_int(v, 1)

    checks = {
        "layer": lambda v: isinstance(v, str),
        "structure": lambda v: v in memory.STRUCTURES,
        "kind": lambda v: v in likelihoods.KINDS,
        "likelihood": lambda v: v in likelihoods.LIKELIHOODS,
        "dtype": dtype_ok,
        "mc_samples": mc_ok,
        "n": lambda v: is_int(v, 1),
        "fan_in": lambda v: is_int(v, 1),
    }
    missing = [k for k in checks if k not in index]
    bad = [f"{k}={index[k]!r}"[:60] for k, ok in checks.items() if k in index and not ok(index[k])]
    shards = index.get("shards")
    if not isinstance(shards, list) or not shards:
        bad.append("shards")
    else:
        bad += [f"shard {str(s)[:60]}" for s in shards if not shard_ok(s)][:1]
    if not bad:
        counts = Counter(u for s in shards for u in s["units"])
        twice = sorted(u for u, k in counts.items() if k > 1)
        if twice:
            bad.append(f"units {twice[:5]} listed in more than one shard")
    if missing or bad:
        what = ([f"missing {', '.join(missing)}"] if missing else []) + bad
        raise CheckpointError(
            f"{path}: invalid shard index ({'; '.join(what)}): the planner writes every field, "
            "shard files as plain names in the folder, positive sizes and each unit once; the "
            "folder was altered or not written by natgrad: recompute with unit_fisher(out_dir=...)"
        )
    return index


class ShardedUnitFisher:
    r"""A unit Fisher kept in safetensors shards, loaded one shard at a time.

    ``shard(i)`` is a :class:`~natgrad.UnitFisher` (dense) or
    :class:`~natgrad.structures.StructuredUnitFisher`; the theorem methods
    (:meth:`natural_gradient`, :meth:`bias_shift`, :meth:`s`, :meth:`k`, :meth:`cosine`), the
    measures (:meth:`measures`, :meth:`efficiency`, :meth:`bias_shift_error`, :meth:`direction`) and
    the per-unit entries (:attr:`c`, :attr:`mean_q`) are computed shard by shard and
    concatenated in :attr:`units` order. Gradients are the whole layer's (``[U_layer, d]`` or
    the weight's shape) or one row per held unit (``[num_units, d]``). :attr:`matrix` loads
    everything (refused with :class:`~natgrad.errors.MemoryBudgetError` when it does not fit
    in the available memory).
    """

    def __init__(self, folder: Path, index: dict):
        self.folder, self.index = Path(folder), index
        self.layer, self.structure = index["layer"], index["structure"]
        self.kind, self.likelihood, self.n = index["kind"], index["likelihood"], index["n"]
        self.mc_samples, self.fan_in = index["mc_samples"], index["fan_in"]
        self.shards = index["shards"]
        self.units = torch.tensor([u for s in self.shards for u in s["units"]])
        self._mean_p = None

    @classmethod
    def load(cls, folder) -> ShardedUnitFisher:
        """Open a folder written by the planner (``index.json`` and its shards)."""
        path = Path(folder) / INDEX
        index = _validated(path)
        missing = [s["file"] for s in index["shards"] if not (Path(folder) / s["file"]).is_file()]
        if missing:
            raise CheckpointError(f"{path}: shards missing: {missing[:3]}; recompute the folder")
        return cls(folder, index)

    @property
    def num_units(self) -> int:
        return self.units.numel()

    @property
    def mean_p(self) -> torch.Tensor:
        if self._mean_p is None:
            self._mean_p = self.shard(0).mean_p
        return self._mean_p

    def shard(self, i: int):
        r"""The i-th shard as a UnitFisher / StructuredUnitFisher (read from disk)."""
        info = self.shards[i]
        path = self.folder / info["file"]
        try:
            t = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: unreadable shard ({e}); recompute the folder") from None
        self._check_shard(path, info, t)
        kw = {k: getattr(self, k) for k in ("n", "kind", "likelihood", "layer", "mc_samples")}
        kw |= {k: t[k] for k in ("mean_p", "units")} | {k: t.get(k) for k in ("c_sum", "c_sq_sum")}
        if self.structure == "dense":
            return UnitFisher(matrix=t["matrix"], **kw)
        from natgrad.structures import StructuredUnitFisher

        return StructuredUnitFisher(
            diagonal=t["diagonal"],
            bias_column=t.get("bias_column"),
            structure=self.structure,
            **kw,
        )

    def _check_shard(self, path: Path, info: dict, t: dict) -> None:
        """The shard file agrees with its index entry: the same units in the same order (the
        gradients' rows are paired with the blocks by them) and the index's fan_in."""
        blocks = ("matrix",) if self.structure == "dense" else ("diagonal",)
        missing = [k for k in ("units", "mean_p", *blocks) if k not in t]
        if missing:
            raise CheckpointError(
                f"{path}: no {', '.join(missing)} in this {self.structure} shard; the folder "
                "was altered: recompute it with unit_fisher(out_dir=...)"
            )
        units = t["units"]
        if units.ndim != 1 or units.tolist() != info["units"]:
            raise CheckpointError(
                f"{path}: the shard holds units {units.tolist()[:8]}, its index entry "
                f"({INDEX}) lists {info['units'][:8]}; the index or the shard was altered and "
                "the gradients' rows would be paired with other units' blocks: recompute the "
                "folder with unit_fisher(out_dir=...)"
            )
        d = t["mean_p"].shape[-1] if t["mean_p"].ndim else None
        if d != self.fan_in:
            raise CheckpointError(
                f"{path}: the shard's blocks have fan_in {d}, its index ({INDEX}) says "
                f"{self.fan_in}; the index or the shard was altered: recompute the folder "
                "with unit_fisher(out_dir=...)"
            )

    def __iter__(self) -> Iterator:
        return (self.shard(i) for i in range(len(self.shards)))

    def __len__(self) -> int:
        return len(self.shards)

    @property
    def matrix(self) -> torch.Tensor:
        r"""``[U, d+1, d+1]`` every block, loaded (checked against memory); for structured
        shards their metric materialised, as :attr:`StructuredUnitFisher.matrix` gives it."""
        need = (
            self.num_units * (self.fan_in + 1) ** 2 * getattr(torch, self.index["dtype"]).itemsize
        )
        if need > memory.available_memory():
            raise MemoryBudgetError(
                f"layer {self.layer!r}: loading all {self.num_units} blocks needs {need} bytes "
                f"({memory.format_bytes(need)}), more than is available; iterate the shards "
                "(for F in sharded: ...) or use the shard-wise methods"
            )
        return torch.cat([F.matrix for F in self])

    # --- shard-wise maps ----------------------------------------------------------------
    def _rows(self, grad_weight, grad_bias):
        """Per-shard gradient pairs: the held units' rows (as ``UnitFisher.unit_grads`` takes
        them), split by position."""
        gw, gb = held_rows(self, grad_weight, grad_bias)
        sizes = [len(s["units"]) for s in self.shards]
        return list(zip(gw.split(sizes), gb.split(sizes), strict=True))

    def _map(self, method: str, grads=None, *args, **kwargs):
        outs = []
        pairs = self._rows(*grads) if grads is not None else [()] * len(self.shards)
        for F, pair in zip(self, pairs, strict=True):
            outs.append(getattr(F, method)(*pair, *args, **kwargs))
        if isinstance(outs[0], theorems.BiasShift):
            return theorems.BiasShift(
                *(torch.cat([getattr(o, f.name) for o in outs]) for f in fields(theorems.BiasShift))
            )
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(p) for p in zip(*outs, strict=True))
        if isinstance(outs[0], dict):
            return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        return torch.cat(outs)

    def natural_gradient(self, grad_weight, grad_bias, damping: float = 0.0):
        r"""(Δw ``[U, d]``, Δw0 ``[U]``), shard by shard."""
        return self._map("natural_gradient", (grad_weight, grad_bias), damping)

    def bias_shift(self, grad_weight, grad_bias, damping: float = 0.0) -> theorems.BiasShift:
        r"""Theorem 2's shifts, shard by shard."""
        return self._map("bias_shift", (grad_weight, grad_bias), damping)

    def cosine(self, grad_weight, grad_bias, damping: float = 0.0) -> torch.Tensor:
        return self._map("cosine", (grad_weight, grad_bias), damping)

    def s(self, form: str = "schur", damping: float = 0.0) -> torch.Tensor:
        return self._map("s", None, form, damping)

    def k(self, form: str = "closed", damping: float = 0.0) -> torch.Tensor:
        return self._map("k", None, form, damping)

    @property
    def c(self) -> torch.Tensor:
        return torch.cat([F.c for F in self])

    @property
    def n_eff(self) -> torch.Tensor | None:
        parts = [F.n_eff for F in self]
        return None if any(p is None for p in parts) else torch.cat(parts)

    def measures(self, grad_weight, grad_bias, rel_damping: float = 0.0) -> dict:
        r"""``natgrad.measures`` of every unit, shard by shard (keys as for one shard)."""
        return self._map("measures", (grad_weight, grad_bias), rel_damping)

    def _against(self, method: str, grads, direction, rel_damping: float) -> torch.Tensor:
        """``method`` (``efficiency``, ``bias_shift_error``) of an update, shard by shard: a
        kind name, or a pair (u_w, u_0) given as gradients are."""
        if isinstance(direction, str):
            ups = [direction] * len(self.shards)
        elif isinstance(direction, tuple | list) and len(direction) == 2:
            ups = self._rows(*direction)
        else:
            raise InputError(f"layer {self.layer!r}: direction must be a kind name or a pair "
                             f"(u_w, u_0), got {type(direction).__name__}")  # fmt: skip
        rows = zip(self, self._rows(*grads), ups, strict=True)
        return torch.cat([getattr(F, method)(*pair, up, rel_damping) for F, pair, up in rows])

    def efficiency(self, grad_weight, grad_bias, direction, rel_damping: float = 0.0):
        r"""``[U]`` Fisher efficiency ρ of ``direction`` (a kind or (u_w, u_0)), shard by shard."""
        return self._against("efficiency", (grad_weight, grad_bias), direction, rel_damping)

    def bias_shift_error(self, grad_weight, grad_bias, direction, rel_damping: float = 0.0):
        r"""``[U]`` relative bias-shift error of ``direction``, shard by shard."""
        return self._against("bias_shift_error", (grad_weight, grad_bias), direction, rel_damping)

    def direction(self, grad_weight, grad_bias, kind: str, rel_damping: float = 0.0):
        r"""(u_w ``[U, d]``, u_0 ``[U]``) of ``kind``, shard by shard."""
        return self._map("direction", (grad_weight, grad_bias), kind, rel_damping)

    @property
    def mean_q(self) -> torch.Tensor:
        return torch.cat([F.mean_q for F in self])

    def __repr__(self) -> str:
        return (
            f"ShardedUnitFisher(layer={self.layer!r}, structure={self.structure!r}, "
            f"units={self.num_units}, fan_in={self.fan_in}, shards={len(self.shards)}, "
            f"folder={str(self.folder)!r})"
        )
