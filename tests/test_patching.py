"""memprune patch: exact edits, untouched bytes, manifests, stacking, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_checkpoints import llamagen_state_dict, var_state_dict

from memprune.errors import MempruneError
from memprune.io import (
    checkpoint_sha256,
    load_state_dict,
    open_checkpoint,
    save_safetensors,
)
from memprune.manifest import read_manifest
from memprune.patching import patch
from memprune.scores import ScoreSet, save_scores
from memprune.verify import verify

GROUPS = ["scale0", "scale1", "scale2"]


def _scores(tmp_path, ckpt, layers=("blocks.0.ffn.fc1", "blocks.1.ffn.fc1"), width=64, name="s.safetensors", seed=0):
    g = torch.Generator().manual_seed(seed)
    values = {n: torch.rand(len(GROUPS), width, generator=g) for n in layers}
    path = tmp_path / name
    save_scores(ScoreSet(values, GROUPS, checkpoint_sha256(ckpt), "var", ["scale0"]), path)
    return path, values


def test_patch_scales_exactly_the_selected_rows_and_nothing_else(tmp_path, tiny_var):
    scores, values = _scores(tmp_path, tiny_var)
    out = tmp_path / "safe.safetensors"
    result = patch(tiny_var, scores, output=out, top="10%", factor=0.5)
    before, after = load_state_dict(tiny_var), load_state_dict(out)
    assert list(after) == list(before)  # same keys, same order, buffers included
    # the reference selection, computed independently: max over scales 1..2, global top 10% of 128 units
    flat = torch.cat([values[n][1:].amax(0) for n in ("blocks.0.ffn.fc1", "blocks.1.ffn.fc1")])
    chosen = set(torch.topk(flat, round(0.1 * 128)).indices.tolist())
    for key in before:
        if key.endswith("ffn.fc1.weight"):
            block = int(key.split(".")[1])
            rows = sorted(i - 64 * block for i in chosen if 64 * block <= i < 64 * (block + 1))
            assert result.selection.units[f"blocks.{block}.ffn.fc1"] == rows
            expected = before[key].clone()
            expected[rows] *= 0.5
            assert torch.equal(after[key], expected)
        else:
            assert after[key].dtype == before[key].dtype
            assert torch.equal(after[key].nan_to_num(), before[key].nan_to_num()), key  # biases untouched
    assert result.verified
    manifest = json.loads((tmp_path / "safe.manifest.json").read_text())
    assert manifest["selection"]["selected"] == 13 and manifest["intervention"] == {
        "factor": 0.5, "target": "fc1", "bias": False, "forced_score_mismatch": False}
    assert manifest["input"]["sha256"] == checkpoint_sha256(tiny_var)
    assert manifest["output"]["sha256"] == checkpoint_sha256(out)
    with open_checkpoint(out) as ck:
        assert ck.metadata["format"] == "pt" and "memprune.manifest" in ck.metadata


def test_bias_and_fc2_targets(tmp_path, tiny_var):
    scores, _ = _scores(tmp_path, tiny_var)
    before = load_state_dict(tiny_var)
    r1 = patch(tiny_var, scores, output=tmp_path / "b.safetensors", top="5", factor=0.25, bias=True)
    after = load_state_dict(tmp_path / "b.safetensors")
    rows = r1.selection.units["blocks.0.ffn.fc1"] or r1.selection.units["blocks.1.ffn.fc1"]
    block = 0 if r1.selection.units["blocks.0.ffn.fc1"] else 1
    assert torch.equal(after[f"blocks.{block}.ffn.fc1.bias"][rows], before[f"blocks.{block}.ffn.fc1.bias"][rows] * 0.25)
    r2 = patch(tiny_var, scores, output=tmp_path / "c.safetensors", top="5", factor=0.0, target="fc2")
    after = load_state_dict(tmp_path / "c.safetensors")
    for name, units in r2.selection.units.items():
        w = name.replace("fc1", "fc2") + ".weight"
        assert torch.equal(after[w][:, units], torch.zeros_like(before[w][:, units]))
        assert torch.equal(after[name + ".weight"], before[name + ".weight"])  # fc1 rows untouched with fc2 target


def test_half_precision_checkpoint_keeps_dtype(tmp_path):
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in var_state_dict().items()}
    save_safetensors(sd, tmp_path / "h.safetensors")
    scores, _ = _scores(tmp_path, tmp_path / "h.safetensors")
    patch(tmp_path / "h.safetensors", scores, output=tmp_path / "o.safetensors", top="10%")
    with open_checkpoint(tmp_path / "o.safetensors") as ck:
        assert ck.dtype("blocks.0.ffn.fc1.weight") == torch.float16


def test_patches_stack_with_history(tmp_path, tiny_var):
    scores, _ = _scores(tmp_path, tiny_var)
    first = tmp_path / "p1.safetensors"
    patch(tiny_var, scores, output=first, top="5")
    scores2, _ = _scores(tmp_path, first, name="s2.safetensors", seed=1)
    second = tmp_path / "p2.safetensors"
    patch(first, scores2, output=second, top="5")
    manifest = read_manifest(second)
    assert len(manifest["history"]) == 1 and manifest["history"][0]["input"]["sha256"] == checkpoint_sha256(tiny_var)
    assert verify(second, first).ok


def test_llamagen_patch_scales_w3_rows(tmp_path):
    save_safetensors(llamagen_state_dict(), tmp_path / "l.safetensors")
    values = {f"layers.{i}.feed_forward": torch.arange(48, dtype=torch.float32) for i in range(2)}
    save_scores(ScoreSet(values, ["last"]), tmp_path / "s.safetensors")
    patch(tmp_path / "l.safetensors", tmp_path / "s.safetensors", output=tmp_path / "o.safetensors", top="2")
    before, after = load_state_dict(tmp_path / "l.safetensors"), load_state_dict(tmp_path / "o.safetensors")
    assert torch.equal(after["layers.0.feed_forward.w3.weight"][47], before["layers.0.feed_forward.w3.weight"][47] * 0.5)
    assert torch.equal(after["layers.0.feed_forward.w1.weight"], before["layers.0.feed_forward.w1.weight"])


def test_dry_run_writes_nothing(tmp_path, tiny_var):
    scores, _ = _scores(tmp_path, tiny_var)
    result = patch(tiny_var, scores, output=None, top="10%", dry_run=True)
    assert result.dry_run and result.selection.selected == 13
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors", "var_tiny.pth"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top": "0"}, "--top"),
        ({"top": "150%"}, "--top"),
        ({"top": "abc"}, "--top"),
        ({"factor": -1.0}, "--factor"),
        ({"factor": float("nan")}, "--factor"),
        ({"factor": 1.0}, "change nothing"),
        ({"target": "fc3"}, "--target"),
        ({"target": "fc2", "bias": True}, "--bias"),
    ],
)
def test_bad_options(tmp_path, tiny_var, kwargs, message):
    scores, _ = _scores(tmp_path, tiny_var)
    with pytest.raises(MempruneError, match=message):
        patch(tiny_var, scores, output=tmp_path / "o.safetensors", **kwargs)
    assert not (tmp_path / "o.safetensors").exists()


def test_scores_for_another_checkpoint_need_force(tmp_path, tiny_var):
    other = tmp_path / "other.pth"
    torch.save(var_state_dict(seed=5), other)
    scores, _ = _scores(tmp_path, other)
    with pytest.raises(MempruneError, match="--force"):
        patch(tiny_var, scores, output=tmp_path / "o.safetensors")
    result = patch(tiny_var, scores, output=tmp_path / "o.safetensors", force=True)
    assert result.manifest["intervention"]["forced_score_mismatch"] is True


def test_bad_scores(tmp_path, tiny_var):
    bad = {"blocks.0.ffn.fc1": torch.rand(3, 64), "blocks.1.ffn.fc1": torch.rand(3, 64)}
    bad["blocks.1.ffn.fc1"][2, 5] = float("nan")
    save_scores(ScoreSet(bad, GROUPS), tmp_path / "nan.safetensors")
    with pytest.raises(MempruneError, match="NaN or Inf .*blocks.1.ffn.fc1|blocks.1.ffn.fc1 contain NaN"):
        patch(tiny_var, tmp_path / "nan.safetensors", output=tmp_path / "o.safetensors")
    wrong = {"blocks.0.ffn.fc1": torch.rand(3, 60), "blocks.1.ffn.fc1": torch.rand(3, 64)}
    save_scores(ScoreSet(wrong, GROUPS), tmp_path / "w.safetensors")
    with pytest.raises(MempruneError, match="blocks.0.ffn.fc1 have 60 units but the checkpoint has 64"):
        patch(tiny_var, tmp_path / "w.safetensors", output=tmp_path / "o.safetensors")
    missing = {"blocks.0.ffn.fc1": torch.rand(3, 64)}
    save_scores(ScoreSet(missing, GROUPS), tmp_path / "m.safetensors")
    with pytest.raises(MempruneError, match="lack layer blocks.1.ffn.fc1"):
        patch(tiny_var, tmp_path / "m.safetensors", output=tmp_path / "o.safetensors")


def test_output_equal_to_input_and_missing_folder(tmp_path, tiny_var_st):
    scores, _ = _scores(tmp_path, tiny_var_st)
    with pytest.raises(MempruneError, match="never writes over its input"):
        patch(tiny_var_st, scores, output=tiny_var_st)
    with pytest.raises(MempruneError, match="does not exist"):
        patch(tiny_var_st, scores, output=tmp_path / "no" / "o.safetensors")
    with pytest.raises(MempruneError, match="must end in .safetensors"):
        patch(tiny_var_st, scores, output=tmp_path / "o.pth")


@pytest.mark.parametrize("fmt", ["npz", "pt", "plain"])
def test_precomputed_scores_in_other_formats(tmp_path, tiny_var, fmt):
    import numpy as np

    values = {"blocks.0.ffn.fc1": torch.rand(64), "unitmem.blocks.1.ffn.fc1": torch.rand(64)}
    path = tmp_path / f"s.{ 'safetensors' if fmt == 'plain' else fmt}"
    if fmt == "npz":
        np.savez(path, **{k: v.numpy() for k, v in values.items()})
    elif fmt == "pt":
        torch.save(values, path)
    else:
        save_safetensors(values, path)
    result = patch(tiny_var, path, output=tmp_path / "o.safetensors", top="4")
    assert result.selection.selected == 4


def test_aggregate_defaults_to_what_the_score_file_declares(tmp_path, tiny_var):
    """Attribution and random scores declare ``info.aggregate = "sum"``; UnitMem files declare nothing (max)."""
    g = torch.Generator().manual_seed(3)
    values = {n: torch.rand(len(GROUPS), 64, generator=g) for n in ("blocks.0.ffn.fc1", "blocks.1.ffn.fc1")}
    digest = checkpoint_sha256(tiny_var)
    save_scores(ScoreSet(values, GROUPS, digest, "var", info={"method": "attribution", "aggregate": "sum"}),
                tmp_path / "attr.safetensors")
    save_scores(ScoreSet(values, GROUPS, digest, "var"), tmp_path / "unitmem.safetensors")
    declared = patch(tiny_var, tmp_path / "attr.safetensors", output=None, top="10%", dry_run=True)
    by_sum = patch(tiny_var, tmp_path / "attr.safetensors", output=None, top="10%", aggregate="sum", dry_run=True)
    plain = patch(tiny_var, tmp_path / "unitmem.safetensors", output=None, top="10%", dry_run=True)
    by_max = patch(tiny_var, tmp_path / "unitmem.safetensors", output=None, top="10%", aggregate="max", dry_run=True)
    assert declared.manifest["selection"]["aggregate"] == "sum" and plain.manifest["selection"]["aggregate"] == "max"
    assert declared.selection.units == by_sum.selection.units and plain.selection.units == by_max.selection.units
    assert declared.selection.units != plain.selection.units  # the reduction really changed the ranking
