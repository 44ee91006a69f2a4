"""The multi-condition audit in memory: union, per-condition counts, first condition, references computed once."""

from __future__ import annotations

import pytest
import torch

from memprune.errors import MempruneError
from memprune.evaluators.audit_candidates import select_candidates
from memprune.evaluators.conditions import AttackCondition, default_conditions
from memprune.evaluators.multi_audit import ReferenceSet, audit_conditions
from tests.evaluators.audit_fakes import PixelSSCD, ScriptedModel, make_images

# img0: only greedy at 16 tokens; img1: only sampled seed 1 (any prefix); img2: everything; img3: nothing.
RULES = [
    lambda n, greedy, seed: greedy and n >= 16,
    lambda n, greedy, seed: seed == 1,
    lambda n, greedy, seed: True,
    lambda n, greedy, seed: False,
]


@pytest.fixture()
def scripted(tmp_path):
    cands, truths = make_images(tmp_path / "img", 4)
    return cands, ScriptedModel(truths, RULES)


def _grid(model):
    return default_conditions(model, "robust", prefixes=[8, 16], seeds=[0, 1])


def test_union_per_condition_and_first_condition(scripted):
    cands, model = scripted
    sscd = PixelSSCD()
    refs = ReferenceSet.build(model, cands, sscd, batch_size=4)
    conds = _grid(model)
    assert [c.key for c in conds] == ["p8-greedy", "p8-s0", "p8-s1", "p16-greedy", "p16-s0", "p16-s1"]
    res = audit_conditions(model, refs, conds, sscd, batch_size=4)
    assert res.extracted.tolist() == [True, True, True, False]
    assert res.union_count == 3
    assert res.per_condition_counts == {"p8-greedy": 1, "p8-s0": 1, "p8-s1": 2, "p16-greedy": 2, "p16-s0": 1, "p16-s1": 2}
    assert res.first_condition == ["p16-greedy", "p8-s1", "p8-greedy", None]
    assert res.similarity.shape == (4, 6) and torch.allclose(res.similarity[2], torch.ones(6))
    assert res.count({"img0.png", "img3.png"}) == 1
    summary = res.to_summary()
    assert summary["extracted"] == 3 and summary["first_condition_counts"]["p16-greedy"] == 1
    assert summary["similarity"]["count"] == 4 and sum(summary["similarity"]["histogram"]["counts"]) == 4
    assert "img0.png" not in repr(summary)  # aggregates only
    # No single condition sees the union: the one-condition audit undercounts.
    assert max(res.per_condition_counts.values()) < res.union_count


def test_results_do_not_depend_on_the_batch_size_of_this_model(scripted):
    cands, model = scripted
    sscd = PixelSSCD()
    refs = ReferenceSet.build(model, cands, sscd, batch_size=3)
    a = audit_conditions(model, refs, _grid(model), sscd, batch_size=4)
    b = audit_conditions(model, refs, _grid(model), sscd, batch_size=1)
    assert torch.equal(a.similarity, b.similarity)


def test_references_are_computed_once_and_reused_across_models(scripted, tmp_path):
    cands, model = scripted
    other = ScriptedModel(model.truths, [lambda n, g, s: False] * 4)  # a "patched" model that forgot everything
    sscd = PixelSSCD()
    refs = ReferenceSet.build(model, cands, sscd, batch_size=2)
    assert model.calls["encode"] == 2 and sscd.embedded == 2 * len(cands)  # views + reconstructions, once
    conds = _grid(model)
    first = audit_conditions(model, refs, conds, sscd, batch_size=4)
    second = audit_conditions(other, refs, conds, sscd, batch_size=4)
    assert model.calls["encode"] == 2 and other.calls["encode"] == 0  # no second tokenizer pass
    assert sscd.embedded == 2 * len(cands) + 2 * len(cands) * len(conds)  # only the generations
    assert first.union_count == 3 and second.union_count == 0
    assert refs.subset([2, 0]).ids == ["img2.png", "img0.png"]
    assert audit_conditions(model, refs.subset([2, 0]), conds, sscd).extracted.tolist() == [True, True]


def test_a_model_of_another_family_is_refused(scripted):
    cands, model = scripted
    sscd = PixelSSCD()
    refs = ReferenceSet.build(model, cands, sscd)
    other = ScriptedModel(model.truths, RULES)
    other.seq_len = 32
    with pytest.raises(MempruneError, match="differs from the reference model in seq_len"):
        audit_conditions(other, refs, _grid(model), sscd)
    with pytest.raises(MempruneError, match="no attack condition"):
        audit_conditions(model, refs, [], sscd)
    with pytest.raises(MempruneError, match="longer than the sequence"):
        audit_conditions(model, refs, [AttackCondition(65, True, None)], sscd)


