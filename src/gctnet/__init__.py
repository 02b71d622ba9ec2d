"""gctnet: Gated Channel Transformation (GCT, Yang et al., CVPR 2020) for PyTorch.

The public API is re-exported here; heavier parts (models, training, analysis) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import functional
from .layers import GCT

__version__ = "0.1.0"

# public name -> module that defines it (loaded lazily, so `import gctnet` stays light)
_LAZY = {
    "apply_gct": "gctnet.surgery",
    "remove_gct": "gctnet.surgery",
    "gct_modules": "gctnet.surgery",
    "load_plain_weights": "gctnet.surgery",
    "create_model": "gctnet.models",
    "list_models": "gctnet.models",
    "register_model": "gctnet.models",
    "param_groups": "gctnet.optim",
    "no_weight_decay": "gctnet.optim",
    "load_official_checkpoint": "gctnet.models.official",
    "save_official_checkpoint": "gctnet.models.official",
    "model_info": "gctnet.bench.accounting",
    "set_backend": "gctnet.kernels",
    "get_backend": "gctnet.kernels",
}

__all__ = ["GCT", "functional", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gctnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def _register_in_timm() -> None:
    """gctnet's classifiers become timm models: now if timm is imported, else when it is first imported
    (timm itself is never imported here, so ``import gctnet`` stays light)."""
    from .models import timm_bridge

    timm_bridge.register_when_imported()


_register_in_timm()
