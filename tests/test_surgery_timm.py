"""Surgery on outside architectures (timm, torchvision segmentation): its limits and weight decay.

One GCT over a timm MixedConv2d's whole input, CondConv2d / DeformConv2d gated, unknown conv-like
modules reported, convs fed by a 1x1 (pooled) input found by the example_input probe, and the
no_weight_decay() that apply_gct attaches (timm's create_optimizer_v2 in both filter settings).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torchvision
from torch import nn

timm = pytest.importorskip("timm")
import timm.optim  # noqa: E402
from timm.layers import CondConv2d, MixedConv2d  # noqa: E402

from gctnet import GCT  # noqa: E402
from gctnet.surgery import apply_gct, gct_modules, remove_gct  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # many small ops

POOLED = "skipped: 1x1 spatial input in the example forward (a pooled input)"


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "deeplabv3":
        return torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=3, aux_loss=False)
    return timm.create_model(name, num_classes=3)


def _out(y):
    return y["out"] if isinstance(y, dict) else y


def _randomise_gcts(model: nn.Module) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for _, g in gct_modules(model):
            g.gamma.normal_()
            g.beta.normal_(0, 0.5)


def _reasons(model: nn.Module) -> dict:
    return {e.name: e.reason for e in model.gct_report.entries}


@pytest.mark.parametrize("name", ["mixnet_s", "efficientnet_cc_b0_4e", "resnest14d", "mobilenetv3_small_050",
                                  "deeplabv3"])
def test_surgery_is_exact_at_init_and_remove_gct_restores_the_model(name):
    plain = _build(name)
    x = torch.randn(2, 3, 64, 64)
    model = apply_gct(copy.deepcopy(plain), example_input=x[:1])
    assert model.gct_report.inserted
    for m in (plain, model):
        m.train()
        torch.manual_seed(2)  # the same dropout masks (DeepLab's ASPP)
        _out(m(x)).square().mean().backward()
    assert {k for k in model.state_dict() if ".gct." not in k} == set(plain.state_dict())
    grads = dict(model.named_parameters())
    for n, p in plain.named_parameters():
        assert torch.equal(grads[n].grad, p.grad), n
    plain.eval(), model.eval()
    with torch.no_grad():
        ref = _out(plain(x))
        assert torch.equal(_out(model(x)), ref)
        _randomise_gcts(model)
        assert not torch.allclose(_out(model(x)), ref)  # the GCTs are in the forward
        remove_gct(model)
        assert torch.equal(_out(model(x)), ref)
    assert list(model.state_dict()) == list(plain.state_dict())
    assert [type(m) for m in model.modules()] == [type(m) for m in plain.modules()]
    assert not gct_modules(model) and "no_weight_decay" not in model.__dict__


def test_mixed_conv_gets_one_gct_over_its_whole_input():
    plain = _build("mixnet_s").eval()
    model = apply_gct(copy.deepcopy(plain))
    reasons = _reasons(model)
    mixed = [(n, m) for n, m in model.named_modules() if isinstance(m, MixedConv2d)]
    assert len(mixed) == 34
    for name, m in mixed:
        assert isinstance(m.gct, GCT) and m.gct.channels == m.in_channels
        assert reasons[name].startswith("one GCT over the whole input")
        splits = [c for key, c in m.items() if key != "gct"]
        assert len(splits) == len(m.splits) and not any(hasattr(c, "gct") for c in splits)
        assert all(reasons[f"{name}.{key}"] == f"skipped: split conv of MixedConv2d {name!r} (one GCT over its "
                   "whole input)" for key in m if key != "gct")
    # the gated module computes the plain MixedConv2d on gct(x), the GCT normalising over all channels
    name, m = mixed[5]
    _randomise_gcts(model)
    x = torch.randn(2, m.in_channels, 8, 8)
    with torch.no_grad():
        assert torch.equal(m(x), plain.get_submodule(name)(m.gct(x)))
    # applying again gates nothing new (the split convs stay without GCT)
    count = len(gct_modules(model))
    apply_gct(model)
    assert len(gct_modules(model)) == count and not model.gct_report.inserted


def test_cond_conv_is_gated_before_its_expert_mixture():
    plain = _build("efficientnet_cc_b0_4e").eval()
    model = apply_gct(copy.deepcopy(plain))
    cond = [(n, m) for n, m in model.named_modules() if isinstance(m, CondConv2d)]
    assert len(cond) == 24
    reasons = _reasons(model)
    assert all(isinstance(m.gct, GCT) and m.gct.channels == m.in_channels for _, m in cond)
    assert all(reasons[n].startswith("before every conv") for n, _ in cond)
    name, m = cond[3]
    _randomise_gcts(model)
    x, routing = torch.randn(2, m.in_channels, 8, 8), torch.rand(2, m.num_experts)
    with torch.no_grad():
        assert torch.equal(m(x, routing), plain.get_submodule(name)(m.gct(x), routing))


def test_convs_fed_by_a_pooled_input_are_skipped_with_the_example_input():
    x = torch.randn(1, 3, 64, 64)
    # ResNeSt split attention: fc1/fc2 see the pooled sum of the splits (no class-name rule knows SplitAttn)
    resnest = _build("resnest14d")
    fcs = {f"{n}.{c}" for n, m in resnest.named_modules() if type(m).__name__ == "SplitAttn" for c in ("fc1", "fc2")}
    assert len(fcs) == 8
    assert fcs <= {e.name for e in apply_gct(copy.deepcopy(resnest)).gct_report.inserted}  # without the probe
    reasons = _reasons(apply_gct(resnest, example_input=x))
    assert {n for n, r in reasons.items() if r == POOLED} == fcs
    # MobileNetV3: conv_head after the global pool, and the SE convs
    mnv3 = apply_gct(_build("mobilenetv3_small_050"), example_input=x)
    reasons = _reasons(mnv3)
    assert reasons["conv_head"] == POOLED and not hasattr(mnv3.conv_head, "gct")
    assert all(reasons[n] == POOLED for n in reasons if ".se." in n)
    assert reasons["conv_stem"] == "before every conv"
    # torchvision DeepLabV3: the ASPP pooling branch
    deeplab = apply_gct(_build("deeplabv3"), example_input=x)
    aspp_pool = "classifier.0.convs.4.1"
    assert isinstance(deeplab.get_submodule(aspp_pool), nn.Conv2d) and _reasons(deeplab)[aspp_pool] == POOLED
    assert _reasons(deeplab)["classifier.0.convs.0.0"] == "before every conv"


def test_example_input_probe_restores_modes_and_warns_when_too_small():
    from gctnet.models import create_model

    model = create_model("resnet20")
    model.layer1.eval()  # a mixed state: the probe must restore it, and leave the BN statistics alone
    running = model.bn1.running_mean.clone()
    with pytest.warns(UserWarning, match="sees a 1x1 input in example_input"):
        apply_gct(model, example_input=torch.randn(1, 3, 4, 4))  # layer3's 3x3 convs see 1x1 maps here
    assert model.training and not model.layer1.training and model.layer2.training
    assert torch.equal(model.bn1.running_mean, running)
    assert _reasons(model)["layer3.1.conv1"] == POOLED and _reasons(model)["conv1"] == "before every conv"


def test_unknown_conv_like_is_reported_and_known_ones_are_gated():
    class OddConv(nn.Module):  # looks like a conv, is not an nn.ConvNd: gctnet cannot know its input
        def __init__(self) -> None:
            super().__init__()
            self.in_channels, self.out_channels = 4, 4
            self.weight = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return torch.einsum("oc,nchw->nohw", self.weight, x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.odd = OddConv()
            self.offset = nn.Conv2d(4, 18, 3, padding=1)
            self.deform = torchvision.ops.DeformConv2d(4, 4, 3, padding=1)

        def forward(self, x):
            x = self.odd(x)
            return self.deform(x, self.offset(x))

    torch.manual_seed(0)
    plain = Net().eval()
    model = apply_gct(copy.deepcopy(plain), example_input=(torch.randn(1, 4, 8, 8),))  # positional-args tuple
    reasons = _reasons(model)
    assert reasons["odd"].startswith("skipped: conv-like OddConv is not an nn.Conv1d/2d/3d")
    assert reasons["deform"].startswith("before every conv") and isinstance(model.deform.gct, GCT)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))


# --------------------------------------------------------------------------------------------------
# weight decay: apply_gct attaches no_weight_decay(), remove_gct restores the model's own
# --------------------------------------------------------------------------------------------------
def _decay_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    by_id = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


def test_no_weight_decay_merges_with_the_models_own_and_timm_optimizer_honours_it():
    vit = timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3)
    own = set(vit.no_weight_decay())
    assert "pos_embed" in own
    apply_gct(vit)
    assert vit.no_weight_decay() == own | {"patch_embed.proj.gct.beta"}
    for filter_bias_and_bn in (False, True):
        opt = timm.optim.create_optimizer_v2(vit, "sgd", lr=0.1, weight_decay=1e-4,
                                             filter_bias_and_bn=filter_bias_and_bn)
        decay = _decay_by_name(vit, opt)
        assert decay["patch_embed.proj.gct.beta"] == 0 and decay["pos_embed"] == 0
        assert decay["patch_embed.proj.weight"] == 1e-4
        # timm's filter (default on) also exempts every 1-D tensor: GCT alpha and gamma included
        assert decay["patch_embed.proj.gct.alpha"] == decay["patch_embed.proj.gct.gamma"] == (
            0 if filter_bias_and_bn else 1e-4)
    # it survives deepcopy (timm's EMA) and pickling, bound to the copy
    for clone in (copy.deepcopy(vit), pickle.loads(pickle.dumps(vit))):
        with torch.no_grad():
            clone.patch_embed.proj.gct.beta.add_(1)
        assert clone.no_weight_decay() == vit.no_weight_decay()
        assert clone.no_weight_decay.model is clone
    remove_gct(vit)
    assert "no_weight_decay" not in vit.__dict__ and vit.no_weight_decay() == own


def test_no_weight_decay_on_a_model_without_its_own():
    model = apply_gct(torchvision.models.resnet18(num_classes=3))
    betas = {n for n, _ in model.named_parameters() if n.endswith(".gct.beta")}
    assert len(betas) == 20 and model.no_weight_decay() == betas
    opt = timm.optim.create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=1e-4, filter_bias_and_bn=False)
    decay = _decay_by_name(model, opt)
    assert {n for n, wd in decay.items() if wd == 0} == betas  # the paper's rule exactly
    remove_gct(model)
    assert not hasattr(model, "no_weight_decay")