def test_selection_on_two_models_audits_the_union(tmp_path):
    cands, truths = make_images(tmp_path / "img", 6)
    # Class 0 = img0, img2, img4; class 1 = img1, img3, img5. The patched model lowers img0 and img1.
    base = ScriptedModel(truths, RULES * 2, hit_rates=[0.9, 0.9, 0.5, 0.4, 0.1, 0.2])
    patched = ScriptedModel(truths, RULES * 2, hit_rates=[0.1, 0.1, 0.5, 0.4, 0.6, 0.2])
    picked = select_candidates({"baseline": base, "model": patched}, cands, per_class=1, batch_size=4,
                               logs={"baseline": tmp_path / "scan.jsonl", "model": tmp_path / "scan_model.jsonl"})
    assert [c.id for c in picked] == ["img0.png", "img4.png", "img1.png", "img3.png"]
    assert [c.selected_by for c in picked] == [("baseline",), ("model",), ("baseline",), ("model",)]
    assert base.calls["encode"] == 2 and patched.calls["encode"] == 0  # images tokenized once for both models
    # Resumed from the logs: nothing is recomputed.
    again = select_candidates({"baseline": base, "model": patched}, cands, per_class=1, batch_size=4,
                              logs={"baseline": tmp_path / "scan.jsonl", "model": tmp_path / "scan_model.jsonl"})
    assert again == picked and base.calls["teacher_forced"] == 2


def _tiny_var():
    from memprune.families.var.model import VARConfig, build_var_model
    from memprune.families.var.vqvae import VQVAEConfig

    cfg = VARConfig(depth=2, width=64, num_heads=2, mlp_hidden=128, vocab_size=64, cvae=8, num_classes=2,
                    patch_nums=(1, 2, 4))
    model = build_var_model(cfg, VQVAEConfig(vocab_size=64, z_channels=8, ch=32, num_hit_scales=3), seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # VAR's init leaves the blocks almost silent; give the FFNs weight
        for name, p in model.var.named_parameters():
            if p.ndim == 2 and "emb" not in name:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    return model


def test_weights_changed_in_place_and_restored_give_identical_results(tmp_path):
    """What ``mitigate`` does between calls: scale FFN rows in place, audit, undo, audit again."""
    cands, _ = make_images(tmp_path / "img", 3)
    model = _tiny_var()
    sscd = PixelSSCD()
    refs = ReferenceSet.build(model, cands, sscd, batch_size=2)
    conds = default_conditions(model, "robust", prefixes=[1], seeds=[0])
    before = audit_conditions(model, refs, conds, sscd, batch_size=2)
    fc1 = model.var.blocks[0].ffn.fc1.weight
    saved = fc1.detach().clone()
    with torch.no_grad():
        fc1.mul_(0.0)
    changed = audit_conditions(model, refs, conds, sscd, batch_size=2)
    with torch.no_grad():
        fc1.copy_(saved)
    after = audit_conditions(model, refs, conds, sscd, batch_size=2)
    assert not torch.equal(before.similarity, changed.similarity)
    assert torch.equal(before.similarity, after.similarity) and torch.equal(before.token_match, after.token_match)


def test_file_audit_shares_references_across_models_and_resumes_by_condition(scripted, tmp_path):
    from memprune.evaluators import audit as A
    from memprune.evaluators import audit_report as R

    cands, model = scripted
    forgot = ScriptedModel(model.truths, [lambda n, g, s: False] * 4)
    sscd = PixelSSCD()
    settings = A.AuditSettings(prefixes=(8, 16), seeds=(0, 1), batch_size=2)
    rows = A.run_audit({"baseline": model, "model": forgot}, sscd, cands, settings, tmp_path)
    assert model.calls["encode"] == 2 and forgot.calls["encode"] == 0  # one tokenizer pass per batch, not per model
    assert sscd.embedded == 2 * 4 + 2 * 4 * 6  # references once; generations: 2 models x 4 images x 6 conditions
    assert len(rows) == 4 * 2 * 6 and {r.condition for r in rows} == {c.key for c in _grid(model)}
    summary = R.build_summary(rows, models={"baseline": {}, "model": {}}, settings={"threshold": 0.75}, candidates={},
                              sscd={}, baseline="baseline")
    base = summary["counts"]["baseline"]
    assert base["extracted"] == 3 and base["first_condition"] == {"img0.png": "p16-greedy", "img1.png": "p8-s1",
                                                                   "img2.png": "p8-greedy"}
    assert base["per_condition"]["p8-s1"] == 2 and summary["comparison"]["before"] == 3
    assert summary["comparison"]["after"] == 0
    best = R.best_rows(rows)
    assert len(best) == 8 and sum(r.extracted for r in best if r.model == "baseline") == 3
    # A resumed run with the same settings redoes nothing.
    calls = model.calls["generate"]
    again = A.run_audit({"baseline": model, "model": forgot}, sscd, cands, settings, tmp_path)
    assert model.calls["generate"] == calls and again == rows
