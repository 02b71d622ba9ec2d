"""Datasets for training and evaluation: bundled-offline Fashion-MNIST and ImageNet-layout folders.

Data specs (``--data``):

* ``fashion_mnist`` (default): Fashion-MNIST from its IDX files (see :mod:`gctnet.data.fashion_mnist`
  for where they are looked for), kept in memory as ``uint8``; training augmentation is a random crop
  with 3 px zero padding + horizontal flip, applied per batch.
* ``imagefolder:PATH``: ``PATH/train/<class>/*`` and ``PATH/val/<class>/*`` read with PIL (RGB);
  transforms chosen by image size (see :mod:`gctnet.data.imagefolder`).

``load_dataset(spec, split)`` returns a torch ``Dataset`` of ``(image tensor, label)``;
``dataset_info(spec)`` the facts a model needs (classes, channels, image size, mean/std).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch.utils.data import Dataset, Subset

from ..errors import DatasetNotFoundError, SettingsError
from .fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    download_fashion_mnist,
    find_fashion_mnist,
    load_fashion_mnist_arrays,
    read_idx,
)
from .imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadImageError,
    ImageFolderDataset,
    folder_split_dir,
    imagefolder_transform,
    probe_image_size,
)
from .loaders import LoaderBatches, TensorBatches, make_batches
from .memory import TensorImageDataset
from .transforms import TensorTransform

__all__ = [
    "DataSpec",
    "DatasetInfo",
    "DatasetNotFoundError",
    "BadImageError",
    "TensorImageDataset",
    "TensorTransform",
    "ImageFolderDataset",
    "TensorBatches",
    "LoaderBatches",
    "make_batches",
    "parse_data_spec",
    "load_dataset",
    "dataset_info",
    "subset_indices",
    "find_fashion_mnist",
    "read_idx",
]

_FASHION_NAMES = ("fashion_mnist", "fashion-mnist", "fashionmnist")


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value: ``kind`` is ``"fashion_mnist"`` or ``"imagefolder"``."""

    kind: str
    path: Optional[str] = None

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the transforms need to know about a dataset."""

    num_classes: int
    in_chans: int
    image_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    classes: Tuple[str, ...] = field(default_factory=tuple)


def parse_data_spec(spec: "str | DataSpec") -> DataSpec:
    """``"fashion_mnist"`` or ``"imagefolder:PATH"`` -> :class:`DataSpec` (:class:`SettingsError` otherwise)."""
    if isinstance(spec, DataSpec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise SettingsError(f"data spec must be a non-empty str, got {spec!r}")
    if spec.lower() in _FASHION_NAMES:
        return DataSpec("fashion_mnist")
    kind, sep, path = spec.partition(":")
    if kind.lower() == "imagefolder" and sep:
        if not path:
            raise SettingsError("imagefolder data spec needs a path: imagefolder:PATH")
        return DataSpec("imagefolder", str(Path(path).expanduser()))
    raise SettingsError(f"unknown dataset {spec!r}; expected 'fashion_mnist' or 'imagefolder:PATH' "
                        "(PATH/train/<class>/*.jpg, PATH/val/<class>/*.jpg)")


def subset_indices(n: int, subset: Optional[int], seed: int = 0, what: str = "the dataset") -> torch.Tensor:
    """A deterministic random subset of ``range(n)`` of size ``subset`` (sorted; all of it if ``None``).

    A subset larger than the data is a :class:`SettingsError` naming the size (``what`` says of what):
    silently using all of it would make a run with a bigger ``subset`` look like a different
    experiment than it is.
    """
    if subset is None or subset == n:
        return torch.arange(n)
    if subset <= 0:
        raise SettingsError(f"subset must be a positive number of samples, got {subset}")
    if subset > n:
        raise SettingsError(f"subset {subset} is larger than {what} ({n} samples); give at most {n} or none")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=gen)[:subset].sort().values


def _folder_classes(root: str) -> Tuple[str, ...]:
    train = folder_split_dir(root, "train")
    classes = sorted(e.name for e in os.scandir(train) if e.is_dir())
    if not classes:
        raise DatasetNotFoundError(f"{train} has no class sub-folders (expected {train}/<class>/<image files>)")
    if len(classes) < 2:
        raise SettingsError(f"{train} has a single class folder ({classes[0]}); a classifier needs at least 2")
    return tuple(classes)


def dataset_info(
    spec: "str | DataSpec" = "fashion_mnist",
    data_dir: "str | os.PathLike[str] | None" = None,
    *,
    image_size: Optional[int] = None,
) -> DatasetInfo:
    """Classes, channels, image size and normalisation of a dataset (reads only headers/one image)."""
    ds = parse_data_spec(spec)
    if ds.kind == "fashion_mnist":
        return DatasetInfo(10, 1, 28, FASHION_MNIST_MEAN, FASHION_MNIST_STD, FASHION_MNIST_CLASSES)
    assert ds.path is not None
    classes = _folder_classes(ds.path)
    if image_size is None:
        probed = probe_image_size(folder_split_dir(ds.path, "train"))
        image_size = probed if probed <= 64 else 224
    return DatasetInfo(len(classes), 3, int(image_size), IMAGENET_MEAN, IMAGENET_STD, classes)


def load_dataset(
    spec: "str | DataSpec" = "fashion_mnist",
    split: str = "train",
    data_dir: "str | os.PathLike[str] | None" = None,
    *,
    augment: Optional[bool] = None,
    subset: Optional[int] = None,
    subset_seed: int = 0,
    download: bool = False,
    skip_bad_images: bool = False,
    image_size: Optional[int] = None,
) -> Dataset:
    """A torch ``Dataset`` of ``(image float C x H x W, label int)`` for ``split`` (``"train"``/``"val"``).

    ``augment`` defaults to ``split == "train"``.  ``subset`` keeps a deterministic random subset
    (chosen by ``subset_seed``).  ``download`` lets torchvision fetch Fashion-MNIST into ``data_dir``
    when it is not found (never done otherwise).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    ds = parse_data_spec(spec)
    augment = (split == "train") if augment is None else augment
    info = dataset_info(ds, data_dir, image_size=image_size)
    dataset: Dataset
    if ds.kind == "fashion_mnist":
        try:
            images, labels = load_fashion_mnist_arrays(split, data_dir)
        except DatasetNotFoundError:
            if not download:
                raise
            download_fashion_mnist(data_dir or os.environ.get("GCTNET_DATA") or "data")
            images, labels = load_fashion_mnist_arrays(split, data_dir or os.environ.get("GCTNET_DATA") or "data")
        pad = max(1, info.image_size // 8) if augment else 0
        transform = TensorTransform(info.mean, info.std, crop_padding=pad, hflip=augment)
        dataset = TensorImageDataset(images, labels, transform, info.classes)
        if subset is not None:
            dataset = dataset.subset(subset_indices(len(dataset), subset, subset_seed, f"the {split} split of {ds}"))
        return dataset
    assert ds.path is not None
    class_to_idx = {c: i for i, c in enumerate(info.classes)}
    dataset = ImageFolderDataset(
        folder_split_dir(ds.path, split),
        imagefolder_transform(info.image_size, augment, info.mean, info.std),
        class_to_idx=class_to_idx,
        skip_bad_images=skip_bad_images,
    )
    if subset is not None:
        dataset = Subset(dataset, subset_indices(len(dataset), subset, subset_seed, f"the {split} split of {ds}").tolist())
    return dataset
