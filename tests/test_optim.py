"""Weight-decay parameter groups: GCT parameters found by module type, every trainable param once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gctnet import GCT
from gctnet.optim import no_weight_decay, optimizer_step, param_groups


class _Decoy(nn.Module):
    """Has parameters called beta/alpha/gamma that are *not* GCT parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.ones(4))
        self.alpha = nn.Parameter(torch.ones(4, 4))


def _model() -> nn.Module:
    return nn.Sequential(
        GCT(3),
        nn.Conv2d(3, 4, 3, bias=True),
        nn.BatchNorm2d(4),
        GCT(4),
        nn.Conv2d(4, 4, 1, bias=False),
        _Decoy(),
    )


def _names(groups, wd):
    return {n for g in groups if g["weight_decay"] == wd for n in g["param_names"]}


def _gct_names(model, which):
    return {f"{n}.{which}" for n, m in model.named_modules() if isinstance(m, GCT)}


def test_paper_policy_exempts_exactly_gct_betas():
    model = _model()
    groups = param_groups(model, 1e-4)
    assert _names(groups, 0.0) == _gct_names(model, "beta")
    decayed = _names(groups, 1e-4)
    assert "5.beta" in decayed and "5.alpha" in decayed  # decoys keep their decay
    assert _gct_names(model, "alpha") | _gct_names(model, "gamma") <= decayed
    assert no_weight_decay(model) == _gct_names(model, "beta")


@pytest.mark.parametrize("policy", ["paper", "none", "all"])
@pytest.mark.parametrize("norm_bias_decay", [True, False])
def test_groups_cover_every_trainable_param_once(policy, norm_bias_decay):
    model = _model()
    groups = param_groups(model, 0.05, policy=policy, norm_bias_decay=norm_bias_decay)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    for g in groups:
        assert len(g["params"]) == len(g["param_names"])
    # the groups are accepted by a torch optimizer
    torch.optim.SGD(groups, lr=0.1, momentum=0.9)


def test_none_and_all_policies():
    model = _model()
    gct_all = set().union(*(_gct_names(model, w) for w in ("alpha", "gamma", "beta")))
    assert _names(param_groups(model, 1e-3, policy="none"), 0.0) == gct_all
    assert _names(param_groups(model, 1e-3, policy="all"), 0.0) == set()
    assert no_weight_decay(model, "all") == set()


def test_norm_bias_decay_false_follows_one_dim_rule_outside_gct():
    model = _model()
    no_decay = _names(param_groups(model, 1e-4, norm_bias_decay=False), 0.0)
    expected = _gct_names(model, "beta") | {"1.bias", "2.weight", "2.bias", "5.beta"}
    assert no_decay == expected
    # GCT alpha/gamma are governed by the policy, not by the 1-D rule
    assert not (_gct_names(model, "alpha") & no_decay)


def test_frozen_params_are_left_out_but_named_in_no_weight_decay():
    model = _model()
    model[0].requires_grad_(False)
    groups = param_groups(model, 1e-4)
    all_ids = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in all_ids for p in model[0].parameters())
    assert "0.beta" in no_weight_decay(model)


def test_empty_group_is_dropped():
    model = nn.Conv2d(3, 4, 3)
    groups = param_groups(model, 1e-4)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 1e-4


def test_shared_gct_counted_once():
    g = GCT(4)
    model = nn.Sequential(g, nn.Conv2d(4, 4, 1), g)
    groups = param_groups(model, 1e-4)
    ids = [id(p) for grp in groups for p in grp["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


@pytest.mark.parametrize("bad", [-1e-4, float("nan"), float("inf")])
def test_bad_weight_decay_value(bad):
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(_model(), bad)


def test_bad_weight_decay_type_and_policy():
    with pytest.raises(TypeError, match="weight_decay"):
        param_groups(_model(), "1e-4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="policy must be one of"):
        param_groups(_model(), 1e-4, policy="pape")
    with pytest.raises(ValueError, match="policy must be one of"):
        no_weight_decay(_model(), "beta")
    with pytest.raises(TypeError, match="nn.Module"):
        param_groups([nn.Parameter(torch.ones(1))], 1e-4)  # type: ignore[arg-type]


def test_optimizer_step_clears_stale_gradients_and_steps():
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = torch.optim.SGD([w], lr=0.5)
    w.grad = torch.full_like(w, 100.0)  # stale: must not be accumulated into this step
    optimizer_step((w * torch.tensor([1.0, -2.0])).sum(), opt)
    torch.testing.assert_close(w.detach(), torch.tensor([0.5, 3.0]))
    torch.testing.assert_close(w.grad, torch.tensor([1.0, -2.0]))


def test_optimizer_step_with_scaler_unscales_before_stepping():
    w = nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.SGD([w], lr=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer_step((3.0 * w).sum(), opt, scaler)
    torch.testing.assert_close(w.detach(), torch.tensor([-0.5]))  # 1 - 0.5 * 3, not scaled by 1024
    assert scaler.get_scale() > 0
