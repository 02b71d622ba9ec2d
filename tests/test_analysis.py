"""gctnet.analysis: numbers checked against the parameters and gates computed directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import gctnet
from gctnet.analysis import (
    analyze,
    collect_batches,
    depth_trend,
    gate_statistics,
    gct_statistics,
    stage_and_block,
    write_analysis,
)
from gctnet.analysis.report import conclusion
from gctnet.functional import gct_gate


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(gctnet.GCT(c), nn.Conv2d(c, c, 3, padding=1))
        self.conv2 = nn.Sequential(gctnet.GCT(c), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


class Net(nn.Module):
    """stem GCT(3) -> layer1 (2 blocks) -> layer2 (1 block): 7 GCT layers."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.stem = nn.Sequential(gctnet.GCT(3), nn.Conv2d(3, c, 3, padding=1))
        self.layer1 = nn.Sequential(Block(c), Block(c))
        self.layer2 = nn.Sequential(Block(c))
        self.fc = nn.Linear(c, 4)

    def forward(self, x):
        return self.fc(self.layer2(self.layer1(self.stem(x))).mean((2, 3)))


NAMES = [
    "stem.0",
    "layer1.0.conv1.0",
    "layer1.0.conv2.0",
    "layer1.1.conv1.0",
    "layer1.1.conv2.0",
    "layer2.0.conv1.0",
    "layer2.0.conv2.0",
]


def gcts(model: nn.Module) -> list[gctnet.GCT]:
    return [m for m in model.modules() if isinstance(m, gctnet.GCT)]


def make_net(seed: int = 0, trend: float = 0.0) -> Net:
    """Random parameters; gamma shifted by ``trend * (depth - 3)`` (negative shallow, positive deep)."""
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        for i, g in enumerate(gcts(net)):
            g.alpha.copy_(torch.rand(g.channels) + 0.5)
            g.gamma.copy_(torch.randn(g.channels) * 0.5 + trend * (i - 3))
            g.beta.copy_(torch.randn(g.channels) * 0.3)
    return net


def test_parameter_statistics_equal_the_parameters():
    net = make_net()
    layers = gct_statistics(net)
    assert [l.name for l in layers] == NAMES
    assert [l.index for l in layers] == list(range(7))
    assert [l.stage for l in layers] == ["stem"] + ["layer1"] * 4 + ["layer2"] * 2
    assert layers[3].block == "layer1.1"
    for layer, g in zip(layers, gcts(net)):
        assert layer.channels == g.channels and layer.models == 1
        for pname in ("alpha", "gamma", "beta"):
            v = getattr(g, pname).detach().double().numpy()
            s = getattr(layer, pname)
            assert s.mean == pytest.approx(v.mean())
            assert s.std == pytest.approx(v.std())
            assert s.min == pytest.approx(v.min()) and s.max == pytest.approx(v.max())
            q1, med, q3 = np.percentile(v, [25, 50, 75])
            assert (s.q1, s.median, s.q3) == pytest.approx((q1, med, q3))
        gamma = g.gamma.detach().numpy()
        assert layer.gamma_positive == pytest.approx((gamma > 0).mean())
        assert layer.gamma_negative == pytest.approx((gamma < 0).mean())


def test_pooling_over_models_uses_all_channels():
    a, b = make_net(0), make_net(1)
    pooled = gct_statistics([a, b])
    for layer, ga, gb in zip(pooled, gcts(a), gcts(b)):
        v = torch.cat([ga.gamma, gb.gamma]).detach().double().numpy()
        assert layer.models == 2
        assert layer.gamma.mean == pytest.approx(v.mean())
        assert layer.gamma.median == pytest.approx(np.median(v))
        assert layer.gamma_positive == pytest.approx((v > 0).mean())


def test_pooling_rejects_different_architectures():
    other = nn.Sequential(gctnet.GCT(3), nn.Conv2d(3, 4, 1))
    with pytest.raises(ValueError, match="same GCT layers"):
        gct_statistics([make_net(), other])


def test_model_without_gct_is_a_clear_error():
    with pytest.raises(ValueError, match="contains no gctnet.GCT"):
        gct_statistics(nn.Sequential(nn.Conv2d(3, 4, 1)))


