"""gctnet models in timm's registry: timm's model interface and timm's own model checks (forward,
backward, default cfgs, forward_intermediates, features_only with every feature_cls, fx), pretrained_cfg,
optimizer weight decay, registration on timm's import."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")
import timm.optim  # noqa: E402
from timm.models import get_notrace_functions, get_notrace_modules  # noqa: E402
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names  # noqa: E402

import gctnet  # noqa: E402
from gctnet.models import create_model, get_model_entry, list_models, timm_bridge  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # many small ops

timm_bridge.register_all()  # (import gctnet did it already when timm was imported first: then a no-op)
# gctnet's built-in classifiers (other test modules register models of their own, family ""); of the
# <attn>_ variants of timm's attention layers (test_attention.py builds them all) one per ResNet family and
# block type
RIVALS = ["cbam_resnet20", "eca_resnet18", "coord_resnet50"]
NAMES = sorted(n for n in timm_bridge.REGISTERED if get_model_entry(n).family
               and (get_model_entry(n).attention in ("", "se") or n in RIVALS))


@pytest.fixture(scope="module", autouse=True)
def registered():
    timm_bridge.register_all()  # models registered in gctnet by other test modules since collection
# one model per class and kind (CIFAR / torchvision ResNet, SE, block, official, VGG, MobileNetV2, Inception)
REPRESENTATIVES = ["gct_resnet20", "se_resnet20", "gct_resnet18_block", "gct_resnet50_official", "gct_vgg16_bn",
                   "gct_mobilenet_v2", "gct_inception_v3"]


def _small_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """timm's checks at a cheap size: 32 px (75 for Inception-v3, the smallest it takes)."""
    c, h, _ = model.pretrained_cfg["input_size"]
    size = 75 if h == 299 else min(h, 32)
    return torch.randn(batch, c, size, size)


def _own_forward(model: nn.Module):
    """The forward the architecture had before gctnet added timm's interface."""
    base = next((c for c in type(model).__mro__ if c.__module__.startswith("torchvision.")), None)
    if base is not None:
        return lambda x: base.forward(model, x)
    m = model  # gctnet's CIFAR ResNet, as written before (stem, stages, pool, fc)
    return lambda x: m.fc(torch.flatten(m.avgpool(m.layer3(m.layer2(m.layer1(m.relu(m.bn1(m.conv1(x))))))), 1))


def test_register_all_is_idempotent_and_skips_clashes():
    assert timm_bridge.register_all() == []  # second call: nothing new
    assert "gct_resnet50" in timm.list_models("gct_*")
    assert {"gct_resnet20", "se_resnet50", "gct_resnet50_official", "resnet20"} <= set(timm_bridge.REGISTERED)
    # names timm already has stay timm's own models
    assert "resnet50" in timm_bridge.SKIPPED and "resnet50" not in timm_bridge.REGISTERED
    assert timm.models.get_pretrained_cfg("resnet50").hf_hub_id  # still timm's model with its weights
    # detection / video models are not registered
    assert not timm.is_model("gct_maskrcnn_resnet50_fpn") and not timm.is_model("gct_r3d_18")
    assert set(timm.list_models(module="timm_bridge")) == set(timm_bridge.REGISTERED)
    eligible = [n for n in list_models() if get_model_entry(n).family not in timm_bridge.EXCLUDED_FAMILIES]
    assert sorted(timm_bridge.REGISTERED + timm_bridge.SKIPPED) == sorted(eligible)


def test_create_model_and_pretrained_cfg():
    model = timm.create_model("gct_resnet50", pretrained=False, num_classes=7)
    assert len(gctnet.gct_modules(model)) == 53
    assert model.fc.out_features == 7
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["first_conv"] == "conv1" and cfg["classifier"] == "fc"
    assert cfg["mean"] == pytest.approx((0.485, 0.456, 0.406)) and cfg["std"] == pytest.approx((0.229, 0.224, 0.225))
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["input_size"] == (3, 224, 224) and data_cfg["crop_pct"] == 0.875
    small = timm.create_model("gct_resnet20", in_chans=1, num_classes=10, drop_rate=0.0, bn_momentum=0.01)
    assert small.pretrained_cfg["input_size"] == (3, 32, 32)
    assert small.conv1.weight.shape[1] == 1 and small.conv1.gct.channels == 1
    assert small.bn1.momentum == 0.01
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_timm_options_without_meaning_are_refused():
    with pytest.raises(ValueError, match="drop_path_rate"):
        timm.create_model("gct_resnet20", drop_path_rate=0.1)
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model("gct_resnet20", global_pool="max")
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("gct_resnet20", pretrained=True)
    with pytest.raises(ValueError, match="gct_wd_policy"):
        timm.create_model("gct_resnet20", gct_wd_policy="some")


