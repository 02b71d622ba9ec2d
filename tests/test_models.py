"""Model zoo: CIFAR ResNets and torchvision-based architectures with se_/gct_/gct_..._block variants."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import SqueezeExcitation

from gctnet import GCT
from gctnet.models import create_model, get_model_entry, list_models
from gctnet.models.cifar_resnet import BasicBlock, CifarResNet, cifar_resnet
from gctnet.models.se import se_hidden_channels
from gctnet.surgery import gct_modules, load_plain_weights


pytestmark = pytest.mark.usefixtures("one_thread")  # many small ops


OUR_FAMILIES = ("cifar_resnet", "torchvision")
# plain, se_, gct_, gct_..._block (the other <attn>_ variants, timm's layers, are tested in test_attention.py)
OUR_MODELS = [n for n in list_models("*") if get_model_entry(n).family in OUR_FAMILIES
              and get_model_entry(n).attention in ("", "se")]

# smallest convenient spatial size per architecture (inception_v3 needs >= 75)
def _size(name: str) -> int:
    if get_model_entry(name).family == "cifar_resnet":
        return 8
    return 75 if "inception" in name else 32


def _count(model: nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


def _variant(name: str) -> str:
    if name.startswith("se_"):
        return "se"
    if name.startswith("gct_"):
        return "gct_block" if name.endswith("_block") else "gct"
    return "plain"


def test_expected_names_are_registered():
    expected = []
    for d in (20, 32, 44, 56, 110):
        expected += [f"resnet{d}", f"se_resnet{d}", f"gct_resnet{d}", f"gct_resnet{d}_block"]
    for a in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d"):
        expected += [a, f"se_{a}", f"gct_{a}", f"gct_{a}_block"]
    for a in ("vgg16_bn", "inception_v3", "mobilenet_v2"):
        expected += [a, f"gct_{a}"]
    assert sorted(expected) == sorted(OUR_MODELS)
    # SE and block variants only where residual blocks exist
    assert "se_vgg16_bn" not in list_models() and "gct_mobilenet_v2_block" not in list_models()
    assert {get_model_entry(n).attention for n in OUR_MODELS} == {"", "se"}
    assert all(get_model_entry(n).attention == "se" for n in OUR_MODELS if n.startswith("se_"))


@pytest.mark.parametrize("name", OUR_MODELS)
def test_every_model_forward_backward_one_channel(name):
    """Train-mode forward + backward on a tiny 1-channel input with 3 classes; every parameter gets a grad."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=1)
    entry = get_model_entry(name)
    s = _size(name)
    out = model(torch.randn(2, 1, s, s))
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: parameters without gradient: {missing[:5]}"

    # cfg names resolve: the stem conv reads in_chans channels, the classifier has num_classes outputs
    stem = model.get_submodule(entry.cfg["first_conv"])
    assert isinstance(stem, nn.Conv2d) and stem.in_channels == 1
    assert model.get_submodule(entry.cfg["classifier"]).out_features == 3
    assert set(entry.cfg) >= {"input_size", "mean", "std", "first_conv", "classifier"}

    # the variant is what the name says
    gcts = gct_modules(model)
    variant = _variant(name)
    assert (len(gcts) > 0) == variant.startswith("gct")
    assert (_count(model, SqueezeExcitation) > 0) == (variant == "se")
    if variant == "gct":  # GCT before every conv, the stem's GCT follows in_chans
        assert len(gcts) == _count(model, nn.Conv2d)
        assert gcts[0][1].channels == 1 and gcts[0][0] == entry.cfg["first_conv"] + ".gct"
    if variant == "gct_block":
        blocks = [m for m in model.modules() if type(m).__name__ in ("BasicBlock", "Bottleneck")]
        assert len(gcts) == len(blocks) > 0
        assert all(isinstance(b.conv1.gct, GCT) for b in blocks)


def test_typo_lists_close_names():
    with pytest.raises(ValueError, match="unknown model 'gct_resnet5'.*gct_resnet5[06]"):
        create_model("gct_resnet5")
    with pytest.raises(ValueError, match="se_resnet50"):
        create_model("se_resnt50")


# --------------------------------------------------------------------------------------------------
# CIFAR ResNets
# --------------------------------------------------------------------------------------------------
def _cifar_params_by_hand(depth: int, in_chans: int, num_classes: int) -> int:
    """Option-B CIFAR ResNet parameter count from the architecture description."""
    n = (depth - 2) // 6
    conv3 = lambda cin, cout: 9 * cin * cout  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    total = conv3(in_chans, 16) + bn(16)
    cin = 16
    for width in (16, 32, 64):
        for i in range(n):
            total += conv3(cin, width) + bn(width) + conv3(width, width) + bn(width)
            if cin != width:
                total += cin * width + bn(width)  # 1x1 projection shortcut + BN
            cin = width
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_cifar_param_count_matches_hand_count(depth):
    model = create_model(f"resnet{depth}", num_classes=10, in_chans=3)
    assert sum(p.numel() for p in model.parameters()) == _cifar_params_by_hand(depth, 3, 10)
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == (depth - 2) // 6


