"""Register gctnet's image-classification models in timm's model registry.

After :func:`register_all` (called by ``import gctnet`` when timm is installed) every gctnet image
classifier whose name timm does not already use can be built by timm and its tools::

    model = timm.create_model("gct_resnet50", pretrained=False, num_classes=100)
    feats = timm.create_model("gct_resnet50", features_only=True, out_indices=(1, 2, 3, 4))
    opt = timm.optim.create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=1e-4)  # no decay on GCT beta

What the bridge provides:

* **names:** gctnet names (``gct_*``, ``se_*``, CIFAR ``resnet20`` ..., ``resnet50_official`` ...) are
  registered unless timm already has the name (``resnet50``, ``vgg16_bn``, ``inception_v3``, ... stay
  timm's own models); :data:`SKIPPED` lists the clashes.  Detection and video models are not registered
  (timm's tools are image classifiers).  The entrypoints live in this module, so
  ``timm.list_models(module="timm_bridge")`` lists them.
* **pretrained_cfg** from the gctnet registry entry: ``input_size``, ``mean``, ``std``, ``first_conv``,
  ``classifier``, ``crop_pct``, ``interpolation``, ``num_classes``.  gctnet ships no weights:
  ``pretrained=True`` needs ``pretrained_cfg_overlay=dict(file=path)`` (read with ``weights_only=True``;
  the official GCT-ResNet-50 checkpoint is converted on the fly for ``gct_resnet50_official``).
* **features_only:** ``feature_info`` is found by one probe forward (the last module of each
  stride among the top-level modules and the children of top-level ``nn.Sequential`` containers, up to
  the global pool).  If the model's forward is a plain chain of its top-level modules up to the last
  feature (torchvision/CIFAR ResNets), timm's ``FeatureListNet`` is used (the head is dropped); else
  ``FeatureHookNet(no_rewrite=True)`` (forward hooks on the unchanged model, e.g. VGG, MobileNetV2).
* **weight decay:** every model gets ``no_weight_decay()`` (the names from
  :func:`gctnet.optim.no_weight_decay`, GCT ``beta`` under the paper's policy), which
  ``timm.optim.create_optimizer_v2`` honours; ``gct_wd_policy="none"|"all"`` at creation changes it.
* ``num_classes`` and ``get_classifier()`` are added where the model lacks them (timm's ``train.py``
  uses both).
* timm's generic options: ``bn_momentum``/``bn_eps`` are applied to every BatchNorm; ``drop_rate``,
  ``drop_path_rate``, ``drop_block_rate`` must be 0/None and ``global_pool`` None/"avg" (gctnet models
  have no such options: a clear error instead of a silently ignored setting).
"""

from __future__ import annotations

import functools
import math
import sys
import types
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .registry import ModelEntry, create_model, get_model_entry, list_models

__all__ = ["register_all", "REGISTERED", "SKIPPED", "EXCLUDED_FAMILIES", "probe_feature_info", "default_cfgs"]

#: families that are not image classifiers and are not registered in timm
EXCLUDED_FAMILIES = frozenset({"detection", "video"})
#: gctnet names registered in timm by this process
REGISTERED: List[str] = []
#: gctnet names left out because timm already has a model of that name
SKIPPED: List[str] = []
#: timm reads pretrained cfgs from the entrypoint's module attribute ``default_cfgs``
default_cfgs: Dict[str, Any] = {}

_CFG_KEYS = ("input_size", "mean", "std", "first_conv", "classifier", "crop_pct", "interpolation")
_PROBE_MAX_SIZE = 128  # probe forward at min(nominal size, 128) pixels when the size is a multiple of 32
_GLOBAL_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


# --------------------------------------------------------------------------------------------------
# no_weight_decay
# --------------------------------------------------------------------------------------------------
def _no_weight_decay(self: nn.Module) -> set:
    """timm's hook: parameter names without weight decay (GCT ``beta`` under the paper's policy)."""
    from ..optim import no_weight_decay

    return no_weight_decay(self, getattr(self, "gct_wd_policy", "paper"))


