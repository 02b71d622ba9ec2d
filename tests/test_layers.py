"""The GCT module: construction, validation, state_dict, and the compiler stack (compile/fx/export)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gctnet import GCT
from gctnet.functional import gct_reference


def randomised(m: GCT, seed: int = 0) -> GCT:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.alpha.copy_(torch.rand(m.channels, generator=g) + 0.5)
        m.gamma.copy_(torch.randn(m.channels, generator=g))
        m.beta.copy_(torch.randn(m.channels, generator=g))
    return m


def test_parameters_and_init():
    m = GCT(7)
    assert [n for n, _ in m.named_parameters()] == ["alpha", "gamma", "beta"]
    assert all(p.shape == (7,) for p in m.parameters())
    assert torch.equal(m.alpha, torch.ones(7))
    assert torch.equal(m.gamma, torch.zeros(7)) and torch.equal(m.beta, torch.zeros(7))
    randomised(m)
    m.reset_parameters()
    assert torch.equal(m.alpha, torch.ones(7)) and torch.equal(m.gamma, torch.zeros(7))
    x = torch.randn(2, 7, 4, 4)
    assert torch.equal(m(x), x)


def test_extra_repr():
    assert repr(GCT(16)) == "GCT(16, eps=1e-05, mode='l2')"
    assert repr(GCT(8, mode="l1", after_relu=True, eps=1e-3)) == "GCT(8, eps=0.001, mode='l1', after_relu=True)"


def test_factory_kwargs():
    m = GCT(4, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in m.parameters())
    with pytest.raises(TypeError, match="floating point"):
        GCT(4, dtype=torch.int32)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"channels": 0}, ValueError, "channels must be > 0, got 0"),
        ({"channels": -3}, ValueError, "channels must be > 0, got -3"),
        ({"channels": 2.5}, TypeError, "channels must be a positive int, got float"),
        ({"channels": 4, "mode": "L2"}, ValueError, r"mode must be one of \('l2', 'l1'\), got 'L2'"),
        ({"channels": 4, "eps": 0.0}, ValueError, "eps must be > 0"),
        ({"channels": 4, "eps": -1e-5}, ValueError, "eps must be > 0"),
    ],
)
def test_construction_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        GCT(**kwargs)


def test_wrong_channel_count_message():
    with pytest.raises(ValueError, match=r"alpha must have shape \(5,\) to match the input's 5 channels.*got shape \(4,\)"):
        GCT(4)(torch.randn(2, 5, 3, 3))


def test_state_dict_round_trip_and_official_shapes():
    a = randomised(GCT(6))
    b = GCT(6)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 6, 5, 5)
    assert torch.equal(a(x), b(x))
    official = {k: v.view(1, -1, 1, 1).clone() for k, v in a.state_dict().items()}
    c = GCT(6)
    c.load_state_dict(official)
    assert torch.equal(c(x), a(x))
    with pytest.raises(RuntimeError, match="size mismatch"):
        GCT(5).load_state_dict(a.state_dict())


def test_module_matches_reference_formula():
    m = randomised(GCT(5).double())
    x = torch.randn(3, 5, 6, 6, dtype=torch.float64)
    assert torch.allclose(m(x), gct_reference(x, m.alpha, m.gamma, m.beta), atol=1e-12, rtol=0)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.gct = GCT(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gct2 = GCT(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.gct2(torch.relu(self.conv(self.gct(x))))
        return self.head(x.mean((2, 3)))


def tiny_model():
    torch.manual_seed(0)
    m = Tiny()
    randomised(m.gct, 1)
    randomised(m.gct2, 2)
    return m


def test_fx_symbolic_trace():
    m = tiny_model()
    gm = torch.fx.symbolic_trace(m)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(gm(x), m(x))
    # the functional core is a leaf (torch.fx.wrap): one call per GCT, running the lean code
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and getattr(n.target, "__name__", "") == "gct"]
    assert len(calls) == 2


def test_torch_export():
    m = tiny_model().eval()
    x = torch.randn(2, 3, 8, 8)
    ep = torch.export.export(m, (x,))
    assert torch.allclose(ep.module()(x), m(x), atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_torch_compile_fullgraph_forward_backward():
    m = tiny_model()
    compiled = torch.compile(m, fullgraph=True)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = compiled(x)
    ref_m = tiny_model()
    x_ref = x.detach().clone().requires_grad_()
    ref = ref_m(x_ref)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    ref.sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5, rtol=1e-4)
    for (n, p), (_, q) in zip(m.named_parameters(), ref_m.named_parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), n
