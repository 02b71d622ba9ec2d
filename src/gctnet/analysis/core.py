"""``analyze``: what the GCT layers of a model (or of several seeds of one model) learned.

Sources may be models, gctnet run folders, gctnet checkpoints (``last.pt``/``best.pt``) or the
official GCT-ResNet-50 checkpoint; see :func:`analyze`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from .stats import GateStats, LayerStats, depth_trend, gate_statistics, gct_statistics, stage_summary

__all__ = ["Analysis", "analyze", "load_source"]

PathLike = Union[str, "os.PathLike[str]"]
Source = Union[nn.Module, PathLike]


@dataclass
class Analysis:
    """Result of :func:`analyze`; :func:`gctnet.analysis.write_analysis` turns it into files."""

    source: str
    models: int
    layers: list[LayerStats]
    gates: list[GateStats] = field(default_factory=list)
    gate_note: str = ""  # which data the gates were measured on, or why not
    trend: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # what the figures' titles call it, e.g. "gct_resnet20, seeds 0, 1 pooled"

    @property
    def subject(self) -> str:
        """The model (and the seeds pooled) that the figure titles name."""
        if self.name:
            return self.name
        return self.source if self.models == 1 else f"{self.models} models pooled"

    @property
    def conclusion(self) -> str:
        """One sentence, computed from the data, on the paper's gamma-vs-depth finding."""
        from .report import conclusion

        return conclusion(self.trend)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "models": self.models,
            "gct_layers": len(self.layers),
            "conclusion": self.conclusion,
            "trend": self.trend,
            "stages": stage_summary(self.layers),
            "gate_note": self.gate_note,
            "layers": [l.to_dict() for l in self.layers],
            "gates": [g.to_dict() for g in self.gates],
        }


# --------------------------------------------------------------------------------------------------
# loading models and their data
# --------------------------------------------------------------------------------------------------
@dataclass
class _Loaded:
    model: nn.Module
    label: str
    kind: str  # "module", "run", "checkpoint", "official"
    config: dict[str, Any] = field(default_factory=dict)  # the training config of gctnet runs


def load_source(source: Source) -> _Loaded:
    """Model behind ``source``: an ``nn.Module`` (used as is), a gctnet run folder or checkpoint file,
    or the official GCT-ResNet-50 checkpoint (any file read once by :mod:`gctnet.checkpoints`)."""
    if isinstance(source, nn.Module):
        return _Loaded(source, type(source).__name__, "module")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "analyze takes an nn.Module, a gctnet run folder, a checkpoint file or a list of these; "
            f"got {type(source).__name__}"
        )
    from ..checkpoints import read
    from ..errors import KeyMismatchError
    from ..models.official import load_official_checkpoint
    from ..train.checkpoint import is_gctnet_checkpoint, model_from_checkpoint, resolve_checkpoint

    path = Path(source)
    obj = read(resolve_checkpoint(path, "last"))
    if is_gctnet_checkpoint(obj):
        return _Loaded(model_from_checkpoint(obj), str(path), "run" if path.is_dir() else "checkpoint",
                       dict(obj.get("config") or {}))
    try:
        return _Loaded(load_official_checkpoint(obj), str(path), "official")
    except KeyMismatchError as exc:
        raise KeyMismatchError(f"{path} is neither a gctnet checkpoint nor one of the official GCT-ResNet-50 "
                               f"({exc})") from None


def _dataset_from_config(config: dict[str, Any]) -> tuple[Optional[Any], str]:
    """The validation set a gctnet run was trained with, or (None, why not) when it is not available."""
    spec = config.get("data")
    if not spec:
        return None, "the run's config names no dataset"
    try:
        return _load_val(str(spec), config.get("data_dir"), config.get("image_size"))
    except (FileNotFoundError, OSError) as exc:
        return None, f"the run's dataset {spec!r} is not available here ({exc})"


def _load_val(spec: str, data_dir: Optional[PathLike], image_size: Optional[int] = None) -> tuple[Any, str]:
    from ..data import load_dataset

    return load_dataset(spec, split="val", data_dir=data_dir, image_size=image_size), f"validation split of {spec}"


# --------------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------------
def analyze(
    source: Union[Source, Sequence[Source]],
    *,
    data: Any = None,
    data_dir: Optional[PathLike] = None,
    batches: int = 1,
    batch_size: int = 256,
    device: Optional[Union[str, torch.device]] = None,
    out: Optional[PathLike] = None,
    name: Optional[str] = None,
) -> Analysis:
    """Statistics of every GCT layer's alpha/gamma/beta and (with data) of the gate it applies.

    Args:
        source: a model containing :class:`gctnet.GCT`, a gctnet run folder, a gctnet checkpoint, the
            official GCT-ResNet-50 checkpoint, or a list of these with the same GCT layers (seeds of one
            architecture: every layer's statistics are pooled over their channels).
        data: inputs for the gate statistics: ``None`` (default) uses the validation split of the dataset
            a gctnet run was trained on if it is available here, and skips the gates otherwise and for other
            sources; ``False`` skips them; a dataset spec such as ``"fashion_mnist"`` or
            ``"imagefolder:PATH"`` (its validation split; an error if it cannot be loaded);
            or a tensor, ``Dataset`` or iterable of batches (see :func:`gctnet.analysis.collect_batches`).
        data_dir: where to find the dataset named by a spec.
        batches, batch_size: how many images the gate statistics use (``batches * batch_size``, a seeded
            random sample of a dataset).
        device: where to run the models for the gate statistics (default: where their parameters are).
        out: if given, write ``analysis.json``, ``analysis.md`` and the figures there.
        name: what the figure titles call the model, e.g. ``"gct_resnet20, seeds 0, 1 pooled"`` (default:
            the source, or the number of models pooled).
    """
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    if not sources:
        raise ValueError("analyze needs at least one source")
    loaded = [load_source(s) for s in sources]
    models = [l.model for l in loaded]
    label = loaded[0].label if len(loaded) == 1 else f"{len(loaded)} models: " + ", ".join(l.label for l in loaded)
    layers = gct_statistics(models)

    gates: list[GateStats] = []
    dataset: Any = None
    if data is False:
        desc = "not requested"
    elif data is None:
        dataset, desc = _dataset_from_config(loaded[0].config) if loaded[0].config else (None, "no data given")
    elif isinstance(data, str):
        dataset, desc = _load_val(data, data_dir)
    else:
        dataset, desc = data, f"{type(data).__name__} given by the caller"
    if dataset is not None:
        gates = gate_statistics(models, dataset, batches=batches, batch_size=batch_size, device=device)
        note = f"measured on {gates[0].samples if gates else 0} images ({desc})"
    else:
        note = f"not measured: {desc}"

    result = Analysis(
        source=label, models=len(models), layers=layers, gates=gates, gate_note=note, trend=depth_trend(layers),
        name=name or "",
    )
    if out is not None:
        from .report import write_analysis

        write_analysis(result, out)
    return result
