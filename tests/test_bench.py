"""Benchmark tools: structure and sanity of results on tiny inputs (no timing thresholds)."""

from __future__ import annotations

import math

import pytest
import torch

from gctnet import kernels
from gctnet.bench import layer as L
from gctnet.bench import model as M
from gctnet.bench import report as R
from gctnet.bench.memory import saved_tensor_bytes
from gctnet.cli import main
from gctnet.kernels import cpu_ops

CPP = cpu_ops.load(quiet=True).available


def _positive(v) -> bool:
    return v is not None and math.isfinite(v) and v > 0


# --------------------------------------------------------------------------------------------------
# report helpers
# --------------------------------------------------------------------------------------------------
def test_interleaved_times_runs_candidates_in_turn():
    calls = []
    timings = R.interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4  # warm-up round then three interleaved repetitions
    assert set(timings) == {"a", "b"}
    assert all(len(t.samples) == 3 and t.median >= 0 for t in timings.values())
    with pytest.raises(ValueError, match="repeats"):
        R.interleaved_times({"a": lambda: None}, repeats=0)


def test_timing_median_and_spread():
    t = R.Timing([1.0, 2.0, 3.0, 4.0, 100.0])
    assert t.median == 3.0
    assert t.spread > 0
    assert R.Timing([2.0]).spread == 0.0


def test_median_interval_uses_binomial_order_statistics():
    # n = 20: P(Binomial(20, 1/2) <= 5) = 0.0207 <= 0.025 < P(<= 6) = 0.0577 -> ranks 6 and 15
    assert R.median_interval(range(1, 21)) == (6.0, 15.0)
    assert R.median_interval([5, 1, 4, 2, 3, 6]) == (1.0, 6.0)  # n = 6: the extremes cover 96.9%
    assert R.median_interval(range(1, 11)) == (2.0, 9.0)  # n = 10: P(<= 1) = 0.0107, P(<= 2) = 0.0547
    low, high = R.median_interval(range(1, 21), confidence=0.5)
    assert 6 < low <= high < 15  # lower confidence, narrower interval
    assert all(math.isnan(v) for v in R.median_interval(range(1, 6)))  # n = 5: even [min, max] covers < 95%
    assert all(math.isnan(v) for v in R.median_interval([]))
    with pytest.raises(ValueError, match="confidence"):
        R.median_interval([1.0], confidence=1.0)


def test_paired_ratio_pairs_repetitions_not_medians():
    # a slow spell (repetitions 3-5) triples both candidates' times: each timing's spread is huge, but
    # every paired ratio is 1.2, so the ratio and its interval are exact
    ref = R.Timing([1.0, 1.0, 3.0, 3.0, 3.0, 1.0, 1.0])
    cand = R.Timing([1.2, 1.2, 3.6, 3.6, 3.6, 1.2, 1.2])
    assert ref.spread > 1.0
    r = R.paired_ratio(cand, ref)
    assert r.value == pytest.approx(1.2) and r.interval == pytest.approx((1.2, 1.2)) and r.n == 7
    noisy = R.paired_ratio(R.Timing([1.1, 1.3, 1.2, 1.0, 1.25, 1.15]), R.Timing([1.0] * 6))
    assert noisy.value == pytest.approx(1.175) and noisy.interval == pytest.approx((1.0, 1.3))
    assert noisy.text() == "1.175x (95% CI 1.000-1.300)"
    short = R.paired_ratio(R.Timing([2.0, 2.0]), R.Timing([1.0, 1.0]))
    assert short.value == 2.0 and short.interval is None and short.text() == "2.000x"
    with pytest.raises(ValueError, match="same interleaved run"):
        R.paired_ratio(R.Timing([1.0, 2.0]), R.Timing([1.0]))


@pytest.mark.parametrize(
    "value, interval, verdict",
    [
        (1.05, (1.02, 1.08), "yes"),
        (1.08, (1.04, 1.13), "yes, within noise"),
        (1.12, (1.09, 1.15), "no, within noise"),
        (1.15, (1.11, 1.19), "no"),
        (1.05, None, "yes"),
        (1.15, None, "no"),
    ],
)
def test_target_verdict_says_when_the_interval_spans_the_limit(value, interval, verdict):
    t = R._target("x", 1.10, value, interval=interval)
    assert t.verdict == verdict and t.met is (value <= 1.10)
    assert ("95% CI" in t.measured) is (interval is not None)
    assert R._met_text(t) == ("**no**" if verdict == "no" else verdict)


