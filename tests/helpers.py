"""Helpers shared by several test modules (``from helpers import ...``; shared fixtures are in conftest.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gctnet.data import DatasetNotFoundError, find_fashion_mnist

__all__ = ["FASHION_MNIST_MISSING", "have_fashion_mnist", "requires_fashion_mnist", "read_csv", "make_image_folder"]

FASHION_MNIST_MISSING = "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist; see README: Data)"


def have_fashion_mnist() -> bool:
    """Whether the Fashion-MNIST files are found where :func:`gctnet.data.find_fashion_mnist` looks."""
    try:
        find_fashion_mnist()
    except DatasetNotFoundError:
        return False
    return True


#: module or test mark: skip when Fashion-MNIST is not installed
requires_fashion_mnist = pytest.mark.skipif(not have_fashion_mnist(), reason=FASHION_MNIST_MISSING)


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header line, as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def make_image_folder(root: Path, size: int = 16, per_class: int = 4, corrupt: bool = False) -> Path:
    """A tiny ImageFolder tree ``root/{train,val}/{cat,dog}/i.png`` (RGB and grayscale, uneven heights);
    with ``corrupt`` one unreadable ``train/dog/broken.png`` too."""
    from PIL import Image

    colours = {"cat": (200, 30, 30), "dog": (30, 30, 200)}
    for split in ("train", "val"):
        for name, colour in colours.items():
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = Image.new("RGB" if i % 2 == 0 else "L", (size, size + i % 3), colour if i % 2 == 0 else 128)
                img.save(d / f"{i}.png")
    if corrupt:
        (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return root


def to_channels_last(x):
    """channels_last (4-D), channels_last_3d (5-D) or (N, L, C) storage seen as (N, C, L) (3-D)."""
    import torch

    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def run_gct(backend, x, params, dy, mode="l2", after_relu=False, grad_x=True):
    """``gctnet.functional.gct`` forward and gradients under ``backend`` (restored afterwards)."""
    import torch

    from gctnet import functional as F
    from gctnet import kernels

    with kernels.use_backend(backend):
        xg = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(grad_x)
        y = F.gct(xg, *params, mode=mode, after_relu=after_relu)
        inputs = ([xg] if grad_x else []) + list(params)
        grads = torch.autograd.grad(y, inputs, dy)
    return y, grads
