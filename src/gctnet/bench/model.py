"""Model benchmark: train-step time, inference time and saved activations of several models side by side.

:func:`bench_model` builds every model from the registry (same seed, input and batch), then times
them in one process with interleaved repetitions (each repetition runs every model once, in turn) and
reports medians and ratios to the *first* model:

* ``train``: one SGD step -- forward, cross-entropy loss, backward, optimizer step (``model.train()``);
* ``infer``: one forward under ``torch.no_grad()`` in ``model.eval()``;
* ``saved``: bytes autograd keeps for backward in a train-mode forward (parameters and buffers
  excluded; :func:`gctnet.bench.memory.saved_tensor_bytes`), per image, measured eagerly.

Options: ``compile`` (``torch.compile`` each model; compile time reported separately), ``amp``
(autocast: bfloat16 on CPU, float16 with a gradient scaler on CUDA), ``channels_last``, ``device``.

A model spec is a registry name, optionally with GCT options after a colon, joined by ``+`` (passed
to :func:`gctnet.apply_gct`): ``gct_resnet20`` uses the default lean-memory path (``checkpoint=True``),
``gct_resnet20:checkpoint=false`` the plain ``conv(gct(x))`` composition whose conv keeps the GCT output
for backward, ``gct_resnet20:mode=l1+after_relu`` another variant.  ``backend=NAME`` is not an
``apply_gct`` option: it runs that model under a GCT backend (:mod:`gctnet.kernels`), e.g.
``gct_resnet20:backend=eager`` (PyTorch ops) next to ``gct_resnet20`` (``auto``: the C++ CPU kernels).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .. import kernels
from ..optim import optimizer_step
from .accounting import parse_input_size
from .memory import saved_tensor_bytes
from .report import (
    PAIRED_NOTE, BenchmarkResult, Timing, interleaved_times, interval_cell, noise_note, paired_ratio, synchronize,
)

__all__ = [
    "DEFAULT_MODELS",
    "ModelSpec",
    "parse_model_specs",
    "ModelBenchConfig",
    "ModelRow",
    "ModelBenchmark",
    "bench_model",
]

#: plain, SE, GCT (default: lean memory; C++ kernels on CPU), GCT whose conv keeps the gated input (no
#: memory saving) and GCT on PyTorch ops (backend eager)
DEFAULT_MODELS = (
    "resnet20", "se_resnet20", "gct_resnet20", "gct_resnet20:checkpoint=false", "gct_resnet20:backend=eager",
)


# --------------------------------------------------------------------------------------------------
# model specs
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    label: str  # as given, e.g. "gct_resnet20:checkpoint=false"
    name: str  # registry name
    gct_kwargs: Tuple[Tuple[str, Any], ...] = ()
    backend: Optional[str] = None  # GCT backend this model runs under (None: the process's setting)

    def build(self, **kwargs: Any) -> nn.Module:
        from ..models import create_model

        if self.gct_kwargs:
            kwargs["gct_kwargs"] = dict(self.gct_kwargs)
        return create_model(self.name, **kwargs)


def _value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_model_specs(models: str | Sequence[str]) -> List[ModelSpec]:
    """``"resnet20,gct_resnet20:checkpoint=false"`` (or a list) -> :class:`ModelSpec` list (names checked)."""
    from ..models import list_models

    items = [m.strip() for m in models.split(",")] if isinstance(models, str) else [str(m).strip() for m in models]
    items = [m for m in items if m]
    if not items:
        raise ValueError("no models given; expected comma-separated registry names like resnet20,gct_resnet20")
    known = set(list_models())
    specs = []
    for item in items:
        name, _, opts = item.partition(":")
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see `gctnet info --list`"
            raise ValueError(f"unknown model {name!r}{hint}")
        kwargs: List[Tuple[str, Any]] = []
        backend: Optional[str] = None
        for opt in filter(None, (o.strip() for o in opts.split("+"))):
            key, eq, value = opt.partition("=")
            key = key.strip()
            if key == "backend":
                backend = value.strip().lower()
                if backend not in kernels.BACKENDS:
                    raise ValueError(f"backend must be one of {kernels.BACKENDS}, got {value.strip()!r} in {item!r}")
                continue
            kwargs.append((key, _value(value.strip()) if eq else True))
        if (kwargs or backend) and not name.startswith("gct_"):
            raise ValueError(f"GCT options ({opts!r}) only apply to gct_ models, got {item!r}")
        specs.append(ModelSpec(label=item, name=name, gct_kwargs=tuple(kwargs), backend=backend))
    return specs


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------
@dataclass
class ModelBenchConfig:
    models: Tuple[str, ...] = DEFAULT_MODELS
    input_size: Tuple[int, ...] = (1, 28, 28)
    batch_size: int = 128
    num_classes: int = 10
    device: str = "cpu"
    compile: bool = False
    amp: bool = False
    channels_last: bool = False
    repeats: int = 10
    warmup: int = 2


@dataclass
class ModelRow:
    label: str
    params: int
    train_ms: float
    train_ratio: float  # to the first model: median of the per-repetition ratios
    train_spread: float
    infer_ms: float
    infer_ratio: float
    infer_spread: float
    train_images_per_s: float
    saved_bytes_per_image: float
    saved_ratio: float
    compile_s: Optional[float] = None
    train_ratio_ci: Optional[Tuple[float, float]] = None  # 95% confidence interval of train_ratio (>= 6 repeats)
    infer_ratio_ci: Optional[Tuple[float, float]] = None


@dataclass
class ModelBenchmark(BenchmarkResult):
    config: ModelBenchConfig
    rows: List[ModelRow] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    row_key = "label"

    def row(self, label: str) -> ModelRow:
        return super().row(label)

    def table(self) -> Tuple[List[str], List[List[Any]]]:
        headers = [
            "model", "params", "train ms", "train x", "train x CI", "img/s", "infer ms", "infer x", "infer x CI",
            "saved MiB/img", "saved x",
        ]
        if self.config.compile:
            headers.append("compile s")
        rows = []
        for i, r in enumerate(self.rows):
            first = i == 0  # the reference: its ratios are 1 by definition
            row = [
                r.label, f"{r.params / 1e6:.3f}M", f"{r.train_ms:.1f}", f"{r.train_ratio:.3f}x",
                None if first else interval_cell(r.train_ratio_ci), f"{r.train_images_per_s:.0f}",
                f"{r.infer_ms:.1f}", f"{r.infer_ratio:.3f}x", None if first else interval_cell(r.infer_ratio_ci),
                f"{r.saved_bytes_per_image / 2**20:.3f}", f"{r.saved_ratio:.3f}x",
            ]
            if self.config.compile:
                row.append(None if r.compile_s is None else f"{r.compile_s:.0f}")
            rows.append(row)
        return headers, rows

    def title(self) -> str:
        c = self.config
        size = "x".join(str(v) for v in c.input_size)
        opts = [o for o, on in (("torch.compile", c.compile), ("AMP", c.amp), ("channels_last", c.channels_last)) if on]
        mode = ", ".join(opts) if opts else "eager"
        return f"models at {size}, batch {c.batch_size}, {mode}, on {c.device}, median of {c.repeats}"



# --------------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------------
def _autocast(device: torch.device, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Runner:
    """One model with its optimizer and the two timed closures."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: bool, compile: bool,
                 backend: Optional[str] = None):
        self.eager = model
        self.model = torch.compile(model) if compile else model
        self.x, self.y, self.device, self.amp = x, y, device, amp
        self.backend = backend
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.scaler = torch.amp.GradScaler(device.type) if amp and device.type == "cuda" else None

    def _settings(self):
        return kernels.use_backend(self.backend)

    def train_step(self) -> None:
        self.model.train()
        with self._settings():
            with _autocast(self.device, self.amp):
                loss = nn.functional.cross_entropy(self.model(self.x), self.y)
            optimizer_step(loss, self.optimizer, self.scaler)

    def infer(self) -> None:
        self.model.eval()
        with self._settings(), torch.no_grad(), _autocast(self.device, self.amp):
            self.model(self.x)

    def saved_bytes(self) -> int:
        self.eager.train()
        with self._settings(), _autocast(self.device, self.amp):
            out, saved = saved_tensor_bytes(lambda: self.eager(self.x), exclude=[self.eager])
        del out
        return saved.total


