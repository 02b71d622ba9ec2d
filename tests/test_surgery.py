"""Model surgery: apply_gct / remove_gct / gct_modules / load_plain_weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
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


# --------------------------------------------------------------------------------------------------
# torchvision zoo: each model gated, identical at init, trains
# --------------------------------------------------------------------------------------------------
_ZOO = {
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=3), (1, 3, 32, 32), 52),
    # vgg's 25088x4096 classifier dominates any backward: forward checks only (see _TRAIN)
    "vgg16_bn": (lambda: torchvision.models.vgg16_bn(num_classes=3), (1, 3, 32, 32), 13),
    # 75x75 is the smallest input inception_v3's stem and reductions accept
    "inception_v3": (
        lambda: torchvision.models.inception_v3(num_classes=3, aux_logits=False, init_weights=False),
        (1, 3, 75, 75),
        94,
    ),
    "r3d_18": (lambda: torchvision.models.video.r3d_18(num_classes=3), (1, 3, 4, 32, 32), 20),
}
_TRAIN = {"mobilenet_v2", "r3d_18"}  # a train step as well (kept to the cheap models)


@pytest.mark.parametrize("name", list(_ZOO))
def test_zoo_models_identity_at_init_and_backward(name):
    build, shape, expected = _ZOO[name]
    torch.manual_seed(0)
    plain = build().eval()
    x = torch.randn(shape)
    with torch.no_grad():
        ref = plain(x)
    model = apply_gct(copy.deepcopy(plain))
    assert len(gct_modules(model)) == len(model.gct_report.inserted) == expected
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    if name in _TRAIN:
        model.train()
        model(x.expand(2, *shape[1:])).sum().backward()
        assert all(m.beta.grad is not None for _, m in gct_modules(model))


def test_r3d_gcts_are_3d():
    model = apply_gct(torchvision.models.video.r3d_18(num_classes=3))
    stem = model.stem[0]
    assert isinstance(stem, nn.Conv3d) and stem.gct.channels == 3


def test_se_fc_convs_skipped_by_default_and_listed():
    torch.manual_seed(0)
    plain = torchvision.models.mobilenet_v3_small(num_classes=3).eval()
    se_convs = [
        f"{n}.{c}" for n, m in plain.named_modules() if type(m).__name__ == "SqueezeExcitation" for c in ("fc1", "fc2")
    ]
    assert se_convs
    model = apply_gct(copy.deepcopy(plain))
    skipped = {e.name: e.reason for e in model.gct_report.skipped}
    assert set(skipped) == set(se_convs)
    assert all("SqueezeExcitation" in r for r in skipped.values())
    assert not any(n.startswith(tuple(se_convs)) for n, _ in gct_modules(model))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    everything = apply_gct(copy.deepcopy(plain), skip_attention=False)
    assert len(gct_modules(everything)) == len(gct_modules(model)) + len(se_convs)


def test_se_residual_blocks_are_not_mistaken_for_attention():
    class SEBottleneck(nn.Module):  # a residual block *with* SE: its convs must be gated
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 1)
            self.se = torchvision.ops.SqueezeExcitation(4, 2)

        def forward(self, x):
            return x + self.se(self.conv1(x))

    model = apply_gct(nn.Sequential(SEBottleneck()))
    assert [n for n, _ in gct_modules(model)] == ["0.conv1.gct"]
    model = apply_gct(nn.Sequential(SEBottleneck()), placement="block")
    assert [n for n, _ in gct_modules(model)] == ["0.conv1.gct"]


# --------------------------------------------------------------------------------------------------
# placement="block"
# --------------------------------------------------------------------------------------------------
def test_block_placement_on_gctnet_cifar_blocks():
    from gctnet.models.cifar_resnet import BasicBlock

    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), BasicBlock(16, 16), BasicBlock(16, 32, stride=2))
    apply_gct(model, placement="block")
    assert [n for n, _ in gct_modules(model)] == ["1.conv1.gct", "2.conv1.gct"]
    assert all(e.reason.startswith("first conv of BasicBlock") for e in model.gct_report.inserted)
    model(torch.randn(2, 1, 8, 8)).sum().backward()


def test_block_placement_hook_attribute_and_container_conv1():
    class Stage(nn.Module):  # no "Block" in the name: opts in through gct_block_conv
        gct_block_conv = "branch.1"

        def __init__(self) -> None:
            super().__init__()
            self.branch = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1))

        def forward(self, x):
            return x + self.branch(x)

    class MyBlock(nn.Module):  # conv1 is a container: its first conv is gated
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
            self.conv2 = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return x + self.conv2(self.conv1(x))

    model = nn.Sequential(Stage(), MyBlock())
    apply_gct(model, placement="block")
    assert [n for n, _ in gct_modules(model)] == ["0.branch.1.gct", "1.conv1.0.gct"]

    class Broken(nn.Module):
        gct_block_conv = "missing"

    with pytest.raises(ValueError, match="gct_block_conv='missing'"):
        apply_gct(nn.Sequential(Broken()), placement="block")


# --------------------------------------------------------------------------------------------------
# conv subclasses with their own forward: wrapped via a pre-hook, class and keys kept
# --------------------------------------------------------------------------------------------------
class _ScaledConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 0.5


def _randomise(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, m in gct_modules(model):
            m.alpha.uniform_(0.5, 1.5, generator=g)
            m.gamma.normal_(generator=g)
            m.beta.normal_(generator=g)


def test_conv_subclass_is_wrapped_not_reclassed():
    conv = _ScaledConv(3, 4, 3)
    model = nn.Sequential(conv)
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)
    apply_gct(model)
    assert type(model[0]) is _ScaledConv
    assert set(model.state_dict()) == {"0.weight", "0.bias", "0.gct.alpha", "0.gct.gamma", "0.gct.beta"}
    assert torch.equal(model(x), ref)
    _randomise(model)
    gated = model[0].gct(x)
    assert torch.allclose(model(x), _ScaledConv.forward(model[0], gated))
    apply_gct(model)  # idempotent: still one hook
    assert len(model[0]._forward_pre_hooks) == 1
    remove_gct(model)
    assert not hasattr(model[0], "gct") and len(model[0]._forward_pre_hooks) == 0
    assert torch.equal(model(x), ref)


def test_conv_with_foreign_gct_attribute_raises():
    conv = _ScaledConv(3, 4, 3)
    conv.gct = "something else"
    with pytest.raises(ValueError, match="already has an attribute `gct`"):
        apply_gct(nn.Sequential(conv))


# --------------------------------------------------------------------------------------------------
# formats, copies, lazy convs
# --------------------------------------------------------------------------------------------------
def test_channels_last_pickle_and_deepcopy(tmp_path):
    model = apply_gct(torchvision.models.resnet18(num_classes=3)).to(memory_format=torch.channels_last).eval()
    _randomise(model)
    x = torch.randn(1, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        feats = model.layer1[0].conv1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
    assert feats.is_contiguous(memory_format=torch.channels_last)
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)) and torch.equal(clone(x), model(x))


def test_uninitialised_lazy_conv_is_skipped_with_reason():
    model = nn.Sequential(nn.LazyConv2d(4, 3), nn.Conv2d(4, 4, 1))
    apply_gct(model)
    assert [n for n, _ in gct_modules(model)] == ["1.gct"]
    assert "lazy" in model.gct_report.skipped[0].reason


# --------------------------------------------------------------------------------------------------
# checkpoint=True: the lean-memory path
# --------------------------------------------------------------------------------------------------
def _mixed_model(dtype=torch.float64) -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            kw = {"dtype": dtype}
            self.c1 = nn.Conv1d(3, 4, 3, padding=1, **kw)
            self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=True, **kw)
            self.c3 = nn.Conv3d(6, 4, (1, 3, 3), padding=(0, 1, 1), bias=False, **kw)

        def forward(self, x):  # x: (N, 3, 64)
            y = torch.relu(self.c1(x)).reshape(x.shape[0], 4, 8, 8)
            y = torch.relu(self.c2(y)).unsqueeze(2)
            return self.c3(y)

    return Net()


def test_checkpoint_gradients_equal_plain_gct_path():
    torch.manual_seed(0)
    model = apply_gct(_mixed_model(), checkpoint=False)
    _randomise(model)
    lean = apply_gct(copy.deepcopy(model), checkpoint=True)
    x = torch.randn(2, 3, 64, dtype=torch.float64)
    results = []
    for m in (model, lean):
        xi = x.clone().requires_grad_(True)
        out = m(xi)
        out.pow(2).sum().backward()
        results.append((out.detach(), xi.grad, {n: p.grad for n, p in m.named_parameters()}))
    assert torch.allclose(results[0][0], results[1][0], rtol=0, atol=1e-12)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-10, atol=1e-12)
    for name, grad in results[0][2].items():
        assert torch.allclose(grad, results[1][2][name], rtol=1e-10, atol=1e-12), name


def test_checkpoint_fused_function_gradcheck():
    from gctnet.gated_conv import GCTConvFunction as _GCTConvFunction

    torch.manual_seed(0)
    d = {"dtype": torch.float64, "requires_grad": True}
    x = torch.randn(1, 4, 4, 4, **d)
    alpha = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
    gamma, beta = torch.randn(4, **d), torch.randn(4, **d)
    w, b = torch.randn(2, 2, 3, 3, **d), torch.randn(2, **d)
    for mode in ("l2", "l1"):
        fn = lambda *t: _GCTConvFunction.apply(*t, (2, 1), (1, 0), (1, 1), 2, 1e-5, mode, False)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, alpha, gamma, beta, w, b))


def test_checkpoint_saves_less_memory_and_matches_under_autocast():
    from gctnet.bench.memory import saved_tensor_bytes

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    gct = apply_gct(copy.deepcopy(plain), checkpoint=False)
    _randomise(gct)
    lean = apply_gct(copy.deepcopy(gct), checkpoint=True)
    x = torch.randn(2, 3, 16, 16)
    sizes = {}
    for name, m in (("plain", plain), ("gct", gct), ("lean", lean)):
        _, saved = saved_tensor_bytes(lambda: m(x), exclude=[m])
        sizes[name] = saved.total
    assert sizes["gct"] > 1.4 * sizes["plain"]  # the conv keeps gct(x) alive
    assert sizes["lean"] <= 1.05 * sizes["plain"]
    outs = []
    for m in (gct, lean):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
        out.float().sum().backward()
        outs.append((out, m[0].weight.grad.clone(), m[2].gct.gamma.grad.clone()))
    assert outs[1][0].dtype == torch.bfloat16
    for a, b in zip(outs[0], outs[1]):
        assert torch.equal(a, b)


def test_resnet50_checkpoint_saved_bytes_ratio(resnet50_plain):
    from gctnet.bench.memory import saved_tensor_bytes

    x = torch.randn(1, 3, 64, 64)
    sizes = {}
    for name, kwargs in (("plain", None), ("gct", {"checkpoint": False}), ("lean", {})):
        model = copy.deepcopy(resnet50_plain).train()
        if kwargs is not None:
            apply_gct(model, **kwargs)
        _, saved = saved_tensor_bytes(lambda: model(x), exclude=[model])
        sizes[name] = saved.total
    assert sizes["lean"] <= 1.05 * sizes["plain"] < sizes["gct"]


def test_checkpoint_flag_can_be_toggled_and_is_reported():
    model = apply_gct(_mixed_model(torch.float32))
    assert model.c2.gct_checkpoint and model.gct_report.checkpoint  # lean memory is the default
    apply_gct(model, checkpoint=False)
    assert not model.c2.gct_checkpoint and not model.gct_report.checkpoint
    apply_gct(model, checkpoint=True)
    assert model.c2.gct_checkpoint and model.gct_report.checkpoint
    sub = apply_gct(nn.Sequential(_ScaledConv(3, 4, 3)), checkpoint=True)
    assert "checkpoint not applied" in sub.gct_report.inserted[0].reason


# --------------------------------------------------------------------------------------------------
# fx, export, compile
# --------------------------------------------------------------------------------------------------
def _tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        _ScaledConv(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


@pytest.mark.parametrize("checkpoint", [False, True])
def test_fx_symbolic_trace(checkpoint):
    model = apply_gct(_tiny_net(), checkpoint=checkpoint)
    _randomise(model)
    x = torch.randn(2, 3, 16, 16)
    gm = torch.fx.symbolic_trace(model)
    assert sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target.__name__ == "gct") == 2
    assert torch.allclose(gm(x), model(x), atol=1e-6)


def test_torch_export():
    model = apply_gct(_tiny_net(), checkpoint=True).eval()
    _randomise(model)
    x = torch.randn(2, 3, 16, 16)
    ep = torch.export.export(model, (x,))
    assert torch.allclose(ep.module()(x), model(x), atol=1e-5)
    assert any(k.endswith("gct.beta") for k in ep.state_dict)


@pytest.mark.slow
def test_torch_compile_fullgraph_train_step():
    torch.manual_seed(0)
    model = apply_gct(_tiny_net(), checkpoint=True)
    _randomise(model)
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    for p, g in zip(model.parameters(), ref_grads):
        assert torch.allclose(p.grad, g, atol=1e-4, rtol=1e-4)


class _OpLog(TorchDispatchMode):
    """Records the gctnet operators that run (at the dispatcher, whatever kernel serves them)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "gctnet":
            self.ops.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def test_checkpoint_rebuilds_the_output_from_saved_statistics():
    """The lean path runs one ``gct`` per gated conv in the forward and, in the backward, ``gct_scale``
    (the gated input rebuilt from the saved statistics: no second reduction) and ``gct_backward``; its
    results equal those of the plain composition."""

    def run(checkpoint):
        torch.manual_seed(0)
        model = apply_gct(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)),
                          checkpoint=checkpoint)
        for m in model.modules():
            if isinstance(m, GCT):
                nn.init.normal_(m.gamma), nn.init.normal_(m.beta)
        x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
        log = _OpLog()
        with log:
            out = model(x)
            forward_ops = list(log.ops)
            out.square().sum().backward()
        return forward_ops, log.ops[len(forward_ops):], (out.detach(), x.grad, *(p.grad for p in model.parameters()))

    fwd, bwd, lean = run(True)
    assert fwd == ["gct", "gct"]
    assert sorted(bwd) == ["gct_backward", "gct_backward", "gct_scale", "gct_scale"]
    fwd, bwd, plain = run(False)
    assert fwd == ["gct", "gct"] and bwd == ["gct_backward", "gct_backward"]
    for a, b in zip(lean, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_hooked_gct_modules_are_called_in_every_path():
    """Hooks on a GCT module fire in inference and in the lean training path (the gated conv then calls
    the module), with the same results as conv(gct(x))."""
    torch.manual_seed(3)
    model = apply_gct(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 1))).eval()
    for m in model.modules():
        if isinstance(m, GCT):
            nn.init.normal_(m.gamma), nn.init.normal_(m.beta)
    x = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        h = nn.functional.conv2d(model[0].gct(x), model[0].weight, model[0].bias, padding=1)
        ref = nn.functional.conv2d(model[2].gct(model[1](h)), model[2].weight, model[2].bias)
        out1 = model(x)
    assert torch.allclose(out1, ref, atol=1e-6)
    seen = []
    handle = model[0].gct.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    try:
        with torch.no_grad():
            assert torch.equal(model(x), out1)
        model.train()
        model(x).sum().backward()
    finally:
        handle.remove()
    assert seen == [(2, 3, 7, 7), (2, 3, 7, 7)]


