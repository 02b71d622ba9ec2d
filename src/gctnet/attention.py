"""Channel attention at block level: GCT as a timm ``attn_layer``, and the attention keys of the zoo.

* :class:`GCTAttn` is :class:`gctnet.GCT` with the signature timm expects of an attention layer
  (``cls(channels, **kwargs)``), so one GCT per block goes wherever a timm architecture takes an
  ``attn_layer``::

      timm.create_model("resnet50", block_args=dict(attn_layer=GCTAttn))   # GCT where SE-ResNet has SE

  It is a ``GCT`` (same parameters, same kernels), so :func:`gctnet.param_groups`, ``no_weight_decay``,
  :func:`gctnet.model_info` and :func:`gctnet.gct_modules` find it; at initialisation it is exactly the
  identity.  "GCT" is Gated Channel Transformation (Yang et al., CVPR 2020), not timm's ``gc`` (GCNet's
  global context block) nor the "Gaussian Context Transformer".
* :func:`get_attention` turns an attention key (``"se"``, ``"eca"``, ``"cbam"``, ...; see
  :data:`ATTENTION_KEYS`) or a layer class into a factory ``channels -> module``: ``"se"`` is gctnet's
  own SE (:func:`gctnet.models.se.make_se`, no timm needed), ``"gct"`` is :class:`GCTAttn`, the other keys
  are timm's layers (``timm.layers.get_attn``; they need the ``timm`` extra).
* :func:`attention_modules` / :func:`attention_params` find the channel-attention modules of a model
  (GCT, SE and timm's attention layers) for cost accounting.

timm is never imported by importing this module.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .layers import GCT

__all__ = [
    "GCTAttn",
    "ATTENTION_KEYS",
    "TIMM_ATTENTION_KEYS",
    "LEFT_OUT",
    "TIMM_HINT",
    "get_attention",
    "attention_modules",
    "attention_params",
]

TIMM_HINT = "pip install 'gctnet[timm]'"

#: timm's light channel/spatial attention keys (``timm.layers.create_attn``) that gctnet's ResNet blocks take
TIMM_ATTENTION_KEYS: Tuple[str, ...] = (
    "ese", "eca", "ecam", "ceca", "ge", "gc", "gca", "cbam", "lcbam", "coord", "scoord", "ela", "strip",
)  # fmt: skip

#: every key of the zoo's ``<attn>_<arch>`` variants: gctnet's own SE, then timm's layers
ATTENTION_KEYS: Tuple[str, ...] = ("se",) + TIMM_ATTENTION_KEYS

#: keys of ``timm.layers.create_attn`` that are not block attention variants in the zoo, and why
LEFT_OUT: Dict[str, str] = {
    "sk": "SelectiveKernel is a multi-branch replacement of a block's 3x3 conv (SKNet), not an attention on "
          "the block output: after bn2/bn3 it would add whole convs (38.5 M parameters per ResNet-50 stage-4 block)",
    "splat": "SplitAttn (ResNeSt) is a grouped-conv replacement of a block's 3x3 conv, not an attention on "
             "the block output (44 M parameters per ResNet-50 stage-4 block)",
    "nl": "non-local self-attention: memory and compute quadratic in H*W; timm places it once per stage, "
          "not in every block",
    "bat": "BatNonLocalAttn: needs feature maps divisible by its block size (7), which CIFAR (32/16/8) and "
           "small inputs do not give",
    "lambda": "LambdaLayer: self-attention that replaces the 3x3 conv (it takes a stride), not a block-output "
              "attention",
    "bottleneck": "BottleneckAttn: self-attention replacing the 3x3 conv; needs a fixed feature size",
    "halo": "HaloAttn: self-attention replacing the 3x3 conv; needs feature maps divisible by its block size",
}  # fmt: skip

AttentionSpec = Union[str, Callable[..., nn.Module]]


class GCTAttn(GCT):
    """GCT as a timm attention layer: ``GCTAttn(channels, **kwargs)``.

    The keyword arguments timm passes to attention layers and GCT has no use for (``rd_ratio``,
    ``rd_divisor``, ``act_layer``, ``gate_layer``, ...) are accepted and ignored; ``eps``, ``mode``,
    ``after_relu``, ``device`` and ``dtype`` are :class:`gctnet.GCT`'s.  A fresh ``GCTAttn`` is exactly the
    identity (alpha = 1, gamma = 0, beta = 0), and none of it is a conv, so a network's conv
    initialisation leaves it so.

    In timm's ResNet (``block_args=dict(attn_layer=GCTAttn)``) it sits where SE sits in SE-ResNet: on the
    residual branch after the last BN, before the addition.  That is neither the paper's placement
    (:func:`gctnet.apply_gct`: a GCT before every conv) nor ``apply_gct(placement="block")`` (one GCT on
    the block input, before its first conv).
    """

    def __init__(
        self,
        channels: int,
        eps: float = 1e-5,
        mode: str = "l2",
        after_relu: bool = False,
        *,
        device: Optional[Any] = None,
        dtype: Optional[torch.dtype] = None,
        **ignored: Any,
    ) -> None:
        super().__init__(channels, eps, mode, after_relu, device=device, dtype=dtype)


def _timm_get_attn(key: str, what: str) -> Callable[..., nn.Module]:
    try:
        from timm.layers import get_attn
    except ImportError as exc:
        raise ImportError(
            f"{what or f'attention {key!r}'} needs timm (attention {key!r} comes from timm.layers): {TIMM_HINT}"
        ) from exc
    return get_attn(key)


def _gather_excite(cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """timm's ``ge`` (GatherExcite), built even where timm cannot build its MLP.

    timm 1.0.31's ``GatherExcite`` passes its ``device``/``dtype`` dict to ``ConvMlp`` positionally
    (``*dd``) and fails with a TypeError.  Then the module is built without MLP and the same ``ConvMlp``
    (same hidden width rule, attribute ``mlp``) is added: the module timm intends.
    """

    def make(channels: int, **kwargs: Any) -> nn.Module:
        try:
            return cls(channels, **kwargs)
        except TypeError as exc:
            if "multiple values" not in str(exc) or kwargs.get("use_mlp") is False:
                raise
        from timm.layers import ConvMlp, get_act_layer, make_divisible

        rd = {k: kwargs.pop(k) for k in ("rd_ratio", "rd_channels", "rd_divisor") if k in kwargs}
        act_layer = get_act_layer(kwargs.get("act_layer", nn.ReLU))
        module = cls(channels, use_mlp=False, **kwargs)
        hidden = rd.get("rd_channels") or make_divisible(
            channels * rd.get("rd_ratio", 1.0 / 16), rd.get("rd_divisor", 1), round_limit=0.0)
        module.mlp = ConvMlp(channels, hidden, act_layer=act_layer)
        return module

    return make


def get_attention(attn: AttentionSpec, *, what: str = "") -> Callable[..., nn.Module]:
    """A factory ``channels -> attention module`` for ``attn``.

    Args:
        attn: a key of :data:`ATTENTION_KEYS` (``"se"``: gctnet's own SE, no timm needed; the others come
            from ``timm.layers.get_attn``), ``"gct"`` (:class:`GCTAttn`), or a layer class / callable taking
            the channel count first (returned unchanged).
        what: the model being built, named in the error message when timm is missing.

    Raises:
        ImportError: a timm key without timm installed (the message names the ``timm`` extra).
        ValueError: an unknown key, or one of :data:`LEFT_OUT` (with the reason).
    """
    if not isinstance(attn, str):
        if callable(attn):
            return attn
        raise TypeError(f"attention must be a key like 'se' or 'eca' or a layer class, got {type(attn).__name__}")
    key = attn.lower()
    if key == "se":
        from .models.se import make_se

        return make_se
    if key == "gct":
        return GCTAttn
    if key in LEFT_OUT:
        raise ValueError(f"attention {key!r} is not a block attention of gctnet's ResNets: {LEFT_OUT[key]}")
    if key not in TIMM_ATTENTION_KEYS:
        raise ValueError(f"unknown attention {attn!r}; known keys: {', '.join(ATTENTION_KEYS + ('gct',))}")
    layer = _timm_get_attn(key, what)
    return _gather_excite(layer) if key == "ge" else layer


# --------------------------------------------------------------------------------------------------
# finding attention modules (cost accounting)
# --------------------------------------------------------------------------------------------------
def _attention_types() -> Tuple[type, ...]:
    """GCT, torchvision's SqueezeExcitation and, when timm is imported, the classes of timm's attention keys
    (a model can only hold instances of imported classes, so nothing is imported here)."""
    types: List[type] = [GCT]
    ops = sys.modules.get("torchvision.ops.misc")
    if ops is not None:
        types.append(ops.SqueezeExcitation)
    if sys.modules.get("timm.layers") is not None:
        from timm.layers import get_attn

        for key in ("se", *TIMM_ATTENTION_KEYS):  # timm's own SE too (a model may use it directly)
            layer = get_attn(key)
            layer = getattr(layer, "func", layer)  # functools.partial (ecam, gca)
            if isinstance(layer, type):
                types.append(layer)
    return tuple(dict.fromkeys(types))


def attention_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of the channel-attention modules of ``model``, outermost only: every
    :class:`gctnet.GCT` (``GCTAttn`` and the GCTs of ``gct_`` models included), torchvision's
    ``SqueezeExcitation`` (gctnet's SE) and timm's attention layers of :data:`TIMM_ATTENTION_KEYS`."""
    types = _attention_types()
    found: List[Tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, types) and not any(not outer or name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, module))
    return found


def attention_params(model: nn.Module) -> int:
    """Number of parameters in :func:`attention_modules` (each tensor once)."""
    seen: Dict[int, int] = {}
    for _, module in attention_modules(model):
        for p in module.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())
