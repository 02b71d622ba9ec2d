"""gctnet.checkpoints: the one reader of weights files, and every loader going through it."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import gctnet
from gctnet import checkpoints
from gctnet.errors import CheckpointError, CheckpointNotFoundError, KeyMismatchError, UnsafeCheckpointError


class _Payload:
    """Unpickling this runs ``touch marker``: what a malicious checkpoint does."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(8, 8)}, good)
    files = {"empty": b"", "truncated": good.read_bytes()[: good.stat().st_size // 2], "garbage": b"not weights " * 40}
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.pt"
        out[name].write_bytes(data)
    out["garbage_safetensors"] = tmp_path / "garbage.safetensors"
    out["garbage_safetensors"].write_bytes(b"{not a header" * 10)
    return out


def test_unreadable_files_get_one_message(tmp_path):
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            checkpoints.read(path)
        msg = str(info.value)
        assert msg.startswith(f"cannot read {path} (") and "empty, truncated or not a PyTorch" in msg, name
        assert "\n" not in msg and not isinstance(info.value, UnsafeCheckpointError)
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        checkpoints.read(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        checkpoints.read(tmp_path)


def test_files_that_need_unpickling_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Payload(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        checkpoints.read(path)
    msg = str(info.value)
    assert "posix.system" in msg and "weights_only=True" in msg and "\n" not in msg
    assert "weights_only=False" not in msg  # never the advice to run the file's code
    assert not marker.exists()
    legacy = tmp_path / "evil_legacy.pth"  # a plain pickle, not torch's zip format
    with open(legacy, "wb") as f:
        pickle.dump({"x": _Payload(str(marker))}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError):
        checkpoints.read(legacy)
    assert not marker.exists()


def test_state_dict_unwraps_the_usual_layouts(tmp_path):
    sd = {"conv.weight": torch.randn(2, 2), "fc.bias": torch.randn(2)}
    layouts = {
        "bare": sd,
        "pytorch_examples": {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "best_acc1": torch.tensor(7.0),
                             "epoch": 3, "arch": "resnet50"},
        "gctnet": {"format": "gctnet-checkpoint", "model": sd, "epoch": 1},
        "compiled_in_ddp": {"model_state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
    }
    for name, obj in layouts.items():
        for source in (obj, tmp_path / f"{name}.pt"):
            if isinstance(source, Path):
                torch.save(obj, source)
            got = checkpoints.state_dict(source)
            assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd), name
    from safetensors.torch import save_file

    save_file(sd, tmp_path / "w.safetensors")
    assert checkpoints.state_dict(tmp_path / "w.safetensors").keys() == sd.keys()
    with pytest.raises(CheckpointError, match="holds no tensors"):
        checkpoints.state_dict({"epoch": 1})
    with pytest.raises(CheckpointError, match="non-tensor entries"):
        checkpoints.state_dict({"w": torch.ones(1), "note": "x"})


def test_describe_mismatch_is_one_line():
    text = checkpoints.describe_mismatch([f"k{i}" for i in range(9)], ["extra"], ["fc.weight: checkpoint (2,) vs model (3,)"])
    assert text == ("9 missing keys [k0, k1, k2, k3, k4, k5, ... (3 more)], 1 unexpected key [extra], "
                    "1 shape mismatch [fc.weight: checkpoint (2,) vs model (3,)]")


def _loaders(tmp_path: Path):
    """Every loader of gctnet that takes a weights file, as ``path -> anything``."""
    from gctnet.analysis import load_source
    from gctnet.models.detection import maskrcnn_resnet50_fpn
    from gctnet.train import load_checkpoint, load_model_any
    from gctnet.train.engine import load_init_weights

    return {
        "load_plain_weights": lambda p: gctnet.load_plain_weights(gctnet.create_model("gct_resnet20"), p),
        "load_official_checkpoint": gctnet.load_official_checkpoint,
        "detection backbone_weights": lambda p: maskrcnn_resnet50_fpn(backbone_weights=p, min_size=64, max_size=64),
        "analysis": load_source,
        "train resume (load_checkpoint)": load_checkpoint,
        "init_from": lambda p: load_init_weights(gctnet.create_model("resnet20"), p),
        "eval (load_model_any)": load_model_any,
    }


def test_every_loader_reads_through_the_one_reader(tmp_path):
    bad = _bad_files(tmp_path)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Payload(str(marker))}, evil)
    for name, load in _loaders(tmp_path).items():
        for kind, path in bad.items():
            with pytest.raises(CheckpointError, match=rf"^cannot read {path} .*empty, truncated") as info:
                load(path)
            assert type(info.value) is CheckpointError, (name, kind)
        with pytest.raises(UnsafeCheckpointError, match="^refusing to read"):
            load(evil)
    assert not marker.exists()


def test_key_mismatches_are_described_the_same_way(tmp_path):
    plain = gctnet.create_model("resnet20").state_dict()
    plain.pop("fc.bias")
    plain["extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyMismatchError, match=r"1 missing key \[fc.bias\], 1 unexpected key \[extra.weight\]"):
        gctnet.load_plain_weights(gctnet.create_model("gct_resnet20"), plain)
    with pytest.raises(KeyMismatchError, match=r"missing keys \[.*\(\d+ more\)\], \d+ unexpected keys"):
        gctnet.load_official_checkpoint(plain)
    wrong = gctnet.create_model("resnet20", num_classes=3).state_dict()
    with pytest.raises(KeyMismatchError, match=r"1 shape mismatch|2 shape mismatches"):
        gctnet.load_plain_weights(gctnet.create_model("gct_resnet20"), wrong)
    assert isinstance(KeyMismatchError("x"), RuntimeError)  # as torch's load_state_dict


def test_writers_go_through_fileio(tmp_path, monkeypatch):
    """safetensors and ONNX files are written to a temporary file and renamed, like every other file."""
    import errno

    from gctnet import fileio
    from gctnet.errors import WriteError
    from gctnet.train.checkpoint import save_safetensors

    model = nn.Linear(2, 2)
    path = tmp_path / "model.safetensors"
    save_safetensors(model, path, {"format": "gctnet", "model_name": "x"})
    assert checkpoints.read_safetensors_metadata(path)["model_name"] == "x"
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full)
    with pytest.raises(WriteError, match=rf"^cannot write {path}: No space left on device"):
        save_safetensors(nn.Linear(2, 2), path, {"format": "gctnet", "model_name": "y"})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