@pytest.mark.parametrize(
    "name, size, chans, reductions, cls",
    [
        ("gct_resnet18", 64, [64, 64, 128, 256, 512], [2, 4, 8, 16, 32], "FeatureListNet"),
        ("gct_resnet20", 32, [16, 32, 64], [1, 2, 4], "FeatureListNet"),
        ("gct_mobilenet_v2", 64, [16, 24, 32, 96, 1280], [2, 4, 8, 16, 32], "FeatureListNet"),
    ],
)
def test_features_only(name, size, chans, reductions, cls):
    feats = timm.create_model(name, features_only=True)
    assert type(feats).__name__ == cls
    assert feats.feature_info.channels() == chans and feats.feature_info.reduction() == reductions
    outs = feats(torch.randn(2, 3, size, size))
    assert [o.shape[1] for o in outs] == chans
    assert [size // o.shape[-1] for o in outs] == reductions
    assert "classifier" not in feats.pretrained_cfg


def test_features_match_the_model_forward():
    torch.manual_seed(0)
    model = timm.create_model("gct_resnet20").eval()
    with torch.no_grad():
        for _, g in gctnet.gct_modules(model):
            g.gamma.normal_()
    feats = timm.create_model("gct_resnet20", features_only=True, out_indices=(1, 2)).eval()
    feats.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(2, 3, 32, 32)
    f1, f2 = feats(x)
    with torch.no_grad():
        expected = model.layer2(model.layer1(model.relu(model.bn1(model.conv1(x)))))
    assert torch.allclose(f1, expected, atol=1e-6) and f2.shape == (2, 64, 8, 8)
    with pytest.raises(ValueError, match="3 feature levels"):
        timm.create_model("gct_resnet20", features_only=True, out_indices=(1, 4))


def test_create_optimizer_v2_honours_no_decay_on_beta():
    model = timm.create_model("gct_resnet20")
    betas = {id(p) for n, p in model.named_parameters() if n.endswith("gct.beta")}
    alphas = {id(p) for n, p in model.named_parameters() if n.endswith("gct.alpha")}
    assert model.no_weight_decay() == {n for n, _ in model.named_parameters() if n.endswith("gct.beta")}
    # timm's own 1-D filter off: only no_weight_decay() exempts parameters -> the paper's rule exactly
    opt = timm.optim.create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=1e-4, filter_bias_and_bn=False)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert len(decay_of) == len(list(model.parameters()))
    assert all(decay_of[i] == 0.0 for i in betas) and all(decay_of[i] == 1e-4 for i in alphas)
    assert decay_of[id(model.conv1.weight)] == 1e-4
    # policy "none" at creation also exempts alpha and gamma
    model2 = timm.create_model("gct_resnet20", gct_wd_policy="none")
    assert {n.rsplit(".", 1)[-1] for n in model2.no_weight_decay()} == {"alpha", "gamma", "beta"}
    # survives deepcopy (timm's EMA copies the model)
    ema = copy.deepcopy(model)
    assert ema.no_weight_decay() == model.no_weight_decay()


def test_official_checkpoint_through_timm_pretrained_file(tmp_path):
    src = gctnet.create_model("gct_resnet50_official")
    with torch.no_grad():
        src.layer1[0].conv2.gct.gamma.normal_()
    path = tmp_path / "model_best.pth.tar"
    gctnet.save_official_checkpoint(src, path)  # official key names, module. prefix
    model = timm.create_model("gct_resnet50_official", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.layer1[0].conv2.gct.gamma, src.layer1[0].conv2.gct.gamma)
    assert torch.equal(model.fc.weight, src.fc.weight)
    # another head size: timm drops the classifier named in pretrained_cfg and keeps the backbone
    head10 = timm.create_model("gct_resnet50_official", pretrained=True, num_classes=10,
                               pretrained_cfg_overlay=dict(file=str(path)))
    assert head10.fc.out_features == 10
    assert torch.equal(head10.layer4[2].conv3.weight, src.layer4[2].conv3.weight)


