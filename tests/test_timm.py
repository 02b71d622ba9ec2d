"""gctnet models in timm's registry: create_model, pretrained_cfg, features_only, optimizer weight decay."""

from __future__ import annotations

import copy

import pytest
import torch

timm = pytest.importorskip("timm")
import timm.optim  # noqa: E402

import gctnet  # noqa: E402
from gctnet.models import get_model_entry, list_models, timm_bridge  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def registered():
    timm_bridge.register_all()


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
