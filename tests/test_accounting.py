"""Cost accounting (gctnet.bench.accounting, `gctnet info`) against hand counts."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gctnet import apply_gct
from gctnet.bench.accounting import ModelInfo, compare_models, format_table, model_info, parse_input_size
from gctnet.cli import main
from gctnet.models import create_model


pytestmark = pytest.mark.usefixtures("one_thread")  # many small ops


def _tiny() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(4, 5, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 6 * 6, 3),
    )


# hand counts for _tiny() on a 2x6x6 input (36 positions)
TINY_CONV_LINEAR_MACS = 4 * 2 * 9 * 36 + 5 * 4 * 36 + 180 * 3  # 3x3 conv, 1x1 conv, linear = 3852
TINY_PARAMS = 4 * 2 * 9 + (5 * 4 + 5) + (180 * 3 + 3)  # 640
TINY_GCT_ELEMENTS = 2 * 36 + 4 * 36  # inputs of the two convs
# saved for backward (fp32, per image): conv1 input x, relu1 output, relu2 output (the 1x1 conv and the
# linear save views of tensors already counted; weights are excluded)
TINY_SAVED = 4 * (2 * 36 + 4 * 36 + 5 * 36)


def test_tiny_plain_net_hand_count():
    info = model_info(_tiny(), (2, 6, 6))
    assert info.params == TINY_PARAMS
    assert info.macs == TINY_CONV_LINEAR_MACS
    assert info.gct_params == info.gct_modules == info.gct_macs == info.gct_activation_elements == 0
    assert info.saved_bytes_per_image == TINY_SAVED
    assert model_info(_tiny(), (2, 6, 6), batch_size=3).saved_bytes_per_image == TINY_SAVED  # per image


@pytest.mark.parametrize("batch_size", [1, 3])
def test_tiny_gct_net_hand_count(batch_size):
    info = model_info(apply_gct(_tiny(), checkpoint=False), (2, 6, 6), batch_size=batch_size)
    assert info.gct_modules == 2
    assert info.gct_params == 3 * (2 + 4)
    assert info.params == TINY_PARAMS + 18
    assert info.gct_activation_elements == TINY_GCT_ELEMENTS
    assert info.gct_macs == 2 * TINY_GCT_ELEMENTS  # sum of squares + scaling
    assert info.macs == TINY_CONV_LINEAR_MACS + 2 * TINY_GCT_ELEMENTS
    # each conv now also keeps the gated copy of its input; GCT adds only per-(image, channel) statistics
    extra = info.saved_bytes_per_image - TINY_SAVED - 4 * TINY_GCT_ELEMENTS
    assert 0 <= extra <= 4 * 4 * (2 + 4)


def test_gct_is_not_zero_unlike_the_stock_counter():
    model = apply_gct(_tiny()).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as stock:
        model(torch.randn(1, 2, 6, 6))
    assert stock.get_total_flops() // 2 == TINY_CONV_LINEAR_MACS  # the stock counter sees no GCT work
    info = model_info(model, (2, 6, 6))
    assert info.gct_macs > 0 and info.macs - info.gct_macs == TINY_CONV_LINEAR_MACS


@pytest.mark.parametrize("kwargs", [{}, {"checkpoint": True}])
def test_checkpointed_gct_saves_no_gated_copies(kwargs):
    info = model_info(apply_gct(_tiny(), **kwargs), (2, 6, 6))  # checkpoint=True is the default
    assert 0 <= info.saved_bytes_per_image - TINY_SAVED <= 4 * 4 * (2 + 4)


def test_checkpointed_gct_via_model_kwargs_and_cli(capsys):
    plain = model_info("resnet20", (1, 16, 16), batch_size=2)
    ckpt = model_info("gct_resnet20", (1, 16, 16), batch_size=2)
    assert ckpt.gct_modules == 21
    assert 0 <= ckpt.saved_bytes_per_image - plain.saved_bytes_per_image <= 16 * 673  # statistics only
    full = model_info("gct_resnet20", (1, 16, 16), batch_size=2, model_kwargs={"gct_kwargs": {"checkpoint": False}})
    assert full.saved_bytes_per_image - plain.saved_bytes_per_image >= 4 * full.gct_activation_elements
    argv = ["info", "resnet20", "gct_resnet20", "--input-size", "1,16,16", "--batch-size", "2"]
    assert main(argv + ["--no-gct-checkpoint", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["resnet20", "gct_resnet20 (no ckpt)"]
    assert rows[1]["saved_bytes_per_image"] == full.saved_bytes_per_image


def _torchvision_resnet50_by_hand(hw: int = 224):
    """(conv+fc MACs, GCT input elements) of torchvision's ResNet-50 (stride on the 3x3), from its description."""
    macs = 64 * 3 * 49 * (hw // 2) ** 2  # stem 7x7/2
    elements = 3 * hw * hw
    h, cin = hw // 4, 64  # after the stem and the 3x3/2 max-pool
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        cout = 4 * planes
        for j in range(blocks):
            s = stride if j == 0 else 1
            ho = h // s
            macs += planes * cin * h * h + planes * planes * 9 * ho * ho + cout * planes * ho * ho
            elements += cin * h * h + planes * h * h + planes * ho * ho
            if j == 0:  # downsample 1x1 conv with the block's stride
                macs += cout * cin * ho * ho
                elements += cin * h * h
            h, cin = ho, cout
    return macs + 2048 * 1000, elements


def test_resnet50_paper_numbers():
    """GCT before all 53 convs of ResNet-50 at 224: 67,593 parameters; 25,624,625 vs 25,557,032 in total."""
    info = model_info("gct_resnet50")  # the registered input size: 3x224x224
    assert info.input_size == (3, 224, 224)
    assert info.gct_modules == 53
    assert info.gct_params == 67_593
    assert info.params == 25_624_625
    assert sum(p.numel() for p in create_model("resnet50").parameters()) == 25_557_032
    conv_macs, elements = _torchvision_resnet50_by_hand()
    assert info.gct_activation_elements == elements  # ~10.7 M elements touched per image
    assert info.gct_macs == 2 * elements  # ~0.021 GMAC
    assert info.macs == conv_macs + 2 * elements
    assert info.saved_bytes_per_image > 4 * elements  # at least one gated copy per GCT input


def test_cifar_saved_bytes_grow_with_gct_placement():
    names = ["resnet20", "gct_resnet20", "gct_resnet20_block"]
    no_ckpt = {"gct_kwargs": {"checkpoint": False}}
    plain, full, block = (model_info(n, (1, 28, 28), batch_size=2, model_kwargs=None if n == "resnet20" else no_ckpt) for n in names)
    assert plain.gct_modules == 0 and full.gct_modules == 21 and block.gct_modules == 9
    # every GCT keeps its input and the conv keeps the gated copy: + 4 bytes per element, + statistics
    assert 0 <= full.saved_bytes_per_image - plain.saved_bytes_per_image - 4 * full.gct_activation_elements <= 16 * 673
    assert plain.saved_bytes_per_image < block.saved_bytes_per_image < full.saved_bytes_per_image
    assert block.gct_activation_elements < full.gct_activation_elements
    assert full.gct_params == 3 * 673  # 673 = input channels of all 21 convs with in_chans=1


def test_model_info_leaves_model_untouched():
    model = create_model("gct_resnet20").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model_info(model, (3, 16, 16), batch_size=2)
    assert not model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats restored
    model.train()
    model_info(model, (3, 16, 16), batch_size=2)
    assert model.training


def test_model_info_defaults_and_mapping_access():
    info = model_info("resnet20")
    assert info.input_size == (3, 32, 32) and info.name == "resnet20"
    assert info["params"] == info.params and dict(info)["macs"] == info.macs
    assert set(info) >= {"params", "gct_params", "gct_modules", "macs", "gct_macs", "gct_activation_elements",
                         "saved_bytes_per_image"}
    d = info.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert model_info("resnet20", (3, 16, 16), num_classes=7).params == info.params - 3 * 65


def test_errors():
    with pytest.raises(ValueError, match="Did you mean"):
        model_info("gct_resnet2O")
    with pytest.raises(ValueError, match="only apply when a model name is given"):
        model_info(_tiny(), (2, 6, 6), num_classes=3)
    with pytest.raises(ValueError, match="batch_size"):
        model_info("resnet20", batch_size=0)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        model_info(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)), (1, 1, 1))
    assert parse_input_size("1,28,28") == (1, 28, 28) == parse_input_size((1, 28, 28))
    for bad in ("3,a,2", "3", (3, 0, 4), "224"):
        with pytest.raises(ValueError, match="input size"):
            parse_input_size(bad)


