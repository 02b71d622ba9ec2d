"""Register gctnet's image-classification models in timm's model registry.

After :func:`register_all` every gctnet image classifier whose name timm does not already use can be
built by timm and its tools.  ``import gctnet`` arranges it without slowing down users who never touch
timm: if timm is already imported the models are registered at once, otherwise right after timm's
first import (:func:`register_when_imported`)::

    model = timm.create_model("gct_resnet50", pretrained=False, num_classes=100)
    feats = timm.create_model("gct_resnet50", features_only=True, out_indices=(1, 2, 3, 4))
    opt = timm.optim.create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=1e-4)  # no decay on GCT beta

What the bridge provides:

* **names:** gctnet names (``gct_*``, ``se_*``, CIFAR ``resnet20`` ..., ``resnet50_official`` ...) are
  registered unless timm already has the name (``resnet50``, ``vgg16_bn``, ``inception_v3``, ... stay
  timm's own models); :data:`SKIPPED` lists the clashes.  Detection and video models are not registered
  (timm's tools are image classifiers).  The entrypoints live in this module, so
  ``timm.list_models(module="timm_bridge")`` lists them.
* **timm's model interface** (``forward_features``, ``forward_head``, ``reset_classifier``,
  ``forward_intermediates``, ``feature_info``, ...) comes with the models themselves
  (:mod:`gctnet.models.interface`); ``num_classes=0`` and ``global_pool=""`` give a headless backbone.
* **pretrained_cfg** from the gctnet registry entry: ``input_size``, ``pool_size``, ``mean``, ``std``,
  ``first_conv``, ``classifier``, ``crop_pct``, ``interpolation``, ``num_classes``.  gctnet ships no
  weights: ``pretrained=True`` needs ``pretrained_cfg_overlay=dict(file=path)`` (read with
  ``weights_only=True``; the official GCT-ResNet-50 checkpoint is converted on the fly for
  ``gct_resnet50_official``).
* **features_only:** every ``feature_cls`` works ("list", "dict", "hook", "fx", "getter").  The default is
  timm's ``FeatureListNet`` where the model's forward is a chain of its top-level modules (all but
  Inception-v3 with ``transform_input`` or ``aux_logits``), else ``FeatureGetterNet`` (the model's own
  ``forward_intermediates``).  Without ``out_indices`` every level is returned.
* **weight decay:** every model gets ``no_weight_decay()`` (:func:`gctnet.surgery.attach_no_weight_decay`:
  GCT ``beta`` under the paper's policy), which ``timm.optim.create_optimizer_v2`` honours;
  ``gct_wd_policy="none"|"all"`` at creation changes it.
* timm's generic options: ``bn_momentum``/``bn_eps`` are applied to every BatchNorm; ``drop_rate``,
  ``drop_path_rate``, ``drop_block_rate`` must be 0/None (gctnet models have no such options: a clear
  error instead of a silently ignored setting).
"""

from __future__ import annotations

import functools
import importlib.abc
import math
import sys
import warnings
from typing import Any, Callable, Dict, List, Mapping

import torch
from torch import nn

from .registry import ModelEntry, create_model, get_model_entry, list_models

__all__ = ["register_all", "register_when_imported", "REGISTERED", "SKIPPED", "EXCLUDED_FAMILIES", "default_cfgs"]

#: families that are not image classifiers and are not registered in timm
EXCLUDED_FAMILIES = frozenset({"detection", "video"})
#: gctnet names registered in timm by this process
REGISTERED: List[str] = []
#: gctnet names left out because timm already has a model of that name
SKIPPED: List[str] = []
#: timm reads pretrained cfgs from the entrypoint's module attribute ``default_cfgs``
default_cfgs: Dict[str, Any] = {}

_CFG_KEYS = ("input_size", "pool_size", "mean", "std", "first_conv", "classifier", "crop_pct", "interpolation")