def test_resnet20_known_size_and_defaults():
    model = create_model("resnet20")  # defaults: 10 classes, 3 channels
    assert sum(p.numel() for p in model.parameters()) == 272_474
    assert model.fc.out_features == 10 and model.conv1.in_channels == 3
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)


@pytest.mark.parametrize("hw", [28, 32])
def test_cifar_spatial_sizes(hw):
    model = create_model("resnet20", num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, hw, hw)
    assert model.forward_features(x).shape == (2, 64, hw // 4, hw // 4)
    assert model(x).shape == (2, 10)


def test_cifar_shortcuts_are_projections_only_where_shape_changes():
    model = create_model("resnet20")
    shortcuts = {n: m.shortcut for n, m in model.named_modules() if isinstance(m, BasicBlock)}
    projections = [n for n, s in shortcuts.items() if isinstance(s, nn.Sequential)]
    assert projections == ["layer2.0", "layer3.0"]
    conv, bn = shortcuts["layer2.0"]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (2, 2)
    assert isinstance(bn, nn.BatchNorm2d)
    assert all(isinstance(s, nn.Identity) for n, s in shortcuts.items() if n not in projections)


def test_cifar_gct_counts():
    # 19 convs on the main path + 2 projection shortcuts; one GCT per block for _block
    assert len(gct_modules(create_model("gct_resnet20"))) == 21
    assert len(gct_modules(create_model("gct_resnet20_block"))) == 9
    gcts = gct_modules(create_model("gct_resnet56", in_chans=1))
    assert gcts[0][0] == "conv1.gct" and gcts[0][1].channels == 1
    assert len(gcts) == 57


def test_cifar_width_and_options():
    model = create_model("resnet20", width=2)
    assert model.widths == (32, 64, 128) and model.fc.in_features == 128
    model = cifar_resnet(20, zero_init_residual=True)
    assert all(torch.all(b.bn2.weight == 0) for b in model.modules() if isinstance(b, BasicBlock))
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(21)
    with pytest.raises(ValueError, match="width"):
        create_model("resnet20", width=0)
    with pytest.raises(TypeError, match="fixed by the model name"):
        create_model("resnet20", depth=32)


def test_cifar_kaiming_init():
    model = create_model("resnet110")
    w = model.layer3[5].conv2.weight
    expected_std = (2.0 / (w.shape[0] * 9)) ** 0.5  # kaiming normal, fan_out, ReLU gain
    assert abs(w.std().item() - expected_std) / expected_std < 0.05


def test_se_hidden_width_has_floor():
    assert se_hidden_channels(16) == 8  # 16 // 16 = 1 would be useless
    assert se_hidden_channels(256) == 16
    assert se_hidden_channels(4) == 4  # never wider than the input
    se = create_model("se_resnet20").layer1[0].se
    assert se.fc1.out_channels == 8 and se.fc1.in_channels == 16


class _Zero(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


@pytest.mark.parametrize("name", ["se_resnet20", "se_resnet18", "se_resnet50"])
def test_se_sits_on_the_residual_branch_before_the_addition(name):
    """With SE replaced by zero, a block's output is relu(shortcut(x)): SE scales the branch only."""
    model = create_model(name).eval()
    block = next(m for m in model.modules() if hasattr(m, "se") and isinstance(m.se, SqueezeExcitation)
                 and (getattr(m, "shortcut", None) is not None or getattr(m, "downsample", None) is not None))
    block.se = _Zero()
    cin = block.conv1.in_channels
    x = torch.randn(2, cin, 8, 8)
    shortcut = getattr(block, "shortcut", None) or block.downsample
    with torch.no_grad():
        assert torch.equal(block(x), torch.relu(shortcut(x)))


# --------------------------------------------------------------------------------------------------
# torchvision-based models
# --------------------------------------------------------------------------------------------------
def test_torchvision_models_are_torchvision_architectures():
    torch.manual_seed(0)
    ours = create_model("resnet50")
    theirs = torchvision.models.resnet50(weights=None)
    # the same class with timm's interface added (gctnet.models.interface), same name and modules
    assert isinstance(ours, torchvision.models.ResNet) and type(ours).__name__ == "ResNet"
    shapes = lambda m: [(k, v.shape) for k, v in m.state_dict().items()]  # noqa: E731
    assert shapes(ours) == shapes(theirs)
    assert sum(p.numel() for p in ours.parameters()) == 25_557_032
    # SE-ResNet-50 with reduction 16: the standard 28.09 M parameters (timm's seresnet50 has the same)
    assert sum(p.numel() for p in create_model("se_resnet50").parameters()) == 28_088_024


def test_plain_torchvision_weights_load_into_se_variant_with_only_se_keys_missing():
    plain = create_model("resnet18", num_classes=5)
    se = create_model("se_resnet18", num_classes=5)
    result = se.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(".se." in k for k in result.missing_keys)


def test_inception_defaults_and_no_downloads():
    model = create_model("inception_v3", num_classes=3)
    assert model.AuxLogits is None and not model.transform_input
    assert get_model_entry("inception_v3").cfg["input_size"] == (3, 299, 299)
    assert create_model("inception_v3", num_classes=3, aux_logits=True).AuxLogits is not None
    with pytest.raises(ValueError, match="never downloads"):
        create_model("resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="transform_input"):
        create_model("inception_v3", in_chans=1, transform_input=True)


def test_builder_kwargs_pass_through():
    assert create_model("mobilenet_v2", width_mult=0.5).features[0][0].out_channels == 16
    model = create_model("resnet18", zero_init_residual=True)
    assert torch.all(model.layer1[0].bn2.weight == 0)
    model = create_model("gct_resnet18", gct_kwargs={"mode": "l1"})
    assert all(m.mode == "l1" for _, m in gct_modules(model))
    with pytest.raises(ValueError, match="placement"):
        create_model("gct_resnet18", gct_kwargs={"placement": "block"})


def test_resnet50_gct_counts():
    """Paper placement: 53 GCTs (stem + 48 block convs + 4 downsample convs), 67,593 parameters."""
    model = create_model("gct_resnet50")
    gcts = gct_modules(model)
    assert len(gcts) == 53
    assert sum(p.numel() for _, m in gcts for p in m.parameters()) == 67_593
    assert sum(p.numel() for p in model.parameters()) == 25_624_625
    assert [n for n, _ in gcts if "downsample" in n] == [f"layer{i}.0.downsample.0.gct" for i in range(1, 5)]
    assert len(gct_modules(create_model("gct_resnet50_block"))) == 16


@pytest.mark.parametrize(
    "arch, size",
    [("resnet20", 16), ("resnet18", 32), ("mobilenet_v2", 32), ("inception_v3", 75), ("resnet20_block", 16)],
)
def test_gct_at_init_equals_plain_bitwise(arch, size):
    """A plain model's weights loaded into its gct_ variant give exactly the same outputs at init."""
    base = arch.removesuffix("_block")
    gct_name = f"gct_{arch}"
    torch.manual_seed(0)
    plain = create_model(base, num_classes=4).eval()
    gct = create_model(gct_name, num_classes=4).eval()
    load_plain_weights(gct, plain.state_dict())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(gct(x), plain(x))


def test_timm_interface_without_timm():
    """gctnet.create_model's classifiers have timm's interface themselves (timm is not needed for it)."""
    torch.manual_seed(0)
    model = create_model("gct_resnet20", in_chans=1).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        logits, feats = model(x), model.forward_features(x)
        maps = model.forward_intermediates(x, indices=2, intermediates_only=True)  # the last two levels
        pre = model.forward_head(feats, pre_logits=True)
    assert feats.shape == (2, 64, 7, 7) and logits.shape == (2, 10) and pre.shape == (2, 64)
    assert [m.shape[1:] for m in maps] == [(32, 14, 14), (64, 7, 7)] and torch.equal(maps[-1], feats)
    assert torch.equal(model.fc(pre), logits)
    headless = create_model("gct_resnet20", in_chans=1, num_classes=0)
    assert headless.num_classes == 0 and isinstance(headless.fc, nn.Identity)
    # torchvision models: re-classed in place, with the feature levels of the architecture
    tv = create_model("resnext50_32x4d", num_classes=3)
    assert isinstance(tv, torchvision.models.ResNet) and tv.num_features == 2048
    assert [(f["module"], f["reduction"]) for f in tv.feature_info] == [
        ("relu", 2), ("layer1", 4), ("layer2", 8), ("layer3", 16), ("layer4", 32)]
    dilated = create_model("resnet50", replace_stride_with_dilation=[False, True, True])
    assert [f["reduction"] for f in dilated.feature_info] == [2, 4, 8]  # layer4 is the stride-8 level
