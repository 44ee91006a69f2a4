"""The multi-condition audit runs each ground-truth prefix once per batch and guidance, with bit-identical results.

Three checks per family (VAR, RAR, LlamaGen), on tiny random models:

* every row of :func:`audit_conditions` (similarities, token agreement, kept best images) is the same with the
  shared prefix pass as with one ``generate`` per condition (the reference path, ``share_prefix=False``);
* ``generate`` and continuations of one shared state reproduce the tokens the per-condition code produced before
  the prefix pass was split out (sha256 digests recorded with that code, commit 44d54e2, in
  ``tests/fixtures/audit/prefix_sharing_tokens.json``);
* a state is never changed by a continuation, and the audit runs one prefill per prefix, batch layout (unguided,
  or guided with any weight) and batch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memprune.errors import MempruneError
from memprune.evaluators.audit_candidates import Candidate
from memprune.evaluators.conditions import AttackCondition, default_conditions, prefix_tokens
from memprune.evaluators.multi_audit import ReferenceSet, audit_conditions, complete, prefill
from tests.evaluators.audit_fakes import PixelSSCD
from tests.evaluators.tiny_families import FAMILIES, PREFIXES, ground_truth, tiny_model

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "audit" / "prefix_sharing_tokens.json"


def _grid(model, family: str, prefixes=None, seeds=(0, 1), cfgs=(0.0, 2.0)) -> list[AttackCondition]:
    conds = default_conditions(model, "robust", prefixes=list(prefixes or PREFIXES[family]), seeds=list(seeds),
                               cfgs=list(cfgs))
    # One sampled condition with every filter on (temperature, top-k, top-p).
    return [*conds, AttackCondition(PREFIXES[family][1], False, 3, 0.0, 0.9, 20, 0.95)]


def _digest(tokens: torch.Tensor) -> str:
    return hashlib.sha256(tokens.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param, tiny_model(request.param)


def test_generate_and_shared_continuations_reproduce_the_recorded_tokens(family):
    name, model = family
    recorded = json.loads(RECORDED.read_text())[name]
    tokens, labels = ground_truth(model)
    conds = _grid(model, name)
    assert sorted(c.key for c in conds) == sorted(recorded)
    # Guidance 3 continues the prefill of guidance 2 (same [cond, null] layout); it has no recorded digest.
    conds += [replace(c, cfg=3.0) for c in conds if c.cfg == 2.0]
    states = {}
    for cond in conds:
        n = prefix_tokens(model, cond.prefix)
        alone = complete(model, tokens, labels, n, cond, 5)  # generate: its own prefix pass
        key = (n, model.prefill_group(cond.cfg))
        if key not in states:
            states[key] = prefill(model, tokens, labels, n, cond)
        shared = complete(model, tokens, labels, n, cond, 5, states[key])
        if cond.key in recorded:
            assert _digest(alone) == recorded[cond.key], cond.key
        assert torch.equal(shared, alone), cond.key
    assert len(states) == 2 * len(PREFIXES[name])  # per prefix: one unguided and one guided pass


def test_a_continuation_leaves_its_state_unchanged(family):
    name, model = family
    tokens, labels = ground_truth(model)
    cond = AttackCondition(PREFIXES[name][1], True, None, 2.0)
    n = prefix_tokens(model, cond.prefix)
    state = prefill(model, tokens, labels, n, cond)
    first = complete(model, tokens, labels, n, cond, 0, state)
    complete(model, tokens, labels, n, AttackCondition(cond.prefix, False, 7, 3.0), 0, state)
    assert torch.equal(complete(model, tokens, labels, n, cond, 0, state), first)
    with pytest.raises(MempruneError, match="cannot continue a prefix pass"):  # the layout is the prefill's
        model.generate_from(state, cfg=0.0)


def _candidates(folder: Path, count: int, size: int) -> list[Candidate]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(count):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"im{k}.png")
        out.append(Candidate(folder / f"im{k}.png", k % 3, f"im{k}.png"))
    return out


def test_every_audit_row_equals_the_per_condition_path(family, tmp_path):
    name, model = family
    sscd = PixelSSCD()
    refs = ReferenceSet.build(model, _candidates(tmp_path, 3, model.image_size + 16), sscd, batch_size=3)
    conds = _grid(model, name, prefixes=PREFIXES[name][1:2], cfgs=(0.0, 2.0, 3.0))
    calls = []
    original = model.prefill
    model.prefill = lambda *a, **k: calls.append(1) or original(*a, **k)  # count the prefix passes
    try:
        shared = audit_conditions(model, refs, conds, sscd, batch_size=2, keep_images=True)
    finally:
        del model.prefill
    alone = audit_conditions(model, refs, conds, sscd, batch_size=2, keep_images=True, share_prefix=False)
    for field in ("similarity", "similarity_image", "best_images"):
        assert torch.equal(getattr(shared, field), getattr(alone, field)), field
    assert torch.equal(shared.token_match.isnan(), alone.token_match.isnan())
    assert torch.equal(shared.token_match.nan_to_num(-1), alone.token_match.nan_to_num(-1))
    groups = {(c.prefix, model.prefill_group(c.cfg)) for c in conds}
    assert len(groups) == 2  # unguided, and guided at 2 and 3
    assert len(calls) == 2 * len(groups) < 2 * len(conds)  # two batches, one pass per prefix and batch layout