def test_format_table():
    rows = [
        ModelInfo("a", (3, 8, 8), 1000, 0, 0, 2_000_000, 0, 0, 1024.0),
        ModelInfo("gct_a", (3, 8, 8), 1010, 10, 2, 2_200_000, 200_000, 100_000, 2048.0, attn_params=10, attn_macs=200_000),
    ]
    text = format_table(rows)
    assert "gct_a" in text and "+1.00%" in text and "+10.00%" in text and "+100.00%" in text
    assert "2 per input element of every attention module" in text and "0.20" in text  # attention MMACs
    md = format_table(rows, markdown=True).splitlines()
    assert md[0].startswith("| model |") and md[1].startswith("| --- |") and md[3].startswith("| gct_a |")
    assert "vs 1st" not in format_table(rows[:1])  # no self-comparison for a single model


def test_attention_modules_are_charged_alike():
    """SE and the other attention modules pay 2 MACs per input element (pooling + scaling) as GCT does,
    on top of their own convs; attn_params counts their parameters."""
    plain, se, gct_block = (model_info(n, (1, 16, 16)) for n in ("resnet20", "se_resnet20", "gct_resnet20_block"))
    assert plain.attn_params == plain.attn_macs == 0
    assert se.attn_params == se.params - plain.params and se.attn_macs > 0
    assert gct_block.attn_params == gct_block.gct_params and gct_block.attn_macs == gct_block.gct_macs
    # every SE reads its block's residual-branch output: 9 blocks, 2 MACs per element
    assert se.attn_macs == 2 * 16 * 16 * (3 * 16 + 3 * 32 / 4 + 3 * 64 / 16)
    assert se.macs - plain.macs > se.attn_macs  # plus its FC convs


def test_cli_info(capsys):
    assert main(["info", "resnet20", "gct_resnet20", "--input-size", "1,28,28", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| gct_resnet20 | 1x28x28 |" in out and "2,019" in out
    assert main(["info", "gct_resnet20_block", "--input-size", "1,28,28", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["gct_modules"] == 9 and row["input_size"] == [1, 28, 28]
    assert main(["info", "--list", "gct_resnet2*"]) == 0
    assert capsys.readouterr().out.split() == ["gct_resnet20", "gct_resnet20_block"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "resnet21"], "Did you mean"),
        (["info", "resnet20", "--input-size", "3x"], "--input-size"),
        (["info"], "at least one MODEL"),
        (["info", "resnet20", "--batch-size", "0"], "--batch-size"),
        (["info", "--list", "nothing*"], "no registered model"),
        (["info", "resnet18", "--input-size", "3,32,32"], "batch_size >= 2"),  # 1x1 maps in layer4, batch 1
    ],
)
def test_cli_info_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_input_size_the_model_cannot_take_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["info", "resnet20", "--input-size", "3,32"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "resnet20 cannot run on --input-size 3,32" in err and "Traceback" not in err
