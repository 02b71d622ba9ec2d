"""Numbers behind the analysis: per-layer statistics of the GCT parameters and of the gate.

Everything here works on plain ``nn.Module`` objects that contain :class:`gctnet.GCT` layers; several
models of the same architecture (for example the seeds of one comparison) can be pooled: each layer's
statistics are then computed over the channels of all models together.

* :func:`gct_statistics` - alpha, gamma and beta per GCT layer (mean, std, min, quartiles, max, share of
  gamma > 0 and < 0), in network order, with the stage/block derived from the module name.
* :func:`gate_statistics` - the gate ``1 + tanh(z)`` that each GCT applies, measured with forward
  pre-hooks on real inputs: mean, spread, share of channels amplified (gate > 1) and suppressed (< 1).
* :func:`depth_trend` - mean gamma of the first vs the last third of the layers, compared with the
  paper's finding (gamma < 0 in shallow layers, > 0 in deep layers).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..checkpoints import WRAPPER_PREFIXES
from ..errors import SettingsError
from ..functional import gct_gate
from ..layers import GCT
from ..surgery import gct_modules

__all__ = [
    "Summary",
    "LayerStats",
    "GateStats",
    "find_gct_modules",
    "stage_and_block",
    "gct_statistics",
    "gate_statistics",
    "collect_batches",
    "depth_trend",
    "depth_difference",
    "stage_summary",
]

ModelOrModels = Union[nn.Module, Sequence[nn.Module]]

# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------
@dataclass
class Summary:
    """Distribution summary of a set of values (population std; quartiles by linear interpolation,
    as ``numpy.percentile``'s default)."""

    mean: float
    std: float
    min: float
    q1: float
    median: float
    q3: float
    max: float

    @classmethod
    def of(cls, values: Tensor) -> "Summary":
        v = values.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
        if v.numel() == 0:
            nan = float("nan")
            return cls(nan, nan, nan, nan, nan, nan, nan)
        q = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
        return cls(
            mean=v.mean().item(),
            std=v.std(correction=0).item(),
            min=v.min().item(),
            q1=q[0].item(),
            median=q[1].item(),
            q3=q[2].item(),
            max=v.max().item(),
        )


def _as_models(model_or_models: ModelOrModels) -> list[nn.Module]:
    if isinstance(model_or_models, nn.Module):
        return [model_or_models]
    models = list(model_or_models)
    if not models:
        raise ValueError("expected an nn.Module or a non-empty sequence of nn.Modules, got an empty sequence")
    for m in models:
        if not isinstance(m, nn.Module):
            raise TypeError(f"expected nn.Module objects, got {type(m).__name__}")
    return models


def _strip_wrappers(name: str) -> str:
    """A module name without the prefixes of wrapped models (:data:`gctnet.checkpoints.WRAPPER_PREFIXES`)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def find_gct_modules(model: nn.Module) -> list[tuple[str, GCT]]:
    """``(name, GCT)`` pairs of ``model`` in network order; :class:`SettingsError` when there are none."""
    pairs = list(gct_modules(model))
    if not pairs:
        raise SettingsError(
            f"{type(model).__name__} contains no gctnet.GCT modules; the analysis needs a model with GCT "
            "layers (e.g. create_model('gct_resnet20') or gctnet.apply_gct(model))"
        )
    return pairs


def _common_layers(models: list[nn.Module]) -> list[tuple[str, list[GCT]]]:
    """Layer name -> the GCT module of every model; the models must have the same GCT layers."""
    per_model = [find_gct_modules(m) for m in models]
    names = [_strip_wrappers(n) for n, _ in per_model[0]]
    for i, pairs in enumerate(per_model[1:], start=1):
        other = [_strip_wrappers(n) for n, _ in pairs]
        if other != names:
            raise SettingsError(
                "models to pool must have the same GCT layers in the same order; model 0 has "
                f"{len(names)} ({', '.join(names[:3])}...), model {i} has {len(other)} "
                f"({', '.join(other[:3])}...)"
            )
        for (n, m), m0 in zip(pairs, (p[1] for p in per_model[0])):
            if m.channels != m0.channels:
                raise SettingsError(f"GCT layer {n!r} has {m0.channels} channels in model 0 but {m.channels} in model {i}")
    return [(name, [pairs[j][1] for pairs in per_model]) for j, name in enumerate(names)]


_STAGE_RE = re.compile(r"^(layer|stage|res|block)\d+$", re.IGNORECASE)


def _staged(parts: list[str]) -> Optional[tuple[str, str]]:
    if len(parts) >= 2 and parts[1].isdigit() and not parts[0].isdigit():
        return parts[0], f"{parts[0]}.{parts[1]}"
    if len(parts) >= 2 and _STAGE_RE.match(parts[0]):  # a stage without numbered blocks
        return parts[0], parts[0]
    return None


def stage_and_block(names: Sequence[str]) -> list[tuple[str, str]]:
    """Stage and block of each GCT, from module names in network order.

    A name inside a numbered container is staged by it: ``layer2.1.conv1.gct`` -> (``layer2``,
    ``layer2.1``); the official ``layer1.0.downsample.0`` -> (``layer1``, ``layer1.0``).  Other names
    are ``stem`` before the first staged layer and ``head`` after the last one (``conv1.gct``,
    ``stem.conv1.0`` -> ``stem``); in a model without numbered containers the stage is the top-level
    child (``Mixed_5b.branch1x1.conv.gct`` -> ``Mixed_5b``).
    """
    parts = [_strip_wrappers(n).split(".") for n in names]
    staged = [_staged(p) for p in parts]
    idx = [i for i, s in enumerate(staged) if s is not None]
    out: list[tuple[str, str]] = []
    for i, (p, s) in enumerate(zip(parts, staged)):
        if s is not None:
            out.append(s)
            continue
        block = ".".join(p[:-1]) if len(p) > 1 else p[0]
        if not idx:
            out.append((p[0], block))
        elif i < idx[0]:
            out.append(("stem", block))
        elif i > idx[-1]:
            out.append(("head", block))
        else:
            out.append((p[0], block))
    return out


# --------------------------------------------------------------------------------------------------
# parameter statistics
# --------------------------------------------------------------------------------------------------
@dataclass
class LayerStats:
    """Statistics of one GCT layer's parameters (pooled over ``models`` models)."""

    index: int  # depth index: 0 = first GCT in network order
    name: str
    stage: str
    block: str
    channels: int
    models: int
    alpha: Summary
    gamma: Summary
    beta: Summary
    gamma_positive: float  # share of channels with gamma > 0
    gamma_negative: float  # share of channels with gamma < 0
    # the raw values (models x channels, float64, CPU) for plots; not written to JSON
    values: dict[str, Tensor] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("values")
        return d


def gct_statistics(model_or_models: ModelOrModels) -> list[LayerStats]:
    """Per-layer statistics of alpha, gamma and beta for every GCT, in network order.

    ``model_or_models`` is a model or a sequence of models with the same GCT layers (seeds of one
    architecture): each layer's statistics are then computed over the channels of all models.
    """
    models = _as_models(model_or_models)
    layers = _common_layers(models)
    stages = stage_and_block([name for name, _ in layers])
    out = []
    for index, ((name, mods), (stage, block)) in enumerate(zip(layers, stages)):
        values = {
            p: torch.stack([getattr(m, p).detach().to("cpu", torch.float64).reshape(-1) for m in mods])
            for p in ("alpha", "gamma", "beta")
        }
        gamma = values["gamma"]
        out.append(
            LayerStats(
                index=index,
                name=name,
                stage=stage,
                block=block,
                channels=mods[0].channels,
                models=len(mods),
                alpha=Summary.of(values["alpha"]),
                gamma=Summary.of(gamma),
                beta=Summary.of(values["beta"]),
                gamma_positive=(gamma > 0).double().mean().item(),
                gamma_negative=(gamma < 0).double().mean().item(),
                values=values,
            )
        )
    return out


# --------------------------------------------------------------------------------------------------
# gate statistics
# --------------------------------------------------------------------------------------------------
@dataclass
class GateStats:
    """The gate ``1 + tanh(z)`` (range (0, 2)) of one GCT layer, measured on real inputs."""

    index: int
    name: str
    stage: str
    channels: int
    samples: int  # images seen (per model)
    mean: float  # over images and channels
    std: float  # over images and channels
    min: float
    max: float
    channel_std: float  # std over channels of the per-channel mean gate (how differently channels are gated)
    sample_std: float  # mean over channels of the std over images (how much the gate depends on the input)
    amplified: float  # share of (image, channel) gate values > 1
    suppressed: float  # share of (image, channel) gate values < 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _GateAccumulator:
    """Streaming sums of one layer's gate, per (model, channel), in float64."""

    def __init__(self, n_models: int, channels: int) -> None:
        shape = (n_models, channels)
        self.count = torch.zeros(n_models, dtype=torch.float64)
        self.sum = torch.zeros(shape, dtype=torch.float64)
        self.sumsq = torch.zeros(shape, dtype=torch.float64)
        self.above = torch.zeros(shape, dtype=torch.float64)
        self.below = torch.zeros(shape, dtype=torch.float64)
        self.min = math.inf
        self.max = -math.inf

    def add(self, model_index: int, gate: Tensor) -> None:
        g = gate.detach().to("cpu", torch.float64)
        self.count[model_index] += g.shape[0]
        self.sum[model_index] += g.sum(0)
        self.sumsq[model_index] += g.square().sum(0)
        self.above[model_index] += (g > 1).double().sum(0)
        self.below[model_index] += (g < 1).double().sum(0)
        if g.numel():
            self.min = min(self.min, g.min().item())
            self.max = max(self.max, g.max().item())

    def result(self, index: int, name: str, stage: str) -> Optional[GateStats]:
        if not bool((self.count > 0).all()):
            return None  # the layer did not run for some model (e.g. an auxiliary head in eval mode)
        n = self.count[:, None]
        total = self.count.sum().item() * self.sum.shape[1]
        ch_mean = self.sum / n
        ch_var = (self.sumsq / n - ch_mean.square()).clamp_min(0)
        mean = self.sum.sum().item() / total
        var = max(self.sumsq.sum().item() / total - mean * mean, 0.0)
        return GateStats(
            index=index,
            name=name,
            stage=stage,
            channels=self.sum.shape[1],
            samples=int(self.count[0].item()),
            mean=mean,
            std=math.sqrt(var),
            min=self.min,
            max=self.max,
            channel_std=ch_mean.std(correction=0).item(),
            sample_std=ch_var.sqrt().mean().item(),
            amplified=self.above.sum().item() / total,
            suppressed=self.below.sum().item() / total,
        )


def collect_batches(
    data: Any, *, batches: int = 1, batch_size: int = 256, seed: int = 0
) -> list[Tensor]:
    """Up to ``batches`` input batches from ``data``.

    ``data`` may be a tensor (one batch, N x C x ...), a ``torch.utils.data.Dataset`` of ``(image,
    label)`` pairs (a seeded random sample of ``batches * batch_size`` images is drawn, so the result
    is reproducible and not biased by the file order) or any iterable of batches (a DataLoader): each
    batch a tensor, an ``(inputs, targets, ...)`` tuple/list or a mapping with ``"image"``/``"input"``.
    """
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    if isinstance(data, Tensor):
        return [data]
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        n = min(len(data), batches * batch_size)
        if n == 0:
            raise ValueError("the dataset given for the gate statistics is empty")
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(data), generator=generator)[:n].tolist()
        data = torch.utils.data.DataLoader(torch.utils.data.Subset(data, order), batch_size=batch_size)
    if not isinstance(data, Iterable):
        raise TypeError(
            "data for the gate statistics must be a tensor, a Dataset or an iterable of batches, "
            f"got {type(data).__name__}"
        )
    out: list[Tensor] = []
    for batch in data:
        out.append(_inputs_of(batch))
        if len(out) >= batches:
            break
    if not out:
        raise ValueError("the data given for the gate statistics yielded no batch")
    return out