def attach_no_weight_decay(model: nn.Module, policy: str = "paper") -> nn.Module:
    """Give ``model`` a ``no_weight_decay()`` method (unless its class defines one) for timm's optimizer
    factory; ``policy`` as in :func:`gctnet.optim.param_groups`."""
    from ..optim import POLICIES

    if policy not in POLICIES:
        raise ValueError(f"gct_wd_policy must be one of {POLICIES}, got {policy!r}")
    model.gct_wd_policy = policy  # type: ignore[assignment]
    if not callable(getattr(type(model), "no_weight_decay", None)):
        model.no_weight_decay = types.MethodType(_no_weight_decay, model)  # type: ignore[assignment]
    return model


def _get_classifier(self: nn.Module) -> nn.Module:
    """timm API: the classifier module (named by the model's pretrained_cfg)."""
    return self.get_submodule(self.gctnet_classifier)


def _add_classifier_api(model: nn.Module, classifier: Optional[str]) -> None:
    """``num_classes`` and ``get_classifier()`` as timm's train.py expects them (when missing)."""
    if not classifier:
        return
    try:
        head = model.get_submodule(classifier)
    except AttributeError:
        return
    model.gctnet_classifier = classifier  # type: ignore[assignment]
    if not hasattr(model, "num_classes") and isinstance(head, nn.Linear):
        model.num_classes = head.out_features  # type: ignore[assignment]
    if not callable(getattr(type(model), "get_classifier", None)):
        model.get_classifier = types.MethodType(_get_classifier, model)  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------------
# feature_info by probing
# --------------------------------------------------------------------------------------------------
def _candidates(model: nn.Module) -> List[Tuple[str, nn.Module, bool]]:
    """(name, module, is_top_level): top-level children, and children of top-level Sequentials."""
    out: List[Tuple[str, nn.Module, bool]] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            out += [(f"{name}.{sub}", m, False) for sub, m in child.named_children()]
        out.append((name, child, True))
    return out


