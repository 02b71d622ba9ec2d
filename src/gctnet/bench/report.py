"""Measuring and reporting for the benchmarks: machine description, interleaved timing, tables.

* :func:`machine_info` describes where numbers came from (CPU model, cores, GPU, torch version, date).
* :func:`interleaved_times` times several candidates *side by side*: every repetition runs each
  candidate once, in turn, so slow drifts of a shared machine hit all of them alike; the medians of
  the repetitions are what the benchmarks report as times.
* :func:`paired_ratio` compares two candidates of such a run: the median of the per-repetition ratios
  (each ratio taken between calls made moments apart) with a distribution-free 95% confidence interval,
  so a report can say whether a target is met, missed, or within the machine's noise.
* :func:`format_table` / :func:`markdown_table` render rows for the terminal and for BENCHMARKS.md.
"""

from __future__ import annotations

import datetime as _dt
import gc
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = [
    "machine_info",
    "machine_markdown",
    "synchronize",
    "Timing",
    "Ratio",
    "median_interval",
    "paired_ratio",
    "format_ratio",
    "interleaved_times",
    "noise_note",
    "interval_cell",
    "format_table",
    "markdown_table",
    "BenchmarkResult",
    "Target",
    "SuiteResult",
    "bench_all",
]


# --------------------------------------------------------------------------------------------------
# machine description
# --------------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def machine_info() -> Dict[str, Any]:
    """A description of this machine and software stack for recording next to benchmark figures."""
    info: Dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": _usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": None,
        "cuda": torch.version.cuda,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)"
        info["gpu_count"] = torch.cuda.device_count()
    return info


