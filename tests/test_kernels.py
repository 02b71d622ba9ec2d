"""Triton GCT kernels (gctnet.kernels.triton_ops) against the lean eager path.

Where the kernels run:
* on CUDA (GPU machines): every kernel test below runs in this process on the GPU;
* without a GPU: ``test_kernels_in_triton_interpreter`` re-runs this file in a subprocess with
  ``TRITON_INTERPRET=1 GCTNET_BACKEND=triton``, where Triton executes the kernels on CPU tensors.
  If the installed Triton cannot interpret kernels, that test skips and says why.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from gctnet import GCT, kernels
from gctnet import functional as F
from helpers import run_gct, to_channels_last

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = kernels.triton_available()
DEVICE = "cuda" if torch.cuda.is_available() else ("cpu" if INTERPRET else None)


def _interpreter_works() -> bool:
    """Can Triton run a trivial kernel here (in interpreter mode on CPU)?"""
    if not (INTERPRET and HAS_TRITON):
        return False
    try:
        from gctnet.kernels import triton_ops

        x = torch.ones(1, 2, 3)
        return torch.equal(triton_ops.spatial_reduce(x, "sum"), torch.full((1, 2), 3.0))
    except Exception:  # pragma: no cover - depends on the installed Triton
        return False


RUN_KERNELS = HAS_TRITON and (DEVICE == "cuda" or _interpreter_works())
needs_kernels = pytest.mark.skipif(
    not RUN_KERNELS, reason="Triton kernels need CUDA or TRITON_INTERPRET=1 (see test_kernels_in_triton_interpreter)"
)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
_channels_last = to_channels_last


def _params(c: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    alpha = 1.0 + 0.2 * torch.randn(c, generator=g)
    gamma = torch.randn(c, generator=g)
    beta = 0.5 * torch.randn(c, generator=g)
    return [p.to(DEVICE).requires_grad_(True) for p in (alpha, gamma, beta)]


_run = run_gct


def _assert_close(a, b, tol):
    torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)


CASES = [
    # shape, channels_last, mode, after_relu
    ((2, 8, 5, 7), False, "l2", False),
    ((2, 8, 5, 7), True, "l2", False),
    ((3, 4, 11), False, "l1", False),
    ((3, 4, 11), True, "l2", False),
    ((2, 6, 3, 4, 5), True, "l1", True),
    ((2, 6, 3, 4, 5), False, "l2", False),
    ((2, 8, 5, 7), True, "l1", False),
    ((3, 5, 1, 1), False, "l2", False),
    ((1, 130, 3, 3), True, "l2", False),  # more channels than one channels_last tile
]


# --------------------------------------------------------------------------------------------------
# kernels vs eager
# --------------------------------------------------------------------------------------------------
@needs_kernels
@pytest.mark.parametrize("shape,channels_last,mode,after_relu", CASES)
def test_forward_and_gradients_match_eager(shape, channels_last, mode, after_relu):
    torch.manual_seed(0)
    x = torch.randn(shape, device=DEVICE)
    if after_relu:
        x = x.relu()
    if channels_last:
        x = _channels_last(x)
    dy = torch.randn_like(x)
    params = _params(shape[1])
    y, grads = _run("triton", x, params, dy, mode, after_relu)
    y_ref, grads_ref = _run("eager", x, params, dy, mode, after_relu)
    with kernels.use_backend("triton"):
        assert kernels.ops.kernels_for(x).name == "Triton"  # passed its self-check: the kernels ran
    assert y.dtype == x.dtype and y.stride() == x.stride()
    assert grads[0].stride() == x.stride()
    _assert_close(y, y_ref, 1e-5)
    for g, g_ref in zip(grads, grads_ref):
        _assert_close(g, g_ref, 1e-4)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_half_precision_matches_float64(dtype, channels_last):
    """RMS 10 over 24x24 overflows a half-precision sum of squares; the kernels accumulate in fp32."""
    torch.manual_seed(1)
    x64 = 10 * torch.randn(2, 4, 24, 24, device=DEVICE, dtype=torch.float64)
    x = x64.to(dtype)
    if channels_last:
        x = _channels_last(x)
    params = _params(4)
    dy = torch.randn_like(x)
    y, grads = _run("triton", x, params, dy)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert all(torch.isfinite(g).all() for g in grads)
    p64 = [p.detach().double().requires_grad_(True) for p in params]
    y64, grads64 = _run("eager", x.double(), p64, dy.double())  # exact math on the same (rounded) input
    ulp = 2.0**-10 if dtype == torch.float16 else 2.0**-7  # relative spacing of the output dtype
    # y and grad_x: computed in float32 and rounded once to the output dtype
    torch.testing.assert_close(y.double(), y64, rtol=ulp, atol=ulp)
    torch.testing.assert_close(grads[0].double(), grads64[0], rtol=ulp, atol=ulp * grads64[0].abs().max().item())
    # parameter gradients come from float32 statistics: far more accurate than the half-precision data
    for g, g64 in zip(grads[1:], grads64[1:]):
        torch.testing.assert_close(g.double(), g64, rtol=1e-5, atol=1e-5 * g64.abs().max().item())


@needs_kernels
@pytest.mark.parametrize("kind", ["sumsq", "sumabs", "sum", "dot"])
@pytest.mark.parametrize("splits", [1, 2, 3, 7])
def test_spatial_reduce_with_split_rows(kind, splits):
    from gctnet.kernels import triton_ops

    torch.manual_seed(2)
    a = torch.randn(2, 3, 9, 10, device=DEVICE)
    b = _channels_last(torch.randn(2, 3, 9, 10, device=DEVICE))
    expected = {
        "sumsq": a.pow(2).sum((2, 3)),
        "sumabs": a.abs().sum((2, 3)),
        "sum": a.sum((2, 3)),
        "dot": (a * b).sum((2, 3)),
    }[kind]
    got = triton_ops.spatial_reduce(a, kind, b if kind == "dot" else None, splits=splits)
    assert got.dtype == torch.float32 and got.shape == (2, 3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@needs_kernels
def test_odd_strides_and_expanded_gradients():
    """A sliced input (spatial dims that do not flatten) and a broadcast gradient from y.sum()."""
    torch.manual_seed(3)
    base = torch.randn(2, 4, 10, 6, device=DEVICE)
    x = base[:, :, ::2, :]  # H stride 2W: not flattenable, copied to contiguous first
    params = _params(4)
    kernels.set_backend("triton")
    try:
        xg = x.detach().requires_grad_(True)
        y = F.gct(xg, *params)
        y.sum().backward()  # grad_y is an expanded (stride 0) tensor
    finally:
        kernels.set_backend(None)
    xe = x.detach().requires_grad_(True)
    pe = [p.detach().requires_grad_(True) for p in params]
    kernels.set_backend("eager")
    try:
        ye = F.gct(xe, *pe)
        ye.sum().backward()
    finally:
        kernels.set_backend(None)
    _assert_close(y, ye, 1e-5)
    _assert_close(xg.grad, xe.grad, 1e-4)
    for p, q in zip(params, pe):
        _assert_close(p.grad, q.grad, 1e-4)


@needs_kernels
def test_input_without_grad_skips_grad_x():
    torch.manual_seed(4)
    x = torch.randn(2, 4, 5, 5, device=DEVICE)
    dy = torch.randn_like(x)
    params = _params(4)
    _, grads = _run("triton", x, params, dy, grad_x=False)
    _, grads_ref = _run("eager", x, params, dy, grad_x=False)
    for g, g_ref in zip(grads, grads_ref):
        _assert_close(g, g_ref, 1e-4)


@needs_kernels
def test_double_backward_matches_eager():
    torch.manual_seed(5)
    x = torch.randn(2, 4, 3, 3, device=DEVICE, requires_grad=True)
    params = _params(4)
    results = []
    for backend in ("triton", "eager"):
        kernels.set_backend(backend)
        try:
            y = F.gct(x, *params)
            (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
            (ggx,) = torch.autograd.grad(gx.sum(), x)
        finally:
            kernels.set_backend(None)
        results.append((gx, ggx))
    _assert_close(results[0][0], results[1][0], 1e-4)
    _assert_close(results[0][1], results[1][1], 1e-4)


@needs_kernels
def test_custom_op_registration_passes_opcheck():
    from gctnet.kernels import triton_ops  # noqa: F401  (registers the ops)

    torch.manual_seed(6)
    x = torch.randn(2, 3, 4, 5, device=DEVICE, requires_grad=True)
    params = _params(3)
    with kernels.use_backend("triton"):
        torch.library.opcheck(torch.ops.gctnet.gct.default, (x, *params, 1e-5, "l2", False))
        xc = _channels_last(torch.randn(2, 3, 4, 5, device=DEVICE)).requires_grad_(True)
        torch.library.opcheck(torch.ops.gctnet.gct.default, (xc, *params, 1e-5, "l1", False))


@needs_kernels
def test_torch_compile_runs_the_traceable_formula_without_graph_breaks():
    """Under torch.compile GCT is plain ops Inductor can fuse into its neighbours (faster than an opaque
    kernel there, docs/performance.md): one graph, no gctnet operator in it, eager's numbers."""
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    torch.manual_seed(7)
    model = torch.nn.Sequential(GCT(4), torch.nn.Conv2d(4, 4, 3, padding=1)).to(DEVICE)
    with torch.no_grad():
        model[0].gamma.normal_()
        model[0].beta.normal_()
    x = torch.randn(2, 4, 6, 6, device=DEVICE, requires_grad=True)
    kernels.set_backend("triton")
    try:
        torch._dynamo.reset()
        compiled = torch.compile(model, backend=recording_backend, fullgraph=True)
        y = compiled(x)
        y.sum().backward()
    finally:
        kernels.set_backend(None)
        torch._dynamo.reset()
    assert len(graphs) == 1
    assert "gctnet" not in str(graphs[0].graph) and "tanh" in str(graphs[0].graph)
    xe = x.detach().requires_grad_(True)
    kernels.set_backend("eager")
    try:
        ye = model(xe)
        ye.sum().backward()
    finally:
        kernels.set_backend(None)
    _assert_close(y, ye, 1e-5)
    _assert_close(x.grad, xe.grad, 1e-4)


