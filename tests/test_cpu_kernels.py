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
    """Counts calls of the C++ kernels, so a test can check that they (not the PyTorch ops) ran."""
    import dataclasses

    calls = {"forward": 0, "backward": 0, "scale": 0}

    def counted(name):
        def call(*args):
            calls[name] += 1
            return getattr(cpu_ops, name)(*args)
        return call

    class Passed(dict):  # every self-check verdict: passed (the check itself is tested in test_kernel_check.py)
        def __contains__(self, key):
            return True

        def __getitem__(self, key):
            return None

    monkeypatch.setattr(cpu_ops, "KERNELS", dataclasses.replace(cpu_ops.KERNELS, **{n: counted(n) for n in calls}))
    monkeypatch.setattr(kernels.ops, "_verdicts", Passed())
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
        # the lean path: the forward, the rebuilt gated input (scale) and the backward, all in C++
        assert count_calls == {"forward": 1, "backward": 1, "scale": 1}
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


@needs_cpp
def test_ops_reject_bad_input():
    alpha, gamma, beta = torch.ones(3), torch.zeros(3), torch.zeros(3)
    with pytest.raises(RuntimeError, match="mode must be 'l2' or 'l1'"):
        cpu_ops.forward(torch.randn(2, 3, 4), alpha, gamma, beta, 1e-5, "l3", False)
    with pytest.raises(RuntimeError, match=r"\(N, C, \*spatial\)"):
        cpu_ops.forward(torch.randn(2, 3), alpha, gamma, beta, 1e-5, "l2", False)
    with pytest.raises(RuntimeError, match="must have 4 elements"):
        cpu_ops.forward(torch.randn(2, 4, 5), alpha, gamma, beta, 1e-5, "l2", False)


def test_empty_and_meta_tensors_take_the_pytorch_ops():
    from gctnet.kernels import ops

    with kernels.use_backend("cpp"):
        assert ops.kernels_for(torch.randn(0, 3, 4)) is ops.COMPOSITE
        y = F.gct(torch.randn(0, 3, 4), torch.ones(3), torch.zeros(3), torch.zeros(3))
        assert y.shape == (0, 3, 4)
        y = F.gct(torch.randn(2, 3, 4, device="meta"), *(torch.ones(3, device="meta") for _ in range(3)))
        assert y.shape == (2, 3, 4) and y.device.type == "meta"
        if STATUS.available:
            assert ops.kernels_for(torch.randn(2, 3, 4, dtype=torch.bfloat16)).name == "C++"


def test_eager_backend_never_loads_the_kernels(monkeypatch, count_calls):
    kernels.set_backend("eager")
    try:
        assert kernels.ops.kernels_for(torch.randn(2, 3, 4)) is kernels.ops.COMPOSITE
        F.gct(torch.randn(2, 3, 4, requires_grad=True), *_params(3)).sum().backward()
    finally:
        kernels.set_backend(None)
    assert not any(count_calls.values())


def test_unavailable_kernels_warn_once_under_auto_and_raise_under_cpp(monkeypatch):
    monkeypatch.setattr(cpu_ops, "_status", cpu_ops.KernelStatus(False, None, "no compiler (test)"))
    monkeypatch.setattr(kernels.ops, "_failed", {})
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


