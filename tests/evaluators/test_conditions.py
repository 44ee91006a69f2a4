"""Attack conditions: the documented default grids, their order and keys, clipping, and the CLI list parsers."""

from __future__ import annotations

import pytest

from memprune.errors import MempruneError
from memprune.evaluators.conditions import (
    AttackCondition,
    default_conditions,
    parse_float_list,
    parse_int_list,
    robust_prefixes,
)
from tests.evaluators.audit_fakes import ScriptedModel


@pytest.fixture(scope="module")
def var():
    from memprune.families.var.model import VARConfig, build_var_model
    from memprune.families.var.vqvae import VQVAEConfig

    cfg = VARConfig(depth=1, width=64, num_heads=1, mlp_hidden=128, vocab_size=64, cvae=8, num_classes=3)
    return build_var_model(cfg, VQVAEConfig(vocab_size=64, z_channels=8, ch=32))


def test_var_robust_grid_is_three_prefixes_times_greedy_and_three_seeds(var):
    conds = default_conditions(var)
    assert [c.key for c in conds] == [f"p{p}-{d}" for p in (3, 4, 5) for d in ("greedy", "s0", "s1", "s2")]
    assert all(c.cfg == 0 and c.temperature == 1 and c.top_k == 0 and c.top_p == 0 for c in conds)
    assert [c.key for c in default_conditions(var, seeds=[])] == ["p3-greedy", "p4-greedy", "p5-greedy"]
    two = default_conditions(var, prefixes=[5, 2], seeds=[1], cfgs=[1.5, 0])
    # Prefix ascending, then guidance in the order given, then greedy before seeds.
    assert [c.key for c in two] == ["p2-greedy-cfg1.5", "p2-s1-cfg1.5", "p2-greedy", "p2-s1",
                                    "p5-greedy-cfg1.5", "p5-s1-cfg1.5", "p5-greedy", "p5-s1"]


def test_paper_is_the_attacks_single_condition(var):
    (cond,) = default_conditions(var, "paper")
    assert cond == AttackCondition(4, True, None, 0.0) and cond.key == "p4-greedy"
    (sampled,) = default_conditions(var, "paper", [3], [7], [1.5], greedy=False, top_k=900, top_p=0.96)
    assert sampled.key == "p3-s7-cfg1.5-k900-p0.96"
    with pytest.raises(MempruneError, match="--attack paper is one condition"):
        default_conditions(var, "paper", prefixes=[3, 4])
    with pytest.raises(MempruneError, match="--attack 'strong' is not known"):
        default_conditions(var, "strong")  # type: ignore[arg-type]


def test_raster_prefixes_are_tokens_clipped_to_the_sequence():
    model = ScriptedModel([], [])  # 64 tokens
    assert robust_prefixes(model) == [16, 30]  # 64 would force the whole image
    model.seq_len = 10
    assert robust_prefixes(model) == [9]
    assert [c.key for c in default_conditions(model, seeds=[0])] == ["p9-greedy", "p9-s0"]


def test_bad_grids_are_refused(var):
    with pytest.raises(MempruneError, match="more than this model has"):
        default_conditions(var, prefixes=[3, 40])
    with pytest.raises(MempruneError, match="repeats a value"):
        default_conditions(var, prefixes=[3, 3])
    with pytest.raises(MempruneError, match="repeats a value"):
        default_conditions(var, seeds=[1, 1])
    with pytest.raises(MempruneError, match="lists no prefix"):
        default_conditions(var, prefixes=[])
    with pytest.raises(MempruneError, match="--cfg nan"):
        AttackCondition(4, True, None, float("nan"))
    with pytest.raises(MempruneError, match="needs a seed"):
        AttackCondition(4, False, None)


@pytest.mark.parametrize(("text", "expected"), [("3,4,5", [3, 4, 5]), ("0-2", [0, 1, 2]), (" 4 ", [4]), ("1,3-4", [1, 3, 4])])
def test_int_lists(text, expected):
    assert parse_int_list(text, "--prefixes") == expected


@pytest.mark.parametrize("text", ["a", "--1", "-1", "1.5", "3-"])
def test_bad_int_lists(text):
    with pytest.raises(MempruneError, match="--seeds"):
        parse_int_list(text, "--seeds")


def test_float_lists():
    assert parse_float_list("0,1.5", "--cfg") == [0.0, 1.5]
    for bad in ("nan", "inf", "-1", "x", ""):
        with pytest.raises(MempruneError, match="--cfg"):
            parse_float_list(bad, "--cfg")
