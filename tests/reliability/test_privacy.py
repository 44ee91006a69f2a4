"""What a release publishes: aggregate figures only, no per-image results, image ids or local paths by default."""

from __future__ import annotations

import json

import pytest
import torch
from reliability_helpers import inputs

from memprune.errors import MempruneError
from memprune.io import checkpoint_sha256, open_checkpoint, save_safetensors
from memprune.manifest import META_KEY
from memprune.patching import patch
from memprune.public import public_command, public_report
from memprune.push import plan_push
from memprune.scores import ScoreSet, save_scores

SECRET_ID = "n01440764/n01440764_10026.JPEG"


def _published(plan) -> dict[str, bytes]:
    return {f.path_in_repo: f.data if f.data is not None else f.local.read_bytes() for f in plan.files}


@pytest.fixture
def patched(tmp_path):
    """A patch made with absolute paths everywhere, from scores whose info holds per-image labels and a data path."""
    work = tmp_path / "private" / "work"
    ckpt, _ = inputs(work)
    values = {f"blocks.{i}.ffn.fc1": torch.rand(3, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)}
    info = {"data": {"source": str(tmp_path / "private" / "imagenet" / "train"), "images": 2, "classes": 2},
            "labels": [3, 7], "tokenizer": str(tmp_path / "private" / "vae.pth"), "images_scored": 2}
    scores = work / "scores.safetensors"
    save_scores(ScoreSet(values, ["scale0", "scale1", "scale2"], checkpoint_sha256(ckpt), "var", ["scale0"], info=info), scores)
    out = work / "safe.safetensors"
    command = f"memprune patch {ckpt} --scores={scores} --layers 'blocks/fc1' -o {out}"
    patch(ckpt, scores, output=out, top="10%", command=command)
    return ckpt, out


def _audit(out, base_sha, tmp_path):
    manifest = json.loads(out.with_name("safe.manifest.json").read_text())
    counts = {"extracted": 3, "candidates": 100, "extracted_share": 0.03, "extracted_ids": [SECRET_ID, "b/c.JPEG"],
              "sweep": {"4": {"prefix_tokens": 30, "extracted": 3, "candidates": 100}}}
    return {
        "schema": "memprune.audit/1",
        "headline": {"model": "model", "extracted": 3, "candidates": 100, "threshold": 0.75},
        "counts": {"model": counts, "baseline": {**counts, "extracted": 20}},
        "models": {"model": {"path": str(out), "sha256": manifest["output"]["sha256"]},
                   "baseline": {"path": str(tmp_path / "private" / "base.pth"), "sha256": base_sha}},
        "settings": {"threshold": 0.75, "tokenizer": str(tmp_path / "private" / "vae.pth"), "seed": 0},
        "candidates": {"data": str(tmp_path / "private" / "imagenet"), "count": 100, "per_class": 5},
        "attack": "multi-condition", "conditions": [{"key": "greedy", "cfg": 0.0}, {"key": "cfg1.5", "cfg": 1.5}],
        "per_condition": {"greedy": 2, "cfg1.5": 3}, "extracted_union": 3,
        "per_candidate": [{"id": SECRET_ID, "similarity": 0.9}],
        "some_future_field": [SECRET_ID],
        "sscd": {"backend_id": "sscd", "license": "CC-BY-NC 4.0"},
    }


def test_the_manifest_holds_file_names_and_aggregates_only(patched, tmp_path):
    ckpt, out = patched
    sidecar = out.with_name("safe.manifest.json").read_text()
    with open_checkpoint(out) as ck:
        header = ck.metadata[META_KEY]
    for text in (sidecar, header):
        assert str(tmp_path) not in text and "private" not in text
        assert '"labels"' not in text  # per-image labels stay in the score file
    manifest = json.loads(sidecar)
    assert manifest["input"]["path"] == "var_tiny.pth" and manifest["scores"]["path"] == "scores.safetensors"
    assert manifest["command"] == "memprune patch var_tiny.pth --scores=scores.safetensors --layers blocks/fc1 -o safe.safetensors"
    assert manifest["scores"]["info"]["data"] == {"source": "train", "images": 2, "classes": 2}


