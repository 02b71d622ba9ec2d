"""Optimizer parameter groups with the paper's weight-decay rule for GCT.

The paper (and the official code) trains with weight decay on every parameter except the GCT ``beta``:
decaying beta pulls the gates towards ``1 + tanh(0) = 1`` and fights the learned channel competition.
The official PyTorch code implements this with ``"beta" in name``, which also exempts any unrelated
parameter called beta; here GCT parameters are found by module type (``isinstance(m, gctnet.GCT)``).

Rules (``policy`` governs GCT parameters, ``norm_bias_decay`` all other parameters):

============  ===============  ==================  =====================================================
policy        GCT ``beta``     GCT alpha, gamma    other parameters
============  ===============  ==================  =====================================================
``"paper"``   no decay         decay               decay; with ``norm_bias_decay=False`` no decay for
``"none"``    no decay         no decay            1-D tensors (biases, norm-layer weights/biases),
``"all"``     decay            decay               the timm convention
============  ===============  ==================  =====================================================

``norm_bias_decay=True`` (default) follows the official ``main.py``, which decays every parameter except
beta (biases and BatchNorm affine parameters included).  Frozen parameters (``requires_grad=False``) are
not put in any group.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional

import torch
from torch import nn

from .layers import GCT

__all__ = ["POLICIES", "param_groups", "no_weight_decay", "optimizer_step"]

POLICIES = ("paper", "none", "all")
_GCT_NO_DECAY = {"paper": frozenset({"beta"}), "none": frozenset({"alpha", "gamma", "beta"}), "all": frozenset()}


def _check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(
            f"weight-decay policy must be one of {POLICIES} ('paper': no decay on GCT beta only; 'none': no "
            f"decay on any GCT parameter; 'all': decay every GCT parameter), got {policy!r}"
        )
    return policy


def _check_weight_decay(weight_decay: float) -> float:
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
        raise TypeError(f"weight_decay must be a float >= 0, got {type(weight_decay).__name__} {weight_decay!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite float >= 0, got {weight_decay!r}")
    return float(weight_decay)


def _decay_flags(model: nn.Module, policy: str, norm_bias_decay: bool) -> Iterator[tuple[str, nn.Parameter, bool]]:
    """(full name, parameter, decayed?) for every parameter of ``model`` (each tensor once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    gct_no_decay = _GCT_NO_DECAY[_check_policy(policy)]
    gct_param_ids: dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, GCT):
            for pname, p in module.named_parameters(recurse=False):
                gct_param_ids[id(p)] = pname
    for name, p in model.named_parameters():
        gct_name = gct_param_ids.get(id(p))
        if gct_name is not None:
            decay = gct_name not in gct_no_decay
        else:
            decay = norm_bias_decay or p.ndim > 1
        yield name, p, decay


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    policy: str = "paper",
    norm_bias_decay: bool = True,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: ``[{"params", "param_names", "weight_decay"}, ...]``.

    The first group holds the decayed parameters (``weight_decay``), the second the others (0.0); a
    group with no parameter is left out.  Every trainable parameter appears exactly once; frozen ones
    are left out.  See the module docstring for ``policy`` and ``norm_bias_decay``.

    Example::

        opt = torch.optim.SGD(gctnet.param_groups(model, 1e-4), lr=0.1, momentum=0.9, nesterov=True)
    """
    wd = _check_weight_decay(weight_decay)
    decay: dict[str, list] = {"params": [], "param_names": []}
    no_decay: dict[str, list] = {"params": [], "param_names": []}
    for name, p, decayed in _decay_flags(model, policy, norm_bias_decay):
        if not p.requires_grad:
            continue
        group = decay if decayed else no_decay
        group["params"].append(p)
        group["param_names"].append(name)
    groups = [{**decay, "weight_decay": wd}, {**no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def no_weight_decay(model: nn.Module, policy: str = "paper", *, norm_bias_decay: bool = True) -> set[str]:
    """Full names of the parameters that get no weight decay under ``policy`` (frozen ones included),
    e.g. for timm's ``model.no_weight_decay()`` hook or mmengine ``paramwise_cfg.custom_keys``."""
    return {name for name, _, decayed in _decay_flags(model, policy, norm_bias_decay) if not decayed}


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scaler: Optional[torch.amp.GradScaler] = None) -> None:
    """One update from ``loss``: clear the gradients, backpropagate, step ``optimizer``.

    With a gradient ``scaler`` (float16 autocast) the loss is scaled for backward and the scaler steps
    the optimizer and updates its scale.
    """
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
