"""Block attention: the zoo's ``<attn>_<arch>`` variants (timm's layers and gctnet's SE) and GCT as a timm
``attn_layer`` (:class:`gctnet.attention.GCTAttn`)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys

import pytest
import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

import gctnet
from gctnet.attention import (
    ATTENTION_KEYS,
    LEFT_OUT,
    TIMM_ATTENTION_KEYS,
    GCTAttn,
    attention_modules,
    attention_params,
    get_attention,
)
from gctnet.models import create_model, get_model_entry, list_models
from gctnet.models.cifar_resnet import CIFAR_DEPTHS, cifar_resnet
from gctnet.models.se import make_se, se_hidden_channels
from gctnet.models.torchvision_zoo import ARCHS

pytestmark = pytest.mark.usefixtures("one_thread")  # many small ops

TV_RESNETS = [n for n, a in ARCHS.items() if a.resnet is not None]
CIFAR_NAMES = [f"{k}_resnet{d}" for k in ATTENTION_KEYS for d in CIFAR_DEPTHS]
# one torchvision ResNet per key, every architecture (BasicBlock, Bottleneck, ResNeXt) at least twice
TV_CASES = [(k, TV_RESNETS[i % len(TV_RESNETS)]) for i, k in enumerate(ATTENTION_KEYS)]

try:
    import timm  # noqa: F401

    HAVE_TIMM = True
except ImportError:  # pragma: no cover - the dev install has timm
    HAVE_TIMM = False
needs_timm = pytest.mark.skipif(not HAVE_TIMM, reason="timm is not installed (pip install 'gctnet[timm]')")


def _attention_class(key: str) -> type:
    if key == "se":
        return SqueezeExcitation
    from timm.layers import get_attn

    layer = get_attn(key)
    return getattr(layer, "func", layer)


def _blocks(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(getattr(m, "se", None), nn.Module)]


def _last_bn(block: nn.Module) -> nn.Module:
    return block.bn3 if hasattr(block, "bn3") else block.bn2


def _check_placement_and_backward(model: nn.Module, key: str, x: torch.Tensor) -> None:
    """One train-mode forward/backward: in every block the attention reads the last BN's output and the
    block returns relu(attention output + shortcut); every parameter gets a gradient."""
    blocks = _blocks(model)
    assert blocks and all(isinstance(b.se, _attention_class(key)) for b in blocks)
    seen: dict = {}

    def keep(what: str, i: int, inputs: bool = False):
        def hook(module, args, out):
            seen[(i, what)] = args[0] if inputs else out
            if what == "block":
                seen[(i, "out")] = out.clone()

        return hook

    handles = []
    for i, block in enumerate(blocks):
        shortcut = block.shortcut if hasattr(block, "shortcut") else block.downsample  # None: the block input
        handles += [
            _last_bn(block).register_forward_hook(keep("bn", i)),
            block.se.register_forward_hook(keep("se_in", i, inputs=True)),
            block.se.register_forward_hook(keep("se_out", i)),
            block.register_forward_hook(keep("block", i, inputs=shortcut is None)),
        ]
        if shortcut is not None:
            handles.append(shortcut.register_forward_hook(keep("shortcut", i)))
    out = model(x)
    for h in handles:
        h.remove()
    for i in range(len(blocks)):
        assert seen[(i, "se_in")] is seen[(i, "bn")], f"block {i}: the attention does not read the last BN's output"
        shortcut = seen[(i, "shortcut")] if (i, "shortcut") in seen else seen[(i, "block")]
        assert torch.equal(seen[(i, "out")], torch.relu(seen[(i, "se_out")] + shortcut)), f"block {i}"
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"


# --------------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------------
def test_every_key_has_a_variant_of_every_resnet():
    names = set(list_models())
    archs = [(f"resnet{d}", "cifar_resnet") for d in CIFAR_DEPTHS] + [(a, "torchvision") for a in TV_RESNETS]
    for key in ATTENTION_KEYS:
        for arch, family in archs:
            entry = get_model_entry(f"{key}_{arch}")
            assert (entry.attention, entry.family) == (key, family)
    assert not [n for n in names if n.split("_")[0] in LEFT_OUT]  # no sk_resnet20 etc.
    assert not [n for n in names if n.startswith(("eca_vgg", "cbam_mobilenet", "eca_inception", "eca_gct"))]
    attention_names = [n for n in names if get_model_entry(n).attention]
    assert len(attention_names) == len(ATTENTION_KEYS) * (len(CIFAR_DEPTHS) + len(TV_RESNETS))


@needs_timm
def test_every_timm_attention_key_is_registered_or_left_out_with_a_reason():
    """A timm upgrade that adds a key to create_attn fails here until it is classified."""
    from timm.layers import get_attn

    timm_keys = set(re.findall(r"attn_type == '(\w+)'", inspect.getsource(get_attn)))
    assert timm_keys == set(ATTENTION_KEYS) | set(LEFT_OUT) and ATTENTION_KEYS == ("se", *TIMM_ATTENTION_KEYS)
    assert not set(ATTENTION_KEYS) & set(LEFT_OUT) and all(len(r) > 30 for r in LEFT_OUT.values())
    with pytest.raises(ValueError, match="SelectiveKernel is a multi-branch replacement"):
        get_attention("sk")
    with pytest.raises(ValueError, match="unknown attention 'foo'.*eca.*gct"):
        get_attention("foo")


# --------------------------------------------------------------------------------------------------
# every variant builds, runs forward/backward, and has the attention where timm's ResNets put it
# --------------------------------------------------------------------------------------------------
@needs_timm
@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_cifar_variant(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=1)
    assert len(_blocks(model)) == 3 * (int(name.rsplit("resnet", 1)[1]) - 2) // 6
    _check_placement_and_backward(model, get_model_entry(name).attention, torch.randn(2, 1, 16, 16))


def _timm_resnet(arch: str, attn: str) -> nn.Module:
    """timm's ResNet of a torchvision architecture (the same state-dict keys) with ``attn_layer=attn``."""
    from timm.models import resnet as timm_resnet

    block, layers, fixed = ARCHS[arch].resnet
    blocks = {"BasicBlock": timm_resnet.BasicBlock, "Bottleneck": timm_resnet.Bottleneck}
    return timm_resnet.ResNet(blocks[block.__name__], list(layers), num_classes=3,
                              cardinality=fixed.get("groups", 1), base_width=fixed.get("width_per_group", 64),
                              # timm 1.0.31 cannot build "ge" itself (see gctnet.attention._gather_excite)
                              block_args=dict(attn_layer=get_attention(attn) if attn == "ge" else attn))


