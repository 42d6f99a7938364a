r"""Accumulators of the unit Fisher engine: the per-layer sums a pass over the data adds to.

:class:`LayerAccumulator` keeps the dense blocks (one GEMM per batch for one position per
input; batched ``bmm`` for weight-shared units); the structured and Woodbury accumulators
subclass it. Below the engine and the API (:mod:`natgrad.fisher`): it imports neither.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from natgrad._layers import check_signals, check_units, incoming, net_positions
from natgrad.unitfisher import UnitFisher

# Largest temporary a chunk may allocate, in elements (2**25 floats = 128 MiB in float32).
MEMORY_BUDGET = 2**25


def block_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a model's unit blocks, at least float32: a half-precision model's sums
    over inputs and batches would round each batch's share away (bfloat16: 8 bits) or
    overflow (float16: 65,504), so its blocks are summed, and returned, in float32."""
    return torch.promote_types(dtype, torch.float32)


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.to(block_dtype(t.dtype))


class LayerAccumulator:
    r"""Sums Σ_n Σ_k g gᵀ ``[U, d+1, d+1]``, Σ a ``[d]`` and, for n_eff, Σ_n c_n and Σ_n c_n²
    ``[U]`` (c_n = Σ_k g_nk,bias², the bias entry of input n's own block) over batches.

    The structure-specific parts are three methods that subclasses
    (:class:`natgrad.structures.StructuredAccumulator`,
    :class:`natgrad.woodbury.WoodburyAccumulator`) replace:
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
        a = _wide(incoming(self.module, x))  # [N, P, d], a view of the unfolded patches
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
        check_signals(self.name, g)
        v = _wide(net_positions(self.module, g))  # [K, N, P, U]
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

    def _reduce_weighted(self, w: torch.Tensor, at: torch.Tensor) -> None:
        r"""F_u += Σ_m w_mu ã_m ã_mᵀ (upper block triangle), ``w`` ``[M, U]``, ``at`` ``[M, d+1]``."""
        _add_weighted_outer(self.total, w, at, self.budget)

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
        _mirror_upper(matrix)  # both reductions fill the upper block triangle: exact symmetry
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


# Rows per block of the symmetric product: small enough that skipping the blocks below the
# diagonal saves most of the lower triangle, large enough for efficient GEMMs.
_ROW_BLOCK = 64
# Units from which one packed-triangle GEMM beats the row blocks (:func:`_add_weighted_outer`).
_PACKED_MIN_UNITS = 32


def _add_weighted_outer(
    total: torch.Tensor, w: torch.Tensor, at: torch.Tensor, budget: int = MEMORY_BUDGET
) -> None:
    r"""total[u] += Σ_n w[n, u] ã_n ã_nᵀ (on and above the diagonal row blocks at least;
    :func:`_mirror_upper` fills the rest).

    ``total`` ``[U, d+1, d+1]``, ``w`` ``[N, U]``, ``at`` ``[N, d+1]``. Where the packed
    upper triangles fit the memory budget (U·T ≤ budget, T = (d+1)(d+2)/2), one GEMM
    ``wᵀ [U, N] @ P [N, T]`` with P_n the packed upper triangle of ã_n ã_nᵀ computes
    every unit's triangle at once: (d+2)/(2(d+1)) of the dense FLOPs in one large GEMM
    (:func:`_add_packed_outer`; building P costs N·T whatever U, so it pays from
    :data:`_PACKED_MIN_UNITS` units on: 1.5× the row blocks at U = 128, d = 128).
    Otherwise the row-block route of :func:`_add_row_blocks`.
    """
    n, d1 = at.shape
    t = d1 * (d1 + 1) // 2
    if w.shape[1] >= _PACKED_MIN_UNITS and w.shape[1] * t <= budget and budget // t >= 64:
        _add_packed_outer(total, w, at, budget)
    else:
        _add_row_blocks(total, w, at, budget)


def _packed_offsets(d1: int) -> list[int]:
    """Start of row i's entries (columns i..d) in the packed upper triangle, and the end."""
    return list(itertools.accumulate(range(d1, 0, -1), initial=0))


