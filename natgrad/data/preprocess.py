r"""The paper's CIFAR preprocessing: global contrast normalisation, ZCA whitening, and
augmentation by 4-pixel zero padding, random 32×32 crops and random horizontal flips.

GCN and ZCA follow pylearn2's maxout CIFAR setup (docs/paper.md, "Training settings"):
each centred image scaled to vector norm 55 (``global_contrast_normalize(X, scale=55)``,
its default ``use_std=False``), ``ε = 0.1`` (pylearn2's ``filter_bias``), and
eigen-directions with ``λ ≤ rtol · λ_max`` dropped (GCN removes one: every image has mean 0).
:func:`standardise` is ``natgrad compare``'s pixel-layer control (no paper experiment), so the
first layer sees centred inputs as an ELU net's hidden layers do. Augmentation draws from an
explicit :class:`torch.Generator`, so training is reproducible and resumable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from natgrad.data.dataset import Dataset
from natgrad.errors import InputError

__all__ = ["ZCA", "gcn", "gcn_zca", "random_crop_flip", "standardise"]


def gcn(x: torch.Tensor, *, scale: float = 55.0, eps: float = 1e-8) -> torch.Tensor:
    r"""Global contrast normalisation of each sample, pylearn2's: ``scale · c / ‖c‖`` with
    ``c = x − mean`` (vector norm ``scale``; pylearn2's ``use_std=False``, so a 32×32×3
    image ends with standard deviation 55/√3072 ≈ 0.99).

    ``x``: ``[N, …]``; mean and norm over all but the first axis (norms below ``eps`` are
    taken as ``eps``). Returns the same shape.

    Example:
        >>> y = gcn(torch.rand(4, 3, 2, 2), scale=1.0)
        >>> bool(y.flatten(1).mean(1).abs().max() < 1e-6), bool((y.flatten(1).norm(dim=1) - 1).abs().max() < 1e-5)
        (True, True)
    """
    flat = x.flatten(1)
    centred = flat - flat.mean(dim=1, keepdim=True)
    norm = centred.pow(2).sum(dim=1, keepdim=True).sqrt().clamp_min(eps)
    return (scale * centred / norm).reshape(x.shape)


@dataclass
class ZCA:
    r"""ZCA whitening fitted on training data: ``transform(x) = (x − mean) @ W``.

    Attributes:
        mean: ``[D]`` training mean.
        W: ``[D, D]`` symmetric whitening matrix ``U_k diag((λ_k + ε)^{-1/2}) U_kᵀ``.
        rank: number of kept eigen-directions k.
    """

    mean: torch.Tensor
    W: torch.Tensor
    rank: int

    @classmethod
    def fit(cls, x: torch.Tensor, *, eps: float = 0.1, rtol: float = 1e-8) -> ZCA:
        r"""Fit on ``x`` ``[N, …]`` (flattened to ``[N, D]``); computed in float64.

        With ``eps = 0`` the whitened training covariance is the projector onto the kept
        subspace, ``U_k U_kᵀ`` (the identity when the data have full rank).
        """
        flat = x.flatten(1).to(torch.float64)
        mean = flat.mean(dim=0)
        centred = flat - mean
        cov = centred.T @ centred / flat.shape[0]  # [D, D]
        lam, U = torch.linalg.eigh(cov)
        keep = lam > rtol * lam.max().clamp_min(torch.finfo(torch.float64).tiny)
        Uk = U[:, keep]
        W = (Uk * (lam[keep] + eps).rsqrt()) @ Uk.T
        return cls(mean=mean.to(x.dtype), W=W.to(x.dtype), rank=int(keep.sum()))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten ``x`` ``[N, …]``; returns the same shape and dtype."""
        flat = x.flatten(1).to(self.W.dtype)
        return ((flat - self.mean) @ self.W).reshape(x.shape).to(x.dtype)


def gcn_zca(ds: Dataset, *, scale: float = 55.0, eps: float = 0.1) -> Dataset:
    """GCN on every split, ZCA fitted on the training split and applied to every split."""
    train = gcn(ds.train_x, scale=scale)
    zca = ZCA.fit(train, eps=eps)
    meta = dict(ds.meta, preprocess=f"gcn(scale={scale}) + zca(eps={eps}, rank={zca.rank})")
    out = {"train_x": zca.transform(train), "meta": meta}
    for split in ds.splits[1:]:
        out[f"{split}_x"] = zca.transform(gcn(getattr(ds, f"{split}_x"), scale=scale))
    return ds.with_(**out)