def _inputs_of(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, Mapping):
        for key in ("image", "images", "input", "inputs", "x"):
            if isinstance(batch.get(key), Tensor):
                return batch[key]
    raise TypeError(
        "cannot find the input tensor in a batch of type "
        f"{type(batch).__name__}; expected a tensor, an (inputs, targets) pair or a dict with 'image'"
    )


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def gate_statistics(
    model_or_models: ModelOrModels,
    data: Any,
    *,
    batches: int = 1,
    batch_size: int = 256,
    device: Optional[Union[str, torch.device]] = None,
) -> list[GateStats]:
    """Per-layer statistics of the gate each GCT applies to real inputs, in network order.

    Forward pre-hooks on every GCT compute the (N, C) gate of the layer's actual input with
    :func:`gctnet.functional.gct_gate`; the models run in eval mode without gradients, on the same
    inputs (see :func:`collect_batches` for what ``data`` may be).  The models are left in the
    train/eval mode they were in.  Layers that never ran are left out.
    """
    models = _as_models(model_or_models)
    layers = _common_layers(models)
    stages = stage_and_block([name for name, _ in layers])
    inputs = collect_batches(data, batches=batches, batch_size=batch_size)
    accs = [_GateAccumulator(len(models), mods[0].channels) for _, mods in layers]

    for mi, model in enumerate(models):
        dev = torch.device(device) if device is not None else _model_device(model)
        handles = []
        for acc, (_, mods) in zip(accs, layers):

            def hook(module: GCT, args: tuple, acc: _GateAccumulator = acc, mi: int = mi) -> None:
                x = args[0]
                acc.add(mi, gct_gate(x, module.alpha, module.gamma, module.beta, module.eps, module.mode, module.after_relu))

            handles.append(mods[mi].register_forward_pre_hook(hook))
        was_training = model.training
        original_device = _model_device(model)
        try:
            model.eval()
            if dev != original_device:
                model.to(dev)
            with torch.no_grad():
                for x in inputs:
                    model(x.to(dev))
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
            if dev != original_device:
                model.to(original_device)

    out = []
    for index, (acc, (name, _), (stage, _)) in enumerate(zip(accs, layers, stages)):
        result = acc.result(index, name, stage)
        if result is not None:
            out.append(result)
    return out