# --------------------------------------------------------------------------------------------------
# features_only
# --------------------------------------------------------------------------------------------------
def _feature_net(model: nn.Module, *, feature_cls: Any = None, explicit_indices: bool = False,
                 **feature_cfg: Any) -> nn.Module:
    """timm's ``feature_cls`` for a gctnet model: the user's choice (a name or a class) or the default
    (``FeatureListNet`` for chain models, else ``FeatureGetterNet``).  Without an explicit
    ``out_indices`` every feature level is returned (timm's default (0, 1, 2, 3, 4) assumes five
    levels; CIFAR ResNets have three)."""
    from timm.models._features import FeatureDictNet, FeatureGetterNet, FeatureHookNet, FeatureListNet
    from timm.models._features_fx import FeatureGraphNet

    levels = len(model.feature_info)
    indices = feature_cfg.get("out_indices")
    if not explicit_indices:
        feature_cfg["out_indices"] = tuple(range(levels))
    elif isinstance(indices, (tuple, list)) and any(not -levels <= i < levels for i in indices):
        raise ValueError(
            f"out_indices={tuple(indices)} out of range: this model has {levels} feature levels "
            f"(reductions {[f['reduction'] for f in model.feature_info]})"
        )
    names = {"list": FeatureListNet, "dict": FeatureDictNet, "hook": FeatureHookNet, "fx": FeatureGraphNet,
             "getter": FeatureGetterNet}
    if feature_cls is None:
        feature_cls = FeatureListNet if model.feature_chain else FeatureGetterNet
    elif isinstance(feature_cls, str):
        key = "hook" if "hook" in feature_cls.lower() else feature_cls.lower()
        if key not in names:
            raise ValueError(f"unknown feature_cls {feature_cls!r}; use one of {sorted(names)}")
        feature_cls = names[key]
    if isinstance(feature_cls, type) and issubclass(feature_cls, FeatureDictNet):
        if not model.feature_chain:
            raise ValueError(
                f"feature_cls {feature_cls.__name__} runs the top-level modules one after the other, which is not "
                f"what {type(model).__name__}'s forward does here; use feature_cls='getter' or 'hook'"
            )
        # VGG / MobileNetV2 levels sit inside their top-level `features` Sequential
        feature_cfg.setdefault("flatten_sequential", any("." in f["module"] for f in model.feature_info))
    elif isinstance(feature_cls, type) and issubclass(feature_cls, FeatureHookNet):
        feature_cfg.setdefault("no_rewrite", True)  # hooks on the unchanged model: its own forward runs
    return feature_cls(model, **feature_cfg)


