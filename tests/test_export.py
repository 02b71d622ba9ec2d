"""Export: ONNX (fp32 and fp16) against onnxruntime, torch.export and torch.compile(fullgraph=True)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gctnet
import gctnet.functional as F
import gctnet.gated_conv
import gctnet.surgery
from gctnet.export import ExportMismatchError, export_onnx, export_program, run_onnx, verify_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _randomise_gct(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in gctnet.gct_modules(model):
            m.alpha.copy_(0.5 + torch.rand(m.channels, generator=g))
            m.gamma.copy_(torch.randn(m.channels, generator=g))
            m.beta.copy_(torch.randn(m.channels, generator=g))
    return model


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return _randomise_gct(gctnet.create_model("gct_resnet20")).eval()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_onnx_fp32_matches_pytorch(resnet20, tmp_path, exporter):
    path = export_onnx(resnet20, torch.randn(1, 3, 32, 32), tmp_path / "r20.onnx", exporter=exporter)
    import onnx

    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # another batch size
    diff = verify_onnx(path, resnet20, x, atol=1e-4, rtol=1e-4)
    assert diff < 1e-4
    # the check can fail: a changed model no longer matches the file
    changed = _randomise_gct(gctnet.create_model("gct_resnet20"), seed=5).eval()
    changed.load_state_dict({k: v for k, v in resnet20.state_dict().items() if not k.endswith("gct.beta")}, strict=False)
    with pytest.raises(ExportMismatchError, match="max abs diff"):
        verify_onnx(path, changed, x)


def test_onnx_half_stays_finite_where_reference_overflows(tmp_path):
    torch.manual_seed(0)
    model = _randomise_gct(nn.Sequential(gctnet.GCT(16), nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(),
                                         gctnet.GCT(8))).eval()
    x = 10.0 * torch.randn(2, 16, 56, 56, generator=torch.Generator().manual_seed(2))  # RMS 10 at 56x56
    gct0 = model[0]
    # the paper's formula in float16 overflows here (sum of squares ~3e5 > 65504)
    ref16 = F.gct_reference(x.half(), gct0.alpha.half(), gct0.gamma.half(), gct0.beta.half())
    assert not torch.isfinite(ref16).all()
    path = export_onnx(model, x, tmp_path / "half.onnx", half=True)
    assert model[1].weight.dtype == torch.float32  # the caller's model is not modified
    out = run_onnx(path, x.half())[0]
    assert str(out.dtype) == "float16"
    out = torch.from_numpy(out).float()
    assert torch.isfinite(out).all()
    with torch.no_grad():
        fp32 = model(x)
    assert torch.allclose(out, fp32, rtol=2e-2, atol=2e-2 * fp32.abs().max().item())
    verify_onnx(path, model, x, half=True, rtol=2e-2, atol=2e-2 * fp32.abs().max().item())


def test_export_uses_traceable_formulation(resnet20, monkeypatch):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        eager = resnet20(x)

    def eager_only(*args, **kwargs):
        raise AssertionError("the eager GCT path ran during export")

    monkeypatch.setattr(gctnet.gated_conv.GCTConvFunction, "apply", eager_only)  # the fused GCT+conv path
    program = export_program(resnet20, x)
    monkeypatch.undo()
    targets = {str(node.target) for node in program.graph.nodes}
    assert not any("gctnet" in t for t in targets), "the exported graph holds gctnet operators"
    assert any("tanh" in t for t in targets)  # the traceable formula is there
    with torch.no_grad():
        exported = program.module()(x)
        assert program.module()(torch.randn(5, 3, 32, 32)).shape == (5, 10)  # dynamic batch
    assert torch.allclose(exported, eager, rtol=1e-5, atol=1e-5 * eager.abs().max().item())
    assert resnet20.training is False


def test_export_errors(resnet20, tmp_path):
    with pytest.raises(ValueError, match="exporter must be one of"):
        export_onnx(resnet20, torch.randn(1, 3, 32, 32), tmp_path / "x.onnx", exporter="tflite")
    with pytest.raises(TypeError, match="example must be a tensor"):
        export_onnx(resnet20, [1, 2], tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="nn.Module"):
        export_program(lambda x: x, torch.randn(1))  # type: ignore[arg-type]


@pytest.mark.slow
def test_torch_export_and_compile_fullgraph_gct_resnet50():
    torch.manual_seed(0)
    model = _randomise_gct(gctnet.create_model("gct_resnet50", num_classes=10)).eval()
    model.train()  # export_program must export in eval mode and restore the mode
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    program = export_program(model, x)
    assert model.training
    model.eval()
    with torch.no_grad():
        eager = model(x)
        exported = program.module()(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    tol = 1e-4 * eager.abs().max().item()
    assert torch.allclose(exported, eager, rtol=1e-4, atol=tol)
    assert torch.allclose(compiled, eager, rtol=1e-4, atol=tol)
