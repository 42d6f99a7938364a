r"""ImageNet as the standard class-folder tree (the layout torchvision's ``ImageFolder`` reads).

::

    data_dir/
        train/<class_name>/<image>.JPEG      (also .jpg, .jpeg, .png; case-insensitive)
        val/<class_name>/<image>.JPEG

The class index of an image is the position of its class folder's name among the sorted
class-folder names of its split; images within a class are taken in sorted file-name order.
Hidden entries (names starting with ``.``) and files with other extensions are ignored.

The paper's pipeline (docs/paper.md, "Training settings"): resize to 256×256, subtract the
training mean image, random 224×224 crops and horizontal flips. :func:`load_imagenet` is eager
(the full 1.28M images, 252 GB as uint8, do not fit in memory: it is for a few classes or
``limit_per_class`` images each).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from natgrad.data.preprocess import centre_crop, random_crop_flip
from natgrad.errors import DataFileError, InputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageNetSplit",
    "imagenet_eval_transform",
    "imagenet_train_transform",
    "load_imagenet",
    "scan_image_folder",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpeg", ".jpg", ".png"})
_SPLITS = ("train", "val")
_LAYOUT = "<split>/<class_name>/<image>.{JPEG,jpg,jpeg,png}"


class ImageNetSplit(NamedTuple):
    r"""One split of an image-folder tree: images ``x`` ``[N, 3, size, size]`` (uint8 0..255 or
    float in [0, 1]), int64 labels ``y`` indexing the sorted ``classes``, the training ``mean``
    image ``[3, size, size]`` in ``x``'s units (float32 for uint8 ``x``; ``None`` for a
    non-training split loaded without one), and the image ``paths``, one per row."""

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    mean: torch.Tensor | None
    paths: tuple[Path, ...]


def scan_image_folder(root: str | os.PathLike) -> tuple[list[Path], torch.Tensor, list[str]]:
    r"""``(paths, labels, classes)`` of one split folder ``root/<class_name>/<image>`` (such as
    ``data_dir/train``): N image paths and int64 labels ``[N]`` grouped by class, ordered and
    filtered as the module docstring says, and the class names. A
    :class:`~natgrad.errors.DataFileError` names ``root`` or the class folder when either is
    missing or empty.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for c in ("dog", "cat"):
        ...         (Path(d) / c).mkdir()
        ...         (Path(d) / c / "a.JPEG").touch()
        ...     paths, labels, classes = scan_image_folder(d)
        >>> classes, labels.tolist(), [p.parent.name for p in paths]
        (['cat', 'dog'], [0, 1], ['cat', 'dog'])
    """
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "folder not found"
        raise DataFileError(
            f"{root}: {what}; expected an image-folder split {root.name}/<class_name>/<image> "
            f"(ImageNet layout {_LAYOUT}). Pass --data-dir to the folder holding train/ and val/."
        )
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataFileError(
            f"{root}: no class folders; expected one sub-folder per class holding its images "
            f"(ImageNet layout {_LAYOUT})"
        )
    paths: list[Path] = []
    counts: list[int] = []
    for name in classes:
        folder = root / name
        images = sorted(
            folder / e.name
            for e in os.scandir(folder)
            if e.is_file()
            and not e.name.startswith(".")
            and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        )
        if not images:
            raise DataFileError(
                f"{folder}: class folder {name!r} holds no images; expected files with "
                f"extension {', '.join(sorted(IMAGE_EXTENSIONS))} (any case). Remove the "
                "folder or add its images."
            )
        paths.extend(images)
        counts.append(len(images))
    labels = torch.repeat_interleave(torch.arange(len(classes)), torch.tensor(counts))
    return paths, labels.to(torch.int64), classes


def _decode(Image, path: Path, size: int) -> np.ndarray:
    r"""Decode ``path``, convert to RGB, resize to ``size×size``: uint8 ``[size, size, 3]``."""
    try:
        with Image.open(path) as img:
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")  # Pillow warns when converting such palettes to RGB
            rgb = img.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.array(rgb, dtype=np.uint8)  # a writable copy: [size, size, 3]
    except Exception as exc:  # any decoding failure means a corrupt or non-image file
        raise DataFileError(
            f"{path}: cannot decode the image ({type(exc).__name__}: {exc}); expected a "
            "JPEG or PNG file. Replace or delete it."
        ) from exc


def load_imagenet(
    data_dir: str | os.PathLike,
    split: str = "train",
    *,
    size: int = 256,
    crop: int = 224,
    limit_per_class: int | None = None,
    mean: torch.Tensor | None = None,
    dtype: torch.dtype = torch.uint8,
) -> ImageNetSplit:
    r"""Decode one split of an ImageNet folder tree, resized to ``size×size`` (paper: 256).

    Every image is converted to RGB and resized (bilinear, antialiased when shrinking) to
    ``size×size``, ignoring its aspect ratio, as the paper does. ``data_dir`` holds ``train/``
    and ``val/``; ``crop`` (the crop the images are meant for) is checked ``≤ size``;
    ``limit_per_class`` keeps the first (in name order) images of each class; ``mean``: the
    training mean image to carry (pass the training split's when loading ``val``; ``None``:
    computed for ``"train"``, left ``None`` for ``"val"``); ``dtype``: ``torch.uint8`` (4× less
    memory) or a float dtype (pixels ``/ 255``). Returns an :class:`ImageNetSplit`.

    Raises:
        DataFileError: a folder is missing or empty, or an image cannot be decoded.
        InputError: a bad argument. ImportError: Pillow is not installed.
    """
    if split not in _SPLITS:
        raise InputError(f"load_imagenet: split must be one of {_SPLITS}, got {split!r}")
    if not 0 < crop <= size:
        raise InputError(f"load_imagenet: need 0 < crop ≤ size, got crop={crop}, size={size}")
    if limit_per_class is not None and limit_per_class < 1:
        raise InputError(f"load_imagenet: limit_per_class must be ≥ 1, got {limit_per_class}")
    if dtype != torch.uint8 and not dtype.is_floating_point:
        raise InputError(f"load_imagenet: dtype must be torch.uint8 or a float, got {dtype}")
    mean_dtype = torch.float32 if dtype == torch.uint8 else dtype
    if mean is not None:
        if tuple(mean.shape) != (3, size, size):
            raise InputError(
                f"load_imagenet: mean must be the [3, {size}, {size}] training mean image, "
                f"got {tuple(mean.shape)}"
            )
        mean = mean.to(mean_dtype)
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(
            "load_imagenet decodes JPEG/PNG files with Pillow, which is not installed: "
            "pip install pillow"
        ) from exc
    paths, labels, classes = scan_image_folder(Path(data_dir) / split)
    if limit_per_class is not None:
        first = torch.searchsorted(labels, labels, side="left")  # start of each label's run
        keep = (torch.arange(len(paths)) - first) < limit_per_class  # [N]
        paths = [p for p, k in zip(paths, keep.tolist(), strict=True) if k]
        labels = labels[keep]
    x = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)  # [N, 3, size, size]
    for i, path in enumerate(paths):  # file I/O and decoding: one file at a time
        x[i] = torch.from_numpy(_decode(Image, path, size)).permute(2, 0, 1)
    if dtype != torch.uint8:
        x = x.to(dtype).div_(255.0)
    if mean is None and split == "train":
        mean = x.sum(dim=0, dtype=torch.float64).div_(len(paths)).to(mean_dtype)
    return ImageNetSplit(x, labels, tuple(classes), mean, tuple(paths))


def _centre(x: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    """``x − mean`` in float (``mean``'s dtype; float32 for uint8 ``x`` without a mean)."""
    if mean is None:
        return x if x.is_floating_point() else x.to(torch.float32)
    if mean.shape != x.shape[1:]:
        raise InputError(
            f"mean image {tuple(mean.shape)} does not match images {tuple(x.shape[1:])}; pass "
            "the training split's ImageNetSplit.mean for images of the same size"
        )
    return x.to(mean.dtype) - mean.to(x.device)


def imagenet_train_transform(
    x: torch.Tensor,
    generator: torch.Generator,
    crop: int = 224,
    *,
    mean: torch.Tensor | None,
) -> torch.Tensor:
    r"""Training augmentation: ``x − mean``, a random ``crop×crop`` window, random h-flip.

    ``x``: ``[N, 3, S, S]`` (uint8 or float); ``mean``: ``[3, S, S]``, the training mean
    in ``x``'s units (``None``: ``x`` is already centred). Crop offsets (uniform over the
    ``(S − crop + 1)²`` windows) and flips (probability ½) are drawn from ``generator``:
    the same generator state gives the same batch. Returns float ``[N, 3, crop, crop]``
    (``mean``'s dtype).

    Example:
        >>> x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
        >>> g = torch.Generator().manual_seed(0)
        >>> imagenet_train_transform(x, g, 6, mean=x.float().mean(0)).shape
        torch.Size([4, 3, 6, 6])
    """
    return random_crop_flip(_centre(x, mean), generator, padding=0, size=crop)


def imagenet_eval_transform(
    x: torch.Tensor, crop: int = 224, *, mean: torch.Tensor | None
) -> torch.Tensor:
    r"""Evaluation view: ``x − mean`` and the centre ``crop×crop`` window.

    ``x``: ``[N, 3, S, S]``; ``mean``: ``[3, S, S]`` or ``None``. Returns float
    ``[N, 3, crop, crop]``.

    Example:
        >>> imagenet_eval_transform(torch.zeros(2, 3, 8, 8), 4, mean=None).shape
        torch.Size([2, 3, 4, 4])
    """
    return centre_crop(_centre(x, mean), crop).contiguous()
