"""The GCT module: parameters, validation, ``reset_parameters`` and ``extra_repr``; the math lives in
:mod:`gctnet.functional`."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from .functional import gct, validate_eps, validate_mode

__all__ = ["GCT"]

# Keep `gct` a leaf in torch.fx graphs: its shape checks and autograd function are not symbolically
# traceable, and the call node runs the same lean code when the traced GraphModule is executed.
torch.fx.wrap("gct")


class GCT(nn.Module):
    """Gated Channel Transformation (Yang et al., CVPR 2020).

    ``y = x * (1 + tanh(gamma * norm(alpha * embed(x)) + beta))`` per sample and channel.  With the
    default initialisation (alpha = 1, gamma = 0, beta = 0) the layer is exactly the identity.

    Args:
        channels: number of input channels C (> 0).
        eps: small positive constant of the embedding/normalisation (official default 1e-5).
        mode: ``"l2"`` (paper default) or ``"l1"``.
        after_relu: l1 mode only: the input is non-negative, skip the abs.
        device, dtype: factory kwargs for the parameters, as in ``torch.nn``.

    Shape: input (N, C, *spatial) with at least one spatial dim; output the same shape, dtype and
    memory format.  Parameters ``alpha``, ``gamma``, ``beta`` have shape (C,).
    """

    __constants__ = ["channels", "eps", "mode", "after_relu"]

    def __init__(
        self,
        channels: int,
        eps: float = 1e-5,
        mode: str = "l2",
        after_relu: bool = False,
        *,
        device: Optional[Any] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int):
            raise TypeError(f"GCT channels must be a positive int, got {type(channels).__name__} {channels!r}")
        if channels <= 0:
            raise ValueError(f"GCT channels must be > 0, got {channels}")
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"GCT parameters must be floating point, got dtype={dtype}")
        self.channels = channels
        self.eps = validate_eps(eps)
        self.mode = validate_mode(mode)
        self.after_relu = bool(after_relu)
        factory = {"device": device, "dtype": dtype}
        self.alpha = nn.Parameter(torch.empty(channels, **factory))
        self.gamma = nn.Parameter(torch.empty(channels, **factory))
        self.beta = nn.Parameter(torch.empty(channels, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """alpha = 1, gamma = 0, beta = 0: the identity (official initialisation)."""
        with torch.no_grad():
            nn.init.ones_(self.alpha)
            nn.init.zeros_(self.gamma)
            nn.init.zeros_(self.beta)

    def forward(self, x: Tensor) -> Tensor:
        return gct(x, self.alpha, self.gamma, self.beta, self.eps, self.mode, self.after_relu)

    def extra_repr(self) -> str:
        s = f"{self.channels}, eps={self.eps:g}, mode={self.mode!r}"
        if self.mode == "l1" and self.after_relu:
            s += ", after_relu=True"
        return s

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # Accept the official checkpoint's (1, C, 1, 1) parameter tensors.
        for name in ("alpha", "gamma", "beta"):
            key = prefix + name
            value = state_dict.get(key)
            if isinstance(value, Tensor) and value.dim() > 1 and value.numel() == self.channels:
                state_dict[key] = value.reshape(self.channels)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
