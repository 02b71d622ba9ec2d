"""Register an architecture's ``[<attn>_|gct_]<arch>[_block]`` variants in one call.

``gct_`` variants are the plain model passed through :func:`gctnet.surgery.apply_gct` (GCT before every
conv, or one per residual block for ``_block``); the surgery is never duplicated here.  ``<attn>_``
variants (``se_``, ``eca_``, ``cbam_``, ... one per key of :data:`gctnet.attention.ATTENTION_KEYS`) need
the architecture's own builder with the attention in its blocks (:mod:`gctnet.models.attention`).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional

from torch import nn

from ..attention import ATTENTION_KEYS
from .registry import register_model

__all__ = ["register_variants", "gct_builder"]

Builder = Callable[..., nn.Module]


def gct_builder(build: Builder, placement: str, name: str) -> Builder:
    """A builder that builds the plain model with ``build`` and inserts GCT with ``placement``.

    The returned builder takes the plain builder's keyword arguments plus ``gct_kwargs`` (a mapping
    forwarded to :func:`gctnet.surgery.apply_gct`, e.g. ``{"mode": "l1"}`` or ``{"skip": [...]}``).
    """

    def fn(*, gct_kwargs: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> nn.Module:
        from ..surgery import apply_gct  # imported lazily: surgery is heavier and optional for plain models

        if gct_kwargs is not None and not isinstance(gct_kwargs, Mapping):
            raise TypeError(f"gct_kwargs must be a mapping of apply_gct options, got {type(gct_kwargs).__name__}")
        options = dict(gct_kwargs or {})
        if "placement" in options:
            raise ValueError(
                f"gct_kwargs must not set 'placement' for {name!r} (the name fixes it to {placement!r}); "
                "use the other gct_ variant instead"
            )
        return apply_gct(build(**kwargs), placement=placement, **options)

    where = "before every convolution" if placement == "all" else "once per residual block"
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"``{name}``: the plain model ({getattr(build, '__name__', 'builder')}) with GCT {where}."
    return fn


def register_variants(
    arch: str,
    build: Builder,
    *,
    family: str,
    cfg: Mapping[str, Any],
    defaults: Optional[Mapping[str, Any]] = None,
    attention: Optional[Callable[[str], Builder]] = None,
    block: bool = False,
) -> Dict[str, Builder]:
    """Register ``arch``, ``gct_<arch>``, and optionally ``<attn>_<arch>`` and ``gct_<arch>_block``.

    Args:
        arch: base name, e.g. ``"resnet20"``.
        build: plain builder ``build(num_classes=..., in_chans=..., **kw) -> nn.Module``.
        family: registry family tag shared by all variants.
        cfg: model config (input_size, mean, std, first_conv, classifier); copied per variant.
        defaults: default builder arguments (num_classes, in_chans).
        attention: ``key -> builder`` of the block-attention variants: when given, ``<key>_<arch>`` is
            registered for every key of :data:`~gctnet.attention.ATTENTION_KEYS` (``se``, ``eca``, ...),
            with the entry's ``attention`` set to the key.
        block: also register ``gct_<arch>_block`` (one GCT per residual block).

    Returns:
        ``{name: builder}`` of what was registered.
    """
    builders: Dict[str, Builder] = {arch: build, f"gct_{arch}": gct_builder(build, "all", f"gct_{arch}")}
    attentions: Dict[str, str] = {}
    if attention is not None:
        for key in ATTENTION_KEYS:
            builders[f"{key}_{arch}"] = attention(key)
            attentions[f"{key}_{arch}"] = key
    if block:
        builders[f"gct_{arch}_block"] = gct_builder(build, "block", f"gct_{arch}_block")
    for name, fn in builders.items():
        register_model(name, fn, defaults=dict(defaults or {}), cfg=dict(cfg), family=family,
                       attention=attentions.get(name, ""))
    return builders