def standardise(ds: Dataset, *, floor: float = 1e-2) -> Dataset:
    r"""Every split as ``(x − μ) / max(σ, floor)`` with the per-feature mean μ and standard
    deviation σ of the training split (a feature that is nearly constant there, such as an
    MNIST border pixel, is divided by ``floor`` rather than by ~0).

    Example:
        >>> from natgrad.data import load_dataset
        >>> ds = standardise(load_dataset("digits", seed=0))
        >>> round(float(ds.train_x.flatten(1).mean(0).abs().max()), 5)
        0.0
    """
    flat = ds.train_x.flatten(1).double()
    if flat.shape[0] < 2:  # no spread to divide by (std of one image is NaN)
        raise InputError(f"standardise: needs at least 2 training images, got {flat.shape[0]}")
    mean, std = flat.mean(0), flat.std(0)
    scale = std.clamp_min(floor)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return ((x.flatten(1).double() - mean) / scale).reshape(x.shape).to(x.dtype)

    meta = dict(ds.meta, preprocess=f"standardise(floor={floor}) from the training split")
    out = {f"{split}_x": apply(getattr(ds, f"{split}_x")) for split in ds.splits}
    return ds.with_(**out, meta=meta)


def random_crop_flip(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    padding: int = 4,
    flip: bool = True,
    size: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    r"""Zero-pad by ``padding``, crop a random ``h×w`` window, flip half the images.

    ``x``: ``[N, C, H, W]``; offsets and flips are drawn from ``generator`` (on CPU).
    ``size``: the crop ``(h, w)`` (an int for a square; default ``(H, W)``, the CIFAR
    setting). ImageNet's random 224×224 crops of 256×256 images are ``padding=0,
    size=224``. Returns ``[N, C, h, w]`` on ``x``'s device and in ``x``'s dtype.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> random_crop_flip(torch.ones(5, 3, 32, 32), g).shape
        torch.Size([5, 3, 32, 32])
    """
    n, _, H, W = x.shape
    h, w = (H, W) if size is None else (size, size) if isinstance(size, int) else size
    if not (0 < h <= H + 2 * padding and 0 < w <= W + 2 * padding):
        raise InputError(
            f"random_crop_flip: crop {h}×{w} does not fit images {H}×{W} padded by {padding}"
        )
    padded = torch.nn.functional.pad(x, (padding,) * 4) if padding else x  # [N, C, H+2p, W+2p]
    oy = torch.randint(0, H + 2 * padding - h + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, W + 2 * padding - w + 1, (n,), generator=generator).to(x.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(x.device) & flip
    rows = oy[:, None] + torch.arange(h, device=x.device)  # [N, h]
    cols = ox[:, None] + torch.arange(w, device=x.device)  # [N, w]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    idx = torch.arange(n, device=x.device)[:, None, None]
    out = padded[idx, :, rows[:, :, None], cols[:, None, :]]  # [N, h, w, C]
    return out.permute(0, 3, 1, 2).contiguous()


#: Data sets whose nets see a square window of each image, and its side: ImageNet's 224 of
#: the 256×256 images (the paper's random 224 crops).
CROPS: dict[str, int] = {"imagenet": 224}


def centre_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    """The centre ``crop×crop`` window of images ``x`` ``[N, C, H, W]`` (a view)."""
    H, W = x.shape[-2:]
    if not (0 < crop <= H and crop <= W):
        raise InputError(f"centre_crop: crop {crop} does not fit images {H}×{W}")
    top, left = (H - crop) // 2, (W - crop) // 2
    return x[..., top : top + crop, left : left + crop]


def train_view(x: torch.Tensor, dataset: str, generator: torch.Generator, *,
               augment: bool) -> torch.Tensor:  # fmt: skip
    r"""What a net trains on of the batch ``x`` of ``dataset``: with ``augment``, random crops
    and flips (:func:`random_crop_flip`: CIFAR's 4-pixel pad and same-size crop, ImageNet's
    random 224 windows of :data:`CROPS`); without, :func:`eval_view`."""
    crop = CROPS.get(dataset)
    if augment:
        return random_crop_flip(x, generator, padding=0, size=crop) if crop else \
            random_crop_flip(x, generator)  # fmt: skip
    return eval_view(x, dataset)


def eval_view(x: torch.Tensor, dataset: str) -> torch.Tensor:
    """What a net is evaluated on of images ``x`` of ``dataset``: the centre window of
    :data:`CROPS` where it has one, else ``x`` itself."""
    crop = CROPS.get(dataset)
    return x if crop is None else centre_crop(x, crop)
