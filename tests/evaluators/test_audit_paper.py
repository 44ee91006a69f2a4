"""``--attack paper`` reproduces the single-condition audit exactly (bundled demo VAR, real SSCD ONNX).

``tests/fixtures/audit/paper_reference.json`` holds every row (prefix sweep included) that the single-condition
implementation (commit 528805c) produced for these 8 candidates with ``AuditSettings(batch_size=4, sweep=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memprune.evaluators import audit as A

pytest.importorskip("onnxruntime")
REFERENCE = Path(__file__).parents[1] / "fixtures" / "audit" / "paper_reference.json"
FIELDS = ("id", "prefix", "prefix_tokens", "hit_rate", "similarity", "similarity_image", "reconstruction_similarity",
          "token_match", "extracted", "counted")


@pytest.mark.slow
def test_paper_attack_reproduces_the_single_condition_rows(tmp_path):
    from memprune.demo.assets import load_demo_assets
    from memprune.evaluators import load_sscd
    from memprune.families.var.model import load_var

    assets = load_demo_assets(None)
    model = load_var(assets.var_path, assets.vae_path, device="cpu")
    images = assets.role("duplicated")[:5] + assets.role("single")[:3]
    cands = [A.Candidate(i.path, i.label, i.id) for i in images]
    rows = A.run_audit({"model": model}, load_sscd("onnx", device="cpu"), cands,
                       A.AuditSettings(attack="paper", batch_size=4, sweep=True), tmp_path)
    expected = json.loads(REFERENCE.read_text())
    got = [{k: r.to_json()[k] for k in FIELDS} for r in rows]
    assert [(g["id"], g["prefix"], g["extracted"], g["counted"]) for g in got] == [
        (e["id"], e["prefix"], e["extracted"], e["counted"]) for e in expected]
    for g, e in zip(got, expected):
        for key in ("hit_rate", "similarity", "similarity_image", "reconstruction_similarity", "token_match"):
            assert g[key] == pytest.approx(e[key], abs=1e-5), (g["id"], g["prefix"], key)
    assert {r.condition for r in rows if r.counted} == {"p4-greedy"}