def test_machine_info_describes_the_machine():
    info = R.machine_info()
    assert info["torch"] == torch.__version__
    assert info["cores"] >= 1 and info["cpu"]
    text = R.machine_markdown(info)
    assert "CPU:" in text and torch.__version__ in text and "GPU:" in text


def test_tables_align_and_render_markdown():
    headers, rows = ["name", "value"], [["a", "1.0"], ["long name", None]]
    text = R.format_table(headers, rows)
    lines = text.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1  # aligned
    md = R.markdown_table(headers, rows)
    assert md.splitlines()[1] == "|---|---:|" and "| long name | - |" in md


# --------------------------------------------------------------------------------------------------
# layer benchmark
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,channels_last,mode", [((2, 8, 6, 6), False, "l2"), ((2, 8, 6, 6), True, "l1"), ((2, 4, 10), False, "l2")])
def test_bench_layer_structure_and_saved_bytes(shape, channels_last, mode):
    result = L.bench_layer(shape, repeats=2, warmup=0, compile=False, channels_last=channels_last, mode=mode)
    names = [r.name for r in result.rows]
    cpp = ["cpp"] if CPP else []
    assert names == ["reference", "gctnet", *cpp, "multiply", "copy"]
    if CPP:
        assert result.row("cpp").label == f"gctnet C++ kernels (CPU, {cpu_ops.instruction_set()})"
    x_bytes = math.prod(shape) * 4
    assert result.input_bytes == x_bytes
    for r in result.rows:
        assert _positive(r.fwd_ms) and _positive(r.fwd_ratio) and _positive(r.fwd_gbps)
        if r.name != "copy":
            assert _positive(r.fwdbwd_ms) and _positive(r.fwdbwd_ratio)
    assert result.row("multiply").fwd_ratio == 1.0 and result.row("multiply").fwdbwd_ratio == 1.0
    n, c = shape[:2]
    gct, ref = result.row("gctnet").saved, result.row("reference").saved
    # gctnet keeps x plus a few per-(n, c) statistics, never a second full-size tensor
    assert gct.full == x_bytes
    assert 0 < gct.stats <= 8 * n * c * 4
    assert gct.total == gct.full + gct.stats
    assert ref.total > gct.total  # the reference keeps more
    assert result.row("gctnet").saved_ratio == pytest.approx(gct.total / x_bytes)
    if CPP:  # the C++ kernels save the same: x and per-(n, c) statistics
        assert result.row("cpp").saved.full == x_bytes and result.row("cpp").saved.stats == gct.stats
    assert result.row("multiply").saved.total == 0  # x * w keeps only w (a parameter): grad_x = dy * w
    headers, rows = result.table()
    assert len(rows) == len(names) and all(len(row) == len(headers) for row in rows)
    assert "x * w" in result.format() and result.markdown().count("|") > 20


def test_bench_layer_compiled_row():
    result = L.bench_layer((2, 4, 4, 4), repeats=1, warmup=0, compile=True)
    row = result.row("compiled")
    assert _positive(row.fwd_ms) and _positive(row.fwdbwd_ms) and row.compile_s > 0
    assert row.saved.full == result.input_bytes  # compiled training graph also saves only x full-size
    assert kernels.backend._explicit is None  # the benchmark restored the (unset) backend choice


def test_saved_split_matches_saved_tensor_bytes_total():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(1, 3, 1, 1, requires_grad=True)

    def fn():
        return (x.pow(2) * w).sum(dim=(2, 3), keepdim=True) * x

    _, split = L.saved_split(fn, stats_max_bytes=2 * 3 * 8)
    _, saved = saved_tensor_bytes(fn)
    assert split.total == saved.total and split.count == saved.count
    assert split.full == split.total - split.stats
    # x (768 B) and x**2 (768 B) full-size; w (12 B) and the (2,3,1,1) sum (24 B) are statistics
    assert split.full == 2 * 2 * 3 * 64 * 4 and split.stats == 12 + 24