# --------------------------------------------------------------------------------------------------
# the paper's depth trend
# --------------------------------------------------------------------------------------------------
# mean |gamma| below which the shallow/deep comparison says nothing (gamma starts at 0; trained networks
# reach magnitudes of 0.1-1)
NEGLIGIBLE_GAMMA = 1e-3


def _third(n: int) -> int:
    return max(1, n // 3)


def depth_trend(layers: Sequence[LayerStats]) -> dict[str, Any]:
    """Mean gamma of the first vs the last third of the layers (over all their channels and models).

    Returns a dict with ``layers``, ``shallow_layers``/``deep_layers`` (1-based index ranges),
    ``shallow_mean_gamma``, ``deep_mean_gamma``, ``verdict`` (``"matches"``: shallow < 0 < deep;
    ``"partial"``: deep > shallow but the signs differ from the paper; ``"opposite"``: deep <= shallow;
    ``"negligible"``: both means are below :data:`NEGLIGIBLE_GAMMA` in magnitude (barely trained);
    ``"untrained"``: all gamma are exactly 0; ``"too_few_layers"``: fewer than 3 layers) and
    ``per_model``: the same means and verdict for each pooled model separately.
    """
    n = len(layers)
    result: dict[str, Any] = {"layers": n}
    if n < 3:
        result.update(verdict="too_few_layers", per_model=[])
        return result
    k = _third(n)
    shallow, deep = layers[:k], layers[n - k:]
    result["shallow_layers"] = [1, k]
    result["deep_layers"] = [n - k + 1, n]

    def means(model: Optional[int]) -> tuple[float, float]:
        def pool(group: Sequence[LayerStats]) -> float:
            vals = [l.values["gamma"] if model is None else l.values["gamma"][model] for l in group]
            return torch.cat([v.reshape(-1) for v in vals]).mean().item()

        return pool(shallow), pool(deep)

    def verdict(s: float, d: float, all_zero: bool) -> str:
        if all_zero:
            return "untrained"
        if max(abs(s), abs(d)) < NEGLIGIBLE_GAMMA:
            return "negligible"
        if s < 0 < d:
            return "matches"
        if d > s:
            return "partial"
        return "opposite"

    all_zero = all(bool((l.values["gamma"] == 0).all()) for l in layers)
    s, d = means(None)
    result.update(shallow_mean_gamma=s, deep_mean_gamma=d, verdict=verdict(s, d, all_zero))
    per_model = []
    for m in range(layers[0].models):
        ms, md = means(m)
        zero = all(bool((l.values["gamma"][m] == 0).all()) for l in layers)
        per_model.append({"shallow_mean_gamma": ms, "deep_mean_gamma": md, "verdict": verdict(ms, md, zero)})
    result["per_model"] = per_model
    result.update(depth_difference(layers, shallow, deep, per_model))
    return result


def depth_difference(layers: Sequence[LayerStats], shallow: Sequence[LayerStats], deep: Sequence[LayerStats],
                     per_model: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The strength of the depth trend: (mean gamma of the last third) - (mean gamma of the first third)
    with a 95% interval.  Several pooled models (seeds): one difference per seed and a Student-t interval
    across the seeds (``basis="seeds"``).  One model: the per-layer mean gammas of the two thirds and a
    two-sample t-interval across those layers (``basis="layers"``; None with fewer than 3 layers)."""
    from ..experiments.stats import finite_mean, t_interval95, two_sample_t_interval95

    if len(per_model) >= 2:
        diffs = [m["deep_mean_gamma"] - m["shallow_mean_gamma"] for m in per_model]
        for m, d in zip(per_model, diffs):
            m["difference"] = d
        return {"difference": finite_mean(diffs), "difference_ci95": t_interval95(diffs), "difference_n": len(diffs),
                "difference_basis": "seeds"}
    s = [l.gamma.mean for l in shallow]
    d = [l.gamma.mean for l in deep]
    return {"difference": finite_mean(d) - finite_mean(s), "difference_ci95": two_sample_t_interval95(d, s),
            "difference_n": len(s) + len(d), "difference_basis": "layers"}


def stage_summary(layers: Sequence[LayerStats]) -> list[dict[str, Any]]:
    """Per stage (in network order): GCT layers, channels, mean gamma and share of gamma > 0, over all
    channels (and pooled models) of the stage's layers."""
    out: list[dict[str, Any]] = []
    for stage in dict.fromkeys(l.stage for l in layers):
        group = [l for l in layers if l.stage == stage]
        gamma = torch.cat([l.values["gamma"].reshape(-1) for l in group])
        out.append(
            {
                "stage": stage,
                "layers": [group[0].index + 1, group[-1].index + 1],
                "channels": sum(l.channels for l in group),
                "gamma_mean": gamma.mean().item(),
                "gamma_positive": (gamma > 0).double().mean().item(),
            }
        )
    return out
