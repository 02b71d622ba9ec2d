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

from ..fileio import atomic_save, atomic_write_text  # re-exported: the checkpoint writers

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_save",
    "atomic_write_text",
    "save_safetensors",
    "resolve_checkpoint",
    "load_checkpoint",
    "load_checkpoint_model",
    "load_model_any",
    "checkpoint_kind",
    "capture_rng",
    "restore_rng",
]

CHECKPOINT_FORMAT = "gctnet-checkpoint"
CHECKPOINT_VERSION = 1


def save_safetensors(model: nn.Module, path: "str | os.PathLike[str]", metadata: Mapping[str, Any]) -> Path:
    """The model's weights as ``.safetensors`` (metadata values JSON-encoded unless already str)."""
    from safetensors.torch import save_model

    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_model(model, str(tmp), metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the writer creates the file private; give it normal permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def resolve_checkpoint(path_or_run_dir: "str | os.PathLike[str]", which: str = "last") -> Path:
    """A checkpoint file: ``path`` itself, or ``RUN_DIR/{which}.pt`` for a run folder."""
    path = Path(path_or_run_dir).expanduser()
    if path.is_dir():
        if which not in ("last", "best"):
            raise ValueError(f"which must be 'last' or 'best', got {which!r}")
        candidate = path / f"{which}.pt"
        if not candidate.is_file():
            raise FileNotFoundError(f"{path} has no {which}.pt (is it a gctnet run folder? it holds: "
                                    f"{sorted(p.name for p in path.iterdir())[:10]})")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def load_checkpoint(
    path_or_run_dir: "str | os.PathLike[str]", *, which: str = "last", map_location: Any = "cpu"
) -> Dict[str, Any]:
    """Load a gctnet checkpoint with ``weights_only=True``; ``ValueError`` if it is not one."""
    path = resolve_checkpoint(path_or_run_dir, which)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report any unpickling failure with the file name
        raise ValueError(f"cannot load checkpoint {path} with weights_only=True: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a gctnet checkpoint (format key missing; top-level keys: {keys})")
    return ckpt


def load_checkpoint_model(
    path_or_run_dir: "str | os.PathLike[str]", *, which: str = "last", map_location: Any = "cpu"
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the model of a checkpoint or run folder: ``(model in eval mode, checkpoint dict)``.

    The model comes from the registry (``model_name``, ``model_kwargs``) with its weights loaded
    strictly.  For a run folder ``which`` picks ``last.pt`` (the final weights) or ``best.pt``.
    """
    from ..models import create_model

    ckpt = load_checkpoint(path_or_run_dir, which=which, map_location=map_location)
    model = create_model(ckpt["model_name"], **dict(ckpt.get("model_kwargs") or {}))
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt


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
    """A model from any weights file gctnet knows, for evaluation: ``(model, meta)``.

    * a run folder or a gctnet checkpoint (``.pt``): :func:`load_checkpoint_model`; ``meta`` is the
      checkpoint (with ``config`` and ``data``);
    * a ``model.safetensors`` written by gctnet (its metadata names the model);
    * anything else: an official GCT-ResNet-50 checkpoint via
      :func:`gctnet.load_official_checkpoint` (``num_classes`` defaults to 1000).

    ``meta["kind"]`` is ``"gctnet"``, ``"safetensors"`` or ``"official"``.
    """
    p = Path(path).expanduser()
    kind = checkpoint_kind(p)
    if kind == "gctnet":
        model, ckpt = load_checkpoint_model(p, which=which)
        return model, {**ckpt, "kind": "gctnet"}
    if kind == "safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_model

        from ..models import create_model

        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
        model = create_model(meta["model_name"], **json.loads(meta.get("model_kwargs", "{}")))
        load_model(model, str(p))
        classes = json.loads(meta.get("classes", "[]"))
        return model.eval(), {"kind": "safetensors", "model_name": meta["model_name"], "data": {"classes": classes}}
    from ..models.official import load_official_checkpoint

    model = load_official_checkpoint(p, num_classes=num_classes or 1000)
    return model.eval(), {"kind": "official", "model_name": "gct_resnet50_official", "data": {}}


def checkpoint_kind(path: "str | os.PathLike[str]") -> str:
    """``"gctnet"`` (run folder or gctnet checkpoint), ``"safetensors"`` (gctnet's model.safetensors)
    or ``"other"`` (e.g. an official checkpoint), judged without loading the weights."""
    p = Path(path).expanduser()
    if p.is_dir():
        return "gctnet"
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as fh:
            return "safetensors" if (fh.metadata() or {}).get("format") == "gctnet" else "other"
    try:  # mmap: only the pickled structure is read, not the tensor data
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - anything unreadable here is not a gctnet checkpoint
        return "other"
    return "gctnet" if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT else "other"