@needs_kernels
def test_export_uses_plain_ops():
    model = GCT(4).to(DEVICE)
    with torch.no_grad():
        model.gamma.normal_()
    x = torch.randn(2, 4, 5, 5, device=DEVICE)
    kernels.set_backend("triton")
    try:
        ep = torch.export.export(model, (x,))
    finally:
        kernels.set_backend(None)
    assert "gctnet" not in str(ep.graph)
    _assert_close(ep.module()(x), model(x), 1e-5)


def _gated_net(seed: int = 9):
    from gctnet import apply_gct

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, stride=2, bias=False)
    )
    apply_gct(net)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("gamma", "beta")):
                p.normal_()
    return net.to(DEVICE)


@needs_kernels
@pytest.mark.parametrize("channels_last", [False, True])
def test_lean_gct_conv_runs_the_kernels_and_keeps_only_x(channels_last, monkeypatch):
    """checkpoint=True (the default) on the Triton kernels: the fused GCT+conv function calls them in
    forward and backward, saves no gated activation, and matches the plain composition on PyTorch ops."""
    from gctnet.bench.memory import saved_tensor_bytes
    from gctnet.kernels import triton_ops

    from gctnet.kernels import ops

    calls = []
    real_reduce = triton_ops.spatial_reduce
    monkeypatch.setattr(triton_ops, "spatial_reduce", lambda a, kind, *r, **k: calls.append(kind) or real_reduce(a, kind, *r, **k))
    lean, plain = _gated_net(), _gated_net()
    for m in plain.modules():
        if hasattr(m, "gct_checkpoint"):
            m.gct_checkpoint = False
    x = torch.randn(4, 3, 9, 9, device=DEVICE)
    if channels_last:
        x = _channels_last(x)
    with kernels.use_backend("triton"):
        assert ops.kernels_for(x).name == "Triton"  # (its self-check runs here, before the counting)
    x.requires_grad_(True)
    results = {}
    for name, net, backend in (("lean", lean, "triton"), ("plain", plain, "triton"), ("ref", plain, "eager")):
        with kernels.use_backend(backend):
            calls.clear()
            xi = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
            y, saved = saved_tensor_bytes(lambda: net(xi))
            if name == "lean":
                assert type(y.grad_fn).__name__ == "GCTConvFunctionBackward"
                assert calls == ["sumsq", "sumsq"], calls  # one reduction per GCT, on the Triton kernels
            grads = torch.autograd.grad(y.square().sum(), [xi, *net.parameters()])
            if name == "lean":
                assert calls[2:] == ["dot", "dot"], calls
        # full-size saved storages (the input x is 4x3x9x9 float32: 3888 bytes; the ReLU output 10368)
        results[name] = (y, grads, sorted(b for b in saved.sizes if b >= 3888))
    y_lean, grads_lean, big_lean = results["lean"]
    y_ref, grads_ref, big_ref = results["ref"]
    _assert_close(y_lean, y_ref, 1e-5)
    for g, g_ref in zip(grads_lean, grads_ref):
        _assert_close(g, g_ref, 1e-4)
    assert big_lean == [3888, 10368], big_lean  # x and the ReLU output (which the ReLU keeps anyway)
    # the composition also keeps each conv's gated input
    assert results["plain"][2] == big_ref == [3888, 3888, 10368, 10368], (results["plain"][2], big_ref)


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs a CUDA GPU and Triton")
@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu_large_activation_with_split_reduction(channels_last):
    """Few (n, c) rows and a large map: the reduction splits rows across programs."""
    torch.manual_seed(8)
    x = torch.randn(1, 16, 224, 224, device="cuda", dtype=torch.float16)
    if channels_last:
        x = _channels_last(x)
    dy = torch.randn_like(x)
    params = _params(16)
    y, grads = _run("triton", x, params, dy)
    y_ref, grads_ref = _run("eager", x, params, dy)
    _assert_close(y, y_ref, 2e-2)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g.float(), g_ref.float(), rtol=2e-2, atol=2e-2 * g_ref.abs().max().item())