def _inputs_of_gcts(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The input each GCT sees, recomputed by hand (no hooks): walk the Net's forward."""
    seen = []

    def gated(seq: nn.Sequential, h):
        seen.append(h)
        return seq[1](seq[0](h))

    h = gated(model.stem, x)
    for block in [*model.layer1, *model.layer2]:
        h = gated(block.conv2, torch.relu(gated(block.conv1, h)))
    return seen


def test_gate_statistics_equal_the_gates_computed_directly():
    net = make_net(trend=0.3)
    x = torch.randn(10, 3, 8, 8)
    net.train()
    stats = gate_statistics(net, x)
    assert net.training, "the model's mode must be restored"
    assert all(not g._forward_pre_hooks for g in gcts(net)), "hooks must be removed"
    with torch.no_grad():
        net.eval()
        inputs = _inputs_of_gcts(net, x)
    assert [s.name for s in stats] == NAMES
    for s, g, xin in zip(stats, gcts(net), inputs):
        gate = gct_gate(xin, g.alpha, g.gamma, g.beta, g.eps).double()
        assert s.samples == 10 and s.channels == g.channels
        assert s.mean == pytest.approx(gate.mean().item(), rel=1e-9)
        assert s.std == pytest.approx(gate.std(correction=0).item(), rel=1e-6, abs=1e-9)
        assert s.min == pytest.approx(gate.min().item()) and s.max == pytest.approx(gate.max().item())
        assert s.amplified == pytest.approx((gate > 1).double().mean().item())
        assert s.suppressed == pytest.approx((gate < 1).double().mean().item())
        assert s.channel_std == pytest.approx(gate.mean(0).std(correction=0).item(), rel=1e-6, abs=1e-9)
        assert s.sample_std == pytest.approx(gate.std(0, correction=0).mean().item(), rel=1e-5, abs=1e-7)


def test_gate_statistics_accumulate_over_batches_of_a_dataset():
    net = make_net()
    images = torch.randn(12, 3, 8, 8)
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(12, dtype=torch.long))
    batched = gate_statistics(net, dataset, batches=3, batch_size=4)
    whole = gate_statistics(net, images)
    for a, b in zip(batched, whole):
        assert a.samples == 12
        assert a.mean == pytest.approx(b.mean, rel=1e-9)
        assert a.std == pytest.approx(b.std, rel=1e-6)
        assert a.amplified == pytest.approx(b.amplified)


def test_identity_gate_at_initialisation():
    net = Net()  # alpha = 1, gamma = beta = 0
    stats = gate_statistics(net, torch.randn(4, 3, 8, 8))
    for s in stats:
        assert s.mean == pytest.approx(1.0) and s.std == pytest.approx(0.0, abs=1e-12)
        assert s.amplified == 0 and s.suppressed == 0
    trend = depth_trend(gct_statistics(net))
    assert trend["verdict"] == "untrained"


def test_depth_trend_matches_and_opposes_the_paper():
    paper_like = gct_statistics(make_net(trend=1.0))
    trend = depth_trend(paper_like)
    shallow = torch.cat([l.values["gamma"].reshape(-1) for l in paper_like[:2]]).mean().item()
    deep = torch.cat([l.values["gamma"].reshape(-1) for l in paper_like[-2:]]).mean().item()
    assert trend["shallow_layers"] == [1, 2] and trend["deep_layers"] == [6, 7]
    assert trend["shallow_mean_gamma"] == pytest.approx(shallow)
    assert trend["deep_mean_gamma"] == pytest.approx(deep)
    assert trend["verdict"] == "matches"
    assert depth_trend(gct_statistics(make_net(trend=-1.0)))["verdict"] == "opposite"
    pooled = depth_trend(gct_statistics([make_net(0, 1.0), make_net(1, -1.0)]))
    assert [m["verdict"] for m in pooled["per_model"]] == ["matches", "opposite"]


def test_stage_names():
    official = ["stem.conv1.0", "layer1.0.conv1.0", "layer1.0.downsample.0", "layer4.2.conv3.0"]
    assert stage_and_block(official) == [
        ("stem", "stem.conv1"), ("layer1", "layer1.0"), ("layer1", "layer1.0"), ("layer4", "layer4.2"),
    ]
    cifar = ["module.conv1.gct", "layer2.1.conv1.gct", "layer3.0.shortcut.0.gct"]
    assert [s for s, _ in stage_and_block(cifar)] == ["stem", "layer2", "layer3"]
    vgg = ["features.0.gct", "features.3.gct"]
    assert stage_and_block(vgg) == [("features", "features.0"), ("features", "features.3")]