def test_instruction_set_without_kernels_says_why(monkeypatch):
    monkeypatch.setattr(cpu_ops, "load", lambda **kw: cpu_ops.KernelStatus(False, None, "no C++ compiler found"))
    with pytest.raises(RuntimeError, match="unavailable.*no C\\+\\+ compiler found"):
        cpu_ops.instruction_set()


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
    with_mvec = cpu_ops._Variant(cpu_ops._CFLAGS + ("-DGCTNET_USE_LIBMVEC=1",), cpu_ops._LDFLAGS + ("-lmvec",))
    monkeypatch.setattr(cpu_ops, "_VARIANTS", (with_mvec, cpu_ops._Variant(cpu_ops._CFLAGS, cpu_ops._LDFLAGS)))
    st = cpu_ops._build_or_load(verbose=False, quiet=True)
    assert calls == [[*cpu_ops._LDFLAGS, "-lmvec"], [*cpu_ops._LDFLAGS]]
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
    from gctnet.kernels import backend

    monkeypatch.setattr(backend, "_from_env", None)  # as in a fresh process: the variable is read once
    monkeypatch.setenv("GCTNET_BACKEND", "CPP")
    assert kernels.get_backend() == "cpp"
    monkeypatch.setenv("GCTNET_BACKEND", "eager")
    assert kernels.get_backend() == "cpp"  # read once, not per call
    monkeypatch.setattr(backend, "_from_env", None)
    monkeypatch.setenv("GCTNET_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"one of \('auto', 'triton', 'cpp', 'eager'\).*GCTNET_BACKEND"):
        kernels.get_backend()
    with pytest.raises(ValueError, match="set_backend"):
        kernels.set_backend("native")
    monkeypatch.setattr(backend, "_from_env", None)


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
    from gctnet.kernels import backend

    monkeypatch.setattr(backend, "_from_env", None)
    monkeypatch.setenv("GCTNET_BACKEND", "eager")
    assert main(["kernels", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["backend"] == "eager" and rep["backend_source"] == "GCTNET_BACKEND"
    assert rep["cpu_path"].startswith("PyTorch ops")
    monkeypatch.delenv("GCTNET_BACKEND")
    monkeypatch.setattr(backend, "_from_env", None)
    code = main(["kernels", "--build"])
    out = capsys.readouterr().out
    assert "backend        auto (from default" in out
    if STATUS.available:
        assert code == 0 and "CPU tensors    C++ kernels" in out and "loaded" in out
        assert f"instructions   {cpu_ops.instruction_set()}" in out
    else:
        assert code == 1 and "unavailable" in out


# --------------------------------------------------------------------------------------------------
# threads and the instruction set
# --------------------------------------------------------------------------------------------------
def _has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


@needs_cpp
def test_avx2_is_selected_where_the_cpu_has_it():
    assert cpu_ops.instruction_set() == ("avx2" if _has_avx2() else "baseline")


@needs_cpp
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parallel_loops_use_torchs_threads(threads):
    """The kernels' at::parallel_for loops run on torch's intra-op pool with torch.get_num_threads()
    threads (built without OpenMP they silently ran on one thread), and one OpenMP runtime is loaded."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert torch.ops.gctnet_cpu.parallel_threads() == threads
    finally:
        torch.set_num_threads(previous)
    with open("/proc/self/maps") as f:
        runtimes = {line.split()[-1] for line in f if "libgomp" in line or "libiomp" in line}
    assert len(runtimes) <= 1, runtimes


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
    from gctnet.kernels import composite

    ref = composite.forward(x.double(), alpha.double(), gamma.double(), beta.double(), 1e-5, "l2", False)[1]
    assert t.dtype == torch.float32
    err = (t.double() - ref).abs()
    # float32 rounding of z = gamma * s * norm_inv + beta (|beta| up to 12) bounds the worst case; a wrong
    # tanh would be off by far more, and typical errors stay at a few float32 ulps
    assert err.max() < 1e-5 and err.median() < 1e-7, (err.max(), err.median())
    assert bool((t.abs() <= 1).all())


def test_cli_checks_the_gctnet_environment_up_front(monkeypatch, capsys):
    from gctnet.cli import main

    from gctnet.kernels import backend

    for var, value, msg in (("GCTNET_BACKEND", "fast", "GCT backend must be one of"),):
        monkeypatch.setattr(backend, "_from_env", None)
        monkeypatch.setenv(var, value)
        with pytest.raises(SystemExit) as exc:
            main(["kernels"])
        assert exc.value.code == 2 and msg in capsys.readouterr().err
        monkeypatch.delenv(var)
        monkeypatch.setattr(backend, "_from_env", None)




