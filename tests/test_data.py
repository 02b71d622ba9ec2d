"""gctnet.data: IDX reader, Fashion-MNIST discovery, in-memory dataset/transforms, ImageFolder."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gctnet.data import (
    BadImageError,
    DatasetNotFoundError,
    TensorImageDataset,
    TensorTransform,
    dataset_info,
    find_fashion_mnist,
    load_dataset,
    make_batches,
    parse_data_spec,
    read_idx,
    subset_indices,
)
from gctnet.data import fashion_mnist as fm
from gctnet.data.transforms import random_crop_flip
from helpers import make_image_folder


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    arr = array.astype(">i4") if array.dtype != np.uint8 else array
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_fake_fashion(folder: Path, n_train: int = 40, n_val: int = 20, gz: bool = True) -> Path:
    """Tiny Fashion-MNIST look-alike: class k images have brightness ~ 20 * k."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = (labels[:, None, None] * 20 + rng.integers(0, 10, (n, 28, 28))).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return folder


# ---------------------------------------------------------------- IDX and discovery


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(write_idx(tmp_path / ("a.gz" if gz else "a"), arr, gz))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)
    ints = np.array([1, -2, 70000], dtype=np.int64)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "b.gz", ints)), ints)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"abc")
    with pytest.raises(ValueError, match="payload"):
        read_idx(short)


@pytest.mark.parametrize("layout", [".", "fashion-mnist", "FashionMNIST/raw"])
def test_discovery_layouts(tmp_path, layout, monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    make_fake_fashion(tmp_path / layout, gz=layout != ".")
    found = find_fashion_mnist(tmp_path)
    assert found["train"][0].name.startswith("train-images")
    ds = load_dataset("fashion_mnist", "val", data_dir=tmp_path)
    assert len(ds) == 20 and ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (1, 28, 28)


def test_discovery_env_var(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    make_fake_fashion(tmp_path / "d")
    monkeypatch.setenv("GCTNET_DATA", str(tmp_path / "d"))
    images, labels = fm.load_fashion_mnist_arrays("train")
    assert images.shape == (40, 1, 28, 28) and labels.tolist()[:3] == [0, 1, 2]


def test_missing_data_message(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIRS", (str(tmp_path / "nowhere"),))
    monkeypatch.delenv("GCTNET_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion_mnist", "train")
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg and "GCTNET_DATA" in msg
    assert str(tmp_path / "nowhere") in msg  # says where it looked
    # an explicit --data-dir is the only place searched
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "given")):
        find_fashion_mnist(tmp_path / "given")


def test_parse_data_spec():
    assert parse_data_spec("fashion-mnist").kind == "fashion_mnist"
    spec = parse_data_spec("imagefolder:/x/y")
    assert spec.kind == "imagefolder" and spec.path == "/x/y"
    for bad in ("cifar10", "imagefolder:", ""):
        with pytest.raises(ValueError):
            parse_data_spec(bad)


# ---------------------------------------------------------------- in-memory data and transforms


def test_subset_indices_deterministic_per_seed():
    a = subset_indices(1000, 100, seed=1)
    assert torch.equal(a, subset_indices(1000, 100, seed=1))
    assert not torch.equal(a, subset_indices(1000, 100, seed=2))
    assert len(a.unique()) == 100 and bool((a[1:] > a[:-1]).all())
    assert torch.equal(subset_indices(10, None), torch.arange(10))
    assert torch.equal(subset_indices(10, 10), torch.arange(10))
    with pytest.raises(ValueError, match=r"subset 50 is larger than the dataset \(10 samples\)"):
        subset_indices(10, 50)  # not silently all of it: the run would not be what was asked for
    with pytest.raises(ValueError):
        subset_indices(10, 0)


def test_normalisation_and_eval_transform(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    make_fake_fashion(tmp_path)
    ds = load_dataset("fashion_mnist", "val", data_dir=tmp_path)
    assert not ds.transform.augments
    x, y = ds.get_batch(torch.arange(4))
    expected = (ds.images[:4].float() / 255 - fm.FASHION_MNIST_MEAN[0]) / fm.FASHION_MNIST_STD[0]
    torch.testing.assert_close(x, expected)
    assert y.tolist() == [0, 1, 2, 3]
    img, label = ds[5]
    assert img.shape == (1, 28, 28) and label == 5
    sub = load_dataset("fashion_mnist", "train", data_dir=tmp_path, subset=10, subset_seed=3)
    assert len(sub) == 10 and sub.transform.augments


def test_random_crop_flip_matches_per_image_reference():
    x = torch.arange(3 * 2 * 5 * 6, dtype=torch.uint8).reshape(3, 2, 5, 6)
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, padding=2, hflip=True, generator=gen)
    assert out.shape == x.shape and out.dtype == x.dtype
    # replay the same draws and build each crop the slow way
    gen.manual_seed(0)
    oy = torch.randint(0, 5, (3, 1), generator=gen)
    ox = torch.randint(0, 5, (3, 1), generator=gen)
    flip = torch.rand(3, 1, generator=gen) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(3):
        crop = padded[i, :, oy[i, 0] : oy[i, 0] + 5, ox[i, 0] : ox[i, 0] + 6]
        if flip[i, 0]:
            crop = crop.flip(-1)
        assert torch.equal(out[i], crop)
    assert torch.equal(random_crop_flip(x, 0, False), x)


@pytest.mark.parametrize("channels", [1, 3])
def test_random_crop_flip_gives_canonical_contiguous_strides(channels):
    # With one channel a permuted N x H x W x 1 gather counts as contiguous but has channels_last
    # strides, which oneDNN then propagates through the network; the batch must have plain strides.
    x = torch.zeros(4, channels, 6, 6, dtype=torch.uint8)
    out = random_crop_flip(x, padding=1, hflip=True, generator=torch.Generator().manual_seed(0))
    assert out.stride() == (channels * 36, 36, 6, 1)


def test_batches_reproducible_and_resumable(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    make_fake_fashion(tmp_path)
    ds = load_dataset("fashion_mnist", "train", data_dir=tmp_path)
    idx = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    full = list(make_batches(ds, idx, 8, seed_key=(0, 1, 0)))
    assert len(full) == 5
    again = list(make_batches(ds, idx, 8, seed_key=(0, 1, 0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, again))
    # starting at batch 3 gives exactly batches 3 and 4 of the full epoch
    tail = list(make_batches(ds, idx, 8, seed_key=(0, 1, 0), start_batch=3))
    assert len(tail) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(full[3:], tail))
    other = list(make_batches(ds, idx, 8, seed_key=(0, 2, 0)))
    assert not torch.equal(full[0][0], other[0][0])
    assert len(make_batches(ds, idx, 16, drop_last=True)) == 2


def test_tensor_dataset_validates():
    t = TensorTransform((0.5,), (0.5,))
    with pytest.raises(ValueError, match="uint8"):
        TensorImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2), t)
    with pytest.raises(ValueError, match="labels"):
        TensorImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3), t)