def probe_feature_info(model: nn.Module, input_size: Sequence[int]) -> Tuple[List[Dict[str, Any]], bool]:
    """Find timm-style ``feature_info`` of ``model`` by one forward pass on a small random input.

    Returns ``(feature_info, chain)``: ``feature_info`` lists, per stride (reduction), the last
    candidate module producing an (N, C, H, W) map at that stride, before the global pool; ``chain`` is
    True when the model's forward runs its top-level children one after the other (each on the previous
    one's output) up to the last feature module, and every feature module is top-level (so timm's
    ``FeatureListNet`` reproduces the forward).
    """
    c, h, w = (int(v) for v in input_size)
    if h % 32 == 0 and w % 32 == 0:  # strides are exact: a small input gives the same reductions
        h, w = min(h, _PROBE_MAX_SIZE), min(w, _PROBE_MAX_SIZE)
    # else (e.g. Inception-v3 at 299, valid padding) probe at the nominal size: rounding is only right there
    x = torch.randn(1, c, h, w)
    records: List[Dict[str, Any]] = []
    stop = [False]
    handles = []

    def hook(name: str, module: nn.Module, top: bool):
        def fn(_m: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
            if stop[0]:
                return
            if isinstance(module, _GLOBAL_POOLS):
                stop[0] = True
                return
            records.append({"name": name, "top": top, "input": args[0] if args else None, "output": output})

        return fn

    for name, module, top in _candidates(model):
        handles.append(module.register_forward_hook(hook(name, module, top)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    by_reduction: Dict[int, Dict[str, Any]] = {}
    for rec in records:
        out = rec["output"]
        if not (isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] > 0):
            continue
        reduction = 2 ** round(math.log2(max(h / out.shape[-2], 1.0)))
        if by_reduction and reduction < max(by_reduction):
            continue  # keep reductions non-decreasing (timm's FeatureInfo requires it)
        by_reduction[reduction] = {"module": rec["name"], "num_chs": int(out.shape[1]), "reduction": reduction,
                                   "_top": rec["top"]}
    info = [by_reduction[r] for r in sorted(by_reduction)]
    if not info:
        raise RuntimeError(f"{type(model).__name__}: found no (N, C, H, W) feature maps for features_only")

    chain = all(f["_top"] for f in info)
    if chain:
        last = info[-1]["module"]
        tops = [r for r in records if r["top"]]
        children = [n for n, _ in model.named_children()]
        expected = children[: children.index(last) + 1]
        called = [r["name"] for r in tops[: len(expected)]]
        chain = called == expected and tops[0]["input"] is x and all(
            b["input"] is a["output"] for a, b in zip(tops[: len(expected)], tops[1: len(expected)])
        )
    for f in info:
        del f["_top"]
    return info, chain


def _auto_feature_net(model: nn.Module, *, explicit_indices: bool = False, **feature_cfg: Any) -> nn.Module:
    """``feature_cls`` for timm's builder: FeatureListNet for chain models, else FeatureHookNet.

    Without an explicit ``out_indices`` every feature level is returned (timm's default (0, 1, 2, 3, 4)
    assumes five levels; CIFAR ResNets have three).
    """
    from timm.models import FeatureHookNet, FeatureListNet

    levels = len(model.feature_info)
    indices = feature_cfg.get("out_indices", tuple(range(levels)))
    if not explicit_indices:
        feature_cfg["out_indices"] = tuple(range(levels))
    elif isinstance(indices, (tuple, list)) and any(not -levels <= i < levels for i in indices):
        raise ValueError(
            f"out_indices={tuple(indices)} out of range: this model has {levels} feature levels "
            f"(reductions {[f['reduction'] for f in model.feature_info]})"
        )
    if getattr(model, "_gctnet_feature_chain", False):
        return FeatureListNet(model, **feature_cfg)
    return FeatureHookNet(model, no_rewrite=True, **feature_cfg)


# --------------------------------------------------------------------------------------------------
# building through timm
# --------------------------------------------------------------------------------------------------
def _pop_timm_options(name: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Remove timm's generic model options from ``kwargs``; return the BN settings to apply."""
    for key in ("drop_rate", "drop_path_rate", "drop_block_rate"):
        value = kwargs.pop(key, None)
        if value:
            raise ValueError(f"{name}: gctnet models have no {key} option (got {key}={value}); use 0 or leave it unset")
    pool = kwargs.pop("global_pool", None)
    if pool not in (None, "avg"):
        raise ValueError(f"{name}: gctnet models use average pooling only (got global_pool={pool!r})")
    return {k: kwargs.pop(k) for k in ("bn_momentum", "bn_eps") if kwargs.get(k) is not None}


def _build(name: str, probe: bool, wd_policy: str, bn: Mapping[str, Any], **kwargs: Any) -> nn.Module:
    entry = get_model_entry(name)
    model = create_model(name, **kwargs)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if "bn_momentum" in bn:
                m.momentum = bn["bn_momentum"]
            if "bn_eps" in bn:
                m.eps = bn["bn_eps"]
    _add_classifier_api(model, entry.cfg.get("classifier"))
    if probe:
        c, h, w = entry.cfg.get("input_size", (3, 224, 224))
        c = kwargs.get("in_chans", c)
        model.feature_info, model._gctnet_feature_chain = probe_feature_info(model, (c, h, w))
    return attach_no_weight_decay(model, wd_policy)


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
        wd_policy = kwargs.pop("gct_wd_policy", "paper")
        bn = _pop_timm_options(name, kwargs)
        probe = bool(kwargs.get("features_only", False))

        def builder(**model_kwargs: Any) -> nn.Module:
            return _build(name, probe, wd_policy, bn, **model_kwargs)

        model = build_model_with_cfg(
            builder, name, pretrained,
            feature_cfg={"feature_cls": functools.partial(_auto_feature_net,
                                                          explicit_indices="out_indices" in kwargs)},
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
