"""The C++ CPU kernels (gctnet.kernels.cpu_ops) against the PyTorch (eager) path, and their plumbing.

The kernels are built once per machine (``make install`` does it; otherwise the first use).  Where a
C++ toolchain exists, a failed build fails ``test_kernels_build_where_a_toolchain_exists``; the parity
tests skip only where the kernels cannot be had at all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from gctnet import kernels
from gctnet import functional as F
from helpers import run_gct, to_channels_last
from gctnet.kernels import cpu_ops

STATUS = cpu_ops.load(quiet=True)
needs_cpp = pytest.mark.skipif(not STATUS.available, reason=f"C++ CPU kernels unavailable: {STATUS.reason}")


def _toolchain() -> bool:
    if not (shutil.which("c++") or shutil.which("g++")):
        return False
    try:
        from torch.utils.cpp_extension import verify_ninja_availability

        verify_ninja_availability()
    except Exception:
        return False
    return True


_channels_last = to_channels_last


def _params(c: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    alpha = 1.0 + 0.2 * torch.randn(c, generator=g)
    gamma = torch.randn(c, generator=g)
    beta = 0.5 * torch.randn(c, generator=g)
    return [p.to(dtype).requires_grad_(True) for p in (alpha, gamma, beta)]


_run = run_gct


@pytest.fixture
def count_calls(monkeypatch):
    """Counts calls of the C++ ops, so a test can check that they (not the PyTorch path) ran."""
    calls = {"forward": 0, "forward_into": 0, "backward": 0, "scale": 0, "scale_into": 0}
    for name in calls:
        original = getattr(cpu_ops, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(cpu_ops, name, counted)
    return calls


def test_kernels_build_where_a_toolchain_exists():
    if not _toolchain():
        pytest.skip("no C++ compiler or ninja here: gctnet uses the PyTorch path on CPU")
    assert STATUS.available, f"the C++ CPU kernels failed to build: {STATUS.reason}"
    assert STATUS.path and os.path.isfile(STATUS.path)


CASES = [
    # shape, channels_last, mode, after_relu
    ((3, 8, 5, 7), False, "l2", False),
    ((3, 8, 5, 7), True, "l2", False),
    ((3, 4, 11), False, "l1", False),
    ((3, 4, 11), True, "l2", False),
    ((2, 6, 3, 4, 5), True, "l1", True),
    ((2, 6, 3, 4, 5), False, "l2", False),
    ((3, 8, 5, 7), True, "l1", False),
    ((3, 5, 1, 1), False, "l2", False),
    ((2, 33, 3, 3), True, "l1", True),
]


@needs_cpp
@pytest.mark.parametrize("shape,channels_last,mode,after_relu", CASES)
def test_matches_eager_float64(shape, channels_last, mode, after_relu, count_calls):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    if after_relu:
        x = x.relu()
    if channels_last:
        x = _channels_last(x)
    dy = torch.randn_like(x)
    params = _params(shape[1], torch.float64)
    y, grads = _run("cpp", x, params, dy, mode, after_relu)
    assert count_calls["forward"] == 1 and count_calls["backward"] == 1
    y_ref, grads_ref = _run("eager", x, params, dy, mode, after_relu)
    assert y.dtype == x.dtype and y.stride() == y_ref.stride() == x.stride()
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)
    assert grads[0].stride() == x.stride()


@needs_cpp
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_eager_low_precision(dtype, tol, channels_last):
    torch.manual_seed(1)
    x = (3 * torch.randn(4, 16, 6, 6)).to(dtype)
    if channels_last:
        x = _channels_last(x)
    dy = torch.randn_like(x)
    params = _params(16)
    y, grads = _run("cpp", x, params, dy)
    y_ref, grads_ref = _run("eager", x, params, dy)
    assert y.dtype == dtype and y.stride() == x.stride()
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=tol, atol=tol)
    for g, g_ref in zip(grads, grads_ref):
        assert g.dtype == g_ref.dtype
        torch.testing.assert_close(g.float(), g_ref.float(), rtol=tol, atol=tol * max(1.0, g_ref.abs().max().item()))


@needs_cpp
def test_float16_large_activation_stays_finite():
    # RMS 10 at 56x56: the sum of squares overflows float16, the float32 statistics do not
    x = (10 * torch.randn(2, 4, 56, 56)).half()
    kernels.set_backend("cpp")
    try:
        y = F.gct(x, *[p.detach() for p in _params(4)])
    finally:
        kernels.set_backend(None)
    assert torch.isfinite(y).all()


@needs_cpp
def test_identity_at_init_is_bitwise():
    x = torch.randn(4, 8, 5, 5)
    alpha, gamma, beta = torch.ones(8), torch.zeros(8), torch.zeros(8)
    for p in (alpha, gamma, beta):
        p.requires_grad_(True)
    dy = torch.randn_like(x)
    y, (gx, *_) = _run("cpp", x, (alpha, gamma, beta), dy)
    assert torch.equal(y, x)
    assert torch.equal(gx, dy)  # gamma = 0: the gate's gradient path contributes exactly 0


@needs_cpp
@pytest.mark.parametrize("mode,after_relu", [("l2", False), ("l1", False), ("l1", True)])
def test_gradcheck(mode, after_relu):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    if after_relu:
        x = x.relu() + 0.1
    x.requires_grad_(True)
    params = _params(3, torch.float64)
    kernels.set_backend("cpp")
    try:
        assert torch.autograd.gradcheck(lambda *a: F.gct(*a, mode=mode, after_relu=after_relu), (x, *params))
    finally:
        kernels.set_backend(None)


@needs_cpp
def test_few_samples_run_in_phases_across_threads():
    """Fewer samples than threads (contiguous): the kernels parallelise over (n, c) rows instead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(3)
        x = torch.randn(1, 12, 9, 9, dtype=torch.float64)
        dy = torch.randn_like(x)
        params = _params(12, torch.float64)
        y, grads = _run("cpp", x, params, dy)
        y_ref, grads_ref = _run("eager", x, params, dy)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@needs_cpp
