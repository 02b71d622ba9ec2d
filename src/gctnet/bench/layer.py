"""Layer benchmark: GCT implementations side by side against a per-channel multiply.

:func:`bench_layer` times, in one process with interleaved repetitions (medians reported):

* ``reference``  - the paper's formula in plain eager ops (:func:`gctnet.functional.gct_reference`);
* ``gctnet``     - the lean eager path (:func:`gctnet.functional.gct` with backend ``eager``);
* ``cpp``        - the C++ CPU kernels (:mod:`gctnet.kernels.cpu_ops`, backend ``cpp``; CPU only, where
  they can be built), with the instruction set they picked (``avx2`` or ``baseline``);
* ``triton``     - the Triton kernels (backend ``triton``; only where they run: CUDA with Triton, or when
  asked for);
* ``compiled``   - :func:`gctnet.functional.gct` (eager backend) under ``torch.compile``;
* ``multiply``   - ``x * w`` with ``w`` of shape (C,) broadcast: the *memory-floor unit*, one read and
  one write of ``x`` forward, one read of the gradient and one write of ``grad_x`` backward (only ``x``
  requires grad);
* ``copy``       - ``x.clone()`` (forward only): the achievable memory bandwidth, for the GB/s column.

Forward runs under ``torch.no_grad()`` (inference); forward+backward computes the gradients of every
input (``torch.autograd.grad``).  Ratios are to ``multiply``.  Saved-for-backward bytes are counted per
unique storage and split into the *full-size* part (tensors as large as an activation, e.g. ``x``) and
the *statistics* part (per-(sample, channel) tensors), both relative to the input's size.

Achieved bandwidth (GB/s) is the *floor* traffic of each candidate divided by its time: GCT forward
needs 3 passes over ``x`` (one reduction read, one read + one write for the scaling), GCT backward 5
(reads of ``grad`` and ``x`` for the reduction; reads of ``grad`` and ``x`` and a write of ``grad_x``),
the multiply 2 forward and 2 backward, the copy 2.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import functional as F
from .. import kernels
from ..layers import GCT
from .memory import _storage_key, saved_tensor_bytes
from .report import PAIRED_NOTE, BenchmarkResult, Timing, interleaved_times, interval_cell, noise_note, paired_ratio

__all__ = [
    "DEFAULT_SHAPE",
    "LayerConfig",
    "SavedSplit",
    "LayerRow",
    "LayerBenchmark",
    "bench_layer",
    "saved_split",
    "parse_shape",
    "parse_dtype",
]

DEFAULT_SHAPE: Tuple[int, ...] = (16, 256, 56, 56)

# memory passes over x at the floor, per candidate: (forward, backward)
_FLOOR_PASSES = {
    "reference": (3, 5),
    "gctnet": (3, 5),
    "cpp": (3, 5),
    "triton": (3, 5),
    "compiled": (3, 5),
    "multiply": (2, 2),
    "copy": (2, None),
}
_LABELS = {
    "reference": "reference formula (eager)",
    "gctnet": "gctnet eager (PyTorch ops)",
    "cpp": "gctnet C++ kernels (CPU)",
    "triton": "gctnet Triton kernels",
    "compiled": "gctnet + torch.compile",
    "multiply": "x * w (floor unit)",
    "copy": "x.clone() (bandwidth)",
}
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"fp16"``/``"bf16"``/... -> torch dtype (clear error for anything else)."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(set(_DTYPES))}")
    return _DTYPES[key]


def parse_shape(text: str | Sequence[int]) -> Tuple[int, ...]:
    """``"16,256,56,56"`` -> (16, 256, 56, 56); needs (N, C, *spatial) with 1-3 spatial dims."""
    if isinstance(text, str):
        try:
            shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
        except ValueError:
            raise ValueError(f"shape must be comma-separated integers like 16,256,56,56, got {text!r}") from None
    else:
        shape = tuple(int(v) for v in text)
    if not 3 <= len(shape) <= 5 or any(v <= 0 for v in shape):
        raise ValueError(
            f"shape must be N,C followed by 1-3 positive spatial sizes (e.g. 16,256,56,56), got {shape}"
        )
    return shape


# --------------------------------------------------------------------------------------------------
# saved-for-backward split
# --------------------------------------------------------------------------------------------------
@dataclass
class SavedSplit:
    """Saved-for-backward bytes of one forward, split by size class (unique storages)."""

    total: int
    full: int  # storages larger than any per-(n, c) statistic (activation-sized)
    stats: int  # per-(n, c) (or smaller) storages
    count: int


def saved_split(fn: Callable[[], Any], stats_max_bytes: int, exclude=None) -> Tuple[Any, SavedSplit]:
    """Run ``fn`` (a forward) and split what autograd saved into full-size and statistics storages.

    The total and count are :func:`gctnet.bench.memory.saved_tensor_bytes`'s.  That function reports
    totals only, so ``fn`` runs a second time under a hook that records each unique storage's size (same
    rule: one entry per storage, parameters of ``exclude`` skipped); a storage of at most
    ``stats_max_bytes`` bytes counts as statistics.  Returns the first run's result.
    """
    out, saved = saved_tensor_bytes(fn, exclude=exclude)
    skip = {_storage_key(t) for m in exclude or () for t in [*m.parameters(), *m.buffers()]}
    sizes: Dict[Any, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            key = _storage_key(t)
        except (RuntimeError, NotImplementedError):
            return t
        if key not in skip:
            sizes.setdefault(key, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        again = fn()
    del again
    stats = sum(v for v in sizes.values() if v <= stats_max_bytes)
    return out, SavedSplit(total=saved.total, full=saved.total - stats, stats=stats, count=saved.count)


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------
@dataclass
class LayerConfig:
    shape: Tuple[int, ...] = DEFAULT_SHAPE
    dtype: str = "float32"
    device: str = "cpu"
    channels_last: bool = False
    mode: str = "l2"
    repeats: int = 20
    warmup: int = 3
    compile: bool = True
    triton: Optional[bool] = None  # None: where the kernels run natively (CUDA with Triton)
    cpp: bool = True  # the C++ CPU kernels (CPU inputs, where they can be built)


@dataclass
class LayerRow:
    name: str
    label: str
    fwd_ms: Optional[float] = None
    fwdbwd_ms: Optional[float] = None
    fwd_ratio: Optional[float] = None  # to multiply: median of the per-repetition ratios
    fwdbwd_ratio: Optional[float] = None
    fwd_ratio_ci: Optional[Tuple[float, float]] = None  # 95% confidence interval of fwd_ratio (>= 6 repeats)
    fwdbwd_ratio_ci: Optional[Tuple[float, float]] = None
    fwd_spread: Optional[float] = None  # interquartile range / median
    fwdbwd_spread: Optional[float] = None
    fwd_gbps: Optional[float] = None  # floor traffic / time
    fwdbwd_gbps: Optional[float] = None
    saved: Optional[SavedSplit] = None
    saved_ratio: Optional[float] = None  # saved.total / input bytes
    saved_full_ratio: Optional[float] = None
    saved_stats_ratio: Optional[float] = None
    compile_s: Optional[float] = None


@dataclass
class LayerBenchmark(BenchmarkResult):
    config: LayerConfig
    input_bytes: int
    rows: List[LayerRow] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    row_key = "name"

    def row(self, name: str) -> LayerRow:
        return super().row(name)

    def table(self) -> Tuple[List[str], List[List[Any]]]:
        headers = [
            "implementation", "fwd ms", "fwd x", "fwd x CI", "fwd GB/s", "fwd+bwd ms", "fwd+bwd x", "fwd+bwd x CI",
            "fwd+bwd GB/s", "saved/input", "full-size", "stats",
        ]
        rows = []
        for r in self.rows:
            rows.append([
                r.label,
                _fmt_ms(r.fwd_ms), _fmt(r.fwd_ratio, 2, "x"), _ci(r, r.fwd_ratio_ci), _fmt(r.fwd_gbps, 1),
                _fmt_ms(r.fwdbwd_ms), _fmt(r.fwdbwd_ratio, 2, "x"), _ci(r, r.fwdbwd_ratio_ci), _fmt(r.fwdbwd_gbps, 1),
                _fmt(r.saved_ratio, 3, "x"), _fmt(r.saved_full_ratio, 3, "x"), _fmt(r.saved_stats_ratio, 4, "x"),
            ])
        return headers, rows

    def title(self) -> str:
        c = self.config
        fmt = "channels_last" if c.channels_last else "contiguous"
        shape = "x".join(str(v) for v in c.shape)
        return f"GCT layer {shape} {c.dtype} {fmt} mode={c.mode} on {c.device}, median of {c.repeats}"



def _fmt(v: Optional[float], digits: int, suffix: str = "") -> Optional[str]:
    return None if v is None else f"{v:.{digits}f}{suffix}"


def _ci(row: LayerRow, interval: Optional[Tuple[float, float]]) -> Optional[str]:
    """The ratio's confidence interval; none for the unit row (1 by definition)."""
    return None if row.name == "multiply" else interval_cell(interval, 2)