def test_collect_batches_forms():
    x = torch.randn(5, 3, 4, 4)
    assert collect_batches(x)[0] is x
    loader = [(x, torch.zeros(5)), (x + 1, torch.zeros(5)), (x + 2, torch.zeros(5))]
    got = collect_batches(loader, batches=2)
    assert len(got) == 2 and torch.equal(got[1], x + 1)
    assert torch.equal(collect_batches([{"image": x}])[0], x)
    with pytest.raises(TypeError, match="input tensor"):
        collect_batches([("a", "b")])


def test_analyze_writes_files_with_the_same_numbers(tmp_path):
    from PIL import Image

    net = make_net(trend=1.0)
    result = analyze(net, data=torch.randn(6, 3, 8, 8), out=tmp_path)
    for name in ("analysis.json", "analysis.md", "gamma_per_layer.png", "gamma_positive_share.png", "gate_per_layer.png"):
        assert (tmp_path / name).stat().st_size > 0
    for png in tmp_path.glob("*.png"):
        with Image.open(png) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 100
    data = json.loads((tmp_path / "analysis.json").read_text())
    assert data["gct_layers"] == 7 and data["trend"]["verdict"] == "matches"
    direct = gcts(net)
    for entry, g in zip(data["layers"], direct):
        assert entry["gamma"]["mean"] == pytest.approx(g.gamma.double().mean().item())
        assert entry["beta"]["median"] == pytest.approx(float(np.median(g.beta.detach().double().numpy())))
    assert len(data["gates"]) == 7 and "6 images" in data["gate_note"]
    stages = {st["stage"]: st for st in data["stages"]}
    assert list(stages) == ["stem", "layer1", "layer2"] and stages["layer1"]["layers"] == [2, 5]
    layer2 = torch.cat([g.gamma.detach().double() for g in direct[5:]])
    assert stages["layer2"]["gamma_mean"] == pytest.approx(layer2.mean().item())
    assert stages["layer2"]["gamma_positive"] == pytest.approx((layer2 > 0).double().mean().item())
    assert stages["layer2"]["channels"] == 12
    md = (tmp_path / "analysis.md").read_text()
    assert result.conclusion in md and "consistent with the paper" in result.conclusion
    assert "95% CI [+" in result.conclusion and "across 4 layers of one model" in result.conclusion
    assert "gamma_per_layer.png" in md and "`layer2.0.conv2.0`" in md


def test_analyze_without_data_gives_parameter_statistics_only(tmp_path):
    paths = write_analysis(analyze(make_net()), tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["gates"] == [] and data["gate_note"].startswith("not measured")
    assert "gate_mean" not in paths and not (tmp_path / "gate_per_layer.png").exists()
    assert len(data["layers"]) == 7


def test_analyze_on_a_model_made_by_surgery():
    surgery = pytest.importorskip("gctnet.surgery")
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    surgery.apply_gct(model)
    result = analyze(model, data=torch.randn(2, 3, 10, 10))
    assert [l.name for l in result.layers] == [n for n, _ in surgery.gct_modules(model)]
    assert len(result.gates) == len(result.layers) == 2


def test_cli_on_the_official_checkpoint_without_data(tmp_path, capsys):
    from gctnet.cli import main
    from gctnet.models.official import gct_resnet50_official, save_official_checkpoint

    torch.manual_seed(0)
    model = gct_resnet50_official(num_classes=10)
    with torch.no_grad():
        for _, g in gctnet.gct_modules(model):
            g.gamma.normal_()
    path = tmp_path / "GCT-ResNet50.pth.tar"
    save_official_checkpoint(model, path)
    assert main(["analyze", str(path), "--no-data", "--out", str(tmp_path / "an")]) == 0
    printed = capsys.readouterr().out
    assert "53 GCT layers" in printed and "not measured" in printed
    data = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert data["gct_layers"] == 53 and data["gates"] == []
    stages = [l["stage"] for l in data["layers"]]
    assert stages[0] == "stem" and stages[-1] == "layer4" and stages.count("layer3") == 6 * 3 + 1
    for entry, (name, g) in zip(data["layers"], gctnet.gct_modules(model)):
        assert entry["name"] == name
        assert entry["gamma"]["mean"] == pytest.approx(g.gamma.double().mean().item())


def test_cli_usage_errors(tmp_path):
    from gctnet.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(tmp_path / "missing")])
    assert exc.value.code == 2
    bogus = tmp_path / "bogus.pt"
    torch.save({"weight": torch.zeros(2)}, bogus)
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(bogus), "--no-data"])
    assert exc.value.code == 2


