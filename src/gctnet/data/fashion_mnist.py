"""Fashion-MNIST (Xiao et al., 2017; MIT licence) read from its IDX files, no download at run time.

The files (``train-images-idx3-ubyte.gz`` etc., gzipped or not) are looked for, in this order, in

1. the ``data_dir`` argument (``--data-dir``), if given (only there);
2. the directory named by the environment variable ``GCTNET_DATA``;
3. ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package ``dataset-fashion-mnist``).

In each of these places three layouts are accepted: the files directly in the folder, in a
``fashion-mnist/`` sub-folder, or in torchvision's ``FashionMNIST/raw/`` layout.  The whole split is kept
in memory as a ``uint8`` tensor (60,000 x 28 x 28 = 47 MB for the training split).
"""

from __future__ import annotations

import gzip
import os
import struct
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import DatasetNotFoundError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "DatasetNotFoundError",
    "read_idx",
    "find_fashion_mnist",
    "load_fashion_mnist_arrays",
    "download_fashion_mnist",
]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# statistics of the 60k training images, pixel values scaled to [0, 1]
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

ENV_VAR = "GCTNET_DATA"
SYSTEM_DIRS: Tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)
_SUBDIRS = (".", "fashion-mnist", "fashion_mnist", os.path.join("FashionMNIST", "raw"))
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type codes (third byte of the magic number) -> numpy dtype (big-endian)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_HOW_TO_GET = (
    "Fashion-MNIST was not found. Get it in one of these ways:\n"
    "  * Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist   (installs /usr/share/datasets/fashion-mnist)\n"
    "  * copy train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and\n"
    "    t10k-labels-idx1-ubyte.gz (from https://github.com/zalandoresearch/fashion-mnist) into a folder\n"
    "    and pass --data-dir FOLDER or set GCTNET_DATA=FOLDER\n"
    "  * or let torchvision download it once: gctnet train --download --data-dir FOLDER"
)


def read_idx(path: "str | os.PathLike[str]") -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array of its stored shape and dtype.

    Raises ``ValueError`` naming the file when the header is not a valid IDX header or the payload
    size does not match the header.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:  # gzip raises BadGzipFile (OSError) / EOFError on truncation
        raise ValueError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: IDX payload has {len(data) - header} bytes, header shape {shape} needs {expected}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_file(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _candidate_roots(data_dir: "str | os.PathLike[str] | None") -> List[Path]:
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    roots = []
    env = os.environ.get(ENV_VAR)
    if env:
        roots.append(Path(env).expanduser())
    roots.extend(Path(d) for d in SYSTEM_DIRS)
    return roots


def find_fashion_mnist(data_dir: "str | os.PathLike[str] | None" = None) -> Dict[str, Tuple[Path, Path]]:
    """Locate the four Fashion-MNIST files: ``{"train": (images, labels), "val": (images, labels)}``.

    Raises :class:`DatasetNotFoundError` listing every folder searched and how to get the data.
    """
    searched = []
    for root in _candidate_roots(data_dir):
        for sub in _SUBDIRS:
            folder = (root / sub) if sub != "." else root
            searched.append(str(folder))
            found = {
                split: tuple(_find_file(folder, stem) for stem in stems) for split, stems in _FILES.items()
            }
            if all(p is not None for pair in found.values() for p in pair):
                return found  # type: ignore[return-value]
    where = "\n".join(f"    {s}" for s in searched)
    hint = "" if data_dir is not None else f" (set {ENV_VAR} or pass --data-dir to look elsewhere)"
    raise DatasetNotFoundError(f"{_HOW_TO_GET}\nSearched{hint}:\n{where}")


@lru_cache(maxsize=4)
def _load_cached(images: str, labels: str, mtimes: Tuple[float, float]) -> Tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{images} / {labels}: expected N x H x W images and N labels, got {x.shape} and {y.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"{images}: expected uint8 pixels, got {x.dtype}")
    images_t = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)  # N x 1 x H x W
    labels_t = torch.from_numpy(y.astype(np.int64))
    return images_t, labels_t


def load_fashion_mnist_arrays(
    split: str = "train", data_dir: "str | os.PathLike[str] | None" = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The split as ``(images uint8 N x 1 x 28 x 28, labels int64 N)``; ``split`` is ``"train"`` or ``"val"``.

    Decoded splits are cached per file (keyed by path and modification time); the returned tensors
    are shared, so treat them as read-only.
    """
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    images, labels = find_fashion_mnist(data_dir)[split]
    return _load_cached(str(images), str(labels), (images.stat().st_mtime, labels.stat().st_mtime))


def download_fashion_mnist(data_dir: "str | os.PathLike[str]") -> Path:
    """Download Fashion-MNIST with torchvision into ``data_dir`` (only when the user asks for it)."""
    from torchvision.datasets import FashionMNIST

    root = Path(data_dir).expanduser()
    for train in (True, False):
        FashionMNIST(str(root), train=train, download=True)
    return root / "FashionMNIST" / "raw"

