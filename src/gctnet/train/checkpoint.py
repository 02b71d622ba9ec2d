"""Checkpoints: atomic writes, ``weights_only``-safe content, and loading models back.

A gctnet checkpoint is a dict of tensors and plain Python values only (``torch.load(...,
weights_only=True)`` reads it; gctnet never unpickles arbitrary objects).  Keys: ``format``
(``"gctnet-checkpoint"``), ``version``, ``model`` (state_dict), ``model_name``, ``model_kwargs``,
``epoch`` (completed epochs), ``batch_in_epoch`` (batches done in the next epoch when interrupted
mid-epoch, else 0), ``global_step``, ``config`` (``TrainConfig.to_dict()``), ``data`` (classes, mean,
std, image size), ``optimizer``, ``scaler``, ``rng``, ``metrics`` (best/last values) and, after an
interruption, ``partial`` (the running sums of the unfinished epoch).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .. import checkpoints
from ..errors import CheckpointError, CheckpointNotFoundError
from ..fileio import atomic_save, atomic_write, atomic_write_text  # re-exported: the checkpoint writers

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_save",
    "atomic_write_text",
    "save_safetensors",
    "resolve_checkpoint",
    "load_checkpoint",
    "load_checkpoint_model",
    "load_model_any",
    "model_from_checkpoint",
    "is_gctnet_checkpoint",
    "capture_rng",
    "restore_rng",
]

CHECKPOINT_FORMAT = "gctnet-checkpoint"
CHECKPOINT_VERSION = 1


def save_safetensors(model: nn.Module, path: "str | os.PathLike[str]", metadata: Mapping[str, Any]) -> Path:
    """The model's weights as ``.safetensors`` (metadata values JSON-encoded unless already str),
    written through :func:`gctnet.fileio.atomic_write`."""
    from safetensors.torch import save

    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    # clone: safetensors refuses tensors sharing storage (tied weights); each key gets its own copy
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    data = save(tensors, metadata=meta)
    return atomic_write(path, lambda fh: fh.write(data))


def resolve_checkpoint(path_or_run_dir: "str | os.PathLike[str]", which: str = "last") -> Path:
    """A checkpoint file: ``path`` itself, or ``RUN_DIR/{which}.pt`` for a run folder."""
    path = Path(path_or_run_dir).expanduser()
    if path.is_dir():
        if which not in ("last", "best"):
            raise ValueError(f"which must be 'last' or 'best', got {which!r}")
        candidate = path / f"{which}.pt"
        if not candidate.is_file():
            raise CheckpointNotFoundError(f"{path} has no {which}.pt (is it a gctnet run folder? it holds: "
                                          f"{sorted(p.name for p in path.iterdir())[:10]})")
        return candidate
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
    return path


def is_gctnet_checkpoint(obj: Mapping[str, Any]) -> bool:
    """Whether a mapping read from a file is a gctnet checkpoint (see the module docstring)."""
    return obj.get("format") == CHECKPOINT_FORMAT


def load_checkpoint(path_or_run_dir: "str | os.PathLike[str]", *, which: str = "last") -> Dict[str, Any]:
    """A gctnet checkpoint (tensors on the CPU), read by :func:`gctnet.checkpoints.read`;
    :class:`CheckpointError` if it is not one or cannot be read."""
    path = resolve_checkpoint(path_or_run_dir, which)
    ckpt = checkpoints.read(path)
    if not is_gctnet_checkpoint(ckpt):
        raise CheckpointError(f"{path} is not a gctnet checkpoint (no 'format' entry; top-level keys: "
                              f"{sorted(map(str, ckpt))[:8]})")
    return ckpt


def model_from_checkpoint(ckpt: Mapping[str, Any]) -> nn.Module:
    """The registry model a gctnet checkpoint names (``model_name``, ``model_kwargs``), weights loaded
    strictly, in eval mode."""
    from ..models import create_model

    model = create_model(ckpt["model_name"], **dict(ckpt.get("model_kwargs") or {}))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def load_checkpoint_model(
    path_or_run_dir: "str | os.PathLike[str]", *, which: str = "last"
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the model of a checkpoint or run folder: ``(model in eval mode, checkpoint dict)``.

    For a run folder ``which`` picks ``last.pt`` (the final weights) or ``best.pt``.
    """
    ckpt = load_checkpoint(path_or_run_dir, which=which)
    return model_from_checkpoint(ckpt), ckpt


def capture_rng() -> Dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy and ``random`` as tensors/plain values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Optional[Mapping[str, Any]]) -> None:
    """Inverse of :func:`capture_rng` (missing parts are left alone)."""
    if not state:
        return
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state(("MT19937", s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"]))
    if "python" in state:
        s = state["python"]
        random.setstate((s["version"], tuple(s["state"]), s["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def load_model_any(
    path: "str | os.PathLike[str]", *, which: str = "last", num_classes: Optional[int] = None
) -> Tuple[nn.Module, Dict[str, Any]]:
    """A model from any weights file gctnet knows, for evaluation: ``(model in eval mode, meta)``.

    * a run folder or a gctnet checkpoint (``.pt``): ``meta`` is the checkpoint (``config``, ``data``);
    * a ``model.safetensors`` written by gctnet (its metadata names the model);
    * anything else: an official GCT-ResNet-50 checkpoint via :func:`gctnet.load_official_checkpoint`
      (``num_classes`` defaults to its classifier's size).

    ``meta["kind"]`` is ``"gctnet"``, ``"safetensors"`` or ``"official"``.  Every file is read once,
    by :mod:`gctnet.checkpoints`.
    """
    from ..models import create_model
    from ..models.official import load_official_checkpoint

    p = Path(path).expanduser()
    if p.suffix == ".safetensors" and not p.is_dir():
        meta = checkpoints.read_safetensors_metadata(p)
        if meta.get("format") == "gctnet":
            model = create_model(meta["model_name"], **json.loads(meta.get("model_kwargs", "{}")))
            model.load_state_dict(checkpoints.read(p))
            classes = json.loads(meta.get("classes", "[]"))
            return model.eval(), {"kind": "safetensors", "model_name": meta["model_name"], "data": {"classes": classes}}
        obj = checkpoints.read(p)
    else:
        obj = checkpoints.read(resolve_checkpoint(p, which))
        if is_gctnet_checkpoint(obj):
            return model_from_checkpoint(obj), {**obj, "kind": "gctnet"}
    model = load_official_checkpoint(obj, num_classes=num_classes)
    return model.eval(), {"kind": "official", "model_name": "gct_resnet50_official", "data": {}}
