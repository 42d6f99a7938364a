r"""natgrad's unit blocks in the peers' formats, and the peers' curvature as unit blocks.

Unit i of a Linear or Conv2d layer owns ``weight[i]`` (d = fan-in entries, in
``weight.flatten(1)`` order, natgrad's order of the incoming patch) and ``bias[i]``; natgrad
stores its block bias last, ``[U, d+1, d+1]``. In the peers' flat ``(weight.flatten(), bias)``
order unit i's entries sit at ``i·d … i·d + d − 1`` and ``U·d + i``: every function here is
that one re-indexing. curvlinops and nngeometry are imported only by the functions naming them.

Example:
    >>> import torch
    >>> from natgrad import UnitFisher
    >>> F = UnitFisher.from_matrix(torch.eye(3).expand(2, 3, 3), torch.zeros(2), layer="fc")
    >>> layer_block(F.matrix).shape  # 2 units × (2 weights + 1 bias)
    torch.Size([6, 6])
    >>> torch.equal(unit_blocks(layer_block(F.matrix), 2), F.matrix)
    True
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from natgrad._layers import SUPPORTED, is_unit_layer
from natgrad.errors import InputError

__all__ = ["layer_block", "layer_index", "to_curvlinops", "to_nngeometry", "unit_blocks",
           "unit_blocks_from_nngeometry", "unit_blocks_from_operator"]  # fmt: skip


def layer_index(num_units: int, fan_in: int) -> torch.Tensor:
    r"""``[U, d+1]`` positions of every unit's (weight row, bias) entries in the layer's
    flat ``(weight.flatten(), bias)`` vector."""
    u = torch.arange(num_units).unsqueeze(1)
    weights = u * fan_in + torch.arange(fan_in)
    return torch.cat([weights, num_units * fan_in + u], dim=1)


def layer_block(blocks: torch.Tensor) -> torch.Tensor:
    r"""The layer's dense ``[U(d+1), U(d+1)]`` matrix in the flat ``(weight, bias)`` order
    with the unit blocks ``[U, d+1, d+1]`` on its diagonal and zeros between units."""
    U, n = blocks.shape[0], blocks.shape[-1]
    idx = layer_index(U, n - 1)
    out = blocks.new_zeros(U * n, U * n)
    out[idx.unsqueeze(-1), idx.unsqueeze(-2)] = blocks
    return out


def unit_blocks(matrix: torch.Tensor, num_units: int) -> torch.Tensor:
    r"""The ``[U, d+1, d+1]`` unit blocks (bias last) of a layer's dense matrix in the flat
    ``(weight, bias)`` order; what lies between units is dropped."""
    size = matrix.shape[-1]
    if matrix.ndim != 2 or matrix.shape[0] != size or size % num_units:
        raise InputError(
            f"a layer matrix must be square with U·(d+1) rows for U = {num_units} units, "
            f"got {tuple(matrix.shape)}"
        )
    idx = layer_index(num_units, size // num_units - 1).to(matrix.device)
    return matrix[idx.unsqueeze(-1), idx.unsqueeze(-2)]


def _layers(model: nn.Module, names) -> list[tuple[str, nn.Module]]:
    modules = dict(model.named_modules())
    out = []
    for name in names:
        m = modules.get(name)
        if not is_unit_layer(m):
            has = "no such layer" if m is None else f"a {type(m).__name__}"
            has += " without a bias" if isinstance(m, SUPPORTED) else ""
            raise InputError(
                f"layer {name!r}: unit blocks cover Linear and Conv2d layers with a bias; "
                f"the model has {has}"
            )
        out.append((name, m))
    return out


def _check_complete(name: str, fisher, module: nn.Module) -> torch.Tensor:
    structure = getattr(fisher, "structure", "dense")
    if structure != "dense":
        what = ("Ollivier's metric Q (its weight off-diagonals b_i·b_j/c are in neither the "
                "Fisher nor nngeometry's PMatQuasiDiag)" if structure == "quasidiagonal" else
                "the Fisher with every off-diagonal entry set to 0")  # fmt: skip
        raise InputError(
            f"layer {name!r}: a structure={structure!r} result's matrix is {what}, so it is "
            "not exported as a unit Fisher block; compute structure='dense'"
        )
    blocks = fisher.matrix
    U = module.weight.shape[0]
    d = module.weight[0].numel()
    if blocks.shape != (U, d + 1, d + 1) or not torch.equal(fisher.units.cpu(), torch.arange(U)):
        raise InputError(
            f"layer {name!r}: exporting needs the blocks of every unit in order "
            f"([{U}, {d + 1}, {d + 1}]), got {tuple(blocks.shape)} for units "
            f"{fisher.units.tolist()[:5]}…; compute unit_fishers(model, ...) without `units`"
        )
    return blocks


def _operator_class():
    from curvlinops._torch_base import PyTorchLinearOperator

    class UnitBlockOperator(PyTorchLinearOperator):
        SELF_ADJOINT = True

        def __init__(self, model: nn.Module, fishers: Mapping):
            layers = _layers(model, list(fishers))
            self.layers = [name for name, _ in layers]
            self.blocks = [_check_complete(n, fishers[n], m) for n, m in layers]
            shapes = []
            for _, m in layers:
                shapes += [tuple(m.weight.shape), tuple(m.bias.shape)]
            super().__init__(shapes, shapes)

        @property
        def dtype(self) -> torch.dtype:
            return self.blocks[0].dtype

        @property
        def device(self) -> torch.device:
            return self.blocks[0].device

        def _matmat(self, X: list[torch.Tensor]) -> list[torch.Tensor]:
            out = []
            for k, F in enumerate(self.blocks):
                w, b = X[2 * k], X[2 * k + 1]
                U, K = F.shape[0], w.shape[-1]
                g = torch.cat([w.reshape(U, -1, K), b.reshape(U, 1, K)], dim=1)  # [U, d+1, K]
                y = torch.bmm(F.to(g.dtype), g)
                out += [y[:, :-1].reshape(w.shape), y[:, -1].reshape(b.shape)]
            return out

    return UnitBlockOperator


def to_curvlinops(fishers: Mapping, model: nn.Module):
    r"""A curvlinops ``PyTorchLinearOperator``: the block-diagonal matrix of the unit blocks
    ``fishers`` (``{layer name: UnitFisher}`` of every unit, e.g. from
    :func:`~natgrad.unit_fishers`), acting on the parameters ``[weight, bias]`` of those
    layers in the mapping's order. Self-adjoint; ``op @ v`` takes a tensor list or a flat
    vector, ``op.to_scipy()`` gives a SciPy ``LinearOperator``."""
    return _operator_class()(model, fishers)  # curvlinops is imported only here


def unit_blocks_from_operator(
    operator, model: nn.Module, layers, *, max_elements: int = 1 << 26
) -> dict[str, torch.Tensor]:
    r"""``{layer: [U, d+1, d+1]}``: the unit blocks of any linear operator over the
    parameters ``[weight, bias]`` of ``layers`` (in that order, e.g. curvlinops'
    ``GGNLinearOperator(model, loss, [p for l in layers for p in (l.weight, l.bias)], data)``),
    probed with ``operator @ X``: U·(d+1) columns per layer, in chunks of units whose probes
    hold at most ``max_elements`` entries, keeping only the probed unit's rows."""
    mods = _layers(model, list(layers))
    params = [p for _, m in mods for p in (m.weight, m.bias)]
    total = sum(p.numel() for p in params)
    dtype = getattr(operator, "dtype", params[0].dtype)
    device = getattr(operator, "device", params[0].device)
    out = {}
    for k, (name, m) in enumerate(mods):
        U, n = m.weight.shape[0], m.weight[0].numel() + 1
        idx = layer_index(U, n - 1)  # [U, d+1] within the layer's flat (weight, bias)
        step = max(1, max_elements // max(1, total * n))
        blocks = []
        for lo in range(0, U, step):
            units = idx[lo : lo + step]  # [u, d+1]
            cols = units.numel()
            X = [torch.zeros(*p.shape, cols, dtype=dtype, device=device) for p in params]
            flat = torch.zeros(m.weight.numel() + U, cols, dtype=dtype, device=device)
            flat[units.flatten().to(device), torch.arange(cols, device=device)] = 1.0
            X[2 * k].copy_(flat[: m.weight.numel()].reshape(*m.weight.shape, cols))
            X[2 * k + 1].copy_(flat[m.weight.numel() :])
            Y = operator @ X
            rows = torch.cat([Y[2 * k].reshape(-1, cols), Y[2 * k + 1].reshape(U, cols)])
            rows = rows[units.to(rows.device)].reshape(units.shape[0], n, units.shape[0], n)
            blocks.append(torch.diagonal(rows, dim1=0, dim2=2).permute(2, 0, 1))
        out[name] = torch.cat(blocks)
    return out


def to_nngeometry(fishers: Mapping, model: nn.Module, generator=None, *,
                  max_elements: int = 1 << 28):  # fmt: skip
    r"""nngeometry's ``PMatBlockDiag`` over the layers of ``fishers`` (``{layer: UnitFisher}``
    of every unit), each layer's block the unit blocks on its diagonal and zeros between
    units. ``generator``: an nngeometry backend over those layers (default: a
    ``TorchHooksJacobianBackend`` of ``model`` with a ``LayerCollection`` of these layers, in
    the mapping's order). PMatBlockDiag stores each layer's block dense, [U(d+1)]² entries:
    a layer beyond ``max_elements`` of them (default 2²⁸, 1 GiB in float32) is refused
    (:func:`to_curvlinops` exports it matrix-free)."""
    from nngeometry.backend import TorchHooksJacobianBackend
    from nngeometry.layercollection import LayerCollection
    from nngeometry.object import PMatBlockDiag

    layers = _layers(model, list(fishers))
    for name, m in layers:
        side = m.weight.shape[0] * (m.weight[0].numel() + 1)
        if side * side > max_elements:
            raise InputError(
                f"layer {name!r}: nngeometry's PMatBlockDiag holds its dense {side} × {side} "
                f"block ({side * side:,} entries > max_elements={max_elements:,}); export it "
                "matrix-free with to_curvlinops, or raise max_elements"
            )
    if generator is None:
        lc = LayerCollection()
        for _, m in layers:
            lc.add_layer_from_model(model, m)
        generator = TorchHooksJacobianBackend(model, layer_collection=lc)
    data = {name: layer_block(_check_complete(name, fishers[name], m)) for name, m in layers}
    return PMatBlockDiag(generator, data=data)


def unit_blocks_from_nngeometry(pmat, model: nn.Module) -> dict[str, torch.Tensor]:
    r"""``{layer: [U, d+1, d+1]}``: the unit blocks of an nngeometry ``PMatBlockDiag`` (read
    from its layer blocks) or ``PMatDense`` (its diagonal layer blocks), for every Linear or
    Conv2d layer of its layer collection. A Linear or Conv2d layer without a bias is refused
    (:class:`~natgrad.errors.InputError`, as everywhere here): a unit block is (weights, bias),
    and the layer's block of U·d rows would be split into blocks that mix two units' weights."""
    kind = type(pmat).__name__
    if kind not in ("PMatBlockDiag", "PMatDense"):
        raise InputError(
            f"unit_blocks_from_nngeometry reads a PMatBlockDiag or PMatDense, got a {kind}: its "
            "layers hold no unit blocks (a diagonal, a quasi-diagonal or a Kronecker factor "
            "pair); compute nngeometry's FIM with PMatBlockDiag"
        )
    lc = pmat.generator.layer_collection
    modules = dict(model.named_modules())
    dense = None if kind == "PMatBlockDiag" else pmat.to_torch()
    out = {}
    for name, layer in lc.layers.items():
        m = modules[name]
        if not isinstance(m, SUPPORTED):
            continue
        _layers(model, [name])  # no bias: refused, never read as blocks of d+1 entries
        if dense is None:
            block = pmat.data[name]
        else:
            start = lc.p_pos[name]
            block = dense[start : start + layer.numel(), start : start + layer.numel()]
        out[name] = unit_blocks(block, m.weight.shape[0])
    return out