def test_real_fashion_mnist_if_installed(fashion):
    train = load_dataset("fashion_mnist", "train")
    val = load_dataset("fashion_mnist", "val")
    assert (len(train), len(val)) == (60000, 10000)
    assert torch.bincount(val.labels).tolist() == [1000] * 10
    mean = train.images.float().mean().item() / 255
    assert abs(mean - fm.FASHION_MNIST_MEAN[0]) < 1e-3


# ---------------------------------------------------------------- ImageFolder


def test_imagefolder_small_images(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    info = dataset_info(f"imagefolder:{root}")
    assert info.classes == ("cat", "dog") and info.in_chans == 3 and info.image_size == 16
    ds = load_dataset(f"imagefolder:{root}", "train")
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and y == 0  # grey, non-square images become RGB 16x16
    batches = make_batches(ds, range(len(ds)), 3)
    shapes = [tuple(b[0].shape) for b in batches]
    assert shapes == [(3, 3, 16, 16), (3, 3, 16, 16), (2, 3, 16, 16)]
    big = dataset_info(f"imagefolder:{root}", image_size=96)
    assert load_dataset(f"imagefolder:{root}", "val", image_size=big.image_size)[0][0].shape == (3, 96, 96)


def test_imagefolder_val_uses_train_classes(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    (root / "val" / "cat").rename(root / "val" / "zz_cat")
    with pytest.raises(ValueError, match="zz_cat"):
        load_dataset(f"imagefolder:{root}", "val")
    with pytest.raises(FileNotFoundError, match="val"):
        load_dataset(f"imagefolder:{tmp_path / 'imgs' / 'train'}", "val")


def test_imagefolder_corrupt_image_error_and_skip(tmp_path):
    root = make_image_folder(tmp_path / "imgs", corrupt=True)
    ds = load_dataset(f"imagefolder:{root}", "train", augment=False)
    bad_index = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("broken.png")][0]
    with pytest.raises(BadImageError, match="broken.png"):
        ds[bad_index]
    with pytest.raises(BadImageError, match="broken.png"):
        list(make_batches(ds, range(len(ds)), 4))
    skipping = load_dataset(f"imagefolder:{root}", "train", augment=False, skip_bad_images=True)
    batches = make_batches(skipping, range(len(skipping)), 4)
    seen = sum(len(y) for _, y in batches)
    assert batches.skipped == 1 and seen == len(skipping) - 1
