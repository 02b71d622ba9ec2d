"""Block attention in the zoo's ResNets: the ``<attn>_<arch>`` variants (``se_resnet20``, ``eca_resnet50``, ...).

One factory for both ResNet families: :func:`attention_block` turns a residual block class (gctnet's CIFAR
``BasicBlock``, torchvision's ``BasicBlock``/``Bottleneck``) and an attention key or layer class
(:func:`gctnet.attention.get_attention`) into a block constructor whose blocks carry the attention where
timm's ResNets put it: on the residual branch, after the last conv + BN (``bn2`` / ``bn3``) and before
the addition, as the block's ``se`` attribute (timm's name; so ``se_`` models keep their
``*.se.fc1.weight`` keys).

Initialisation: the network initialises every conv and BN as it always does, attention layers included
(as timm's ResNets do; so ``se_`` models are initialised exactly as before).  An attention module that
defines its own ``reset_parameters`` is then initialised the way timm's ByobNet (where timm uses
``gc``/``gca``) does it: zero conv biases, then its ``reset_parameters`` (:func:`reset_attention`).  So
``gca`` starts as the identity, as GCNet intends (last layer zero), in both ResNet families, and
:class:`gctnet.attention.GCTAttn` is the identity.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, Mapping, Optional

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..attention import ATTENTION_KEYS, AttentionSpec, get_attention

__all__ = ["AttnBasicBlock", "AttnBottleneck", "attention_block", "reset_attention", "ATTENTION_KEYS"]


class AttnBasicBlock(BasicBlock):
    """torchvision's :class:`~torchvision.models.resnet.BasicBlock` with ``se = attn_layer(planes)``
    after ``bn2``, before the addition (``se`` is None without ``attn_layer``)."""

    def __init__(self, *args: Any, attn_layer: Optional[Callable[[int], nn.Module]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.se = attn_layer(self.bn2.num_features) if attn_layer is not None else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


class AttnBottleneck(Bottleneck):
    """torchvision's :class:`~torchvision.models.resnet.Bottleneck` with ``se = attn_layer(planes * 4)``
    after ``bn3``, before the addition (``se`` is None without ``attn_layer``)."""

    def __init__(self, *args: Any, attn_layer: Optional[Callable[[int], nn.Module]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.se = attn_layer(self.bn3.num_features) if attn_layer is not None else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


_WITH_ATTENTION: Dict[type, type] = {BasicBlock: AttnBasicBlock, Bottleneck: AttnBottleneck}


def attention_block(
    block: type, attn: AttentionSpec, attn_kwargs: Optional[Mapping[str, Any]] = None, *, what: str = ""
) -> Callable[..., nn.Module]:
    """A constructor of ``block`` residual blocks with attention ``attn`` on the residual branch.

    Args:
        block: torchvision's ``BasicBlock``/``Bottleneck`` (built as :class:`AttnBasicBlock` /
            :class:`AttnBottleneck`) or a block class that takes ``attn_layer`` itself (gctnet's CIFAR
            ``BasicBlock``).
        attn: an attention key (``"se"``, ``"eca"``, ...) or a layer class, see
            :func:`gctnet.attention.get_attention`.
        attn_kwargs: keyword arguments of the attention layer (e.g. ``{"kernel_size": 5}`` for ``eca``,
            ``{"reduction": 8}`` for ``se``).
        what: the model being built (named in the error when timm is missing).

    The constructor takes the block's own arguments and has the class's ``expansion`` (what torchvision's
    ``ResNet`` reads).
    """
    cls = _WITH_ATTENTION.get(block, block)
    if "attn_layer" not in inspect.signature(cls).parameters:
        known = ", ".join(c.__name__ for c in _WITH_ATTENTION)
        raise TypeError(f"{cls.__name__} takes no attn_layer; blocks that do: {known}, gctnet's CIFAR BasicBlock")
    if attn_kwargs is not None and not isinstance(attn_kwargs, Mapping):
        raise TypeError(
            f"attn_kwargs must be a mapping of the attention layer's options, got {type(attn_kwargs).__name__}"
        )
    layer = get_attention(attn, what=what)
    if attn_kwargs:
        layer = functools.partial(layer, **attn_kwargs)
    make = functools.partial(cls, attn_layer=layer)
    make.expansion = cls.expansion  # type: ignore[attr-defined]
    return make


def reset_attention(model: nn.Module) -> nn.Module:
    """After the network's conv/BN initialisation: every block attention module (a block's ``se``) that
    defines ``reset_parameters`` gets zero conv biases and then its own initialisation back (what timm's
    ByobNet does to its attention layers); returns ``model``."""
    for module in model.modules():
        attn = getattr(module, "se", None)
        if isinstance(attn, nn.Module) and callable(getattr(attn, "reset_parameters", None)):
            for conv in attn.modules():
                if isinstance(conv, nn.modules.conv._ConvNd) and conv.bias is not None:
                    nn.init.zeros_(conv.bias)
            attn.reset_parameters()
    return model
