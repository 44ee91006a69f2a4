"""memprune verify catches every kind of tampering."""

from __future__ import annotations

import json

import pytest
import torch

from memprune.errors import MempruneError, VerificationError
from memprune.io import checkpoint_sha256, load_state_dict, save_safetensors
from memprune.patching import patch
from memprune.scores import ScoreSet, save_scores
from memprune.verify import verify


@pytest.fixture
def patched(tmp_path, tiny_var):
    values = {f"blocks.{i}.ffn.fc1": torch.rand(2, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)}
    save_scores(ScoreSet(values, ["scale0", "scale1"], checkpoint_sha256(tiny_var)), tmp_path / "s.safetensors")
    out = tmp_path / "safe.safetensors"
    patch(tiny_var, tmp_path / "s.safetensors", output=out, top="10%")
    return out


def _rewrite(path, edit):
    """Tamper with a patched file, keep its header metadata, and refresh the manifest's output digest."""
    from memprune.io import open_checkpoint

    with open_checkpoint(path) as ck:
        meta = dict(ck.metadata)
    sd = load_state_dict(path)
    edit(sd)
    save_safetensors(sd, path, meta)
    manifest_path = path.with_name("safe.manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["output"]["sha256"] = checkpoint_sha256(path)
    manifest_path.write_text(json.dumps(manifest))


def test_clean_patch_verifies(patched, tiny_var):
    report = verify(patched, tiny_var)
    assert report.ok and report.units_edited == 13 and report.tensors_checked == len(load_state_dict(tiny_var))


def test_unlisted_row_change_is_caught(patched, tiny_var):
    _rewrite(patched, lambda sd: sd["blocks.0.ffn.fc2.weight"].__setitem__((0, 0), 123.0))
    with pytest.raises(VerificationError, match="blocks.0.ffn.fc2.weight"):
        verify(patched, tiny_var)


def test_wrong_factor_is_caught(patched, tiny_var):
    manifest = json.loads(patched.with_name("safe.manifest.json").read_text())
    layer, entry = next(iter(manifest["layers"].items()))
    _rewrite(patched, lambda sd: sd[f"{layer}.weight"].__setitem__(entry["units"][0], sd[f"{layer}.weight"][entry["units"][0]] * 0.9))
    report = verify(patched, tiny_var, raise_on_failure=False)
    assert not report.ok and "differ from what the manifest declares" in report.failures()[0].detail


def test_dropped_buffer_and_changed_bytes_are_caught(patched, tiny_var):
    _rewrite(patched, lambda sd: sd.pop("attn_bias_for_masking"))
    report = verify(patched, tiny_var, raise_on_failure=False)
    assert [c.name for c in report.failures()][0] == "same keys"


def test_output_digest_mismatch_and_wrong_base(patched, tiny_var, tmp_path):
    with open(patched, "r+b") as f:  # flip one byte of tensor data without touching the manifest
        f.seek(-1, 2)
        b = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([b[0] ^ 1]))
    report = verify(patched, tiny_var, raise_on_failure=False)
    assert {c.name for c in report.failures()} >= {"output digest", "tensor contents"}
    other = tmp_path / "other.pth"
    torch.save(load_state_dict(tiny_var) | {"head.bias": torch.zeros(32)}, other)
    assert "base digest" in {c.name for c in verify(patched, other, raise_on_failure=False).failures()}


def test_no_manifest(tmp_path, tiny_var):
    save_safetensors(load_state_dict(tiny_var), tmp_path / "plain.safetensors")
    with pytest.raises(MempruneError, match="no memprune manifest"):
        verify(tmp_path / "plain.safetensors", tiny_var)


def test_without_base_runs_self_checks(patched):
    report = verify(patched)
    assert report.ok and report.base is None and report.tensors_checked == 0
    assert {c.name for c in report.checks} >= {"output digest", "header copy", "edited slices finite"}
    manifest_path = patched.with_name("safe.manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["intervention"]["factor"] = 0.25  # a hand-edited manifest no longer matches the header copy
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(VerificationError, match="header copy"):
        verify(patched)