@needs_timm
@pytest.mark.parametrize("key, arch", TV_CASES)
def test_torchvision_variant_equals_timms_resnet_with_that_attn_layer(key, arch):
    """Placement, forward/backward, and the same function as timm's ResNet built with
    ``block_args=dict(attn_layer=key)`` (gctnet's weights load strictly into it)."""
    torch.manual_seed(0)
    model = create_model(f"{key}_{arch}", num_classes=3)
    theirs = _timm_resnet(arch, key).eval()
    theirs.load_state_dict(model.state_dict())  # strict: the same modules, the attention at `se`
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        ours, ref = model(x), theirs(x)
    # "se": gctnet's SE pools with AdaptiveAvgPool2d, timm's SEModule with mean(): equal up to rounding
    assert torch.equal(ours, ref) if key != "se" else torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
    _check_placement_and_backward(model.train(), key, x)


# --------------------------------------------------------------------------------------------------
# gctnet's SE is timm's `se`
# --------------------------------------------------------------------------------------------------
@needs_timm
def test_gctnet_se_is_timms_se_module():
    """Same hidden width (for every width in the zoo), same parameters, same function, same costs."""
    from timm.layers import SEModule

    torch.manual_seed(0)
    for c in (16, 32, 64, 128, 256, 512, 1024, 2048):  # CIFAR (width 1 and 2) and torchvision block outputs
        ours, theirs = make_se(c), SEModule(c)
        assert theirs.fc1.out_channels == se_hidden_channels(c) == ours.fc1.out_channels
        theirs.load_state_dict(ours.state_dict())  # strict: fc1/fc2 weight and bias, timm's bn is Identity
        x = torch.randn(2, c, 5, 5)
        with torch.no_grad():
            assert torch.allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    # whole models: se_resnet20 and the same net with timm's SEModule in its blocks
    from gctnet.bench.accounting import model_info

    torch.manual_seed(0)
    ours = create_model("se_resnet20")
    theirs = cifar_resnet(20, attn_layer=SEModule)
    theirs.load_state_dict(ours.state_dict())
    a, b = model_info(ours, (3, 32, 32), batch_size=2), model_info(theirs, (3, 32, 32), batch_size=2)
    assert (a.params, a.macs) == (b.params, b.macs)
    assert a.params == 278_258  # 277,970 with 1 input channel (docs/models.md) + 2 * 16 * 9
    # MACs counted for SE: its two FC convs, 2 * C * hidden per block (hidden 8 everywhere in ResNet-20)
    plain = model_info("resnet20", (3, 32, 32), batch_size=2)
    # the FC convs, plus 2 MACs per element each SE reads (accounting's rule for every attention module)
    assert a.macs - plain.macs == 3 * (2 * 16 * 8 + 2 * 32 * 8 + 2 * 64 * 8) + a.attn_macs