def _fmt_ms(v: Optional[float]) -> Optional[str]:
    """Milliseconds with three significant digits (0.0123, 1.23, 123)."""
    return None if v is None else (f"{v:.3g}" if v < 100 else f"{v:.0f}")


# --------------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------------
def _triton_runs(x: Tensor, wanted: Optional[bool]) -> bool:
    """Whether the Triton kernels can run on ``x`` (CUDA, or CPU in Triton's interpreter)."""
    if wanted is False or not kernels.triton_available():
        return False
    if wanted is None and not x.is_cuda:
        return False
    try:
        from ..kernels import triton_ops
    except ImportError:
        return False
    return x.dtype in triton_ops.SUPPORTED_DTYPES and (x.is_cuda or triton_ops.INTERPRET)


def bench_layer(
    shape: Sequence[int] = DEFAULT_SHAPE,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    *,
    channels_last: bool = False,
    mode: str = "l2",
    repeats: int = 20,
    warmup: int = 3,
    compile: bool = True,
    triton: Optional[bool] = None,
    cpp: bool = True,
    seed: int = 0,
) -> LayerBenchmark:
    """Benchmark the GCT implementations on one input; see the module docstring for what is timed.

    Args:
        shape: (N, C, *spatial) with 1-3 spatial dims.
        dtype: input dtype (parameters stay float32, as in a mixed-precision model).
        channels_last: channels_last (4-D) / channels_last_3d (5-D) / (N, L, C)-strided (3-D) input.
        repeats, warmup: timed repetitions (interleaved across candidates) and untimed warm-up calls.
        compile: include ``torch.compile`` (costs compile time: tens of seconds on CPU).
        triton: include the Triton kernels: ``None`` = where they run natively (CUDA), ``True`` =
            also elsewhere (CPU tensors need ``TRITON_INTERPRET=1``; very slow), ``False`` = never.
        cpp: include the C++ CPU kernels (CPU inputs; a note says so when they cannot be built).
    """
    shape = parse_shape(shape)
    dt = parse_dtype(dtype)
    device = torch.device(device)
    F.validate_mode(mode)
    config = LayerConfig(
        shape=shape, dtype=str(dt).removeprefix("torch."), device=str(device), channels_last=channels_last,
        mode=mode, repeats=repeats, warmup=warmup, compile=compile, triton=triton, cpp=cpp,
    )
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dt)
    if channels_last:
        x = _to_channels_last(x)
    n, c = shape[0], shape[1]
    layer = GCT(c, mode=mode, device=device)
    with torch.no_grad():  # non-trivial parameters so no path can shortcut the gate
        layer.alpha.copy_(1.0 + 0.1 * torch.randn(c, generator=gen))
        layer.gamma.copy_(torch.randn(c, generator=gen))
        layer.beta.copy_(0.1 * torch.randn(c, generator=gen))
    w = torch.randn(c, generator=gen).to(device=device, dtype=dt).view((1, c) + (1,) * (len(shape) - 2))
    holder = torch.nn.Module()  # so the multiply's weight counts as a parameter, not an activation
    holder.register_buffer("w", w)
    params = (layer.alpha, layer.gamma, layer.beta)
    dy = torch.randn(shape, generator=gen).to(device=device, dtype=dt)
    if channels_last:
        dy = _to_channels_last(dy)
    xg = x.detach().requires_grad_(True)
    input_bytes = x.numel() * x.element_size()
    result = LayerBenchmark(config=config, input_bytes=input_bytes)

    def gct_eager(t: Tensor) -> Tensor:  # called under _backend("eager"), see below
        return F.gct(t, *params, mode=mode)

    forwards: Dict[str, Callable[[Tensor], Tensor]] = {
        "reference": lambda t: F.gct_reference(t, *params, mode=mode),
        "gctnet": gct_eager,
    }
    # per-candidate settings around the whole timed call (forward and backward)
    settings: Dict[str, Callable[[], ContextManager[Any]]] = {}
    labels = dict(_LABELS)
    if cpp and device.type == "cpu":
        from ..kernels import cpu_ops

        st = cpu_ops.load()
        if st.available:
            forwards["cpp"] = gct_eager  # run under the "cpp" backend (forward and backward)
            settings["cpp"] = lambda: kernels.use_backend("cpp")
            labels["cpp"] = f"gctnet C++ kernels (CPU, {cpu_ops.instruction_set()})"
        else:
            result.notes.append(f"C++ CPU kernels not benchmarked: {st.reason or 'unsupported input'}")
    if _triton_runs(x, triton):
        forwards["triton"] = gct_eager
        settings["triton"] = lambda: kernels.use_backend("triton")
    elif triton:
        result.notes.append("Triton kernels requested but unavailable for this input/device")
    compile_s: Dict[str, float] = {}
    if compile:
        compiled = torch.compile(gct_eager, fullgraph=True, dynamic=False)
        forwards["compiled"] = compiled
    forwards["multiply"] = lambda t: t * w

    def fwd(name: str, f: Callable[[Tensor], Tensor]) -> Callable[[], Any]:
        setting = settings.get(name, contextlib.nullcontext)

        def call() -> Any:
            with setting(), torch.no_grad():
                return f(x)

        return call

    def fwdbwd(name: str, f: Callable[[Tensor], Tensor]) -> Callable[[], Any]:
        inputs = (xg,) if name == "multiply" else (xg, *params)
        setting = settings.get(name, contextlib.nullcontext)

        def call() -> Any:
            with setting():
                return torch.autograd.grad(f(xg), inputs, dy)

        return call

    fwd_fns = {name: fwd(name, f) for name, f in forwards.items()}
    fwd_fns["copy"] = lambda: x.clone(memory_format=torch.preserve_format)
    bwd_fns = {name: fwdbwd(name, f) for name, f in forwards.items()}
    with kernels.use_backend("eager"):  # "gctnet" and "compiled" measure the PyTorch path, whatever the default ("cpp" sets its own)
        if compile:  # compile outside the timed loop and report how long it took
            for key, fns in (("fwd", fwd_fns), ("bwd", bwd_fns)):
                t0 = time.perf_counter()
                fns["compiled"]()
                compile_s[key] = time.perf_counter() - t0
        t_fwd = interleaved_times(fwd_fns, repeats=repeats, warmup=warmup, device=device)
        t_bwd = interleaved_times(bwd_fns, repeats=repeats, warmup=warmup, device=device)
        saved = _saved_rows(forwards, x, n * c * 8, exclude=[layer, holder])

    for name in fwd_fns:
        row = LayerRow(name=name, label=labels[name])
        _fill_timing(row, t_fwd.get(name), t_bwd.get(name), t_fwd["multiply"], t_bwd["multiply"], input_bytes)
        split = saved.get(name)
        if split is not None:
            row.saved = split
            row.saved_ratio = split.total / input_bytes
            row.saved_full_ratio = split.full / input_bytes
            row.saved_stats_ratio = split.stats / input_bytes
        if name == "compiled" and compile_s:
            row.compile_s = compile_s["fwd"] + compile_s["bwd"]
        result.rows.append(row)
    result.notes.append(noise_note(t_fwd, t_bwd))
    if compile_s:
        result.notes.append(f"torch.compile took {sum(compile_s.values()):.1f} s (forward and training graphs)")
    result.notes.append(
        "ratios are to x * w (only x requires grad); GB/s = floor traffic (GCT 3 passes forward, "
        "5 backward; multiply 2 + 2; copy 2) / time"
    )
    result.notes.append(PAIRED_NOTE)
    return result


