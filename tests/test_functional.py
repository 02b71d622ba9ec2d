"""Numerics of gctnet.functional.gct against an independent plain-ops version of the official formula.

Every test runs twice: with the default kernels (the C++ kernels on CPU) and with the PyTorch-ops
(composite) kernel (``use_backend("eager")``), the kernel every other device and every fallback runs.
"""

from __future__ import annotations

import pytest
import torch

from gctnet.functional import gct, gct_gate, gct_reference
from gctnet.kernels import use_backend


@pytest.fixture(params=["auto", "eager"], autouse=True)
def backend(request):
    with use_backend(request.param):
        yield request.param


def official(x, alpha, gamma, beta, eps=1e-5, mode="l2", after_relu=False):
    """Independent re-statement of the official PyTorch code, generalised to all spatial dims."""
    dims = list(range(2, x.dim()))
    view = [1, -1] + [1] * (x.dim() - 2)
    a, g, b = alpha.reshape(view), gamma.reshape(view), beta.reshape(view)
    if mode == "l2":
        embedding = torch.sqrt((x * x).sum(dim=dims, keepdim=True) + eps) * a
        norm = g / torch.sqrt((embedding * embedding).mean(dim=1, keepdim=True) + eps)
    elif mode == "l1":
        xx = x if after_relu else x.abs()
        embedding = xx.sum(dim=dims, keepdim=True) * a
        norm = g / (embedding.abs().mean(dim=1, keepdim=True) + eps)
    else:
        raise AssertionError(mode)
    return x * (1.0 + torch.tanh(embedding * norm + b))


MODES = [("l2", False), ("l1", False), ("l1", True)]
SHAPES = [(3, 5, 11), (3, 5, 6, 7), (2, 4, 3, 4, 5)]


