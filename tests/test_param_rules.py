"""Parameter groups by name rules: weight decay off for norms and biases, factoring of stacks."""

from __future__ import annotations

import pytest
import torch

from adafactor import Adafactor
from adafactor.param_rules import NO_DECAY_FOR_NORMS_AND_BIASES, param_groups, weight_decay_groups


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 16)
        self.ln_1 = torch.nn.LayerNorm(16)
        self.attn = torch.nn.Linear(16, 16)
        self.experts = torch.nn.Parameter(torch.randn(16, 8, 32) * 0.1)  # [experts, d, d_ff]
        self.final_layer_norm = torch.nn.LayerNorm(16)


def names(group):
    return group["param_names"]


def test_groups_follow_rules_in_model_order():
    groups = param_groups(
        Block(),
        [
            NO_DECAY_FOR_NORMS_AND_BIASES,
            (r"^experts$", {"factor_dims": "last"}),
        ],
    )
    # A module's own parameters come before its submodules' in named_parameters().
    assert [names(g) for g in groups] == [
        ["experts"],
        ["embed.weight", "attn.weight"],
        [
            "ln_1.weight",
            "ln_1.bias",
            "attn.bias",
            "final_layer_norm.weight",
            "final_layer_norm.bias",
        ],
    ]
    assert groups[0]["factor_dims"] == "last" and "weight_decay" not in groups[0]
    assert "weight_decay" not in groups[1] and groups[2]["weight_decay"] == 0.0


def test_no_decay_group_is_not_decayed_and_the_others_are():
    model = Block()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = Adafactor(param_groups(model, [NO_DECAY_FOR_NORMS_AND_BIASES]), weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # a zero gradient leaves only the decay: X ← X(1 − λ·ρ_1)
    opt.step()
    for name, p in model.named_parameters():
        no_decay = name.endswith("bias") or "ln_1" in name or "norm" in name
        expected = before[name] if no_decay else before[name] * (1 - 0.5 * 1e-2)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0, msg=name)


def test_a_stacked_tensor_gets_its_own_factoring():
    model = Block()
    opt = Adafactor(param_groups(model, [(r"^experts$", {"factor_dims": "last"})]))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    state = opt.state[model.experts]
    assert state["exp_avg_sq_row"].shape == (16, 8, 1)
    assert state["exp_avg_sq_col"].shape == (16, 1, 32)
    default = Adafactor([model.experts])
    model.experts.grad = torch.randn_like(model.experts)
    default.step()  # "largest" factors the stack over (experts, d_ff), mixing the experts
    assert default.state[model.experts]["exp_avg_sq_col"].shape == (1, 8, 32)
    assert opt.state[model.attn.weight]["exp_avg_sq_row"].shape == (16, 1)


def test_later_rules_override_earlier_ones():
    groups = param_groups(
        Block(),
        [
            (r"weight$", {"weight_decay": 0.1, "beta1": 0.9}),
            (r"^attn\.", {"weight_decay": 0.0}),
        ],
    )
    by_name = {n: g for g in groups for n in names(g)}
    assert by_name["attn.weight"]["weight_decay"] == 0.0
    assert by_name["attn.weight"]["beta1"] == 0.9
    assert by_name["embed.weight"]["weight_decay"] == 0.1


def test_param_names_reach_the_optimizers_errors():
    model = Block()
    opt = Adafactor(param_groups(model, [NO_DECAY_FOR_NORMS_AND_BIASES]), nonfinite_grad="raise")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.attn.bias.grad[0] = float("nan")
    with pytest.raises(ValueError, match=r"'attn\.bias'"):
        opt.step()


@pytest.mark.parametrize(
    "rules, message",
    [
        ([(r"^no_such_param$", {"weight_decay": 0.0})], r"\['\^no_such_param\$'\] match no"),
        ([(r"bias", {"weight_dacay": 0.0})], r"rule 0 \('bias'\): unknown Adafactor option"),
        ([(r"bias(", {"weight_decay": 0.0})], r"rule 0 \('bias\('\) is not a valid regex"),
    ],
)
def test_bad_rules_are_named(rules, message):
    with pytest.raises(ValueError, match=message):
        param_groups(Block(), rules)


def test_unmatched_rules_are_allowed_when_not_strict():
    groups = param_groups(Block(), [(r"^nothing$", {"beta1": 0.9})], strict=False)
    assert len(groups) == 1 and len(groups[0]["params"]) == 8


def test_weight_decay_groups_by_shape():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    groups = weight_decay_groups(model, 0.1, no_decay=["2.weight"])
    assert [(names(g), g["weight_decay"]) for g in groups] == [
        (["0.weight"], 0.1),
        (["0.bias", "1.weight", "1.bias", "2.weight", "2.bias"], 0.0),
    ]
    Adafactor(groups)  # valid groups
