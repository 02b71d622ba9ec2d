"""The official GCT-ResNet-50: architecture, checkpoint conversion, safe loading.

The reference below is an independent, minimal re-implementation of the official PyTorch code
(z-x-yang/GCT, ``resnet.py`` from maskrcnn-benchmark) with the official module/key names and the
official GCT formula on (1, C, 1, 1) parameters; it shares no code with gctnet.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

import gctnet
from gctnet.models import get_model_entry, official
from gctnet.models.official import CheckpointError, UnsafeCheckpointError


# --------------------------------------------------------------------------------------------------
# independent reference (official names and formula)
# --------------------------------------------------------------------------------------------------
class RefGCT(nn.Module):
    def __init__(self, num_channels: int, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, num_channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.epsilon = epsilon

    def forward(self, x):
        embedding = (x.pow(2).sum((2, 3), keepdim=True) + self.epsilon).pow(0.5) * self.alpha
        norm = self.gamma / (embedding.pow(2).mean(dim=1, keepdim=True) + self.epsilon).pow(0.5)
        gate = 1.0 + torch.tanh(embedding * norm + self.beta)
        return x * gate


def ref_conv(c_in, c_out, k, stride=1, padding=0):
    return nn.Sequential(RefGCT(c_in), nn.Conv2d(c_in, c_out, k, stride, padding, bias=False))


class RefStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = ref_conv(3, 64, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(64)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return nn.functional.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class RefBottleneck(nn.Module):
    def __init__(self, c_in, c_mid, c_out, stride):
        super().__init__()
        self.downsample = None
        if c_in != c_out:
            self.downsample = nn.Sequential(RefGCT(c_in), nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))
        self.conv1 = ref_conv(c_in, c_mid, 1, stride)  # stride in the 1x1 (MSRA v1)
        self.bn1 = nn.BatchNorm2d(c_mid)
        self.conv2 = ref_conv(c_mid, c_mid, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(c_mid)
        self.conv3 = ref_conv(c_mid, c_out, 1)
        self.bn3 = nn.BatchNorm2d(c_out)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + identity)


class RefResNet50(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.stem = RefStem()
        c_in = 64
        for s, (blocks, c_mid) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
            layer = []
            for i in range(blocks):
                layer.append(RefBottleneck(c_in, c_mid, c_mid * 4, 2 if (i == 0 and s > 1) else 1))
                c_in = c_mid * 4
            setattr(self, f"layer{s}", nn.Sequential(*layer))
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values everywhere (GCT params, BN affine and running stats), keeping activations sane."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "alpha":
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif leaf in ("gamma", "beta"):
                p.copy_(0.7 * torch.randn(p.shape, generator=g))
            elif p.dim() == 4:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif p.dim() == 1:  # BN affine, fc bias
                p.copy_((0.8 + 0.4 * torch.rand(p.shape, generator=g)) if leaf == "weight"
                        else 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(1234)
    return model


@pytest.fixture(scope="module")
def reference():
    return randomise(RefResNet50()).eval()


@pytest.fixture(scope="module")
def official_file(reference, tmp_path_factory):
    """The reference saved like pytorch/examples' main.py under DDP (``module.`` prefix)."""
    path = tmp_path_factory.mktemp("official") / "model_best.pth.tar"
    state = {"module." + k: v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 100, "arch": "resnet50", "state_dict": state, "best_acc1": torch.tensor(77.2),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}}, path)
    return path


# --------------------------------------------------------------------------------------------------
# architecture
# --------------------------------------------------------------------------------------------------
def test_reference_key_layout_matches_reference_md(reference):
    keys = reference.state_dict().keys()
    assert reference.stem.conv1[0].alpha.shape == (1, 3, 1, 1)
    for key in ("stem.conv1.0.alpha", "stem.conv1.1.weight", "stem.bn1.running_var", "layer1.0.conv1.0.beta",
                "layer1.0.conv3.1.weight", "layer1.0.downsample.0.gamma", "layer1.0.downsample.1.weight",
                "layer4.0.downsample.2.running_mean", "fc.weight", "fc.bias"):
        assert key in keys


def test_architecture_counts():
    model = gctnet.create_model("gct_resnet50_official")
    gcts = gctnet.gct_modules(model)
    assert len(gcts) == official.NUM_GCT == 53
    assert sum(p.numel() for p in model.parameters()) == official.NUM_PARAMS == 25_624_625
    plain = gctnet.create_model("resnet50_official")
    assert sum(p.numel() for p in plain.parameters()) == 25_557_032
    assert get_model_entry("gct_resnet50_official").family == "official"
    # stride on the first 1x1 of downsampling blocks, 3x3 has stride 1; no conv bias
    block = model.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    assert model.layer1[0].downsample is not None and model.layer1[0].downsample[0].stride == (1, 1)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    # the stem GCT sees the RGB input, first in network order
    assert gcts[0][1].channels == 3


