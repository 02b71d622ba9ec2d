"""The official GCT-ResNet-50 (z-x-yang/GCT, PyTorch port) and its checkpoint converter.

Architecture (see ``REFERENCE.md``, "Placement in the official models"): MSRA-style ResNet-50 v1 with
the stride of a downsampling block on its first **1x1** conv (torchvision puts it on the 3x3), a
downsample branch wherever the channel count changes (also in ``layer1.0``), no conv bias, plain
BatchNorm2d, and one GCT before **every** conv: the stem 7x7 conv (``GCT(3)``), ``conv1``/``conv2``/
``conv3`` of each bottleneck and each 1x1 downsample conv -- 53 GCT modules, 25,624,625 parameters.

gctnet builds it from torchvision's ``ResNet`` (so tools that know torchvision's module names work) and
inserts the GCTs with :func:`gctnet.surgery.apply_gct`, hence gctnet's key names differ from the
official ones:

=========================================  ===========================================
official checkpoint key                    gctnet key
=========================================  ===========================================
``stem.conv1.0.alpha`` (shape [1,C,1,1])   ``conv1.gct.alpha`` (shape [C])
``stem.conv1.1.weight``                    ``conv1.weight``
``stem.bn1.*``                             ``bn1.*``
``layerS.i.convK.0.{alpha,gamma,beta}``    ``layerS.i.convK.gct.{alpha,gamma,beta}``
``layerS.i.convK.1.weight``                ``layerS.i.convK.weight``
``layerS.0.downsample.0.{alpha,...}``      ``layerS.0.downsample.0.gct.{alpha,...}``
``layerS.0.downsample.1.weight``           ``layerS.0.downsample.0.weight``
``layerS.0.downsample.2.*`` (BN)           ``layerS.0.downsample.1.*``
``layerS.i.bnK.*``, ``fc.*``               unchanged
=========================================  ===========================================

Files are read with ``torch.load(..., weights_only=True)`` only (or safetensors): nothing in a checkpoint
is ever executed (:mod:`gctnet.checkpoints`, the one reader).  A file that needs full unpickling is
refused with :class:`UnsafeCheckpointError`.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet, conv1x1

from ..checkpoints import describe_mismatch
from ..checkpoints import read as read_checkpoint  # noqa: F401 - the old name, kept
from ..checkpoints import state_dict as unwrap_state_dict
from ..errors import CheckpointError, KeyMismatchError, UnsafeCheckpointError  # noqa: F401 - re-exported
from ..fileio import atomic_save
from ._variants import register_variants

__all__ = [
    "OfficialBottleneck",
    "CheckpointError",
    "UnsafeCheckpointError",
    "gct_resnet50_official",
    "resnet50_official",
    "official_to_gctnet",
    "gctnet_to_official",
    "read_checkpoint",
    "unwrap_state_dict",
    "load_official_checkpoint",
    "save_official_checkpoint",
    "NUM_GCT",
    "NUM_PARAMS",
]

PathLike = Union[str, "os.PathLike[str]"]
StateDict = Dict[str, Tensor]

#: number of GCT modules and of parameters of the official GCT-ResNet-50 with 1000 classes
NUM_GCT = 53
NUM_PARAMS = 25_624_625

_GCT_PARAMS = ("alpha", "gamma", "beta")


# --------------------------------------------------------------------------------------------------
# the architecture
# --------------------------------------------------------------------------------------------------
class OfficialBottleneck(Bottleneck):
    """torchvision's ``Bottleneck`` with the stride on ``conv1`` (1x1) instead of ``conv2`` (3x3).

    This is MSRA ResNet v1 (maskrcnn-benchmark's ``STRIDE_IN_1X1=True``), as in the official GCT code.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        super().__init__(inplanes, planes, 1, downsample, groups, base_width, dilation, norm_layer)
        self.conv1 = conv1x1(inplanes, self.conv1.out_channels, stride)
        self.stride = stride


def _official_init(model: nn.Module) -> None:
    """The official initialisation: convs kaiming_uniform_(a=1), BN weight 1 / bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, a=1)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet50_official(num_classes: int = 1000, in_chans: int = 3,
                      norm_layer: Optional[Callable[..., nn.Module]] = None) -> ResNet:
    """The official model's backbone *without* GCT (stride in 1x1, official init): the fair baseline.

    ``norm_layer`` defaults to ``nn.BatchNorm2d`` (detection uses ``FrozenBatchNorm2d``).
    """
    model = ResNet(OfficialBottleneck, [3, 4, 6, 3], num_classes=num_classes, norm_layer=norm_layer)
    if in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    _official_init(model)
    return model


_CFG = dict(input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
            first_conv="conv1", classifier="fc", crop_pct=0.875, interpolation="bilinear")

# registers "resnet50_official" (the plain baseline) and "gct_resnet50_official" (GCT before every conv,
# through gctnet.surgery.apply_gct; takes ``gct_kwargs`` like every gct_ model)
_BUILDERS = register_variants("resnet50_official", resnet50_official, family="official", cfg=_CFG,
                              defaults={"num_classes": 1000, "in_chans": 3})
gct_resnet50_official = _BUILDERS["gct_resnet50_official"]
gct_resnet50_official.__doc__ = (
    "The official GCT-ResNet-50: :func:`resnet50_official` with a GCT before every conv (53 GCTs, "
    "25,624,625 parameters with 1000 classes).  Arguments: ``num_classes``, ``in_chans``, ``gct_kwargs``."
)


# --------------------------------------------------------------------------------------------------
# key conversion
# --------------------------------------------------------------------------------------------------
_P = "(alpha|gamma|beta)"
_BLOCK = r"(layer\d+\.\d+)"
# (official pattern, gctnet template); a key matching no rule keeps its name (bn*, fc, ...)
_OFFICIAL_TO_GCTNET: List[Tuple["re.Pattern[str]", str]] = [
    (re.compile(rf"^stem\.conv1\.0\.{_P}$"), r"conv1.gct.\1"),
    (re.compile(r"^stem\.conv1\.1\.weight$"), "conv1.weight"),
    (re.compile(r"^stem\.bn1\.(\w+)$"), r"bn1.\1"),
    (re.compile(rf"^{_BLOCK}\.conv(\d)\.0\.{_P}$"), r"\1.conv\2.gct.\3"),
    (re.compile(rf"^{_BLOCK}\.conv(\d)\.1\.weight$"), r"\1.conv\2.weight"),
    (re.compile(rf"^{_BLOCK}\.downsample\.0\.{_P}$"), r"\1.downsample.0.gct.\2"),
    (re.compile(rf"^{_BLOCK}\.downsample\.1\.weight$"), r"\1.downsample.0.weight"),
    (re.compile(rf"^{_BLOCK}\.downsample\.2\.(\w+)$"), r"\1.downsample.1.\2"),
]
_GCTNET_TO_OFFICIAL: List[Tuple["re.Pattern[str]", str]] = [
    (re.compile(rf"^conv1\.gct\.{_P}$"), r"stem.conv1.0.\1"),
    (re.compile(r"^conv1\.weight$"), "stem.conv1.1.weight"),
    (re.compile(r"^bn1\.(\w+)$"), r"stem.bn1.\1"),
    (re.compile(rf"^{_BLOCK}\.conv(\d)\.gct\.{_P}$"), r"\1.conv\2.0.\3"),
    (re.compile(rf"^{_BLOCK}\.conv(\d)\.weight$"), r"\1.conv\2.1.weight"),
    (re.compile(rf"^{_BLOCK}\.downsample\.0\.gct\.{_P}$"), r"\1.downsample.0.\2"),
    (re.compile(rf"^{_BLOCK}\.downsample\.0\.weight$"), r"\1.downsample.1.weight"),
    (re.compile(rf"^{_BLOCK}\.downsample\.1\.(\w+)$"), r"\1.downsample.2.\2"),
]


# keys that exist only in the official layout: the stem module and the Sequential(GCT, conv) convs
_OFFICIAL_MARKER = re.compile(r"^stem\.|\.conv\d\.[01]\.|\.downsample\.2\.")


def _rename(key: str, rules: List[Tuple["re.Pattern[str]", str]]) -> str:
    for pattern, template in rules:
        if pattern.match(key):
            return pattern.sub(template, key)
    return key


def _is_gct_key(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _GCT_PARAMS


def official_to_gctnet(checkpoint: Union[PathLike, Mapping[str, Any]]) -> StateDict:
    """Convert an official GCT-ResNet-50 checkpoint (or its state_dict) to gctnet's key names.

    Accepts the pytorch/examples dict (``state_dict`` entry, ``module.`` prefix from DDP), a bare
    state_dict or a path to either (read by :func:`gctnet.checkpoints.state_dict`); GCT tensors of shape [1, C, 1, 1] become shape [C].  A state_dict already in gctnet's
    layout (no official-only key such as ``stem.*`` or ``*.conv1.1.weight``) is returned unchanged,
    prefix stripped.
    """
    state = unwrap_state_dict(checkpoint)
    if not any(_OFFICIAL_MARKER.search(k) for k in state):
        return dict(state)  # gctnet (or torchvision) layout already: renaming would corrupt it
    out: StateDict = OrderedDict()
    for key, value in state.items():
        new = _rename(key, _OFFICIAL_TO_GCTNET)
        if _is_gct_key(new) and ".gct." in new:
            value = value.reshape(-1)
        out[new] = value
    return out


def gctnet_to_official(state_dict: Mapping[str, Tensor], *, module_prefix: bool = False) -> StateDict:
    """Convert gctnet's state_dict of :func:`gct_resnet50_official` to the official key names.

    GCT tensors become shape [1, C, 1, 1] as in the official code; ``module_prefix`` prepends
    ``module.`` (what pytorch/examples' ``main.py`` saves from DataParallel/DDP and expects on resume).
    """
    state = unwrap_state_dict(state_dict)
    prefix = "module." if module_prefix else ""
    out: StateDict = OrderedDict()
    for key, value in state.items():
        new = _rename(key, _GCTNET_TO_OFFICIAL)
        if _is_gct_key(key) and ".gct." in key:
            value = value.reshape(1, -1, 1, 1)
        out[prefix + new] = value
    return out


# --------------------------------------------------------------------------------------------------
# load / save
# --------------------------------------------------------------------------------------------------
def _check_compatible(model: nn.Module, state: StateDict, num_classes: int) -> None:
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    if missing or unexpected:
        if missing and all(_is_gct_key(k) for k in missing):
            hint = ("; only GCT parameters are missing: this looks like a plain ResNet checkpoint "
                    "(use gctnet.load_plain_weights for that)")
        else:
            hint = ("; expected e.g. 'stem.conv1.0.alpha', 'layer1.0.conv1.1.weight', 'fc.weight' (official) or "
                    "'conv1.gct.alpha', 'layer1.0.conv1.weight' (gctnet)")
        raise KeyMismatchError("the checkpoint is not an official GCT-ResNet-50 (after converting official key "
                               f"names): {describe_mismatch(missing, unexpected)}{hint}")
    fc = state.get("fc.weight")
    if fc is not None and fc.shape[0] != num_classes:
        raise CheckpointError(
            f"the checkpoint's classifier has {fc.shape[0]} classes but num_classes={num_classes} was "
            f"requested; pass num_classes={fc.shape[0]}"
        )
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
              for k, v in state.items() if v.numel() != expected[k].numel()]
    if shapes:
        raise KeyMismatchError(f"the checkpoint does not fit the official GCT-ResNet-50: {describe_mismatch([], [], shapes)}")


def load_official_checkpoint(path_or_state_dict: Union[PathLike, Mapping[str, Any]], *,
                             num_classes: Optional[int] = None) -> ResNet:
    """Build the official GCT-ResNet-50 and load the authors' weights (or any checkpoint of it).

    Args:
        path_or_state_dict: a file written by the official ``main.py`` (dict with ``state_dict``,
            usually with the ``module.`` prefix of DDP), a bare state_dict in official or gctnet key
            names, or a path to any of these (``.pth``/``.pth.tar``/``.pt``/``.safetensors``).
        num_classes: classes of the checkpoint's classifier; default: the rows of its ``fc.weight``
            (1000 for ImageNet), an error when given and different.

    Returns:
        the model (a torchvision ``ResNet`` with :class:`OfficialBottleneck` blocks and 53 GCTs) in
        eval mode, on CPU, with the weights loaded.

    Raises:
        UnsafeCheckpointError: the file needs full unpickling (never done).
        CheckpointError: the checkpoint belongs to another architecture (lists missing/unexpected keys)
            or has another number of classes.
    """
    state = official_to_gctnet(path_or_state_dict)
    if num_classes is None:
        fc = state.get("fc.weight")
        num_classes = int(fc.shape[0]) if fc is not None and fc.dim() == 2 else 1000
    model = gct_resnet50_official(num_classes=num_classes)
    _check_compatible(model, state, num_classes)
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_official_checkpoint(model: nn.Module, path: PathLike, *, module_prefix: bool = True,
                             extra: Optional[Mapping[str, Any]] = None) -> None:
    """Save ``model`` (a :func:`gct_resnet50_official`) in the official pytorch/examples format.

    The file is ``{"state_dict": ..., "arch": "resnet50", **extra}`` with official key names, GCT
    tensors of shape [1, C, 1, 1] and (by default) the ``module.`` prefix the official ``main.py``
    expects when it resumes a DataParallel/DDP model.  ``extra`` may add plain values such as
    ``epoch``/``best_acc1``.  The result loads with ``torch.load(weights_only=True)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_official_checkpoint expects an nn.Module, got {type(model).__name__}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state = unwrap_state_dict(state)
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 1000
    with torch.device("meta"):  # only the key names and shapes are needed
        reference = gct_resnet50_official(num_classes=num_classes)
    _check_compatible(reference, state, reference.fc.out_features)
    payload: Dict[str, Any] = {"arch": "resnet50", **dict(extra or {})}
    payload["state_dict"] = gctnet_to_official(state, module_prefix=module_prefix)
    atomic_save(payload, path)