def machine_markdown(info: Optional[Mapping[str, Any]] = None) -> str:
    """The machine description as a markdown bullet list."""
    info = dict(info or machine_info())
    lines = [
        f"- date: {info['date']}",
        f"- CPU: {info['cpu']}, {info['cores']} usable cores, torch threads "
        + (", ".join(map(str, info["thread_counts"])) + " (one pass each)" if info.get("thread_counts")
           else str(info["torch_threads"])),
        f"- GPU: {info['gpu'] or 'none'}",
        f"- torch {info['torch']} (CUDA {info['cuda'] or 'n/a'}), triton {info.get('triton') or 'n/a'}, "
        f"Python {info['python']}",
        f"- platform: {info['platform']}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------
def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu" and hasattr(torch, "xpu"):  # pragma: no cover
        torch.xpu.synchronize(device)


@dataclass
class Timing:
    """Seconds per call of one candidate: all repetitions and their median."""

    samples: List[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (a noise indicator; 0 for < 4 samples)."""
        if len(self.samples) < 4 or not self.median:
            return 0.0
        q = statistics.quantiles(self.samples, n=4)
        return (q[2] - q[0]) / self.median


@dataclass(frozen=True)
class Ratio:
    """A paired ratio candidate / reference from one interleaved run.

    ``value`` is the median of the per-repetition ratios; ``low``/``high`` bound that median with
    (at least) ``confidence`` coverage, from order statistics alone (no assumption on the noise's
    distribution); both are NaN when there are too few repetitions for that coverage (< 6 at 95%).
    """

    value: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    @property
    def interval(self) -> Optional[Tuple[float, float]]:
        """``(low, high)``, or None when there were too few repetitions for one."""
        return (self.low, self.high) if math.isfinite(self.low) and math.isfinite(self.high) else None

    def text(self, digits: int = 3) -> str:
        return format_ratio(self.value, self.interval, digits)


def format_ratio(value: float, interval: Optional[Sequence[float]] = None, digits: int = 3) -> str:
    """``1.167x`` or, with an interval, ``1.167x (95% CI 1.120-1.210)``."""
    main = f"{value:.{digits}f}x"
    if interval is None:
        return main
    low, high = interval
    return f"{main} (95% CI {low:.{digits}f}-{high:.{digits}f})"


def median_interval(values: Sequence[float], confidence: float = 0.95) -> Tuple[float, float]:
    """A distribution-free confidence interval of the median of ``values``: order statistics.

    For sorted values ``v(1) <= ... <= v(n)`` the interval ``[v(k), v(n+1-k)]`` covers the true median
    with probability ``1 - 2 * P(Binomial(n, 1/2) < k)``; ``k`` is the largest rank that keeps this
    at or above ``confidence``.  ``(nan, nan)`` when even ``[v(1), v(n)]`` falls short (n < 6 at 95%).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = sorted(float(x) for x in values)
    n = len(v)
    tail = (1.0 - confidence) / 2.0
    k, cdf = 0, 0.0  # cdf = P(Binomial(n, 1/2) <= k - 1) for the candidate rank k
    while n and k < n:
        nxt = cdf + math.comb(n, k) / 2.0**n
        if nxt > tail:
            break
        cdf, k = nxt, k + 1
    if k == 0 or k > n + 1 - k:
        return float("nan"), float("nan")
    return v[k - 1], v[n - k]


def paired_ratio(candidate: "Timing", reference: "Timing", confidence: float = 0.95) -> Ratio:
    """Median and confidence interval of ``candidate.samples[i] / reference.samples[i]``.

    Both timings must come from one :func:`interleaved_times` run (repetition ``i`` of each was taken
    moments apart), so a slow spell of a shared machine cancels within each ratio instead of moving one
    candidate's median only.  The same timing twice gives exactly 1.
    """
    a, b = candidate.samples, reference.samples
    if len(a) != len(b) or not a:
        raise ValueError(
            f"paired_ratio needs timings of the same interleaved run (equal, non-zero repetition counts), "
            f"got {len(a)} and {len(b)} samples"
        )
    ratios = [x / y if y > 0 else math.inf for x, y in zip(a, b)]
    low, high = median_interval(ratios, confidence)
    return Ratio(statistics.median(ratios), low, high, len(ratios), confidence)


def interleaved_times(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
) -> Dict[str, Timing]:
    """Time each zero-argument callable ``repeats`` times, interleaved; returns name -> :class:`Timing`.

    Each candidate first runs ``warmup`` times (also in turn).  The garbage collector is paused while
    timing so a collection does not land on one candidate only.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    synchronize(device)
    samples: Dict[str, List[float]] = {name: [] for name in names}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for name in names:
                synchronize(device)
                t0 = time.perf_counter()
                candidates[name]()
                synchronize(device)
                samples[name].append(time.perf_counter() - t0)
    finally:
        if was_enabled:
            gc.enable()
    return {name: Timing(s) for name, s in samples.items()}


def interval_cell(interval: Optional[Sequence[float]], digits: int = 3) -> Optional[str]:
    """A table cell for a ratio's confidence interval: ``1.120-1.210``, or None (rendered ``-``)."""
    return None if interval is None else f"{interval[0]:.{digits}f}-{interval[1]:.{digits}f}"


PAIRED_NOTE = (
    "x = median of the per-repetition ratios (each repetition times every candidate once, in turn); "
    "CI = its distribution-free 95% confidence interval (order statistics; needs >= 6 repetitions)"
)


def noise_note(*groups: Mapping[str, Timing], names: Sequence[str] = ("forward", "forward+backward")) -> str:
    """One line: the largest interquartile range / median per group of timings (a noise indicator)."""
    parts = []
    for name, group in zip(names, groups):
        worst = max((t.spread for t in group.values()), default=0.0)
        parts.append(f"{name} {100 * worst:.0f}%")
    return "timing noise (largest IQR / median): " + ", ".join(parts) + "; above ~10% rerun on a quieter machine"


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns (first column left-aligned, the rest right-aligned)."""
    cells = [[_cell(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    head = "| " + " | ".join(_cell(h) for h in headers) + " |"
    sep = "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join([head, sep, *body])


class BenchmarkResult:
    """Shared behaviour of a benchmark's result dataclass (``rows``, ``notes``, ``table()``, ``title()``).

    Subclasses are dataclasses with the fields ``rows`` (row objects) and ``notes`` (strings) and set
    :attr:`row_key`, the attribute that names a row; they implement :meth:`table` and :meth:`title`.
    """

    row_key: ClassVar[str] = "name"
    rows: List[Any]
    notes: List[str]

    def row(self, key: str) -> Any:
        """The row whose :attr:`row_key` attribute equals ``key`` (``KeyError`` listing the rows otherwise)."""
        for r in self.rows:
            if getattr(r, self.row_key) == key:
                return r
        names = [getattr(r, self.row_key) for r in self.rows]
        raise KeyError(f"no benchmark row {key!r}; rows: {names}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses

    def table(self) -> Tuple[List[str], List[List[Any]]]:
        """Column headers and rows of cells."""
        raise NotImplementedError

    def title(self) -> str:
        """One line describing what was measured."""
        raise NotImplementedError

    def format(self) -> str:
        """The title, a plain-text table and the notes."""
        text = self.title() + "\n" + format_table(*self.table())
        return text + "".join(f"\nnote: {n}" for n in self.notes)

    def markdown(self) -> str:
        """The title, a markdown table and the notes."""
        text = f"**{self.title()}**\n\n" + markdown_table(*self.table())
        return text + "".join(f"\n\n_note: {n}_" for n in self.notes)


# --------------------------------------------------------------------------------------------------
# the standard benchmark suite -> BENCHMARKS.md
# --------------------------------------------------------------------------------------------------
@dataclass
class Target:
    """One performance target of issue 7 and what was measured.

    ``met`` compares the measured figure with the limit; ``interval`` (the 95% confidence interval of a
    paired timing ratio, where there is one) says whether that verdict holds beyond the machine's
    noise: see :attr:`verdict`.
    """

    what: str
    limit: str
    measured: Optional[str]
    met: Optional[bool]  # None: not measured in this run (measured None) or a reference figure (no limit)
    interval: Optional[Tuple[float, float]] = None
    limit_value: Optional[float] = None  # the number in ``limit``, where the interval is compared with it

    @property
    def within_noise(self) -> bool:
        """Whether the confidence interval reaches across the limit (the verdict could flip on a rerun)."""
        if self.interval is None or self.limit_value is None or self.met is None:
            return False
        low, high = self.interval
        if not (math.isfinite(low) and math.isfinite(high)):
            return False
        return low <= self.limit_value <= high

    @property
    def verdict(self) -> str:
        """``yes``, ``no``, ``yes, within noise`` / ``no, within noise`` (interval across the limit),
        ``not measured`` or ``-`` (a reference figure)."""
        if self.met is None:
            return "not measured" if self.measured is None else "-"
        word = "yes" if self.met else "no"
        return f"{word}, within noise" if self.within_noise else word


@dataclass
class SuiteResult:
    """Everything :func:`bench_all` measured, and its markdown report."""

    machine: Dict[str, Any]
    layers: List[Any]  # LayerBenchmark
    models: List[Any]  # ModelBenchmark
    memory: List[Any]  # accounting.ModelInfo
    targets: List[Target]
    markdown: str
    seconds: float


def _target(
    what: str, limit: float, value: Optional[float], suffix: str = "x", interval: Optional[Sequence[float]] = None
) -> Target:
    """A ``<= limit`` target; ``interval``: the 95% confidence interval of a paired timing ratio."""
    if value is None:
        return Target(what, f"<= {limit:g}{suffix}", None, None, limit_value=limit)
    measured = format_ratio(value, interval) if suffix == "x" else f"{value:.3f}{suffix}"
    return Target(what, f"<= {limit:g}{suffix}", measured, value <= limit,
                  None if interval is None else (float(interval[0]), float(interval[1])), limit)


def _met_text(t: Target) -> str:
    verdict = t.verdict
    return "**no**" if verdict == "no" else verdict


def _find(rows: Sequence[Any], key: str, value: str) -> Optional[Any]:
    return next((r for r in rows if getattr(r, key) == value), None)


def _targets(layers: Sequence[Any], models: Sequence[Any], memory: Sequence[Any]) -> List[Target]:
    out: List[Target] = []
    for lb in layers:
        c = lb.config
        if c.device != "cpu" or c.dtype != "float32" or c.channels_last:
            continue
        shape = "x".join(map(str, c.shape))
        for name in ("gctnet", "cpp", "compiled"):
            row = _find(lb.rows, "name", name)
            if row is None:
                continue
            out.append(_target(f"CPU layer {shape} fp32, {row.label}: forward / x*w", 1.5, row.fwd_ratio,
                               interval=row.fwd_ratio_ci))
            out.append(_target(f"CPU layer {shape} fp32, {row.label}: fwd+bwd / x*w", 4.0, row.fwdbwd_ratio,
                               interval=row.fwdbwd_ratio_ci))
        row = _find(lb.rows, "name", "gctnet")
        if row is not None and row.saved is not None:  # the full-size part; statistics shown beside it
            t = _target(f"layer {shape}: saved-for-backward full-size part / input", 1.0, row.saved_full_ratio)
            t.measured = f"{t.measured} (+ {row.saved_stats_ratio:.4f}x per-(n, c) statistics)"
            out.append(t)
    for mb in models:
        c = mb.config
        if c.device != "cpu" or c.amp or c.channels_last:
            continue
        gct, plain = _find(mb.rows, "label", "gct_resnet20"), _find(mb.rows, "label", "resnet20")
        if gct is None or plain is None or mb.rows[0] is not plain:
            continue
        mode = "compiled" if c.compile else "eager"
        limit = 1.10 if c.compile else 1.20
        out.append(_target(f"CPU gct_resnet20 / resnet20 train step ({mode})", limit, gct.train_ratio,
                           interval=gct.train_ratio_ci))
        pytorch_ops = _find(mb.rows, "label", "gct_resnet20:backend=eager")
        if pytorch_ops is not None and not c.compile:
            out.append(Target(
                "CPU gct_resnet20:backend=eager / resnet20 train step (PyTorch ops instead of the C++ kernels)",
                "reference only", format_ratio(pytorch_ops.train_ratio, pytorch_ops.train_ratio_ci), None,
            ))
    base = _find(memory, "name", "resnet50")
    if base is not None and base.saved_bytes_per_image:

        def saved_ratio(name: str) -> Optional[float]:
            info = _find(memory, "name", name)
            return None if info is None else info.saved_bytes_per_image / base.saved_bytes_per_image

        # gct_ models use apply_gct's memory-saving option (checkpoint=True) by default, so the default
        # gct_resnet50 answers both memory targets; checkpoint=false is shown for reference.
        lean = saved_ratio("gct_resnet50")
        if lean is not None:
            out.append(_target("saved activations gct_resnet50 / resnet50 (default build)", 1.3, lean))
            out.append(_target(
                "saved activations with the memory-saving option / resnet50 (gct_resnet50: "
                "apply_gct(checkpoint=True) is the default)", 1.05, lean,
            ))
        full = saved_ratio("gct_resnet50:checkpoint=false")
        if full is not None:
            out.append(Target(
                "saved activations without the memory-saving option / resnet50 (gct_resnet50:checkpoint=false: "
                "each conv keeps its GCT output)", "reference only", f"{full:.3f}x", None,
            ))
    for lb in layers:
        if lb.config.device.startswith("cuda"):
            copy, tri = _find(lb.rows, "name", "copy"), _find(lb.rows, "name", "triton")
            if copy is not None and tri is not None and copy.fwd_gbps:
                what = f"GPU Triton forward bandwidth / copy ({lb.config.dtype})"
                out.append(Target(what, ">= 0.80", f"{tri.fwd_gbps / copy.fwd_gbps:.2f}", tri.fwd_gbps >= 0.8 * copy.fwd_gbps))
                what = f"GPU Triton fwd+bwd bandwidth / copy ({lb.config.dtype})"
                ratio = (tri.fwdbwd_gbps or 0.0) / copy.fwd_gbps
                out.append(Target(what, ">= 0.80", f"{ratio:.2f}", ratio >= 0.8))
    for mb in models:
        c = mb.config
        if c.device.startswith("cuda") and c.amp and c.channels_last:
            gct, plain = _find(mb.rows, "label", "gct_resnet50"), _find(mb.rows, "label", "resnet50")
            if gct is not None and plain is not None and mb.rows[0] is plain:
                mode = "compiled" if c.compile else "eager"
                out.append(_target(f"GPU gct_resnet50 / resnet50 train step, AMP + channels_last ({mode})", 1.10,
                                   gct.train_ratio, interval=gct.train_ratio_ci))
    if not any(t.what.startswith("GPU ") for t in out):  # say so rather than leave them out
        out.append(Target("GPU Triton forward and fwd+bwd bandwidth / copy (no CUDA run: `--device cuda`)", ">= 0.80", None, None))
        out.append(Target("GPU gct_resnet50 / resnet50 train step, AMP + channels_last, eager and compiled "
                          "(no CUDA run: `--device cuda`)", "<= 1.1x", None, None))
    return out


def bench_all(
    *,
    device: str = "cpu",
    compile: bool = True,
    layer_shape: Sequence[int] = (16, 256, 56, 56),
    layer_repeats: int = 20,
    models: Optional[Sequence[str]] = None,
    model_input_size: Sequence[int] = (1, 28, 28),
    batch_size: int = 128,
    model_repeats: int = 20,
    memory_models: Sequence[str] = ("resnet50", "se_resnet50", "gct_resnet50", "gct_resnet50:checkpoint=false"),
    memory_input_size: Sequence[int] = (3, 224, 224),
    gpu_models: Sequence[str] = ("resnet50", "gct_resnet50", "se_resnet50"),
    gpu_input_size: Sequence[int] = (3, 224, 224),
    gpu_batch_size: int = 64,
    command: Optional[str] = None,
    progress: Optional[Callable[[str], None]] = None,
    threads: Optional[Sequence[int]] = None,
) -> SuiteResult:
    """Run the standard layer, model and memory benchmarks and render them as markdown.

    The timed benchmarks run once per torch thread count in ``threads`` (default: 1 and all of
    ``torch.get_num_threads()``), and the targets are judged at each: a kernel that does not scale with
    threads shows up as a ratio that grows with them.

    CPU: the layer at ``layer_shape`` (fp32, contiguous and channels_last), ``models`` (default
    :data:`gctnet.bench.model.DEFAULT_MODELS`: plain, SE, GCT with the default lean-memory path, GCT with
    ``checkpoint=false`` and GCT on PyTorch ops instead of the C++ kernels) at ``model_input_size`` eager
    and (with ``compile``, without the backend variants) under ``torch.compile``, and the saved-activation bytes of ``memory_models`` (the same four variants of
    ResNet-50).  With ``device="cuda"`` additionally: the layer in fp16 channels_last
    (Triton kernels, GB/s vs a copy) and ``gpu_models`` with AMP + channels_last.
    """
    from . import accounting
    from .layer import bench_layer
    from .model import DEFAULT_MODELS, bench_model, parse_model_specs

    models = DEFAULT_MODELS if models is None else models
    say = progress or (lambda _msg: None)
    t_start = time.perf_counter()
    info = machine_info()
    all_threads = torch.get_num_threads()
    thread_counts = list(dict.fromkeys(threads or (1, all_threads)))
    info["thread_counts"] = thread_counts
    passes = []  # (threads, layers, model runs)
    cuda = torch.device(device).type == "cuda"
    layer_cfgs = [dict(dtype="float32", channels_last=False), dict(dtype="float32", channels_last=True)]
    if cuda:
        layer_cfgs.append(dict(dtype="float16", channels_last=True))
    try:
        for n_threads in thread_counts:
            torch.set_num_threads(n_threads)
            layers, model_runs = [], []
            for cfg in layer_cfgs:
                say(f"layer benchmark {cfg} on {device}, {n_threads} thread(s)")
                layers.append(bench_layer(layer_shape, device=device, compile=compile, repeats=layer_repeats, **cfg))
            for use_compile in (False, True) if compile else (False,):
                say(f"model benchmark {'compiled' if use_compile else 'eager'} on {device}, {n_threads} thread(s)")
                # compiled code never runs the eager kernels, so backend variants would only repeat a model
                run_models = [s.label for s in parse_model_specs(list(models)) if not (use_compile and s.backend)]
                model_runs.append(bench_model(
                    run_models, model_input_size, batch_size, device=device, compile=use_compile,
                    repeats=model_repeats, progress=say,
                ))
            if cuda:
                for use_compile in (False, True) if compile else (False,):
                    say(f"GPU model benchmark (AMP + channels_last, {'compiled' if use_compile else 'eager'})")
                    model_runs.append(bench_model(
                        gpu_models, gpu_input_size, gpu_batch_size, num_classes=1000, device=device,
                        compile=use_compile, amp=True, channels_last=True, repeats=model_repeats, progress=say,
                    ))
            passes.append((n_threads, layers, model_runs))
    finally:
        torch.set_num_threads(all_threads)
    memory = []
    for spec in parse_model_specs(list(memory_models)):
        say(f"saved activations of {spec.label}")
        model = spec.build(in_chans=memory_input_size[0])
        model.gctnet_name = spec.label
        memory.append(accounting.model_info(model, memory_input_size, batch_size=2))
    targets: List[Target] = []
    for i, (n_threads, layers, model_runs) in enumerate(passes):
        for t in _targets(layers, model_runs, memory if i == 0 else []):
            if t.measured is not None and not t.what.startswith("saved"):
                t.what = f"{_threads_text(n_threads)}: {t.what}"
            if all(t.what != seen.what for seen in targets):
                targets.append(t)
    seconds = time.perf_counter() - t_start
    markdown = _suite_markdown(info, passes, memory, targets, command, seconds)
    return SuiteResult(info, [lb for p in passes for lb in p[1]], [mb for p in passes for mb in p[2]], memory,
                       targets, markdown, seconds)


def _threads_text(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def _suite_markdown(info, passes, memory, targets, command, seconds) -> str:
    from .accounting import format_table as accounting_table

    parts = [
        "# gctnet benchmarks",
        "",
        f"Generated by `{command or 'gctnet.bench.report.bench_all()'}` in {seconds / 60:.1f} min.",
        "All candidates are timed side by side in one process (interleaved repetitions: each repetition runs "
        "every candidate once, in turn).  Times are medians; a ratio is the median of the per-repetition "
        "ratios, with its distribution-free 95% confidence interval (CI).  A target whose interval reaches "
        "across its limit is marked *within noise*: this machine could not tell, and a quieter one decides.",
        "",
        "## Machine",
        "",
        machine_markdown(info),
        "",
        "## Targets (issues 7 and 16)",
        "",
        markdown_table(
            ["target", "limit", "measured", "met"],
            [[t.what, t.limit, t.measured, _met_text(t)] for t in targets],
        ),
        "",
    ]
    for n_threads, layers, models in passes:
        parts += [f"## Layer ({_threads_text(n_threads)})", ""]
        for lb in layers:
            parts += [lb.markdown(), ""]
        parts += [f"## Models ({_threads_text(n_threads)})", ""]
        for mb in models:
            parts += [mb.markdown(), ""]
    if memory:
        size = "x".join(map(str, memory[0].input_size))
        parts += [
            "## Saved activations",
            "",
            f"Per image at {size} (train-mode forward, batch 2; `gctnet info` conventions).",
            "",
            accounting_table(memory, markdown=True),
            "",
        ]
    return "\n".join(parts)