def test_barely_trained_gamma_is_called_negligible():
    net = make_net(trend=1.0)
    with torch.no_grad():
        for g in gcts(net):
            g.gamma.mul_(1e-5)
    analysis = analyze(net)
    assert analysis.trend["verdict"] == "negligible" and "barely moved" in analysis.conclusion


# ------------------------------------------------------------------------------------------------ strength of the gamma statement
def test_gamma_statement_clearly_positive_across_seeds():
    """Three seeds with a strong depth trend: the interval across seeds excludes 0 -> consistent with the paper."""
    from gctnet.experiments.stats import t_interval95

    nets = [make_net(seed=s, trend=1.0) for s in range(3)]
    trend = depth_trend(gct_statistics(nets))
    diffs = [m["deep_mean_gamma"] - m["shallow_mean_gamma"] for m in trend["per_model"]]
    assert trend["difference_basis"] == "seeds" and trend["difference_n"] == 3
    assert trend["difference"] == pytest.approx(sum(diffs) / 3)
    assert trend["difference_ci95"] == pytest.approx(t_interval95(diffs))
    assert trend["difference_ci95"][0] > 0
    text = conclusion(trend)
    assert "consistent with the paper" in text and "3 seeds" in text and "95% CI [+" in text
    assert "not distinguishable" not in text and "in 3 of the 3 seeds" in text


def test_gamma_statement_null_case_is_not_distinguishable_from_zero():
    """A pooled mean that happens to have the paper's signs (like +0.0025 after a short run) is not a
    finding: seeds disagree, the interval contains 0 and the sentence says so."""
    nets = [make_net(seed=s) for s in range(2)]
    with torch.no_grad():  # seed 0: slightly the paper's way, seed 1: slightly the other way
        for net, sign in zip(nets, (1.0, -0.5)):
            for i, g in enumerate(gcts(net)):
                g.gamma.fill_(sign * 0.01 * (i - 3))
    trend = depth_trend(gct_statistics(nets))
    assert trend["verdict"] == "matches"  # the pooled means alone have the paper's signs...
    lo, hi = trend["difference_ci95"]
    assert lo < 0 < hi
    text = conclusion(trend)  # ...but the statement reports the interval, not the sign
    assert "not distinguishable from 0" in text and "2 seeds" in text
    assert "consistent with" not in text and "matches" not in text


def test_gamma_statement_opposite_trend():
    nets = [make_net(seed=s, trend=-1.0) for s in range(3)]
    text = conclusion(depth_trend(gct_statistics(nets)))
    assert "opposite to the paper" in text and "consistent with" not in text


def test_gate_ylim_fits_the_data_and_stage_colours_are_shared():
    from types import SimpleNamespace

    from gctnet.analysis.plots import gate_ylim, stage_colors

    gates = [SimpleNamespace(mean=m, std=0.005) for m in (0.97, 1.0, 1.01)]
    lo, hi = gate_ylim(gates)
    assert 0.9 < lo <= 0.965 and 1.015 <= hi < 1.1
    assert gate_ylim([SimpleNamespace(mean=0.2, std=0.5)]) == (0.0, pytest.approx(1.0 + 0.08 * 1.3))
    # one map for every model: layer2 has the same colour with or without a stem GCT
    assert stage_colors(["stem", "layer1", "layer2"])["layer2"] == stage_colors(["layer1", "layer2", "layer3"])["layer2"]
    names = stage_colors(["resnet20", "gct_resnet20"])  # names sharing a number still get distinct colours
    assert names["resnet20"] != names["gct_resnet20"]