def bench_model(
    models: str | Sequence[str] = DEFAULT_MODELS,
    input_size: str | Sequence[int] = (1, 28, 28),
    batch_size: int = 128,
    *,
    num_classes: int = 10,
    device: str | torch.device = "cpu",
    compile: bool = False,
    amp: bool = False,
    channels_last: bool = False,
    repeats: int = 10,
    warmup: int = 2,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> ModelBenchmark:
    """Benchmark ``models`` side by side; see the module docstring.  Ratios are to the first model.

    ``progress`` (e.g. ``print``) receives a line before each slow stage (building, compiling, timing).
    """
    specs = parse_model_specs(models)
    size = parse_input_size(input_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
    if channels_last and len(size) != 3:
        raise ValueError(f"channels_last needs a 2-D input size (C, H, W), got {size}")
    say = progress or (lambda _msg: None)
    config = ModelBenchConfig(
        models=tuple(s.label for s in specs), input_size=size, batch_size=batch_size, num_classes=num_classes,
        device=str(device), compile=compile, amp=amp, channels_last=channels_last, repeats=repeats, warmup=warmup,
    )
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, *size), generator=gen).to(device)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)

    runners: Dict[str, _Runner] = {}
    for spec in specs:
        say(f"building {spec.label}")
        torch.manual_seed(seed)
        model = spec.build(num_classes=num_classes, in_chans=size[0]).to(device=device, memory_format=fmt)
        runners[spec.label] = _Runner(model, x, y, device, amp, compile, spec.backend)

    compile_s: Dict[str, float] = {}
    if compile:
        for label, r in runners.items():
            say(f"compiling {label} (train and eval graphs)")
            t0 = time.perf_counter()
            r.train_step()
            r.infer()
            synchronize(device)
            compile_s[label] = time.perf_counter() - t0

    say(f"timing train steps ({repeats} interleaved repetitions)")
    t_train = interleaved_times({k: r.train_step for k, r in runners.items()}, repeats=repeats, warmup=warmup, device=device)
    say(f"timing inference ({repeats} interleaved repetitions)")
    t_infer = interleaved_times({k: r.infer for k, r in runners.items()}, repeats=repeats, warmup=warmup, device=device)
    saved = {k: r.saved_bytes() for k, r in runners.items()}

    result = ModelBenchmark(config=config)
    first = specs[0].label
    for label, r in runners.items():
        result.rows.append(_row(label, r.eager, t_train, t_infer, saved, first, batch_size, compile_s.get(label)))
    result.notes.append(noise_note(t_train, t_infer, names=("train", "inference")))
    result.notes.append(
        f"ratios are to {first}; train = forward + loss + backward + SGD step; saved = autograd's saved "
        "tensors per image in an eager train-mode forward (parameters excluded)"
    )
    result.notes.append(PAIRED_NOTE)
    if amp:
        result.notes.append("AMP: autocast " + ("float16 with GradScaler" if device.type == "cuda" else "bfloat16"))
    return result


def _row(
    label: str,
    model: nn.Module,
    t_train: Dict[str, Timing],
    t_infer: Dict[str, Timing],
    saved: Dict[str, int],
    first: str,
    batch_size: int,
    compile_s: Optional[float],
) -> ModelRow:
    train, infer = t_train[label], t_infer[label]
    train_ratio, infer_ratio = paired_ratio(train, t_train[first]), paired_ratio(infer, t_infer[first])
    return ModelRow(
        label=label,
        params=sum(p.numel() for p in model.parameters()),
        train_ms=train.median * 1e3,
        train_ratio=train_ratio.value,
        train_spread=train.spread,
        infer_ms=infer.median * 1e3,
        infer_ratio=infer_ratio.value,
        infer_spread=infer.spread,
        train_images_per_s=batch_size / train.median,
        saved_bytes_per_image=saved[label] / batch_size,
        saved_ratio=saved[label] / saved[first] if saved[first] else float("nan"),
        compile_s=compile_s,
        train_ratio_ci=train_ratio.interval,
        infer_ratio_ci=infer_ratio.interval,
    )