# --------------------------------------------------------------------------------------------------
# selection (runs everywhere) and the interpreter driver
# --------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_triton_kernels_take_only_supported_tensors():
    from gctnet.kernels import ops, triton_ops

    dev = DEVICE or "cpu"
    with kernels.use_backend("triton"):
        taken = ops.kernels_for(torch.randn(2, 3, 4, device=dev)).name == "Triton"
        assert taken == (dev == "cuda" or triton_ops.INTERPRET)
        for x in (torch.randn(2, 3, 4, device=dev, dtype=torch.float64), torch.randn(0, 3, 4, device=dev),
                  torch.randn(1, 2, 2, 2, 2, 2, device=dev)):  # float64, empty, 4 spatial dims
            assert ops.kernels_for(x) is ops.COMPOSITE


def test_auto_backend_never_picks_triton_for_cpu_tensors():
    if INTERPRET:
        pytest.skip("the interpreter run forces GCTNET_BACKEND=triton")
    from gctnet.kernels import ops

    with kernels.use_backend("auto"):
        assert ops.kernels_for(torch.randn(2, 3, 4)).name in ("C++", "PyTorch ops")
        y = F.gct(torch.randn(2, 3, 4, requires_grad=True), *_params_cpu(3))
        assert y.shape == (2, 3, 4)


def _params_cpu(c):
    return [torch.ones(c, requires_grad=True), torch.randn(c, requires_grad=True), torch.zeros(c, requires_grad=True)]


@pytest.mark.skipif(INTERPRET, reason="this is the interpreter run")
@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_kernels_in_triton_interpreter():
    """Re-run this file with TRITON_INTERPRET=1 so the kernel tests execute on CPU tensors."""
    env = dict(os.environ, TRITON_INTERPRET="1", GCTNET_BACKEND="triton", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-rs"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"interpreter run failed (exit {proc.returncode}):\n{out[-6000:]}"
    if "Triton kernels need CUDA or TRITON_INTERPRET=1" in out:  # the child's skip reason (-rs)
        pytest.skip(f"Triton's interpreter cannot run the kernels with this Triton:\n{out[-2000:]}")
    assert re.search(r"\d+ passed", out), out[-2000:]
