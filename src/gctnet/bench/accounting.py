"""Cost accounting of a model: parameters, MACs with attention counted, GCT activation traffic, saved memory.

Stock counters (fvcore, ptflops, thop, ``torch.utils.flop_counter.FlopCounterMode``) report 0 FLOPs for
GCT and for the pooling and scaling of every channel-attention module, which hides their real cost.
:func:`model_info` counts:

* ``macs``: multiply-accumulates per image = conv/linear MACs (``FlopCounterMode`` FLOPs / 2, on an
  eval-mode forward) **plus** ``attn_macs``.
* ``attn_macs``: analytic, **2 MACs per input element of every channel-attention module**
  (:func:`gctnet.attention.attention_modules`: GCT, SE and timm's attention layers) -- one for the
  reduction over space (GCT's sum of squares, SE's/ECA's average pool) and one for the scaling
  ``x * gate``; the O(N*C) per-channel math is ignored, and the convs/linears inside a module (SE's two
  FC convs, ECA's 1-D conv, CBAM's 7x7 conv) are in the conv/linear part.  The same rule for every
  module, so GCT and its rivals are charged alike.
* ``gct_macs``: the GCT part of ``attn_macs`` (``2 * gct_activation_elements``).  Anything
  ``FlopCounterMode`` might attribute to GCT modules themselves is removed first, so nothing is counted
  twice.
* ``attn_params``: parameters of the attention modules (``gct_params`` for GCT models).
* ``gct_activation_elements``: elements per image that GCT layers read (their inputs, ``C * H * W``
  each); each is also written once by the scaling.  This, not the MACs, is what GCT costs on real
  hardware: it is memory-bound.
* ``saved_bytes_per_image``: bytes autograd keeps for backward during a train-mode forward, parameters
  and buffers excluded (:func:`gctnet.bench.memory.saved_tensor_bytes`), divided by the batch size.

Like every standard counter, element-wise work outside attention (BN, ReLU, pooling, residual additions)
is not included in ``macs``.
"""

from __future__ import annotations

from collections.abc import Mapping as _MappingABC
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..layers import GCT
from .memory import saved_tensor_bytes

__all__ = ["ModelInfo", "model_info", "compare_models", "format_table", "parse_input_size", "DEFAULT_INPUT_SIZE"]

DEFAULT_INPUT_SIZE: Tuple[int, int, int] = (3, 224, 224)
GCT_MACS_PER_ELEMENT = 2  # sum of squares + scaling
ATTN_MACS_PER_ELEMENT = 2  # spatial reduction + scaling, for every attention module