# --------------------------------------------------------------------------------------------------
# initialisation, options, errors, accounting
# --------------------------------------------------------------------------------------------------
def _with_plain_weights(name: str, plain: nn.Module) -> nn.Module:
    model = create_model(name, num_classes=4).eval()
    result = model.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys and all(".se." in k for k in result.missing_keys)
    return model


def _random_bn(model: nn.Module) -> nn.Module:
    """Random BN affine parameters, so no residual branch is zero (attention of zero is zero)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_()
                m.bias.normal_()
    return model


@needs_timm
@pytest.mark.parametrize("arch, size", [("resnet20", 16), ("resnet18", 32)])
def test_identity_at_init_where_the_attention_has_it(arch, size):
    """gca (GCNet: last layer zero) and GCT start as the identity: the model equals the plain one with
    its weights; a gating attention such as eca does not."""
    torch.manual_seed(0)
    plain = _random_bn(create_model(arch, num_classes=4)).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = plain(x)
        assert torch.equal(_with_plain_weights(f"gca_{arch}", plain)(x), expected)
        assert not torch.allclose(_with_plain_weights(f"eca_{arch}", plain)(x), expected)
    # GCT at the same place (not a registered name: gct_<arch> is GCT before every conv)
    if arch == "resnet20":
        gct = cifar_resnet(20, 4, attn_layer="gct").eval()
    else:
        from gctnet.models.torchvision_zoo import build_attn_resnet

        gct = build_attn_resnet(arch, "gct", 4).eval()
    gct.load_state_dict(plain.state_dict(), strict=False)
    assert len(gctnet.gct_modules(gct)) == len(_blocks(gct)) > 0
    with torch.no_grad():
        assert torch.equal(gct(x), expected)
        gct.get_submodule(gctnet.gct_modules(gct)[0][0]).beta.fill_(0.5)
        assert not torch.allclose(gct(x), expected)


def test_attn_kwargs_reach_the_attention_layer():
    model = create_model("se_resnet20", attn_kwargs={"reduction": 4})
    assert [b.se.fc1.out_channels for b in (model.layer1[0], model.layer3[0])] == [8, 16]  # max(8, C // 4)
    with pytest.raises(TypeError, match="no block attention"):
        create_model("resnet20", attn_kwargs={"reduction": 4})
    with pytest.raises(TypeError, match="'attn_layer' fixed by the model name"):
        create_model("se_resnet20", attn_layer="eca")
    with pytest.raises(ValueError, match="either se=True or attn_layer"):
        cifar_resnet(20, se=True, attn_layer="eca")


@needs_timm
def test_attn_kwargs_of_timm_layers():
    # ECA's adaptive kernel size: t = (log2(C) + beta) / gamma, odd; C = 32: 3 with gamma = 2, 7 with gamma = 1
    assert create_model("eca_resnet20").layer2[1].se.conv.kernel_size == (3,)
    assert create_model("eca_resnet20", attn_kwargs={"gamma": 1}).layer2[1].se.conv.kernel_size == (7,)
    model = create_model("cbam_resnet18", attn_kwargs={"rd_ratio": 1 / 4})
    assert model.layer4[0].se.channel.fc1.out_channels == 128


def test_timm_variants_need_timm_when_created_not_when_listed(monkeypatch):
    for module in [m for m in list(sys.modules) if m == "timm" or m.startswith("timm.")] + ["timm", "timm.layers"]:
        monkeypatch.setitem(sys.modules, module, None)  # `import timm...` raises ImportError
    assert "eca_resnet20" in list_models("eca_*") and get_model_entry("cbam_resnet50").attention == "cbam"
    for name in ("eca_resnet20", "cbam_resnet50"):
        with pytest.raises(ImportError, match=rf"{name} needs timm .*pip install 'gctnet\[timm\]'"):
            create_model(name)
    # gctnet's own SE and GCT need no timm
    assert isinstance(create_model("se_resnet20").layer1[0].se, SqueezeExcitation)
    assert isinstance(cifar_resnet(20, attn_layer="gct").layer1[0].se, GCTAttn)
    assert attention_params(create_model("se_resnet20")) > 0  # finds SE without timm's classes


@needs_timm
def test_attention_params_counts_what_model_info_adds():
    from gctnet.bench.accounting import model_info

    plain = model_info("resnet20", (3, 16, 16), batch_size=2).params
    for name in ("cbam_resnet20", "gc_resnet20", "se_resnet20", "gct_resnet20"):
        model = create_model(name)
        names = [n for n, _ in attention_modules(model)]
        assert names and all(n.endswith((".se", ".gct")) for n in names)  # outermost modules only
        assert model_info(model, (3, 16, 16), batch_size=2).params - plain == attention_params(model), name
    gct = create_model("gct_resnet20")
    assert attention_params(gct) == model_info(gct, (3, 16, 16), batch_size=2).gct_params


# --------------------------------------------------------------------------------------------------
# GCTAttn: GCT as timm's attn_layer
# --------------------------------------------------------------------------------------------------
def test_gct_attn_takes_timms_attention_signature():
    layer = GCTAttn(8, rd_ratio=1 / 16, rd_divisor=8, act_layer=nn.ReLU, gate_layer="sigmoid", device="cpu",
                    dtype=torch.float64)
    assert isinstance(layer, gctnet.GCT) and layer.beta.dtype == torch.float64 and layer.channels == 8
    assert GCTAttn(4, mode="l1").mode == "l1"
    assert get_attention("gct") is GCTAttn and get_attention(GCTAttn) is GCTAttn
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    assert torch.equal(layer(x), x)  # fresh: the identity
    with pytest.raises(TypeError, match="positive int"):
        GCTAttn(8.0)


def _timm_pair(arch: str):
    """(plain, with GCTAttn) builders of a timm architecture that takes an attention layer."""
    import timm
    from timm.models.byobnet import ByobNet
    from timm.models.byobnet import model_cfgs as byob_cfgs
    from timm.models.cspnet import CspNet
    from timm.models.cspnet import model_cfgs as csp_cfgs

    if arch == "resnet":  # timm's ResNet: attention after the last BN (SE-ResNet's place)
        return (lambda: timm.create_model("resnet10t", num_classes=5),
                lambda: timm.create_model("resnet10t", num_classes=5, block_args=dict(attn_layer=GCTAttn)))
    if arch == "byobnet":  # RegNetZ-B16 (ByobNet), SE replaced; timm passes its attn_kwargs (rd_ratio, ...)
        cfg = byob_cfgs["regnetz_b16"]
        return (lambda: ByobNet(dataclasses.replace(cfg, attn_layer=None), num_classes=5),
                lambda: ByobNet(dataclasses.replace(cfg, attn_layer=GCTAttn), num_classes=5))
    if arch == "cspnet":  # CSPDarkNet blocks: timm passes act_layer
        cfg = csp_cfgs["cs3darknet_s"]
        return (lambda: CspNet(cfg, num_classes=5),
                lambda: CspNet(dataclasses.replace(cfg, stages=dataclasses.replace(cfg.stages, attn_layer=GCTAttn)),
                               num_classes=5))
    raise AssertionError(arch)


@needs_timm
@pytest.mark.parametrize("arch", ["resnet", "byobnet", "cspnet"])
def test_gct_attn_in_timm_architectures(arch):
    """Block-level GCT in timm models: exactly the plain model at init (weights copied), found by
    param_groups / no_weight_decay / timm's optimizer, and trainable."""
    import timm.optim

    make_plain, make_gct = _timm_pair(arch)
    torch.manual_seed(0)
    plain = _random_bn(make_plain()).eval()
    model = make_gct().eval()
    result = model.load_state_dict(plain.state_dict(), strict=False)
    gcts = gctnet.gct_modules(model)
    assert gcts and all(type(m) is GCTAttn for _, m in gcts)
    assert not result.unexpected_keys
    assert sorted(result.missing_keys) == sorted(f"{n}.{p}" for n, _ in gcts for p in ("alpha", "gamma", "beta"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = plain(x)
        assert torch.equal(model(x), expected)
        gcts[-1][1].gamma.fill_(1.0)
        assert not torch.allclose(model(x), expected)
    # weight decay: GCT beta found by module type
    betas = {f"{n}.beta" for n, _ in gcts}
    assert gctnet.no_weight_decay(model) == betas
    groups = gctnet.param_groups(model, 1e-4)
    assert set(groups[1]["param_names"]) == betas and groups[1]["weight_decay"] == 0.0
    gctnet.surgery.attach_no_weight_decay(model)  # timm's optimizer honours model.no_weight_decay()
    opt = timm.optim.create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=1e-4, filter_bias_and_bn=False)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert all(decay[id(params[b])] == 0.0 for b in betas)
    assert all(decay[id(m.alpha)] == 1e-4 for _, m in gcts)
    # trains: gradients reach every GCT parameter
    model.train()
    model(x).square().mean().backward()
    assert all(m.gamma.grad is not None and m.beta.grad is not None for _, m in gcts)
