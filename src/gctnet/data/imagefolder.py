"""Datasets in ImageNet layout (``ROOT/train/<class>/*.jpg``, ``ROOT/val/<class>/*.jpg``).

Images are decoded with PIL and converted to RGB.  An unreadable or corrupt image raises
:class:`BadImageError` naming the file; with ``skip_bad_images=True`` it is dropped from its batch
instead and counted (see :class:`gctnet.data.loaders.BatchStream`).

Transforms are chosen by image size: for small images (<= 64 px, e.g. CIFAR-like 32 px sets) random
crop with padding + flip for training and plain resize for evaluation; for larger ones the usual
``RandomResizedCrop`` + flip for training and resize + centre crop (87.5 %) for evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.datasets import DatasetFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import BadImageError, DatasetNotFoundError, SettingsError

__all__ = [
    "BadImageError",
    "ImageFolderDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SMALL_IMAGE_MAX",
    "folder_split_dir",
    "imagefolder_transform",
    "probe_image_size",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_IMAGE_MAX = 64  # images up to this size get the small-image (crop + pad) transforms
_SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation", "test")}


def folder_split_dir(root: "str | os.PathLike[str]", split: str) -> Path:
    """``ROOT/train`` or ``ROOT/val`` (also ``validation``/``test`` for val); clear error when absent."""
    root = Path(root).expanduser()
    if split not in _SPLIT_DIRS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_DIRS)}, got {split!r}")
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist (expected ROOT/train/<class>/... and ROOT/val/<class>/...)")
    for name in _SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise DatasetNotFoundError(
        f"image folder {root} has no {' or '.join(_SPLIT_DIRS[split])}/ sub-folder (found: {found or 'nothing'}); "
        "expected ImageNet layout ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg"
    )


def _open_rgb(path: str) -> Image.Image:
    try:
        with open(path, "rb") as fh:
            img = Image.open(fh)
            return img.convert("RGB")  # forces the full decode while the file is open
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImageError(f"cannot read image {path}: {exc} (pass --skip-bad-images to skip unreadable images)") from None


def probe_image_size(folder: "str | os.PathLike[str]") -> int:
    """Largest side of the first readable image under ``folder`` (used to pick transforms)."""
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name.lower().endswith(IMG_EXTENSIONS):
                try:
                    with Image.open(os.path.join(dirpath, name)) as img:
                        return max(img.size)
                except (OSError, ValueError, SyntaxError):
                    continue
    raise DatasetNotFoundError(f"no readable image ({', '.join(IMG_EXTENSIONS)}) under {folder}")


def imagefolder_transform(
    image_size: int, train: bool, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Callable[[Image.Image], torch.Tensor]:
    """The PIL -> tensor transform for ``image_size`` (small-image or ImageNet style, see module doc)."""
    if image_size <= SMALL_IMAGE_MAX:
        size = [T.Resize(image_size), T.CenterCrop(image_size)]
        aug = [T.RandomCrop(image_size, padding=max(1, image_size // 8)), T.RandomHorizontalFlip()] if train else []
        steps: List[Any] = size + aug
    elif train:
        steps = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(int(round(image_size / 0.875))), T.CenterCrop(image_size)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])


class ImageFolderDataset(DatasetFolder):
    """torchvision's ImageFolder with clear errors for bad files and an optional fixed class mapping.

    ``class_to_idx`` (e.g. the train split's) makes the val split use the same label indices; a val
    class missing from it is an error.  With ``skip_bad_images`` a bad file yields ``None`` (dropped
    by :func:`gctnet.data.loaders.collate_skip_none`) instead of raising.
    """

    def __init__(
        self,
        root: "str | os.PathLike[str]",
        transform: Optional[Callable[[Image.Image], torch.Tensor]] = None,
        *,
        class_to_idx: Optional[Dict[str, int]] = None,
        skip_bad_images: bool = False,
    ) -> None:
        self._fixed_classes = dict(class_to_idx) if class_to_idx is not None else None
        self.skip_bad_images = skip_bad_images
        super().__init__(str(root), loader=_open_rgb, extensions=IMG_EXTENSIONS, transform=transform)
        if self._fixed_classes is not None:
            self.classes = sorted(self._fixed_classes, key=self._fixed_classes.__getitem__)

    def find_classes(self, directory: str) -> Tuple[List[str], Dict[str, int]]:
        classes, mapping = super().find_classes(directory)
        if self._fixed_classes is None:
            return classes, mapping
        unknown = sorted(set(classes) - set(self._fixed_classes))
        if unknown:
            raise SettingsError(f"{directory} has class folders not present in train/: {', '.join(unknown)}")
        return classes, {c: self._fixed_classes[c] for c in classes}

    def __getitem__(self, index: int) -> Any:
        try:
            return super().__getitem__(index)
        except BadImageError:
            if self.skip_bad_images:
                return None
            raise