def test_gct_keys_follow_gctnet_convention():
    keys = gctnet.create_model("gct_resnet50_official").state_dict().keys()
    assert "conv1.gct.alpha" in keys and "layer1.0.downsample.0.gct.beta" in keys
    assert "layer3.5.conv2.weight" in keys


# --------------------------------------------------------------------------------------------------
# conversion and numerical equivalence
# --------------------------------------------------------------------------------------------------
def test_load_official_checkpoint_matches_reference_logits(reference, official_file):
    model = gctnet.load_official_checkpoint(official_file)
    assert not model.training
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref64 = reference.double()(x.double())
        out64 = model.double()(x.double())
        assert torch.allclose(out64, ref64, rtol=1e-9, atol=1e-9 * ref64.abs().max().item())
        reference.float(), model.float()
        out32, ref32 = model(x), reference(x)
    assert ref64.std() > 1e-3  # the comparison is not between near-constant outputs
    assert torch.allclose(out32, ref32, rtol=1e-4, atol=1e-4 * ref32.abs().max().item())


def test_converter_handles_bare_state_dict_and_gct_shapes(reference):
    converted = official.official_to_gctnet(reference.state_dict())
    assert converted["conv1.gct.alpha"].shape == (3,)
    assert converted["layer2.0.downsample.0.weight"].shape == (512, 256, 1, 1)
    assert converted["layer2.0.downsample.1.running_var"].shape == (512,)
    back = official.gctnet_to_official(converted)
    assert set(back) == set(reference.state_dict())
    for k, v in reference.state_dict().items():
        assert back[k].shape == v.shape and torch.equal(back[k], v), k


def test_save_official_checkpoint_round_trip(reference, official_file, tmp_path):
    model = gctnet.load_official_checkpoint(official_file)
    out = tmp_path / "roundtrip.pth.tar"
    gctnet.save_official_checkpoint(model, out, extra={"epoch": 3})
    raw = torch.load(out, weights_only=True)
    assert raw["epoch"] == 3 and all(k.startswith("module.") for k in raw["state_dict"])
    # the official definition loads the file strictly (as official main.py would after unwrapping DDP)
    fresh = RefResNet50()
    fresh.load_state_dict({k[len("module."):]: v for k, v in raw["state_dict"].items()}, strict=True)
    for k, v in reference.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    again = gctnet.load_official_checkpoint(out)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_safetensors_input(reference, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "official.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = gctnet.load_official_checkpoint(path)
    assert torch.equal(model.conv1.gct.gamma, reference.stem.conv1[0].gamma.flatten())


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this calls os.system (what an attacker would put in a checkpoint)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "x": _Payload(str(marker))}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True"):
        gctnet.load_official_checkpoint(path)
    assert not marker.exists()
    # the same payload inside a torch.save zip archive
    path2 = tmp_path / "evil2.pth"
    torch.save({"state_dict": {}, "x": _Payload(str(marker))}, path2)
    with pytest.raises(UnsafeCheckpointError):
        gctnet.load_official_checkpoint(path2)
    assert not marker.exists()


def test_other_architecture_lists_missing_and_unexpected_keys():
    other = gctnet.create_model("gct_resnet20").state_dict()  # CIFAR ResNet: 'shortcut', no layer4
    with pytest.raises(CheckpointError) as info:
        gctnet.load_official_checkpoint(other)
    msg = str(info.value)
    assert "missing keys" in msg and "unexpected keys" in msg
    assert "layer4.0.conv1.gct.alpha" in msg or "more)" in msg
    assert "\n" not in msg  # one line
    assert "shortcut" in msg


def test_plain_resnet50_checkpoint_is_named_as_such():
    plain = gctnet.create_model("resnet50_official").state_dict()
    with pytest.raises(CheckpointError, match="plain ResNet"):
        gctnet.load_official_checkpoint(plain)


def test_num_classes_mismatch_and_bad_inputs(reference, tmp_path):
    with pytest.raises(CheckpointError, match="num_classes=1000"):
        gctnet.load_official_checkpoint(reference.state_dict(), num_classes=10)
    with pytest.raises(FileNotFoundError):
        gctnet.load_official_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(TypeError):
        gctnet.load_official_checkpoint(42)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="no tensors"):
        gctnet.load_official_checkpoint({"epoch": 1})


def test_num_classes_other_than_1000(tmp_path):
    model = gctnet.create_model("gct_resnet50_official", num_classes=10)
    path = tmp_path / "ten.pth"
    gctnet.save_official_checkpoint(model, path, module_prefix=False)
    loaded = gctnet.load_official_checkpoint(path, num_classes=10)
    assert loaded.fc.out_features == 10
    assert torch.equal(loaded.layer4[2].conv3.gct.alpha, model.layer4[2].conv3.gct.alpha)