def test_parse_shape_and_dtype_errors():
    assert L.parse_shape("16,256,56,56") == (16, 256, 56, 56)
    assert L.parse_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="N,C followed by 1-3"):
        L.parse_shape("2,3")
    with pytest.raises(ValueError, match="comma-separated integers"):
        L.parse_shape("2,a,3")
    with pytest.raises(ValueError, match="unknown dtype"):
        L.parse_dtype("int8")


# --------------------------------------------------------------------------------------------------
# model benchmark
# --------------------------------------------------------------------------------------------------
def test_parse_model_specs():
    specs = M.parse_model_specs("resnet20, gct_resnet20:checkpoint+mode=l1")
    assert [s.label for s in specs] == ["resnet20", "gct_resnet20:checkpoint+mode=l1"]
    assert dict(specs[1].gct_kwargs) == {"checkpoint": True, "mode": "l1"}
    with pytest.raises(ValueError, match="unknown model 'resnet2'.*did you mean"):
        M.parse_model_specs("resnet2")
    with pytest.raises(ValueError, match="only apply to gct_ models"):
        M.parse_model_specs("resnet20:checkpoint")
    with pytest.raises(ValueError, match="no models"):
        M.parse_model_specs(" , ")
    spec = M.parse_model_specs("gct_resnet20:backend=EAGER+mode=l1")[0]
    assert spec.backend == "eager" and dict(spec.gct_kwargs) == {"mode": "l1"}  # not an apply_gct option
    with pytest.raises(ValueError, match="backend must be one of"):
        M.parse_model_specs("gct_resnet20:backend=fast")
    with pytest.raises(ValueError, match="only apply to gct_ models"):
        M.parse_model_specs("resnet20:backend=eager")


def test_bench_model_runs_each_model_under_its_backend(monkeypatch):
    from gctnet.kernels import cpu_ops

    if not CPP:
        pytest.skip("C++ CPU kernels unavailable")
    import dataclasses

    calls = []
    counted = dataclasses.replace(cpu_ops.KERNELS, forward=lambda *a: calls.append(1) or cpu_ops.forward(*a))
    monkeypatch.setattr(cpu_ops, "KERNELS", counted)
    before = kernels.get_backend()
    M.bench_model(["gct_resnet20:backend=eager"], (1, 8, 8), batch_size=2, repeats=1, warmup=0)
    assert calls == []
    M.bench_model(["gct_resnet20:backend=cpp"], (1, 8, 8), batch_size=2, repeats=1, warmup=0)
    assert len(calls) > 0
    assert kernels.get_backend() == before  # restored


def test_bench_model_structure_and_ratios():
    result = M.bench_model(
        ["resnet20", "gct_resnet20:checkpoint=false", "gct_resnet20"], (1, 8, 8), batch_size=4, repeats=2, warmup=0
    )
    assert [r.label for r in result.rows] == ["resnet20", "gct_resnet20:checkpoint=false", "gct_resnet20"]
    first, gct, ckpt = result.rows  # gct: conv keeps the GCT output; ckpt: the default lean path
    assert first.train_ratio == 1.0 and first.infer_ratio == 1.0 and first.saved_ratio == 1.0
    assert first.train_ratio_ci is None  # 2 repetitions: too few for a 95% interval
    for r in result.rows:
        assert _positive(r.train_ms) and _positive(r.infer_ms) and _positive(r.train_ratio)
        assert _positive(r.train_images_per_s) and _positive(r.saved_bytes_per_image)
    assert gct.params > first.params
    assert gct.saved_bytes_per_image > first.saved_bytes_per_image  # GCT outputs kept for the convs
    assert ckpt.saved_bytes_per_image < gct.saved_bytes_per_image  # the lean-memory option recomputes them
    assert "resnet20" in result.format() and result.markdown().startswith("**models at 1x8x8")