def test_other_strides_and_gradient_layouts():
    torch.manual_seed(4)
    base = torch.randn(3, 10, 6, 6, dtype=torch.float64)
    x = base[:, ::2]  # not dense: copied to contiguous inside
    params = _params(5, torch.float64)
    for dy in (
        torch.randn(3, 5, 6, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last),  # other layout
        torch.ones(1, 1, 1, 1, dtype=torch.float64).expand(3, 5, 6, 6),  # expanded, as from y.sum()
    ):
        y, grads = _run("cpp", x, params, dy)
        y_ref, grads_ref = _run("eager", x, params, dy)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        for g, g_ref in zip(grads, grads_ref):
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@needs_cpp
def test_input_without_grad_skips_grad_x():
    x = torch.randn(2, 3, 4, 4)
    dy = torch.randn_like(x)
    params = _params(3)
    _, grads = _run("cpp", x, params, dy, grad_x=False)
    _, grads_ref = _run("eager", x, params, dy, grad_x=False)
    assert len(grads) == 3
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


@needs_cpp
def test_backward_into_writes_grad_x_into_the_given_gradient():
    from gctnet.surgery import _InnerCtx

    torch.manual_seed(5)
    x = torch.randn(2, 4, 5, 5)
    alpha, gamma, beta = (p.detach() for p in _params(4))
    kernels.set_backend("cpp")
    try:
        ctx = _InnerCtx((True, True, True, True, False, False, False))
        F._GCTFunction.forward(ctx, x, alpha, gamma, beta, 1e-5, "l2", False)
        dy = torch.randn_like(x)
        expected = F._GCTFunction.backward_into(ctx, dy.clone(), reuse_grad=False)
        grad_x = F._GCTFunction.backward_into(ctx, dy, reuse_grad=True)[0]
    finally:
        kernels.set_backend(None)
    assert grad_x.data_ptr() == dy.data_ptr()
    torch.testing.assert_close(grad_x, expected[0], rtol=0, atol=0)