@pytest.mark.parametrize("kind", ["conv1d_nlc", "conv2d_cl", "conv3d_cl"])
def test_lean_path_in_every_kernel_layout_matches_the_plain_composition(kind):
    torch.manual_seed(4)
    conv, x = {
        "conv1d_nlc": (nn.Conv1d(3, 5, 3, padding=1), torch.randn(2, 9, 3).transpose(1, 2)),
        "conv2d_cl": (nn.Conv2d(3, 5, 3, padding=1), torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last)),
        "conv3d_cl": (nn.Conv3d(3, 5, 3, padding=1),
                      torch.randn(2, 3, 4, 4, 4).contiguous(memory_format=torch.channels_last_3d)),
    }[kind]
    lean = apply_gct(nn.Sequential(conv))
    plain = apply_gct(copy.deepcopy(nn.Sequential(conv)), checkpoint=False)
    with torch.no_grad():
        for m in (lean[0].gct, plain[0].gct):
            m.gamma.copy_(torch.linspace(-2, 2, 3)), m.beta.fill_(0.3)
    with torch.no_grad():
        conv_fn = {3: nn.functional.conv1d, 4: nn.functional.conv2d, 5: nn.functional.conv3d}[x.dim()]
        expected = conv_fn(plain[0].gct(x), plain[0].weight, plain[0].bias, padding=1)
        assert torch.allclose(lean(x), expected, atol=1e-6)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = lean(xa)
    assert "GCTConvFunction" in type(out.grad_fn).__name__
    out.square().sum().backward()
    plain(xb).square().sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-5)
    for p, q in zip(lean.parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4)


