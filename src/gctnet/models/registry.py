"""Model registry: ``register_model``, ``create_model``, ``list_models``.

Builders are plain functions ``fn(num_classes=..., in_chans=..., **kwargs) -> nn.Module`` registered under
a name following ``[<attn>_|gct_]<arch>[_block]`` (``<attn>``: a block-attention key such as ``se`` or
``eca``, see :mod:`gctnet.models.attention`).  Each entry carries a small config (input size, mean/std,
first conv and classifier names) that the timm bridge and the CLI use, and the block attention of
``<attn>_<arch>`` variants.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from torch import nn

from ..errors import SettingsError

__all__ = ["ModelEntry", "register_model", "create_model", "list_models", "get_model_entry"]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: Callable[..., nn.Module]
    # defaults passed to the builder when the caller does not give them
    defaults: Dict[str, Any] = field(default_factory=dict)
    # metadata for tools (timm pretrained_cfg, CLI): input_size (C, H, W), mean, std, first_conv, classifier
    cfg: Dict[str, Any] = field(default_factory=dict)
    family: str = ""  # e.g. "cifar_resnet", "torchvision", "official", "detection", "video"
    # block-attention key of an ``<attn>_<arch>`` variant ("se", "eca", "cbam", ...); "" for the others
    attention: str = ""


_REGISTRY: Dict[str, ModelEntry] = {}


def register_model(
    name: str,
    fn: Optional[Callable[..., nn.Module]] = None,
    *,
    defaults: Optional[Dict[str, Any]] = None,
    cfg: Optional[Dict[str, Any]] = None,
    family: str = "",
    attention: str = "",
):
    """Register ``fn`` under ``name``; usable as ``register_model(name, fn)`` or as a decorator."""

    def deco(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].fn is not f:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, f, dict(defaults or {}), dict(cfg or {}), family, attention)
        return f

    return deco(fn) if fn is not None else deco


def _ensure_builtin() -> None:
    from . import _builtin  # noqa: F401  (imports every built-in model module once)


def get_model_entry(name: str) -> ModelEntry:
    _ensure_builtin()
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise SettingsError(
            f"unknown model {name!r}.{hint} See gctnet.list_models() for the {len(_REGISTRY)} registered names."
        ) from None


def create_model(name: str, num_classes: Optional[int] = None, in_chans: Optional[int] = None, **kwargs: Any) -> nn.Module:
    """Build a registered model.  ``num_classes``/``in_chans`` default to the entry's defaults.

    Image classifiers come with timm's model interface (:mod:`gctnet.models.interface`);
    ``num_classes=0`` builds one without classifier (the forward returns the pooled features).
    """
    from .interface import adapt

    entry = get_model_entry(name)
    args = dict(entry.defaults)
    headless = num_classes == 0 and not isinstance(num_classes, bool)
    if num_classes is not None and not headless:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")
        args["num_classes"] = num_classes
    if in_chans is not None:
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans <= 0:
            raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
        args["in_chans"] = in_chans
    args.update(kwargs)
    model = adapt(entry.fn(**args))
    if headless:
        if not callable(getattr(model, "reset_classifier", None)):
            raise ValueError(f"num_classes=0: {name!r} ({type(model).__name__}) has no classifier to remove")
        model.reset_classifier(0)
    model.gctnet_name = name  # type: ignore[attr-defined]
    return model


def list_models(pattern: str = "*") -> List[str]:
    """Sorted registered names matching the shell-style ``pattern``."""
    _ensure_builtin()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))