def test_bench_model_ratio_intervals_bracket_the_ratio():
    result = M.bench_model(["resnet20", "gct_resnet20"], (1, 8, 8), batch_size=2, repeats=6, warmup=0)
    first, gct = result.rows
    assert first.train_ratio == 1.0 and first.train_ratio_ci == (1.0, 1.0)
    for ratio, ci in ((gct.train_ratio, gct.train_ratio_ci), (gct.infer_ratio, gct.infer_ratio_ci)):
        assert ci is not None and ci[0] <= ratio <= ci[1]
    headers, rows = result.table()
    col = headers.index("train x CI")
    assert rows[0][col] is None and rows[1][col] == f"{gct.train_ratio_ci[0]:.3f}-{gct.train_ratio_ci[1]:.3f}"
    assert any("95% confidence interval" in n for n in result.notes)


def test_bench_model_validates_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        M.bench_model(["resnet20"], (1, 8, 8), batch_size=0)
    with pytest.raises(ValueError, match="channels_last needs a 2-D"):
        M.bench_model(["resnet20"], (1, 8), batch_size=2, channels_last=True)


# --------------------------------------------------------------------------------------------------
# suite, targets and CLI
# --------------------------------------------------------------------------------------------------
def test_bench_all_writes_a_report_with_targets():
    result = R.bench_all(
        compile=False, layer_shape=(2, 4, 6, 6), layer_repeats=1,
        models=("resnet20", "gct_resnet20"), model_input_size=(1, 8, 8), batch_size=4, model_repeats=1,
        memory_models=("resnet20", "gct_resnet20"), memory_input_size=(1, 8, 8), command="gctnet bench all --test",
        threads=(1, 2),
    )
    md = result.markdown
    for heading in ("# gctnet benchmarks", "## Machine", "## Targets", "## Layer (1 thread)", "## Models (1 thread)",
                    "## Layer (2 threads)", "## Models (2 threads)", "## Saved activations"):
        assert heading in md
    assert "`gctnet bench all --test`" in md and torch.__version__ in md and "torch threads 1, 2 (one pass each)" in md
    assert len(result.layers) == 4 and len(result.models) == 2 and len(result.memory) == 2
    assert torch.get_num_threads() == result.machine["torch_threads"]  # restored
    whats = [t.what for t in result.targets]
    for threads in ("1 thread", "2 threads"):  # every timing target judged at both thread counts
        assert any(w.startswith(f"{threads}: ") and "forward / x*w" in w for w in whats)
        assert any(w.startswith(f"{threads}: ") and "train step (eager)" in w for w in whats)
    assert len([w for w in whats if w.startswith("saved")]) == len(set(w for w in whats if w.startswith("saved")))
    gpu = [t for t in result.targets if t.what.startswith("GPU ")]
    assert len(gpu) == 2 and all(t.met is None and t.measured is None for t in gpu)  # listed, not measured
    assert "| not measured |" in md
    for t in result.targets:
        if t not in gpu:
            assert t.met in (True, False) and t.measured is not None
            assert t.verdict in ("yes", "no", "yes, within noise", "no, within noise")


def test_cli_bench_layer_and_usage_errors(capsys):
    assert main(["bench", "layer", "--shape", "2,4,5,5", "--repeats", "1", "--warmup", "0", "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert "reference formula" in out and "x * w (floor unit)" in out
    for argv, msg in (
        (["bench", "layer", "--shape", "2,4"], "N,C followed by"),
        (["bench", "layer", "--repeats", "0"], "--repeats must be >= 1"),
        (["bench", "model", "--models", "nope"], "unknown model"),
        (["bench", "all", "--markdown", "/nonexistent-gctnet-dir/B.md"], "does not exist; create it first"),
        (["bench", "all", "--markdown", "."], "is a folder"),
        (["bench", "all", "--threads", "1,x"], "--threads must be comma-separated thread counts"),
        (["bench", "all", "--threads", "0"], "--threads must be thread counts >= 1"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert msg in capsys.readouterr().err


def test_cli_bench_model_json(capsys):
    import json

    argv = ["bench", "model", "--models", "resnet20,se_resnet20", "--input-size", "1,8,8", "--batch-size", "2",
            "--repeats", "1", "--warmup", "0", "--json"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in data["rows"]] == ["resnet20", "se_resnet20"]
    assert data["rows"][0]["train_ratio"] == 1.0