def random_params(c, dtype=torch.float64, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    alpha = torch.rand(c, generator=g, dtype=dtype) + 0.5
    gamma = torch.randn(c, generator=g, dtype=dtype) * 2
    beta = torch.randn(c, generator=g, dtype=dtype)
    return [p.requires_grad_(requires_grad) for p in (alpha, gamma, beta)]


def make_input(shape, after_relu=False, dtype=torch.float64, seed=1, channels_last=False):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    if after_relu:
        x = x.relu()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


@pytest.mark.parametrize("mode,after_relu", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_parity_fp64(mode, after_relu, shape):
    x = make_input(shape, after_relu)
    params = random_params(shape[1])
    y = gct(x, *params, 1e-5, mode, after_relu)
    ref = official(x, *params, 1e-5, mode, after_relu)
    assert (y - ref).abs().max().item() <= 1e-10
    # the library's reference formula agrees too
    assert torch.allclose(gct_reference(x, *params, 1e-5, mode, after_relu), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode,after_relu", MODES)
@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (2, 4, 3, 4, 5)])
def test_forward_parity_channels_last(mode, after_relu, shape):
    x = make_input(shape, after_relu, channels_last=True)
    params = random_params(shape[1])
    y = gct(x, *params, 1e-5, mode, after_relu)
    assert (y - official(x.contiguous(), *params, 1e-5, mode, after_relu)).abs().max().item() <= 1e-10
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    assert y.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("mode,after_relu", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gradient_parity_fp64(mode, after_relu, shape):
    x0 = make_input(shape, after_relu)
    grads = []
    for fn in (gct, official):
        x = x0.clone().requires_grad_()
        params = random_params(shape[1], requires_grad=True)
        y = fn(x, *params, 1e-5, mode, after_relu)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)
        (y * w).sum().backward()
        grads.append([x.grad] + [p.grad for p in params])
    for ours, ref in zip(*grads):
        assert (ours - ref).abs().max().item() <= 1e-10


@pytest.mark.parametrize("mode,after_relu", MODES)
def test_gradcheck(mode, after_relu):
    x = make_input((2, 4, 3, 5), after_relu).requires_grad_()
    params = random_params(4, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: gct(*t, 1e-5, mode, after_relu), (x, *params))


def test_gradcheck_channels_last_3d():
    x = make_input((2, 3, 2, 3, 4), channels_last=True).requires_grad_()
    params = random_params(3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: gct(*t), (x, *params))


@pytest.mark.parametrize("mode,after_relu", MODES)
def test_double_backward_is_correct(mode, after_relu):
    x = make_input((2, 3, 3, 4), after_relu).requires_grad_()
    params = random_params(3, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda *t: gct(*t, 1e-5, mode, after_relu), (x, *params))


def test_fp16_large_activations_stay_finite():
    """RMS 10 over 56x56 overflows the reference formula in fp16; gctnet stays finite and accurate."""
    x64 = make_input((2, 8, 56, 56)) * 10
    params = random_params(8, dtype=torch.float32)
    x16 = x64.half()
    ref_fp16 = gct_reference(x16, *[p.half() for p in params])
    assert not torch.isfinite(ref_fp16).all(), "the reference formula should overflow here"
    y = gct(x16, *params)
    assert y.dtype == torch.float16
    assert torch.isfinite(y).all()
    exact = official(x16.double(), *[p.double() for p in params])
    err = (y.double() - exact).abs() / (exact.abs() + 1.0)
    assert err.max().item() < 2e-3


def test_fp16_backward_finite_and_close():
    x64 = make_input((2, 4, 56, 56)) * 10
    params32 = random_params(4, dtype=torch.float32, requires_grad=True)
    x16 = x64.half().requires_grad_()
    gct(x16, *params32).float().sum().backward()
    assert x16.grad.dtype == torch.float16 and torch.isfinite(x16.grad).all()
    xd = x16.detach().double().requires_grad_()
    pd = [p.detach().double().requires_grad_() for p in params32]
    official(xd, *pd).sum().backward()
    assert torch.allclose(x16.grad.double(), xd.grad, rtol=2e-2, atol=2e-2)
    for p32, p64 in zip(params32, pd):
        assert p32.grad.dtype == torch.float32
        assert torch.allclose(p32.grad.double(), p64.grad, rtol=1e-2, atol=1e-2)


def test_half_input_never_materialises_a_full_float32_copy(backend):
    """With the C++ kernels (the CPU default) half input is reduced in place; the PyTorch-ops kernel
    may make a float32 temporary (documented)."""
    from torch.profiler import ProfilerActivity, profile

    if backend == "eager":
        pytest.skip("the PyTorch-ops kernel may upcast a half input for its reduction")

    x = make_input((16, 64, 64, 64), dtype=torch.float32).half()  # 8 MiB in fp16, 16 MiB in fp32
    params = random_params(64, dtype=torch.float32)
    full_fp32 = x.numel() * 4
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        y = gct(x, *params)
    assert y.dtype == torch.float16
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert 0 < largest < full_fp32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_dtype_preserved_with_fp32_params(dtype):
    x = make_input((2, 3, 5, 5), dtype=dtype)
    params = random_params(3, dtype=torch.float32, requires_grad=True)
    x.requires_grad_()
    y = gct(x, *params)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert x.grad.dtype == dtype
    assert all(p.grad.dtype == torch.float32 for p in params)


def test_autocast_cpu_bf16_output_dtype_and_values():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    params = random_params(4, dtype=torch.float32)
    x = make_input((2, 3, 8, 8), dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y = gct(h, *params)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    exact = official(h.double(), *[p.double() for p in params])
    assert torch.allclose(y.double(), exact, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("mode,after_relu", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_identity_at_init_bitwise(mode, after_relu, dtype):
    x = make_input((2, 5, 7, 3), after_relu, dtype=dtype)
    ones, zeros = torch.ones(5), torch.zeros(5)
    y = gct(x, ones, zeros, zeros, 1e-5, mode, after_relu)
    assert torch.equal(y, x)


def test_batch_zero_and_empty_spatial():
    params = random_params(3, dtype=torch.float32, requires_grad=True)
    empty_batch = torch.randn(0, 3, 4, 4, requires_grad=True)
    y = gct(empty_batch, *params)
    assert y.shape == (0, 3, 4, 4)
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in params)
    empty_spatial = torch.randn(2, 3, 0, 4)
    y = gct(empty_spatial, *[p.detach() for p in params])
    assert y.shape == (2, 3, 0, 4)


def test_batch_statistics_are_per_sample():
    """Train == eval: a sample's output does not depend on the rest of the batch."""
    x = make_input((4, 6, 5, 5))
    params = random_params(6)
    assert torch.allclose(gct(x, *params)[1:2], gct(x[1:2], *params), atol=1e-14, rtol=0)


def test_gate_matches_output_ratio():
    x = make_input((2, 3, 6, 6)).abs() + 0.1
    params = random_params(3)
    gate = gct_gate(x, *params)
    assert gate.shape == (2, 3)
    assert torch.allclose(gct(x, *params), x * gate[:, :, None, None], atol=1e-14, rtol=0)
    assert ((gate > 0) & (gate < 2)).all()


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "x,exc,match",
    [
        (torch.randn(2, 3), ValueError, r"\(N, C, \*spatial\).*2-D"),
        (torch.randn(3), ValueError, r"1-D"),
        (torch.ones(2, 3, 4, 4, dtype=torch.int64), TypeError, r"floating-point.*int64"),
        (torch.randn(2, 4, 4, 4), ValueError, r"shape \(4,\).*4 channels.*got shape \(3,\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(x, exc, match):
    params = random_params(3, dtype=torch.float32)
    with pytest.raises(exc, match=match):
        gct(x, *params)


def test_bad_mode_and_eps():
    x = torch.randn(2, 3, 4, 4)
    params = random_params(3, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"mode must be one of \('l2', 'l1'\), got 'l3'"):
        gct(x, *params, mode="l3")
    with pytest.raises(ValueError, match=r"eps must be > 0.*got 0"):
        gct(x, *params, eps=0.0)
    with pytest.raises(TypeError, match="eps must be a positive float"):
        gct(x, *params, eps="1e-5")  # type: ignore[arg-type]


def test_meta_tensors_give_shapes():
    x = torch.empty(2, 3, 5, 5, device="meta", dtype=torch.float16)
    params = [torch.empty(3, device="meta") for _ in range(3)]
    y = gct(x, *params)
    assert y.shape == x.shape and y.dtype == torch.float16 and y.device.type == "meta"


@pytest.mark.parametrize("mode,after_relu", [("l2", False), ("l1", False), ("l1", True)])
def test_gct_backward_writes_grad_x_into_the_given_tensor(mode, after_relu):
    """``gct_backward`` writes grad_x into its ``grad_x`` argument, which may be ``grad_y`` itself (the
    lean GCT+conv path hands over the conv's fresh input gradient): same gradients as autograd."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    if after_relu:
        x = x.relu()
    alpha = torch.rand(5, dtype=torch.float64) + 0.5
    gamma, beta = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    dy = torch.randn_like(x)
    leaves = [t.clone().requires_grad_(True) for t in (x, alpha, gamma, beta)]
    expected = torch.autograd.grad(official(*leaves, 1e-5, mode, after_relu), leaves, dy)

    _, t, s, e, norm_inv = torch.ops.gctnet.gct(x, alpha, gamma, beta, 1e-5, mode, after_relu)
    owned = dy.clone()
    grads = torch.ops.gctnet.gct_backward(owned, x, alpha, gamma, t, s, e, norm_inv, mode, after_relu, owned)
    for g, want in zip((owned, *grads), expected):
        torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-11)
    fresh = torch.empty_like(x)
    torch.ops.gctnet.gct_backward(dy, x, alpha, gamma, t, s, e, norm_inv, mode, after_relu, fresh)
    torch.testing.assert_close(fresh, expected[0], rtol=1e-9, atol=1e-11)
    # grad_x not wanted: a 0-element tensor, the parameter gradients alone
    grads = torch.ops.gctnet.gct_backward(dy, x, alpha, gamma, t, s, e, norm_inv, mode, after_relu, x.new_empty(0))
    torch.testing.assert_close(grads[2], expected[3], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_operators_pass_opcheck(layout):
    """Schema, fake implementation, autograd registration and AOT dispatch of the three operators."""
    x = make_input((2, 4, 5, 6))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = make_input((2, 4, 5, 12))[..., ::2]
    alpha, gamma, beta = random_params(4, dtype=torch.float32, requires_grad=True)
    x.requires_grad_()
    torch.library.opcheck(torch.ops.gctnet.gct.default, (x, alpha, gamma, beta, 1e-5, "l2", False))
    with torch.no_grad():
        y, t, s, e, norm_inv = torch.ops.gctnet.gct(x, alpha, gamma, beta, 1e-5, "l1", False)
    xd = x.detach()
    torch.library.opcheck(torch.ops.gctnet.gct_scale.default, (xd, t))
    torch.library.opcheck(torch.ops.gctnet.gct_backward.default,
                          (torch.randn_like(xd), xd, alpha.detach(), gamma.detach(), t, s, e, norm_inv, "l1", False,
                           torch.empty_like(xd)))