def _saved_rows(
    forwards: Dict[str, Callable[[Tensor], Tensor]], x: Tensor, stats_max_bytes: int, exclude: List[Any]
) -> Dict[str, SavedSplit]:
    """Saved-for-backward split of each candidate's forward (``x`` requires grad)."""
    out = {}
    for name, f in forwards.items():
        xs = x.detach().requires_grad_(True)
        _, out[name] = saved_split(lambda: f(xs), stats_max_bytes, exclude=exclude)
    return out


def _fill_timing(
    row: LayerRow,
    fwd: Optional[Timing],
    bwd: Optional[Timing],
    unit_fwd: Timing,
    unit_bwd: Timing,
    input_bytes: int,
) -> None:
    passes_fwd, passes_bwd = _FLOOR_PASSES[row.name]
    if fwd is not None:
        row.fwd_ms = fwd.median * 1e3
        ratio = paired_ratio(fwd, unit_fwd)
        row.fwd_ratio, row.fwd_ratio_ci = ratio.value, ratio.interval
        row.fwd_spread = fwd.spread
        row.fwd_gbps = passes_fwd * input_bytes / fwd.median / 1e9
    if bwd is not None and passes_bwd is not None:
        row.fwdbwd_ms = bwd.median * 1e3
        ratio = paired_ratio(bwd, unit_bwd)
        row.fwdbwd_ratio, row.fwdbwd_ratio_ci = ratio.value, ratio.interval
        row.fwdbwd_spread = bwd.spread
        row.fwdbwd_gbps = (passes_fwd + passes_bwd) * input_bytes / bwd.median / 1e9


def _to_channels_last(x: Tensor) -> Tensor:
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x.transpose(1, 2).contiguous().transpose(1, 2)  # (N, L, C) storage seen as (N, C, L)