@needs_cpp
def test_gct_conv_lean_path_uses_the_kernels(count_calls):
    from gctnet import apply_gct

    torch.manual_seed(6)
    lean = apply_gct(torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, padding=1)))
    plain = apply_gct(torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, padding=1)), checkpoint=False)
    with torch.no_grad():
        lean[0].gct.gamma.normal_()
    plain.load_state_dict(lean.state_dict())
    x = torch.randn(3, 4, 7, 7)
    kernels.set_backend("cpp")
    try:
        lean(x).square().sum().backward()
        # the lean path writes y into reused buffers (gctnet.kernels.scratch) in both passes
        assert count_calls == {"forward": 0, "forward_into": 1, "backward": 1, "scale": 0, "scale_into": 1}
    finally:
        kernels.set_backend(None)
    kernels.set_backend("eager")
    try:
        plain(x).square().sum().backward()
    finally:
        kernels.set_backend(None)
    for (name, p), q in zip(lean.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


@needs_cpp
def test_backward_follows_the_forwards_choice_of_kernels(count_calls):
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    params = _params(3)
    with kernels.use_backend("cpp"):
        y = F.gct(x, *params)
    with kernels.use_backend("eager"):
        y.sum().backward()
    assert count_calls["forward"] == 1 and count_calls["backward"] == 1
    with kernels.use_backend("eager"):
        y = F.gct(x, *params)
    with kernels.use_backend("cpp"):
        y.sum().backward()
    assert count_calls["forward"] == 1 and count_calls["backward"] == 1
    assert kernels._backend is None


@needs_cpp
def test_opcheck():
    torch.manual_seed(7)
    x = torch.randn(2, 3, 4, 5)
    alpha, gamma, beta = (p.detach() for p in _params(3))
    torch.library.opcheck(torch.ops.gctnet_cpu.forward.default, (x, alpha, gamma, beta, 1e-5, "l2", False))
    y, t, s, e, ni = cpu_ops.forward(x, alpha, gamma, beta, 1e-5, "l2", False)
    torch.library.opcheck(torch.ops.gctnet_cpu.scale.default, (x, t))
    args = (torch.randn_like(x), x, alpha, gamma, t, s, e, ni, "l2", False, torch.empty_like(x))
    torch.library.opcheck(torch.ops.gctnet_cpu.backward.default, args)
    torch.library.opcheck(
        torch.ops.gctnet_cpu.forward_into.default, (x, alpha, gamma, beta, 1e-5, "l2", False, torch.empty_like(x))
    )
    torch.library.opcheck(torch.ops.gctnet_cpu.scale_into.default, (x, t, torch.empty_like(x)))


@needs_cpp
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_into_variants_write_the_same_output_into_the_given_buffer(channels_last, dtype):
    torch.manual_seed(8)
    x = torch.randn(3, 5, 4, 6, dtype=dtype)
    x = to_channels_last(x) if channels_last else x
    alpha, gamma, beta = (torch.randn(5, dtype=dtype) for _ in range(3))
    y, *stats = cpu_ops.forward(x, alpha, gamma, beta, 1e-5, "l1", False)
    out = torch.full_like(x, float("nan"))
    got = cpu_ops.forward_into(x, alpha, gamma, beta, 1e-5, "l1", False, out)
    assert got[0] is out and out.stride() == x.stride()
    torch.testing.assert_close(out, y, rtol=0, atol=0)
    for a, b in zip(got[1:], stats):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    out2 = torch.full_like(x, float("nan"))
    assert cpu_ops.scale_into(x, stats[0], out2) is out2
    torch.testing.assert_close(out2, cpu_ops.scale(x, stats[0]), rtol=0, atol=0)


@needs_cpp
def test_into_variants_reject_a_mismatched_buffer():
    x = torch.randn(2, 3, 4, 5)
    alpha, gamma, beta = torch.ones(3), torch.zeros(3), torch.zeros(3)
    t = torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match="out must have x's shape"):
        cpu_ops.forward_into(x, alpha, gamma, beta, 1e-5, "l2", False, torch.empty(2, 3, 4, 4))
    with pytest.raises(RuntimeError, match="strides"):
        cpu_ops.scale_into(x, t, to_channels_last(torch.empty_like(x)))
    with pytest.raises(RuntimeError, match="out has dtype"):
        cpu_ops.scale_into(x, t, torch.empty_like(x, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="must not share memory"):
        cpu_ops.scale_into(x, t, x)


@needs_cpp
def test_ops_reject_bad_input():
    alpha, gamma, beta = torch.ones(3), torch.zeros(3), torch.zeros(3)
    with pytest.raises(RuntimeError, match="mode must be 'l2' or 'l1'"):
        cpu_ops.forward(torch.randn(2, 3, 4), alpha, gamma, beta, 1e-5, "l3", False)
    with pytest.raises(RuntimeError, match=r"\(N, C, \*spatial\)"):
        cpu_ops.forward(torch.randn(2, 3), alpha, gamma, beta, 1e-5, "l2", False)
    with pytest.raises(RuntimeError, match="must have 4 elements"):
        cpu_ops.forward(torch.randn(2, 4, 5), alpha, gamma, beta, 1e-5, "l2", False)


def test_unsupported_tensors_take_the_pytorch_path():
    assert not cpu_ops.supports(torch.randn(0, 3, 4))
    assert not cpu_ops.supports(torch.randn(2, 3, 4, device="meta"))
    assert cpu_ops.supports(torch.randn(2, 3, 4)) and cpu_ops.supports(torch.randn(2, 3, 4, dtype=torch.bfloat16))
    kernels.set_backend("cpp")
    try:
        assert kernels.cpu_kernels(torch.randn(0, 3, 4)) is None
        y = F.gct(torch.randn(0, 3, 4), torch.ones(3), torch.zeros(3), torch.zeros(3))
        assert y.shape == (0, 3, 4)
    finally:
        kernels.set_backend(None)


def test_eager_backend_never_loads_the_kernels(monkeypatch, count_calls):
    kernels.set_backend("eager")
    try:
        assert kernels.cpu_kernels(torch.randn(2, 3, 4)) is None
        F.gct(torch.randn(2, 3, 4, requires_grad=True), *_params(3)).sum().backward()
    finally:
        kernels.set_backend(None)
    assert not any(count_calls.values())


def test_unavailable_kernels_warn_once_under_auto_and_raise_under_cpp(monkeypatch):
    monkeypatch.setattr(cpu_ops, "_status", cpu_ops.KernelStatus(False, None, "no compiler (test)"))
    monkeypatch.setattr(kernels, "_warned_cpp", False)
    x = torch.randn(2, 3, 4)
    params = [p.detach() for p in _params(3)]
    kernels.set_backend("auto")
    try:
        with pytest.warns(RuntimeWarning, match=r"could not be built.*no compiler \(test\)"):
            y = F.gct(x, *params)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            F.gct(x, *params)  # no second warning
        kernels.set_backend("cpp")
        with pytest.raises(RuntimeError, match="GCTNET_BACKEND=cpp but the C\\+\\+ CPU kernels are unavailable"):
            F.gct(x, *params)
    finally:
        kernels.set_backend(None)
    kernels.set_backend("eager")
    try:
        torch.testing.assert_close(y, F.gct(x, *params))
    finally:
        kernels.set_backend(None)


def test_isa_without_kernels_says_why(monkeypatch):
    monkeypatch.setattr(cpu_ops, "load", lambda **kw: cpu_ops.KernelStatus(False, None, "no C++ compiler found"))
    with pytest.raises(RuntimeError, match="unavailable.*no C\\+\\+ compiler found"):
        cpu_ops.isa()


def test_failed_build_is_reported_not_raised(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    def broken(**kwargs):
        raise RuntimeError("g++: fatal error: no input files\nsecond line")

    monkeypatch.setenv("GCTNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_ops, "_ops_registered", lambda: False)
    monkeypatch.setattr(cpp_extension, "load", broken)
    st = cpu_ops._build_or_load(verbose=False, quiet=True)
    assert not st.available and st.path is None
    assert st.reason == "RuntimeError: g++: fatal error: no input files second line"
    assert "unavailable: RuntimeError" in st.describe()
    assert cpu_ops.cache_dir().is_relative_to(tmp_path)


def test_build_falls_back_to_no_libmvec_when_linking_it_fails(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    calls = []

    def fake_load(**kwargs):
        calls.append(kwargs["extra_ldflags"])
        if "-lmvec" in kwargs["extra_ldflags"]:
            raise RuntimeError("ld: cannot find -lmvec")
        return str(Path(kwargs["build_directory"]) / "gctnet_cpu.so")

    monkeypatch.setenv("GCTNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_ops, "_ops_registered", lambda: False)
    monkeypatch.setattr(cpp_extension, "load", fake_load)
    with_mvec = cpu_ops._Variant(cpu_ops._CFLAGS + ("-DGCTNET_USE_LIBMVEC=1",), ("-lmvec",))
    monkeypatch.setattr(cpu_ops, "_VARIANTS", (with_mvec, cpu_ops._Variant(cpu_ops._CFLAGS)))
    st = cpu_ops._build_or_load(verbose=False, quiet=True)
    assert calls == [["-lmvec"], []]
    assert st.available and st.built and not st.libmvec
    assert "built without libmvec" in st.note and "cannot find -lmvec" in st.describe()
    # the fallback's folder carries the marker, the preferred one does not: a later process loads it
    assert (cpu_ops.cache_dir(cpu_ops._VARIANTS[1]) / cpu_ops._OK_MARKER).is_file()
    assert not (cpu_ops.cache_dir() / cpu_ops._OK_MARKER).is_file()

    def failing(**kwargs):
        raise RuntimeError("ld: cannot find -lmvec" if "-lmvec" in kwargs["extra_ldflags"] else "compile error")

    monkeypatch.setattr(cpp_extension, "load", failing)
    monkeypatch.setattr(cpu_ops, "_VARIANTS", (with_mvec, cpu_ops._Variant(cpu_ops._CFLAGS + ("-DX",))))
    st = cpu_ops._build_or_load(verbose=False, quiet=True)
    assert not st.available
    assert st.reason == "with libmvec: RuntimeError: ld: cannot find -lmvec; without libmvec: RuntimeError: compile error"


def test_backend_names_are_checked(monkeypatch):
    monkeypatch.setenv("GCTNET_BACKEND", "CPP")
    assert kernels.get_backend() == "cpp"
    monkeypatch.setenv("GCTNET_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"one of \('auto', 'triton', 'cpp', 'eager'\).*GCTNET_BACKEND"):
        kernels.get_backend()
    with pytest.raises(ValueError, match="set_backend"):
        kernels.set_backend("native")


@needs_cpp
def test_cached_build_loads_in_a_fresh_process_without_compiling():
    code = (
        "import sys; sys.modules['torch.utils.cpp_extension'] = None\n"  # any compile attempt would fail
        "from gctnet.kernels import cpu_ops\n"
        "st = cpu_ops.load(quiet=True)\n"
        "print(st.available, st.built, st.path)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["True", "False"], proc.stdout + proc.stderr


def test_kernels_command_reports_backend_and_state(capsys, monkeypatch):
    from gctnet.cli import main

    monkeypatch.setenv("GCTNET_BACKEND", "eager")
    assert main(["kernels", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["backend"] == "eager" and rep["backend_source"] == "GCTNET_BACKEND"
    assert rep["cpu_path"].startswith("PyTorch ops")
    monkeypatch.delenv("GCTNET_BACKEND")
    code = main(["kernels", "--build"])
    out = capsys.readouterr().out
    assert "backend        auto (from default" in out
    if STATUS.available:
        assert code == 0 and "CPU tensors    C++ kernels" in out and "loaded" in out
        assert f"instructions   {cpu_ops.isa()}" in out
    else:
        assert code == 1 and "unavailable" in out


# --------------------------------------------------------------------------------------------------
# instruction sets: the AVX2+FMA copy of the loops against the baseline (SSE2) copy
# --------------------------------------------------------------------------------------------------
def _has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def _all_ops(x, alpha, gamma, beta, mode, after_relu, dy):
    y, t, s, e, ni = cpu_ops.forward(x, alpha, gamma, beta, 1e-5, mode, after_relu)
    z = cpu_ops.scale(x, t)
    gx = torch.empty_like(x)
    grads = cpu_ops.backward(dy, x, alpha, gamma, t, s, e, ni, mode, after_relu, gx)
    return (y, t, s, e, ni, z, gx, *grads)


@needs_cpp
@pytest.mark.skipif(not _has_avx2(), reason="this CPU has no AVX2/FMA")
@pytest.mark.parametrize(
    "shape,channels_last",
    [((5, 7, 9, 11), False), ((5, 7, 9, 11), True), ((1, 24, 33), False), ((4, 64, 7, 7), False), ((4, 64, 7, 7), True)],
)
@pytest.mark.parametrize("mode,after_relu", [("l2", False), ("l1", False), ("l1", True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_avx2_kernels_match_the_baseline_build(shape, channels_last, mode, after_relu, dtype):
    if os.environ.get("GCTNET_CPU_ISA") != "baseline":
        assert cpu_ops.isa() == "avx2"  # the default on an AVX2 CPU
    g = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x = (x.relu() if after_relu else x).to(dtype)
    x = _channels_last(x) if channels_last else x
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    dy = _channels_last(dy) if channels_last else dy
    alpha, gamma, beta = (p.detach() for p in _params(shape[1], dtype, seed=3))
    with cpu_ops.use_isa("avx2") as name:
        assert name == "avx2"
        fast = _all_ops(x, alpha, gamma, beta, mode, after_relu, dy)
    with cpu_ops.use_isa("baseline") as name:
        assert name == "baseline"
        base = _all_ops(x, alpha, gamma, beta, mode, after_relu, dy)
    # FMA contraction and wider partial sums change roundings only
    tol = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2e-2}[dtype]
    for a, b in zip(fast, base):
        assert a.stride() == b.stride()
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@needs_cpp
def test_isa_selection_is_checked():
    assert cpu_ops.isa() in cpu_ops.ISAS
    with pytest.raises(ValueError, match="isa must be one of"):
        cpu_ops.isa("sse9")
    with pytest.raises(RuntimeError, match="isa must be"):
        torch.ops.gctnet_cpu.isa("sse9")
    if not _has_avx2():
        with pytest.raises(RuntimeError, match="AVX2"):
            cpu_ops.isa("avx2")
    assert cpu_ops.isa("auto") == ("avx2" if _has_avx2() else "baseline")


@needs_cpp
def test_baseline_isa_from_the_environment():
    code = "from gctnet.kernels import cpu_ops; cpu_ops.load(quiet=True); print(cpu_ops.isa())"
    env = {**os.environ, "GCTNET_CPU_ISA": "baseline"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "baseline"


@needs_cpp
@pytest.mark.parametrize("channels", [1, 7, 37, 256])
def test_float32_gate_math_is_accurate_over_the_whole_tanh_range(channels):
    """The per-sample gate math (vector tanhf from libmvec where available) against float64 math, for
    gate pre-activations from deep saturation to 0, and channel counts that are not multiples of a vector."""
    g = torch.Generator().manual_seed(12)
    n = 64
    x = torch.randn(n, channels, 3, 3, generator=g)
    alpha = torch.rand(channels, generator=g) + 0.5
    gamma = 4.0 * torch.randn(channels, generator=g)
    beta = torch.linspace(-12.0, 12.0, channels)
    t = cpu_ops.forward(x, alpha, gamma, beta, 1e-5, "l2", False)[1]
    ref = F._stats(x.double(), alpha.double(), gamma.double(), beta.double(), 1e-5, "l2", False)[0]
    assert t.dtype == torch.float32
    err = (t.double() - ref).abs()
    # float32 rounding of z = gamma * s * norm_inv + beta (|beta| up to 12) bounds the worst case; a wrong
    # tanh would be off by far more, and typical errors stay at a few float32 ulps
    assert err.max() < 1e-5 and err.median() < 1e-7, (err.max(), err.median())
    assert bool((t.abs() <= 1).all())


def test_cli_checks_the_gctnet_environment_up_front(monkeypatch, capsys):
    from gctnet.cli import main

    for var, value, msg in (
        ("GCTNET_CPU_ISA", "avx9", "GCTNET_CPU_ISA must be 'baseline'"),
        ("GCTNET_SCRATCH_MB", "lots", "GCTNET_SCRATCH_MB must be a number"),
        ("GCTNET_BACKEND", "fast", "GCT backend must be one of"),
    ):
        monkeypatch.setenv(var, value)
        with pytest.raises(SystemExit) as exc:
            main(["kernels"])
        assert exc.value.code == 2 and msg in capsys.readouterr().err
        monkeypatch.delenv(var)


def test_unknown_cpu_isa_setting_warns_when_the_kernels_load(monkeypatch):
    monkeypatch.setenv("GCTNET_CPU_ISA", "avx9")
    monkeypatch.setattr(cpu_ops, "_status", None)
    monkeypatch.setattr(cpu_ops, "_build_or_load", lambda verbose, quiet: cpu_ops.KernelStatus(False, None, "test"))
    with pytest.warns(RuntimeWarning, match="GCTNET_CPU_ISA='avx9' is ignored"):
        cpu_ops.load(quiet=True)