@dataclass(frozen=True)
class ModelInfo(_MappingABC):
    """Costs of one model at one input size (all per image).  Also readable as a mapping (``info["macs"]``)."""

    name: str
    input_size: Tuple[int, ...]
    params: int
    gct_params: int
    gct_modules: int
    macs: int  # conv/linear MACs + attn_macs
    gct_macs: int
    gct_activation_elements: int
    saved_bytes_per_image: float
    attn_params: int = 0  # parameters of the channel-attention modules (GCT, SE, timm's layers)
    attn_macs: int = 0  # element-wise attention MACs (gct_macs included)

    # Mapping protocol, so the result is also usable where a dict is expected
    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    @classmethod
    def _keys(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> Dict[str, Any]:
        """A plain ``dict`` (JSON-serialisable)."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


def parse_input_size(value: Union[str, Sequence[int]]) -> Tuple[int, ...]:
    """``"3,224,224"`` or ``(3, 224, 224)`` -> ``(3, 224, 224)``; (C, *spatial) with >= 1 spatial dim."""
    if isinstance(value, str):
        parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
        try:
            size = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"input size must be comma-separated integers like 3,224,224, got {value!r}") from None
    else:
        size = tuple(value)
    if len(size) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"input size must be (C, H, W) (or (C, *spatial)) of positive ints, got {value!r}")
    return size


def _build(
    model_or_name: Union[str, nn.Module],
    input_size: Optional[Sequence[int]],
    num_classes: Optional[int],
    model_kwargs: Optional[Mapping[str, Any]],
):
    if isinstance(model_or_name, nn.Module):
        if num_classes is not None or model_kwargs:
            raise ValueError("num_classes and model_kwargs only apply when a model name is given, not a built model")
        size = parse_input_size(input_size if input_size is not None else DEFAULT_INPUT_SIZE)
        name = getattr(model_or_name, "gctnet_name", type(model_or_name).__name__)
        return model_or_name, size, name
    if not isinstance(model_or_name, str):
        raise TypeError(f"expected a model name or an nn.Module, got {type(model_or_name).__name__}")
    from ..models import create_model, get_model_entry

    entry = get_model_entry(model_or_name)  # clear error with close names for a typo
    size = parse_input_size(input_size if input_size is not None else entry.cfg.get("input_size", DEFAULT_INPUT_SIZE))
    model = create_model(model_or_name, num_classes=num_classes, in_chans=size[0], **dict(model_kwargs or {}))
    return model, size, model_or_name


def _eval_counts(model: nn.Module, x: torch.Tensor, gct_named: List[Tuple[str, GCT]],
                 attn_named: List[Tuple[str, nn.Module]]) -> Tuple[int, int, int]:
    """One eval forward: (conv/linear MACs, GCT input elements, attention input elements) for the batch.

    MACs are ``FlopCounterMode`` FLOPs / 2, minus anything it attributes to GCT modules (so a future
    GCT kernel with a registered flop formula is not counted twice); input elements come from forward
    pre-hooks.
    """
    elements = {"gct": 0, "attn": 0}

    def hook(kind: str):
        def count(module: nn.Module, args: Tuple[Any, ...]) -> None:
            elements[kind] += args[0].numel()
        return count

    handles = [m.register_forward_pre_hook(hook("gct")) for _, m in gct_named]
    handles += [m.register_forward_pre_hook(hook("attn")) for _, m in attn_named]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
    counts = counter.get_flop_counts()
    total = sum(counts.get("Global", {}).values())
    root = type(model).__name__
    inside_gct = sum(sum(counts.get(f"{root}.{n}", {}).values()) for n, _ in gct_named)
    return (total - inside_gct) // 2, elements["gct"], elements["attn"]


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Saved-for-backward bytes of a train-mode forward; BN running statistics are restored afterwards."""
    state = {k: v.detach().clone() for k, v in model.named_buffers()}
    model.train()
    try:
        out, saved = saved_tensor_bytes(lambda: model(x), exclude=[model])
        del out
    except ValueError as exc:
        if "Expected more than 1 value per channel" in str(exc):
            raise ValueError(
                f"train-mode forward failed with batch_size={x.shape[0]} (a BatchNorm sees one value per "
                "channel); use batch_size >= 2 or a larger input size"
            ) from exc
        raise
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(state[k])
    return saved.total


def model_info(
    model_or_name: Union[str, nn.Module],
    input_size: Optional[Sequence[int]] = None,
    *,
    batch_size: int = 1,
    num_classes: Optional[int] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
) -> ModelInfo:
    """Parameters, GCT parameters, MACs (GCT counted), GCT activation elements and saved bytes per image.

    Args:
        model_or_name: a registered model name (built with ``in_chans=input_size[0]``) or a built module
            (run on its current device/dtype; its train/eval mode and BN statistics are left unchanged).
        input_size: ``(C, H, W)`` of one image; default: the registered model's ``cfg["input_size"]``,
            else ``(3, 224, 224)``.
        batch_size: images per forward (results are per image); the saved-bytes forward runs in train
            mode, where BatchNorm needs more than one value per channel.
        num_classes: classifier size when building by name (default: the entry's default).
        model_kwargs: extra builder arguments when building by name, e.g.
            ``{"gct_kwargs": {"checkpoint": True}}`` for a ``gct_`` model with recomputed GCT outputs.

    See the module docstring for the exact counting conventions.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    model, size, name = _build(model_or_name, input_size, num_classes, model_kwargs)
    try:
        p = next(model.parameters())
        device, dtype = p.device, p.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.get_default_dtype()
    x = torch.randn(batch_size, *size, device=device, dtype=dtype)

    from ..attention import attention_modules, attention_params

    gct_named = [(n, m) for n, m in model.named_modules() if isinstance(m, GCT)]
    attn_named = attention_modules(model)
    was_training = model.training
    try:
        model.eval()
        conv_macs, gct_elements, attn_elements = _eval_counts(model, x, gct_named, attn_named)
        saved = _saved_bytes(model, x)
    finally:
        model.train(was_training)

    elements_per_image = gct_elements // batch_size
    gct_macs = GCT_MACS_PER_ELEMENT * elements_per_image
    attn_macs = ATTN_MACS_PER_ELEMENT * (attn_elements // batch_size)
    return ModelInfo(
        name=name,
        input_size=tuple(size),
        params=sum(p.numel() for p in model.parameters()),
        gct_params=sum(p.numel() for _, m in gct_named for p in m.parameters(recurse=False)),
        gct_modules=len(gct_named),
        macs=conv_macs // batch_size + attn_macs,
        gct_macs=gct_macs,
        gct_activation_elements=elements_per_image,
        saved_bytes_per_image=saved / batch_size,
        attn_params=attention_params(model),
        attn_macs=attn_macs,
    )


def compare_models(
    names: Sequence[Union[str, nn.Module]],
    input_size: Optional[Sequence[int]] = None,
    **kwargs: Any,
) -> List[ModelInfo]:
    """:func:`model_info` for each model (same ``input_size`` and keyword arguments, e.g. ``batch_size``)."""
    if isinstance(names, (str, nn.Module)):
        names = [names]
    if not names:
        raise ValueError("compare_models needs at least one model name")
    return [model_info(n, input_size, **kwargs) for n in names]


def _pct(value: float, base: float) -> str:
    if base == 0:
        return "-" if value == 0 else "n/a"
    return f"{100.0 * (value - base) / base:+.2f}%"


def format_table(rows: Sequence[ModelInfo], markdown: bool = False) -> str:
    """A text (aligned) or Markdown table of :class:`ModelInfo` rows; percentages are versus the first row."""
    if not rows:
        raise ValueError("format_table needs at least one row")
    base = rows[0]
    header = [
        "model", "input", "params", "attn params", "GCTs", "GMACs", "attn MMACs",
        "GCT act. (M elem)", "saved MB/img", "params vs 1st", "MACs vs 1st", "saved vs 1st",
    ]  # fmt: skip
    table = [header]
    for r in rows:
        table.append([
            r.name,
            "x".join(str(s) for s in r.input_size),
            f"{r.params:,}",
            f"{r.attn_params:,}",
            str(r.gct_modules),
            f"{r.macs / 1e9:.3f}",
            f"{r.attn_macs / 1e6:.2f}",
            f"{r.gct_activation_elements / 1e6:.2f}",
            f"{r.saved_bytes_per_image / 2**20:.1f}",
            _pct(r.params, base.params),
            _pct(r.macs, base.macs),
            _pct(r.saved_bytes_per_image, base.saved_bytes_per_image),
        ])  # fmt: skip
    if len(rows) == 1:  # comparisons with itself say nothing
        table = [row[:-3] for row in table]
    notes = (
        "MACs = conv/linear MACs (FlopCounterMode FLOPs / 2) + attention MACs "
        f"({ATTN_MACS_PER_ELEMENT} per input element of every attention module -- GCT, SE, timm's layers: "
        "reduction over space + scaling); per image."
    )
    if markdown:
        align = ["---"] + ["---:"] * (len(table[0]) - 1)
        lines = ["| " + " | ".join(row) + " |" for row in table]
        lines.insert(1, "| " + " | ".join(align) + " |")
        return "\n".join(lines) + "\n\n" + notes
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    out = []
    for j, row in enumerate(table):
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        out.append("  ".join(cells).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out) + "\n" + notes
