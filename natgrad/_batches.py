"""Turn the ``inputs``/``targets`` a user passes into checked ``(x, y)`` batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from natgrad.errors import InputError


def iter_batches(
    inputs: torch.Tensor | Iterable,
    targets: torch.Tensor | None,
    batch_size: int | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    r"""Yield ``(x [N_b, ...], y [N_b, ...] or None)``.

    ``inputs`` is a tensor (split into batches of ``batch_size``; all at once by default) or
    an iterable of batches, each ``(x, y)``, ``[x, y]`` (as a DataLoader yields) or ``x``.
    Inputs with NaN/Inf are refused with the batch index.
    """
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(inputs, torch.Tensor):
        if targets is not None and not isinstance(targets, torch.Tensor):
            raise InputError(
                f"targets must be a tensor when inputs are a tensor, got {type(targets).__name__}"
            )
        if inputs.ndim == 0 or inputs.shape[0] == 0:
            raise InputError(
                f"inputs are empty (shape {tuple(inputs.shape)}); pass at least one input"
            )
        if targets is not None and targets.shape[0] != inputs.shape[0]:
            raise InputError(
                f"inputs have {inputs.shape[0]} rows but targets have {targets.shape[0]}: "
                "give one target per input"
            )
        n = inputs.shape[0]
        step = batch_size or n
        for b, start in enumerate(range(0, n, step)):
            x = inputs[start : start + step]
            _check_finite(x, b)
            yield x, (None if targets is None else targets[start : start + step])
        return
    if targets is not None:
        raise InputError(
            "targets were given separately from an iterable of batches; put them inside the "
            "batches as (inputs, targets) pairs instead"
        )
    if not isinstance(inputs, Iterable):
        raise InputError(
            f"inputs must be a tensor or an iterable of (inputs, targets) batches, "
            f"got {type(inputs).__name__}"
        )
    if (isinstance(inputs, tuple) and len(inputs) == 2
            and all(isinstance(t, torch.Tensor) and t.ndim for t in inputs)
            and inputs[0].shape[0] == inputs[1].shape[0]):  # fmt: skip
        # (x, y) would read as two batches of inputs, y the second: refused. A list is a list
        # of batches (documented), so a DataLoader's batch [x, y] must be split by the caller.
        raise InputError(
            "inputs is a tuple of two tensors with the same number of rows: for inputs with "
            "their targets pass inputs=x, targets=y; for two batches of inputs pass a list "
            "[x1, x2]"
        )
    for b, item in enumerate(inputs):
        if isinstance(item, torch.Tensor):
            x, y = item, None
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            x, y = item
        else:
            raise InputError(
                f"batch {b} is a {type(item).__name__}; each batch must be a tensor of inputs "
                "or an (inputs, targets) pair"
            )
        if not isinstance(x, torch.Tensor) or x.ndim == 0:
            raise InputError(f"batch {b}: inputs must be a tensor with a batch dimension")
        if y is not None and (not isinstance(y, torch.Tensor) or y.shape[0] != x.shape[0]):
            raise InputError(
                f"batch {b}: inputs have {x.shape[0]} rows but targets "
                f"{'are not a tensor' if not isinstance(y, torch.Tensor) else f'have {y.shape[0]}'}"
                ": give one target per input"
            )
        if x.shape[0] == 0:
            continue
        _check_finite(x, b)
        yield x, y


def _check_finite(x: torch.Tensor, b: int) -> None:
    # The sum propagates NaN/Inf without a tensor of x's size (isfinite(x) costs ~1.75x the
    # inputs, outside any budget); only an overflowing or non-finite sum is checked exactly,
    # in blocks of rows.
    if not x.is_floating_point() or bool(torch.isfinite(x.sum())):
        return
    x = x.reshape(1) if x.ndim == 0 else x
    rows = max(1, 2**22 // max(1, x[0].numel()))
    bad = sum(int((~torch.isfinite(part)).sum()) for part in x.split(rows))
    if bad:
        raise InputError(
            f"inputs of batch {b} contain {bad} NaN/Inf value(s); clean or drop those inputs"
        )