# --------------------------------------------------------------------------------------------------
# building through timm
# --------------------------------------------------------------------------------------------------
def _pop_timm_options(name: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Remove timm's generic model options from ``kwargs``; return those to apply after building
    (``bn_momentum``, ``bn_eps``, ``global_pool``)."""
    for key in ("drop_rate", "drop_path_rate", "drop_block_rate"):
        value = kwargs.pop(key, None)
        if value:
            raise ValueError(f"{name}: gctnet models have no {key} option (got {key}={value}); use 0 or leave it unset")
    return {k: kwargs.pop(k) for k in ("bn_momentum", "bn_eps", "global_pool") if kwargs.get(k) is not None}


def _build(name: str, options: Mapping[str, Any], **kwargs: Any) -> nn.Module:
    model = create_model(name, **kwargs)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if "bn_momentum" in options:
                m.momentum = options["bn_momentum"]
            if "bn_eps" in options:
                m.eps = options["bn_eps"]
    if "global_pool" in options:
        model.reset_classifier(model.num_classes, options["global_pool"])
    return model


def _filter_fn(name: str, family: str) -> Callable[[Mapping[str, Any], nn.Module], Dict[str, torch.Tensor]]:
    """timm ``pretrained_filter_fn``: unwrap checkpoint dicts; official key names for the official model."""

    def fn(state_dict: Mapping[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
        from . import official

        if family == "official":
            return official.official_to_gctnet(state_dict)
        return official.unwrap_state_dict(state_dict)

    return fn


def _make_entrypoint(entry: ModelEntry) -> Callable[..., nn.Module]:
    name = entry.name

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        from timm.models import build_model_with_cfg, resolve_pretrained_cfg

        if pretrained:
            cfg = resolve_pretrained_cfg(name, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                         pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
            if not cfg.has_weights:
                raise ValueError(
                    f"gctnet ships no pretrained weights for {name!r}: pass pretrained_cfg_overlay="
                    "dict(file='path/to/checkpoint') (or use pretrained=False)"
                )
        from ..surgery import attach_no_weight_decay

        wd_policy = kwargs.pop("gct_wd_policy", "paper")
        options = _pop_timm_options(name, kwargs)
        feature_cfg = dict(kwargs.pop("feature_cfg", None) or {})
        feature_cfg["feature_cls"] = functools.partial(
            _feature_net, feature_cls=kwargs.pop("feature_cls", feature_cfg.pop("feature_cls", None)),
            explicit_indices="out_indices" in kwargs or "out_indices" in feature_cfg)

        def builder(**model_kwargs: Any) -> nn.Module:
            return _build(name, options, **model_kwargs)

        model = build_model_with_cfg(
            builder, name, pretrained,
            feature_cfg=feature_cfg,
            pretrained_filter_fn=_filter_fn(name, entry.family),
            **kwargs,
        )
        return attach_no_weight_decay(model, wd_policy)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"gctnet model {name!r} (family {entry.family!r}) built through timm."
    return entrypoint


def _timm_cfg(entry: ModelEntry) -> Dict[str, Any]:
    cfg = {k: entry.cfg[k] for k in _CFG_KEYS if k in entry.cfg}
    cfg["input_size"] = tuple(cfg.get("input_size", (3, 224, 224)))
    # forward_features' spatial size at input_size (ImageNet-style models reduce by 32)
    cfg.setdefault("pool_size", tuple(math.ceil(s / 32) for s in cfg["input_size"][1:]))
    cfg.setdefault("crop_pct", 0.875)
    cfg.setdefault("interpolation", "bilinear")
    cfg["num_classes"] = entry.defaults.get("num_classes", 1000)
    cfg["url"] = ""
    cfg["license"] = "see gctnet"
    return cfg


def _eligible(entry: ModelEntry) -> bool:
    size = entry.cfg.get("input_size", (3, 224, 224))
    return entry.family not in EXCLUDED_FAMILIES and len(size) == 3


def register_all() -> List[str]:
    """Register every eligible gctnet model in timm's registry; idempotent.

    Returns the names registered by this call (empty when nothing new).  Raises ImportError with an
    install hint when timm is missing.
    """
    try:
        from timm.models import generate_default_cfgs, is_model
        from timm.models import register_model as timm_register
    except ImportError as exc:  # pragma: no cover - exercised only without timm
        raise ImportError("gctnet's timm bridge needs timm: pip install 'gctnet[timm]'") from exc

    new: List[str] = []
    for name in list_models():
        if name in REGISTERED or name in SKIPPED:
            continue
        entry = get_model_entry(name)
        if not _eligible(entry):
            continue
        if is_model(name):
            SKIPPED.append(name)
            continue
        default_cfgs.update(generate_default_cfgs({name: _timm_cfg(entry)}))
        fn = _make_entrypoint(entry)
        setattr(sys.modules[__name__], name, fn)
        timm_register(fn)
        REGISTERED.append(name)
        new.append(name)
    return new


# --------------------------------------------------------------------------------------------------
# registration on timm's first import
# --------------------------------------------------------------------------------------------------
class _RegisterAfterExec:
    """Wraps timm's loader: runs it, then registers gctnet's models (every other attribute is the
    wrapped loader's)."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        _remove_finder()
        _register_quietly()


class _TimmFinder(importlib.abc.MetaPathFinder):
    """A meta path finder that finds nothing itself: for ``timm`` it asks the other finders and wraps
    the loader they return, so gctnet's models are registered as soon as ``import timm`` completes."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "timm":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisterAfterExec(spec.loader)
                return spec
        return None


def _remove_finder() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TimmFinder)]


def _register_quietly() -> None:
    try:
        register_all()
    except Exception as exc:  # never break `import timm`
        warnings.warn(f"gctnet could not register its models in timm: {exc!r}", stacklevel=2)


def register_when_imported() -> None:
    """Register gctnet's models in timm now if timm is imported, else right after its first import.

    ``import gctnet`` calls this; it never imports timm itself, so users who do not use timm pay
    nothing (a meta path finder that answers only for the name ``timm``).
    """
    if "timm" in sys.modules:
        _register_quietly()
    elif not any(isinstance(f, _TimmFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TimmFinder())