def _add_packed_outer(
    total: torch.Tensor, w: torch.Tensor, at: torch.Tensor, budget: int = MEMORY_BUDGET
) -> None:
    r"""The packed route of :func:`_add_weighted_outer`: rows of P are built chunk by chunk
    (row i of ã_n ã_nᵀ from column i on: one ``mul`` per row) in a scratch buffer that is
    kept between calls (:func:`_scratch`), then one ``addmm`` per chunk accumulates
    ``[U, T]``; the triangles are added into both halves of ``total`` at the end."""
    n, d1 = at.shape
    offs = _packed_offsets(d1)
    t = offs[-1]
    rows = max(1, min(n, _PACKED_ROWS, budget // t))
    w_t = w.T.contiguous()  # [U, N]
    acc = torch.zeros(w_t.shape[0], t, dtype=at.dtype, device=at.device)
    buf = _scratch(rows * t, at.dtype, at.device).view(rows, t)
    for n0 in range(0, n, rows):
        a = at[n0 : n0 + rows]
        p = buf[: a.shape[0]]
        for i in range(d1):
            torch.mul(a[:, i : i + 1], a[:, i:], out=p[:, offs[i] : offs[i + 1]])
        acc.addmm_(w_t[:, n0 : n0 + a.shape[0]], p)
    upper, lower, strict = _packed_index(d1, at.device)
    flat = total if total.is_contiguous() else total.contiguous()
    flat = flat.view(total.shape[0], d1 * d1)
    flat.index_add_(1, upper, acc)
    flat.index_add_(1, lower, acc.index_select(1, strict))
    if flat.data_ptr() != total.data_ptr():
        total.copy_(flat.view_as(total))


def _packed_index(d1: int, device):
    """Flat positions of the packed upper triangle in a d1×d1 block, of its mirror image
    below the diagonal, and which packed entries lie strictly above the diagonal."""
    iu, ju = torch.triu_indices(d1, d1, device=device)
    strict = (iu != ju).nonzero().flatten()
    return iu * d1 + ju, (ju * d1 + iu)[strict], strict


# Rows of P per GEMM: large enough for an efficient GEMM, small enough for a modest buffer.
_PACKED_ROWS = 1024
_SCRATCH: dict = {}


def _scratch(numel: int, dtype, device) -> torch.Tensor:
    """A flat scratch tensor of at least ``numel`` elements, kept per (dtype, device) and
    reused by later calls: on a VM a fresh page costs more than the arithmetic on it."""
    key = (dtype, str(device))
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=dtype, device=device)
        _SCRATCH[key] = buf
    return buf[:numel]


def _add_row_blocks(
    total: torch.Tensor, w: torch.Tensor, at: torch.Tensor, budget: int = MEMORY_BUDGET
) -> None:
    r"""The row-block route of :func:`_add_weighted_outer`, for blocks whose packed triangles
    exceed the budget. For the row block r of every unit in a chunk of units, one GEMM
    ``[U_c·h, N] @ [N, d+1−r0]`` computes the rows r0..r1 from column r0 on, so the total
    cost is about (B+1)/(2B) of the full 2·N·U·(d+1)² for B row blocks. The scaled rows
    and the GEMM's output live in two scratch buffers allocated once per call and reused
    for every chunk and row block: fresh pages cost more than the arithmetic on them (a
    page fault per 4 KiB; measured 10× the multiply on a 2-core VM).
    """
    n, d1 = at.shape
    w_t = w.T.contiguous()  # [U, N]
    at_t = at.T.contiguous()  # [d+1, N]
    step = max(1, budget // (_ROW_BLOCK * max(n, d1)))
    h_max = min(_ROW_BLOCK, d1)
    uc_max = min(step, w_t.shape[0])
    scaled_buf = torch.empty(uc_max * h_max * n, dtype=at.dtype, device=at.device)
    rows_buf = torch.empty(uc_max * h_max * d1, dtype=at.dtype, device=at.device)
    for u0 in range(0, w_t.shape[0], step):
        wc = w_t[u0 : u0 + step]  # [U_c, N]
        uc = wc.shape[0]
        for r0 in range(0, d1, _ROW_BLOCK):
            r1 = min(d1, r0 + _ROW_BLOCK)
            h = r1 - r0
            scaled = scaled_buf[: uc * h * n].view(uc, h, n)
            torch.mul(wc.unsqueeze(1), at_t[r0:r1].unsqueeze(0), out=scaled)  # [U_c, h, N]
            rows = rows_buf[: uc * h * (d1 - r0)].view(uc * h, d1 - r0)
            torch.mm(scaled.view(-1, n), at[:, r0:], out=rows)  # [U_c·h, d+1−r0]
            total[u0 : u0 + uc, r0:r1, r0:] += rows.view(uc, h, d1 - r0)


def _mirror_upper(total: torch.Tensor) -> None:
    r"""Copy the blocks above the diagonal blocks to below them (exact symmetry)."""
    d1 = total.shape[-1]
    for r0 in range(0, d1, _ROW_BLOCK):
        r1 = min(d1, r0 + _ROW_BLOCK)
        total[:, r1:, r0:r1] = total[:, r0:r1, r1:].transpose(-1, -2)
        diag = total[:, r0:r1, r0:r1]
        diag.copy_(0.5 * (diag + diag.transpose(-1, -2)))