def test_create_model_as_timm_train_py_calls_it(tmp_path):
    """The keyword set of timm's train.py (``--pretrained-path`` forces head adaptation)."""
    src = gctnet.create_model("gct_resnet18")
    path = tmp_path / "gct_resnet18.pth"
    torch.save({"model": src.state_dict(), "epoch": 1}, path)  # a gctnet training checkpoint layout
    model = timm.create_model(
        "gct_resnet18", pretrained=True, in_chans=3, num_classes=None, drop_rate=0.0, drop_path_rate=None,
        drop_block_rate=None, global_pool=None, bn_momentum=None, bn_eps=None, scriptable=False,
        checkpoint_path="", pretrained_cfg_overlay=dict(file=str(path), num_classes=-1),
    )
    assert model.num_classes == 1000 and model.get_classifier() is model.fc
    assert torch.equal(model.layer3[0].conv1.gct.alpha, src.layer3[0].conv1.gct.alpha)
    assert torch.equal(model.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


# --------------------------------------------------------------------------------------------------
# timm's model interface and timm's own model checks (its tests/test_models.py, on small inputs)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_timm_model_checks(name):
    """timm's forward, default-cfg, forward_intermediates, grad-checkpointing and backward checks."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    cfg, sd, info = model.pretrained_cfg, model.state_dict(), model.feature_info
    assert f"{cfg['first_conv']}.weight" in sd and f"{cfg['classifier']}.weight" in sd
    assert model.num_classes == cfg["num_classes"] > 0 and model.num_features > 0 and model.head_hidden_size > 0
    assert model.get_classifier() is model.get_submodule(cfg["classifier"])
    assert len(info) >= 3 and [f["reduction"] for f in info] == sorted(f["reduction"] for f in info)
    x = _small_input(model)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        final, inter = model.forward_intermediates(x)
        assert torch.equal(out, _own_forward(model)(x))  # timm's interface computes the architecture's forward
        assert torch.equal(model.forward_head(feats), out)
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()
    assert feats.shape[1] == model.num_features and pre.shape == (1, model.head_hidden_size)
    assert torch.equal(final, feats) and len(inter) == len(info)
    for level, t in zip(info, inter):
        assert t.shape[1] == level["num_chs"]
        assert all(d <= math.ceil(s / level["reduction"]) + 1 for d, s in zip(t.shape[-2:], x.shape[-2:]))
    # grad checkpointing: the same output
    model.set_grad_checkpointing()
    assert torch.allclose(model(x), out, rtol=1e-4, atol=1e-5)
    # no classifier: the pre-logits features; no pooling either: the unpooled map
    model.reset_classifier(0)
    with torch.no_grad():
        assert model.num_classes == 0 and torch.equal(model(x), pre)
        model.reset_classifier(0, "")
        assert torch.equal(model(x), feats)
    # backward through the checkpointed stages with a new 42-class head: every parameter gets a gradient
    model.reset_classifier(42, "avg")
    model.train()
    y = model(_small_input(model, batch=2))
    y.mean().backward()
    assert y.shape == (2, 42)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_reset_classifier_refuses_what_it_cannot_do():
    model = timm.create_model("gct_resnet20")
    with pytest.raises(ValueError, match="needs num_classes=0"):
        model.reset_classifier(10, "")
    with pytest.raises(ValueError, match="global_pool must be one of"):
        model.reset_classifier(10, "max")
    with pytest.raises(ValueError, match="int >= 0"):
        model.reset_classifier(-1)
    with pytest.raises(ValueError, match="needs num_classes=0"):
        timm.create_model("gct_resnet20", global_pool="")
    model.reset_classifier(0, "")
    with pytest.raises(ValueError, match="needs num_classes=0"):
        model.reset_classifier(5)  # the pool stays off until global_pool="avg" comes back
    model.reset_classifier(5, "avg")
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 5)


@pytest.mark.parametrize("name, size", [("gct_resnet20", 32), ("resnet50_official", 224), ("gct_mobilenet_v2", 224),
                                        ("gct_inception_v3", 299)])
def test_pool_size_is_the_feature_map_at_the_nominal_input_size(name, size):
    model = timm.create_model(name).eval()
    assert model.pretrained_cfg["input_size"][1:] == (size, size)
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, size, size)).shape[-2:] == model.pretrained_cfg["pool_size"]


@pytest.mark.parametrize("name", ["gct_resnet20", "gct_resnet18", "gct_mobilenet_v2"])
def test_headless_backbone_at_creation(name):
    x = torch.randn(1, 3, 32, 32)
    torch.manual_seed(0)
    full = timm.create_model(name).eval()
    torch.manual_seed(0)
    pooled = timm.create_model(name, num_classes=0).eval()
    torch.manual_seed(0)
    unpooled = timm.create_model(name, num_classes=0, global_pool="").eval()
    assert pooled.num_classes == 0 and isinstance(pooled.get_classifier(), nn.Identity)
    assert not any(k.startswith(full.pretrained_cfg["classifier"]) for k in pooled.state_dict())
    with torch.no_grad():
        assert torch.equal(pooled(x), full.forward_head(full.forward_features(x), pre_logits=True))
        assert torch.equal(unpooled(x), full.forward_features(x))
    # gctnet's own create_model takes num_classes=0 as well
    assert create_model(name, num_classes=0).num_classes == 0
    with pytest.raises(ValueError, match="int >= 0"):
        create_model(name, num_classes=-3)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_features_only_returns_the_forward_intermediates(name):
    """timm's test_model_forward_features (default feature_cls) on one model per class; every
    feature_cls on a CIFAR ResNet and MobileNetV2 (levels at the top level / inside `features`)."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = _small_input(model)
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
    classes = {None: "FeatureListNet", "list": "FeatureListNet", "dict": "FeatureDictNet",
               "hook": "FeatureHookNet", "fx": "FeatureGraphNet", "getter": "FeatureGetterNet"}
    if name not in ("gct_resnet20", "gct_mobilenet_v2"):
        classes = {None: "FeatureListNet"}
    for feature_cls, cls_name in classes.items():
        torch.manual_seed(0)  # the same weights as `model`
        kwargs = {} if feature_cls is None else {"feature_cls": feature_cls}
        feats = timm.create_model(name, features_only=True, **kwargs).eval()
        assert type(feats).__name__ == cls_name
        assert feats.feature_info.channels() == [f["num_chs"] for f in model.feature_info]
        with torch.no_grad():
            out = feats(x)
        out = list(out.values()) if isinstance(out, dict) else out
        assert len(out) == len(expected) and all(torch.equal(a, b) for a, b in zip(out, expected)), feature_cls


def test_getter_prunes_the_stages_after_the_last_level():
    feats = timm.create_model("gct_resnet20", features_only=True, feature_cls="getter", out_indices=(0, 1))
    keys = feats.state_dict().keys()
    assert not any(k.startswith(("model.layer3.", "model.fc.")) for k in keys) and "model.layer2.0.conv1.weight" in keys
    outs = feats(torch.randn(2, 3, 32, 32))
    assert [o.shape[1:] for o in outs] == [(16, 32, 32), (32, 16, 16)]


def test_inception_with_transform_input_uses_the_getter():
    feats = timm.create_model("gct_inception_v3", features_only=True, transform_input=True)
    assert type(feats).__name__ == "FeatureGetterNet"
    with pytest.raises(ValueError, match="use feature_cls='getter' or 'hook'"):
        timm.create_model("gct_inception_v3", features_only=True, transform_input=True, feature_cls="list")


def _fx_model(model: nn.Module) -> nn.Module:
    """The model traced by torch.fx through torchvision's feature extractor, returning its last node
    (how timm's tests trace; timm's non-traceable modules and functions stay leaves)."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_fx_forward_and_backward(name):
    """timm's test_model_forward_fx and test_model_backward_fx."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=42).eval()
    x = _small_input(model, batch=2)
    with torch.inference_mode():
        expected = model(x)
        assert torch.equal(next(iter(_fx_model(model)(x).values())), expected)
    model.train()
    traced = _fx_model(model)
    out = next(iter(traced(x).values()))
    out.mean().backward()
    assert out.shape == (2, 42)
    assert [n for n, p in traced.named_parameters() if p.grad is None] == []


def test_import_gctnet_does_not_import_timm_and_registers_on_its_import():
    code = ("import sys, gctnet; assert 'timm' not in sys.modules and 'torchvision' not in sys.modules; "
            "import timm; print(timm.is_model('gct_resnet20'), timm.is_model('gct_resnet50_official'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
