"""Model surgery: apply_gct / remove_gct / gct_modules / load_plain_weights."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from gctnet import GCT
from gctnet.surgery import (
    GCTConv2d,
    GCTReport,
    apply_gct,
    gct_modules,
    load_plain_weights,
    remove_gct,
)

torch.manual_seed(0)


# --------------------------------------------------------------------------------------------------
# torchvision resnet50: counts, identity at init, weights, removal
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet50_plain():
    torch.manual_seed(0)
    return torchvision.models.resnet50(num_classes=10).eval()


def test_resnet50_all_inserts_53_with_stem_and_downsample(resnet50_plain):
    model = apply_gct(copy.deepcopy(resnet50_plain))
    names = [n for n, _ in gct_modules(model)]
    assert len(names) == 53
    assert "conv1.gct" in names and "layer1.0.downsample.0.gct" in names
    assert sum(p.numel() for _, m in gct_modules(model) for p in m.parameters()) == 67_593
    report = model.gct_report
    assert isinstance(report, GCTReport)
    assert len(report.inserted) == 53 and report.gct_params == 67_593
    assert isinstance(model.conv1, nn.Conv2d) and type(model.conv1) is GCTConv2d
    assert model.conv1.gct.channels == 3 and model.layer4[2].conv3.gct.channels == 512


def test_resnet50_block_inserts_16(resnet50_plain):
    model = apply_gct(copy.deepcopy(resnet50_plain), placement="block")
    names = [n for n, _ in gct_modules(model)]
    assert len(names) == 16
    assert all(n.endswith(".conv1.gct") and n.startswith("layer") for n in names)


def test_resnet50_identity_at_init_bitwise_and_plain_keys_kept(resnet50_plain):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = resnet50_plain(x)
        model = apply_gct(copy.deepcopy(resnet50_plain))
        out = model(x)
    assert torch.equal(out, ref)
    plain_keys = set(resnet50_plain.state_dict())
    gct_keys = set(model.state_dict()) - plain_keys
    assert plain_keys <= set(model.state_dict())
    assert gct_keys == {f"{n}.{p}" for n, _ in gct_modules(model) for p in ("alpha", "gamma", "beta")}
    assert "layer1.0.conv1.gct.alpha" in gct_keys


def test_load_plain_weights_reports_only_gct_keys(resnet50_plain, tmp_path):
    model = apply_gct(torchvision.models.resnet50(num_classes=10))
    result = load_plain_weights(model, resnet50_plain.state_dict())
    assert len(result.missing_gct_keys) == 3 * 53
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(model.fc.weight, resnet50_plain.fc.weight)
    # from a path, wrapped in a training checkpoint dict with DDP prefixes
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet50_plain.state_dict().items()}, "epoch": 3}, path)
    model2 = apply_gct(torchvision.models.resnet50(num_classes=10))
    load_plain_weights(model2, path)
    assert torch.equal(model2.layer3[1].conv2.weight, resnet50_plain.layer3[1].conv2.weight)


def test_load_plain_weights_raises_for_non_gct_mismatch(resnet50_plain):
    model = apply_gct(torchvision.models.resnet50(num_classes=10))
    sd = dict(resnet50_plain.state_dict())
    del sd["layer2.0.bn1.weight"]
    sd["extra.weight"] = torch.zeros(1)
    before = model.fc.weight.clone()
    with pytest.raises(RuntimeError, match=r"1 missing key.*layer2\.0\.bn1\.weight.*1 unexpected key.*extra\.weight"):
        load_plain_weights(model, sd)
    assert torch.equal(model.fc.weight, before)  # nothing loaded
    with pytest.warns(UserWarning, match="missing"):
        result = load_plain_weights(model, sd, strict=False)
    assert result.missing_keys == ["layer2.0.bn1.weight"] and result.unexpected_keys == ["extra.weight"]
    assert torch.equal(model.fc.weight, resnet50_plain.fc.weight)


def test_remove_gct_restores_structure_and_keys(resnet50_plain):
    model = copy.deepcopy(resnet50_plain)
    apply_gct(model)
    remove_gct(model)
    assert list(model.state_dict()) == list(resnet50_plain.state_dict())
    assert type(model.conv1) is nn.Conv2d and type(model.layer1[0].downsample[0]) is nn.Conv2d
    assert gct_modules(model) == [] and not hasattr(model, "gct_report")
    assert repr(model) == repr(resnet50_plain)


def test_apply_twice_inserts_nothing_new():
    model = torchvision.models.resnet18(num_classes=4)
    apply_gct(model)
    first = [m for _, m in gct_modules(model)]
    apply_gct(model)
    assert [m for _, m in gct_modules(model)] == first
    assert model.gct_report.inserted == [] and len(model.gct_report.skipped) == len(first)
    assert all(e.reason == "already has a GCT" for e in model.gct_report.skipped)


# --------------------------------------------------------------------------------------------------
# behaviour on small models
# --------------------------------------------------------------------------------------------------
class _Tiny(nn.Module):
    def __init__(self, dtype=torch.float32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1, dtype=dtype)
        self.act = nn.ReLU()
        self.body = nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False, dtype=dtype)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2, dtype=dtype)
        self.head = nn.Conv1d(4, 3, 1, dtype=dtype)

    def forward(self, x):
        x = self.up(self.body(self.act(self.stem(x))))
        return self.head(x.flatten(2))


def test_conv_transpose_untouched_and_1d_gated():
    model = apply_gct(_Tiny())
    names = [n for n, _ in gct_modules(model)]
    assert names == ["stem.gct", "body.gct", "head.gct"]
    assert type(model.up) is nn.ConvTranspose2d
    skipped = {e.name: e.reason for e in model.gct_report.skipped}
    assert "transposed" in skipped["up"]


def test_skip_patterns_and_predicate_and_report_table():
    model = apply_gct(_Tiny(), skip=["stem", "he*"])
    assert [n for n, _ in gct_modules(model)] == ["body.gct"]
    reasons = {e.name: e.reason for e in model.gct_report.skipped}
    assert "'stem'" in reasons["stem"] and "'he*'" in reasons["head"]
    table = str(model.gct_report)
    assert "body" in table and "matches skip pattern" in table and "1 GCT inserted" in table
    model = apply_gct(_Tiny(), skip=lambda name, m: m.in_channels == 4)
    assert [n for n, _ in gct_modules(model)] == ["stem.gct"]


def test_bad_arguments_raise_clearly():
    with pytest.raises(ValueError, match="placement must be one of"):
        apply_gct(_Tiny(), placement="every")
    with pytest.raises(TypeError, match="skip must be"):
        apply_gct(_Tiny(), skip=3)
    with pytest.raises(ValueError, match="mode"):
        apply_gct(_Tiny(), mode="l3")
    with pytest.raises(ValueError, match="found no residual blocks"):
        apply_gct(_Tiny(), placement="block")
    model = _Tiny()
    with pytest.raises(ValueError, match="mode"):
        apply_gct(model, mode="l3")
    assert gct_modules(model) == []  # nothing changed on error


def test_gct_kwargs_dtype_and_device_follow_conv():
    model = apply_gct(_Tiny(dtype=torch.float64), mode="l1", eps=1e-3)
    g = model.body.gct
    assert g.alpha.dtype == torch.float64 and g.mode == "l1" and g.eps == 1e-3
    out = model(torch.randn(1, 2, 8, 8, dtype=torch.float64))
    assert out.dtype == torch.float64
