"""The accelerated kernels' one-time self-check and the fallback to the PyTorch-ops kernel.

A deliberately wrong (or crashing) kernel is registered for the CPU in place of the C++ kernels: the
first GCT call on the CPU checks it against the composite kernel, warns once, and the CPU runs the
composite kernel from then on; under an explicit backend it raises instead.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

from gctnet import functional as F
from gctnet import kernels
from gctnet.kernels import check, composite, cpu_ops, ops

CPP = cpu_ops.load(quiet=True).available


@pytest.fixture
def fresh_verdicts(monkeypatch):
    """Self-check verdicts and turned-off devices of this test only."""
    monkeypatch.setattr(ops, "_verdicts", {})
    monkeypatch.setattr(ops, "_failed", {})


def _wrong_forward(x, alpha, gamma, beta, eps, mode, after_relu):
    y, t, s, e, norm_inv = composite.forward(x, alpha, gamma, beta, eps, mode, after_relu)
    return y * 1.1, t, s, e, norm_inv


def _crashing_scale(x, t):
    raise RuntimeError("triton.compiler.errors.CompilationError: at 12:4: unsupported (test)")


WRONG = dataclasses.replace(ops.COMPOSITE, name="Wrong", forward=_wrong_forward)
CRASHING = dataclasses.replace(ops.COMPOSITE, name="Crashing", scale=_crashing_scale)


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 5, generator=g, requires_grad=True)
    params = [torch.rand(4, generator=g) + 0.5, torch.randn(4, generator=g), torch.randn(4, generator=g)]
    return x, [p.requires_grad_(True) for p in params]


@pytest.mark.parametrize("bad,message", [(WRONG, r"forward y differs from the PyTorch ops by up to"),
                                         (CRASHING, r"RuntimeError: triton.compiler.errors.CompilationError")])
def test_a_failing_kernel_warns_once_and_the_device_falls_back(monkeypatch, fresh_verdicts, bad, message):
    monkeypatch.setattr(ops, "accelerated", lambda device_type: bad if device_type == "cpu" else None)
    x, params = _inputs()
    with pytest.warns(RuntimeWarning, match=rf"the {bad.name} kernels failed their self-check: float32 contiguous 4-D "
                                            rf"input, mode l2: .*{message}.*PyTorch ops for cpu tensors from now on"):
        y = F.gct(x, *params)
    y.square().sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning only, for every later input of the device
        F.gct(x.detach().contiguous(memory_format=torch.channels_last), *params)
    assert ops.failed_devices() == {"cpu": ops.failed_devices()["cpu"]} and bad.name in ops.failed_devices()["cpu"]
    assert ops.kernels_for(x) is ops.COMPOSITE
    ref_x, ref_params = _inputs()
    with kernels.use_backend("eager"):
        ref = F.gct(ref_x, *ref_params)
        ref.square().sum().backward()
    torch.testing.assert_close(y, ref, rtol=0, atol=0)  # never silently wrong numbers
    torch.testing.assert_close(x.grad, ref_x.grad)


def test_an_explicit_backend_raises_on_a_failing_kernel(monkeypatch, fresh_verdicts):
    monkeypatch.setattr(ops, "accelerated", lambda device_type: WRONG)
    x, params = _inputs()
    with kernels.use_backend("cpp"), pytest.raises(RuntimeError, match="GCTNET_BACKEND=cpp but the Wrong kernels "
                                                                     "failed their self-check: float32"):
        F.gct(x, *params)


def test_the_check_leaves_the_global_random_state_alone(fresh_verdicts):
    state = torch.random.get_rng_state()
    assert check.check_kernels(ops.COMPOSITE, torch.device("cpu"), torch.float32, 4, "channels_last") is None
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("tensor_kind", ["dtype", "layout", "dims"])
def test_each_kind_of_input_is_checked_once(monkeypatch, fresh_verdicts, tensor_kind):
    if not CPP:
        pytest.skip("C++ CPU kernels unavailable")
    runs = []
    real = check.check_kernels
    monkeypatch.setattr(check, "check_kernels", lambda *a: runs.append(a[2:]) or real(*a))
    x = torch.randn(2, 3, 4, 5)
    other = {"dtype": x.double(), "layout": x.contiguous(memory_format=torch.channels_last),
             "dims": torch.randn(2, 3, 7)}[tensor_kind]
    params = [torch.ones(3), torch.zeros(3), torch.zeros(3)]
    for t in (x, x, other, other, x):
        F.gct(t, *params)
    expected_other = (other.dtype, other.dim(), ops.layout_name(other))
    assert runs == [(torch.float32, 4, "contiguous"), expected_other]


@pytest.mark.skipif(not CPP, reason="C++ CPU kernels unavailable")
def test_cpp_kernels_pass_the_check_for_every_dtype_and_layout():
    rows = check.check_table(cpu_ops.KERNELS, torch.device("cpu"))
    assert len(rows) == 4 * 3 * 3
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]


def test_kernels_check_command(capsys, monkeypatch):
    from gctnet.cli import main

    if CPP:
        assert main(["kernels", "--check"]) == 0
        out = capsys.readouterr().out
        assert "C++ kernels vs PyTorch ops on cpu" in out and "36 of 36 agree" in out
    monkeypatch.setattr(ops, "accelerated", lambda device_type: WRONG)
    assert main(["kernels", "--check", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["kernels"] == "Wrong" and not any(r["ok"] for r in report["rows"])
    assert "forward y differs" in report["rows"][0]["problem"]
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exc:
            main(["kernels", "--check", "--device", "cuda"])
        assert exc.value.code == 2 and "no CUDA device" in capsys.readouterr().err