def test_push_publishes_aggregates_only_by_default(patched, tmp_path):
    ckpt, out = patched
    folder = tmp_path / "private" / "audit"
    folder.mkdir()
    (folder / "audit_summary.json").write_text(json.dumps(_audit(out, checkpoint_sha256(ckpt), tmp_path)))
    plan = plan_push(out, "me/var-safe", reports=[folder])
    files = _published(plan)
    for name, data in files.items():
        if name.endswith(".safetensors"):
            data = data[:200_000]  # the header (manifest copy) is at the front
        text = data.decode("utf-8", "replace")
        assert SECRET_ID not in text and "b/c.JPEG" not in text, name
        assert str(tmp_path) not in text and "private" not in text, name
    report = json.loads(files["reports/audit/audit_summary.json"])
    assert report["counts"]["model"]["extracted"] == 3 and report["counts"]["baseline"]["extracted"] == 20
    assert "extracted_ids" not in report["counts"]["model"] and "per_candidate" not in report and "some_future_field" not in report
    assert report["attack"] == "multi-condition" and report["per_condition"] == {"greedy": 2, "cfg1.5": 3}
    assert [c["key"] for c in report["conditions"]] == ["greedy", "cfg1.5"] and report["extracted_union"] == 3
    assert report["models"]["baseline"] == {"path": "base.pth", "sha256": checkpoint_sha256(ckpt)}
    assert report["candidates"]["data"] == "imagenet" and report["settings"]["tokenizer"] == "vae.pth"
    assert "Command: `memprune patch var_tiny.pth" in plan.card


def test_include_audit_details_publishes_the_files_whole_with_a_warning(patched, tmp_path):
    ckpt, out = patched
    (out.parent / "audit_summary.json").write_text(json.dumps(_audit(out, checkpoint_sha256(ckpt), tmp_path)))
    plan = plan_push(out, "me/var-safe", include_audit_details=True)
    assert SECRET_ID in _published(plan)["reports/work/audit_summary.json"].decode()
    assert any("--include-audit-details" in w and "ids" in w for w in plan.warnings)


def test_the_card_names_a_dataset_only_when_told(patched):
    _, out = patched
    assert "ImageNet" not in plan_push(out, "me/var-safe").card
    card = plan_push(out, "me/var-safe", dataset="ImageNet-1k").card
    assert "ImageNet-1k" in card


def test_small_sample_figures_carry_their_size_and_a_caveat(patched):
    _, out = patched
    manifest = json.loads(out.with_name("safe.manifest.json").read_text())
    fid = {"schema": "memprune.fid/1", "fid": 41.0, "num_images": 16, "model": {"sha256": manifest["output"]["sha256"]}}
    (out.parent / "fid.json").write_text(json.dumps(fid))
    card = plan_push(out, "me/var-safe").card
    assert "FID from 16 images" in card and "biased upward" in card


def test_manifests_with_local_paths_from_older_versions_are_not_published(tmp_path):
    work = tmp_path / "w"
    ckpt, scores = inputs(work)
    out = work / "safe.safetensors"
    patch(ckpt, scores, output=out, top="10%")
    # what memprune wrote before: the absolute input path, in the sidecar and the header copy
    from memprune.manifest import embeddable

    sidecar = out.with_name("safe.manifest.json")
    manifest = json.loads(sidecar.read_text())
    manifest["input"]["path"] = str(ckpt)
    with open_checkpoint(out) as ck:
        tensors, meta = {k: ck.get(k) for k in ck.keys()}, dict(ck.metadata)
    meta[META_KEY] = embeddable(manifest)
    digest = save_safetensors(tensors, out, meta)
    manifest["output"]["sha256"] = digest
    sidecar.write_text(json.dumps(manifest))
    with pytest.raises(MempruneError, match="records local paths.*re-run `memprune patch`"):
        plan_push(out, "me/x")
    assert plan_push(out, "me/x", include_audit_details=True).verified
    # patching such a file again writes a history of file names
    again = work / "again.safetensors"
    patch(out, scores, output=again, top="5%", force=True)
    text = again.with_name("again.manifest.json").read_text()
    assert str(work) not in text and json.loads(text)["history"][0]["input"]["path"] == "var_tiny.pth"


def test_public_report_drops_unknown_keys_and_long_lists():
    data = {"counts": {"m": {"extracted": 1, "extracted_ids": ["a"], "new_metric_list": list(range(1000))}},
            "unknown": 1, "similarity": {"histogram": {"edges": [0.0, 0.5], "counts": [1, 2]}}}
    assert public_report(data) == {"counts": {"m": {"extracted": 1}}, "similarity": {"histogram": {"edges": [0.0, 0.5], "counts": [1, 2]}}}


def test_public_command_keeps_options_and_urls():
    cmd = "memprune patch hf://org/r/x.pth --scores /a/b/s.safetensors --top 10% --layers 'x/y' -o ~/out/safe.safetensors"
    assert public_command(cmd) == "memprune patch hf://org/r/x.pth --scores s.safetensors --top 10% --layers x/y -o safe.safetensors"
    assert public_command(public_command(cmd)) == public_command(cmd)
