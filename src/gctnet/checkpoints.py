"""The one reader of weights files: every loader in gctnet reads and unwraps checkpoints here.

* :func:`read` - the mapping in a file: ``torch.load(..., weights_only=True)`` (tensors and plain
  containers only: nothing in a file is ever executed) or safetensors.  Three refusals, each one line
  naming the file: it does not exist; it is empty, truncated or not a weights file at all; it holds
  pickled objects that only full unpickling could rebuild (never done, and never suggested).
* :func:`state_dict` - the tensors of a file or mapping, unwrapped from the usual training-checkpoint
  layouts (``{"state_dict": ...}``, gctnet's ``{"model": ...}``, ...) and from the key prefixes of
  DDP/DataParallel (``module.``) and ``torch.compile`` (``_orig_mod.``).
* :func:`describe_mismatch` - the one description of keys that do not fit a model (one line).

Writing goes through :mod:`gctnet.fileio` (atomic: a crash leaves the previous file).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Dict, Iterable, Union

import torch
from torch import Tensor

from .errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError

__all__ = [
    "WRAPPER_KEYS",
    "WRAPPER_PREFIXES",
    "read",
    "read_safetensors_metadata",
    "state_dict",
    "strip_prefixes",
    "describe_mismatch",
]

PathLike = Union[str, "os.PathLike[str]"]
Source = Union[PathLike, Mapping[str, Any]]

#: entries of a training checkpoint that hold its state_dict (pytorch/examples, gctnet, common scripts)
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
#: key prefixes that carry no architectural meaning: DDP/DataParallel, torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _existing_file(path: PathLike) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder; expected a weights file (.pt, .pth, .safetensors)")
    if not p.is_file():
        raise CheckpointNotFoundError(f"checkpoint {p} does not exist")
    return p


def _unreadable(path: Path) -> CheckpointError:
    """The one message for empty, truncated and garbage files."""
    return CheckpointError(
        f"cannot read {path} ({path.stat().st_size} bytes): it is empty, truncated or not a PyTorch or "
        "safetensors weights file (a copy or write cut short?)")


def _safetensors_error() -> type:
    from safetensors import SafetensorError

    return SafetensorError


def read(source: Source) -> Dict[str, Any]:
    """The mapping held by a weights file (``.safetensors``: its tensors), or ``source`` itself if it is one.

    Raises :class:`CheckpointNotFoundError`, :class:`UnsafeCheckpointError` (the file needs full
    unpickling) or :class:`CheckpointError` (empty, truncated, garbage, or not a mapping).
    """
    if isinstance(source, Mapping):
        return dict(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"expected a path or a mapping (state_dict or checkpoint), got {type(source).__name__}")
    path = _existing_file(source)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except _safetensors_error():
            raise _unreadable(path) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        needs = [line.split("GLOBAL", 1)[1].split()[0] for line in str(exc).splitlines() if "GLOBAL" in line]
        if not needs:
            raise _unreadable(path) from None
        raise UnsafeCheckpointError(
            f"refusing to read {path}: it holds pickled Python objects ({needs[0]}) that only full unpickling "
            "could rebuild, which can run code from the file; gctnet reads weights with "
            "torch.load(weights_only=True) only (save a plain state_dict or a .safetensors file instead)"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, IndexError):  # what torch raises for broken files
        raise _unreadable(path) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}; expected a dict (a state_dict or a checkpoint)")
    return dict(obj)


def read_safetensors_metadata(path: PathLike) -> Dict[str, str]:
    """The header metadata of a ``.safetensors`` file (same refusals as :func:`read`)."""
    from safetensors import safe_open

    p = _existing_file(path)
    try:
        with safe_open(str(p), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except _safetensors_error():
        raise _unreadable(p) from None


def strip_prefixes(keys: Iterable[str]) -> Dict[str, str]:
    """``{key: key without the wrapper prefixes}`` where *every* key carries the prefix (DDP, compile)."""
    names = {k: k for k in keys}
    for prefix in WRAPPER_PREFIXES:  # in this order: DDP wraps the compiled module, not the reverse
        if names and all(v.startswith(prefix) for v in names.values()):
            names = {k: v[len(prefix):] for k, v in names.items()}
    return names


def state_dict(source: Source) -> Dict[str, Tensor]:
    """The tensors of a weights file or mapping, unwrapped (see the module docstring).

    The first :data:`WRAPPER_KEYS` entry that is a non-empty mapping is the state_dict (pytorch/examples
    checkpoints also hold tensors such as ``best_acc1`` next to it).  Non-tensor entries of the
    state_dict are an error (a state_dict holds tensors only).
    """
    obj = read(source)
    for key in WRAPPER_KEYS:  # a state_dict's values are tensors, so a mapping here is a wrapped one
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner:
            obj = dict(inner)
            break
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    where = f"{source}" if not isinstance(source, Mapping) else "the checkpoint"
    if not state:
        raise CheckpointError(
            f"{where} holds no tensors: expected a state_dict or a dict with a 'state_dict' or 'model' entry; "
            f"top-level keys: {sorted(map(str, obj))[:10]}")
    others = sorted(str(k) for k, v in obj.items() if not isinstance(v, Tensor))
    if others:
        raise CheckpointError(f"the state_dict in {where} has non-tensor entries {others[:5]} (expected tensors only)")
    names = strip_prefixes(state)
    return {names[k]: v for k, v in state.items()}


def _preview(keys: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}" + (f", ... ({len(keys) - n} more)]" if len(keys) > n else "]")


def describe_mismatch(missing: Sequence[str], unexpected: Sequence[str] = (), shapes: Sequence[str] = ()) -> str:
    """One line: how many keys are missing, unexpected or of another shape, with the first of each."""
    parts = []
    for n, what, keys in ((len(missing), "missing key", missing), (len(unexpected), "unexpected key", unexpected),
                          (len(shapes), "shape mismatch", shapes)):
        if n:
            parts.append(f"{n} {what}{'es' if what.endswith('h') and n > 1 else 's' if n > 1 else ''} {_preview(list(keys))}")
    return ", ".join(parts) or "all keys match"
