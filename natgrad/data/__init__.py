r"""Data: MNIST-format IDX files, CIFAR python batches, ImageNet folder trees, scikit-learn
digits, preprocessing.

No torchvision: every loader returns plain tensors in a :class:`Dataset`. Missing or
corrupt files raise :class:`natgrad.errors.DataFileError` naming the file, the expected
format and the folder searched.
"""

from __future__ import annotations

from natgrad.data.cifar import load_cifar, read_cifar_batch
from natgrad.data.dataset import Dataset
from natgrad.data.digits import load_digits
from natgrad.data.idx import read_idx, write_idx
from natgrad.data.imagenet import (
    IMAGE_EXTENSIONS,
    ImageNetSplit,
    imagenet_eval_transform,
    imagenet_train_transform,
    load_imagenet,
    scan_image_folder,
)
from natgrad.data.mnist import load_mnist
from natgrad.data.preprocess import (
    CROPS,
    ZCA,
    centre_crop,
    eval_view,
    gcn,
    gcn_zca,
    random_crop_flip,
    standardise,
    train_view,
)
from natgrad.data.registry import DATASETS, default_data_dir, load_dataset

__all__ = [
    "CROPS",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "ZCA",
    "Dataset",
    "ImageNetSplit",
    "centre_crop",
    "default_data_dir",
    "eval_view",
    "gcn",
    "gcn_zca",
    "imagenet_eval_transform",
    "imagenet_train_transform",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_imagenet",
    "load_mnist",
    "random_crop_flip",
    "read_cifar_batch",
    "read_idx",
    "scan_image_folder",
    "standardise",
    "train_view",
    "write_idx",
]
