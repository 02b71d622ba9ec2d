"""Detection (Mask R-CNN R50-FPN with a GCT backbone) and video (R3D-18 with GCT before Conv3d)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import gctnet
from gctnet.models import get_model_entry
from gctnet.models.official import CheckpointError

LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def _batch():
    image = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 128, 128, dtype=torch.uint8)
    mask[0, 20:90, 10:80] = 1
    target = {"boxes": torch.tensor([[10.0, 20.0, 80.0, 90.0]]), "labels": torch.tensor([1]), "masks": mask}
    return [image], [target]


@pytest.fixture(scope="module")
def maskrcnn():
    torch.manual_seed(0)
    return gctnet.create_model("gct_maskrcnn_resnet50_fpn", num_classes=3, min_size=128, max_size=128)


def test_maskrcnn_gct_placement_and_frozen_bn(maskrcnn):
    assert get_model_entry("gct_maskrcnn_resnet50_fpn").family == "detection"
    names = [n for n, _ in gctnet.gct_modules(maskrcnn)]
    assert len(names) == 53
    assert all(n.startswith("backbone.body.") for n in names)  # none in FPN / RPN / ROI heads
    body = maskrcnn.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in body.modules()) == 53
    # stem and layer1 frozen (GCT parameters included), layer2..4 trainable
    assert not body.conv1.gct.beta.requires_grad and not body.layer1[0].conv1.gct.gamma.requires_grad
    assert body.layer2[0].conv1.gct.gamma.requires_grad and body.layer4[2].conv3.weight.requires_grad


def test_maskrcnn_train_mode_losses_and_backward(maskrcnn):
    maskrcnn.train()
    images, targets = _batch()
    losses = maskrcnn(images, targets)
    assert set(losses) == LOSSES
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    grads = [p.grad for n, p in maskrcnn.named_parameters() if p.requires_grad and n.endswith("gct.beta")]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    maskrcnn.zero_grad(set_to_none=True)


def test_maskrcnn_eval_returns_detections(maskrcnn):
    maskrcnn.eval()
    with torch.no_grad():
        out = maskrcnn(_batch()[0])
    assert set(out[0]) >= {"boxes", "labels", "scores", "masks"}


def test_maskrcnn_official_backbone_takes_official_checkpoint(tmp_path):
    src = gctnet.create_model("gct_resnet50_official")
    with torch.no_grad():
        src.layer3[1].conv2.gct.gamma.normal_()
    path = tmp_path / "official.pth.tar"
    gctnet.save_official_checkpoint(src, path)
    det = gctnet.create_model("gct_maskrcnn_resnet50_fpn", num_classes=2, backbone="official",
                              backbone_weights=path, min_size=64, max_size=64)
    body = det.backbone.body
    assert body.layer2[0].conv1.stride == (2, 2)  # official layout: stride in the 1x1
    assert torch.equal(body.layer3[1].conv2.gct.gamma, src.layer3[1].conv2.gct.gamma)
    assert torch.equal(body.layer1[0].bn1.running_var, src.layer1[0].bn1.running_var)


def test_maskrcnn_errors():
    with pytest.raises(ValueError, match="backbone must be one of"):
        gctnet.create_model("gct_maskrcnn_resnet50_fpn", backbone="vit")
    with pytest.raises(ValueError, match="in_chans must be 3"):
        gctnet.create_model("maskrcnn_resnet50_fpn", in_chans=1)
    with pytest.raises(CheckpointError, match="backbone_weights"):
        gctnet.create_model("gct_maskrcnn_resnet50_fpn", backbone_weights=gctnet.create_model("resnet20").state_dict())


def test_plain_maskrcnn_has_no_gct():
    model = gctnet.create_model("maskrcnn_resnet50_fpn", num_classes=2)
    assert gctnet.gct_modules(model) == []


def test_r3d_18_gct_forward_backward():
    torch.manual_seed(0)
    model = gctnet.create_model("gct_r3d_18", num_classes=5)
    gcts = gctnet.gct_modules(model)
    n_conv3d = sum(isinstance(m, nn.Conv3d) for m in model.modules())
    assert len(gcts) == n_conv3d == 20 and gcts[0][1].channels == 3
    with torch.no_grad():  # make the gates non-trivial so the 5-D reduction is exercised
        for _, g in gcts:
            g.gamma.normal_(0, 0.5)
            g.beta.normal_(0, 0.5)
    clip = torch.randn(1, 3, 4, 32, 32, requires_grad=True)
    out = model(clip)
    assert out.shape == (1, 5)
    out.sum().backward()
    assert clip.grad is not None and torch.isfinite(clip.grad).all()
    assert all(g.alpha.grad is not None and torch.isfinite(g.alpha.grad).all() for _, g in gcts)
    # the stem GCT gates over (T, H, W) jointly: compare with the formula on the flattened clip
    stem_gct = gcts[0][1]
    x = torch.randn(2, 3, 4, 8, 8)
    flat = stem_gct(x.flatten(2).unsqueeze(-1)).reshape_as(x)
    assert torch.allclose(stem_gct(x), flat, atol=1e-6)


def test_r3d_18_variants():
    assert get_model_entry("gct_r3d_18").family == "video"
    plain = gctnet.create_model("r3d_18", num_classes=7, in_chans=1)
    assert plain.stem[0].in_channels == 1 and plain.fc.out_features == 7
    assert gctnet.gct_modules(plain) == []
    block = gctnet.create_model("gct_r3d_18_block", num_classes=7)
    assert len(gctnet.gct_modules(block)) == 8  # one per BasicBlock
