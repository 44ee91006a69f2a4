"""The scoring engine on a tiny IARModel: exactness, hooks, resume and shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_model import TinyIAR, direct_unitmem

from memprune.data import ViewPipeline
from memprune.errors import MempruneError
from memprune.scores import load_scores
from memprune.scoring import merge_scores, score, select_images


class Killed(Exception):
    pass


def _same(a, b, exact: bool) -> None:
    """Equal score sets: bit for bit, or (other batch composition) within float rounding."""
    assert a.scores.keys() == b.scores.keys() and a.stats.keys() == b.stats.keys()
    for key, value in [*a.scores.items(), *a.stats.items()]:
        other = b.scores[key] if key in a.scores else b.stats[key]
        if exact or not value.is_floating_point():
            assert torch.equal(value, other), key
        else:
            torch.testing.assert_close(value, other, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("augment", "augs", "batch"), [(False, None, 4), (True, 3, 2)])
def test_matches_direct_computation(tiny: TinyIAR, folder: Path, augment: bool, augs, batch: int) -> None:
    result = score(tiny, folder, augment=augment, augs=augs, batch_size=batch, seed=5)
    records, _ = select_images(folder)
    views = ViewPipeline.for_arch("tiny", 8, augment=augment, seed=5)
    ref, arg = direct_unitmem(tiny, records, views, augs or 1)
    for name, value in ref.items():
        np.testing.assert_allclose(result.scores.scores[name].numpy(), value, atol=1e-6)
        np.testing.assert_array_equal(result.scores.stats[f"argmax.{name}"].numpy(), arg[name])
    assert result.scores.groups == ["g0", "g1"] and result.scores.image_independent == ["g0"]
    assert result.scores.images == [r.id for r in records] and result.images == 9


def test_batch_size_does_not_change_scores(tiny: TinyIAR, folder: Path) -> None:
    a = score(tiny, folder, augs=2, batch_size=1)
    b = score(tiny, folder, augs=2, batch_size=9)
    _same(a.scores, b.scores, exact=False)


def test_hooks_are_removed_and_must_fire(tiny: TinyIAR, folder: Path) -> None:
    score(tiny, folder, augment=False)
    assert all(not b.act._forward_hooks for b in tiny.blocks)
    tiny.blocks[1].bypass = True
    with pytest.raises(MempruneError, match="blocks.1.ffn.fc1 did not fire"):
        score(tiny, folder, augment=False)
    assert all(not b.act._forward_hooks for b in tiny.blocks)


def test_several_layer_types(tiny: TinyIAR, folder: Path) -> None:
    result = score(tiny, folder, augment=False, layers="fc1,fc2")
    assert set(result.scores.scores) == {f"blocks.{i}.ffn.{k}" for i in range(2) for k in ("fc1", "fc2")}
    assert result.scores.scores["blocks.0.ffn.fc2"].shape == (2, 8)


def test_resume_after_kill_is_identical(tiny: TinyIAR, folder: Path, tmp_path: Path) -> None:
    score(tiny, folder, augs=2, batch_size=2, output=tmp_path / "ref.safetensors")
    out = tmp_path / "s.safetensors"
    partial = out.with_name("s.safetensors.partial.safetensors")

    def kill_after_two(done: int, total: int) -> None:
        if done >= 4:
            raise Killed

    with pytest.raises(Killed):
        score(tiny, folder, augs=2, batch_size=2, output=out, checkpoint_every=1, progress=kill_after_two)
    assert partial.exists() and not out.exists()
    with pytest.raises(MempruneError, match="other settings"):
        score(tiny, folder, augs=2, batch_size=2, output=out, resume=True, seed=1)
    seen = []
    resumed = score(tiny, folder, augs=2, batch_size=2, output=out, checkpoint_every=1, resume=True,
                    progress=lambda d, t: seen.append(d))
    assert resumed.resumed_from == 4 and seen[0] == 4
    assert not partial.exists()
    _same(load_scores(out), load_scores(tmp_path / "ref.safetensors"), exact=True)


def test_resume_without_checkpoint_starts_over(tiny: TinyIAR, folder: Path, tmp_path: Path) -> None:
    result = score(tiny, folder, augment=False, output=tmp_path / "s.safetensors", resume=True)
    assert result.resumed_from == 0 and result.images == 9


def test_shards_merge_to_single_run(tiny: TinyIAR, folder: Path, tmp_path: Path) -> None:
    whole = score(tiny, folder, augs=2, batch_size=3)
    parts = []
    for i in range(3):
        p = tmp_path / f"part{i}.safetensors"
        r = score(tiny, folder, augs=2, batch_size=2, shard=f"{i}/3", output=p)
        assert r.images == 3 and r.total_images == 9
        parts.append(p)
    merged = merge_scores(list(reversed(parts)), tmp_path / "merged.safetensors")
    _same(merged.scores, whole.scores, exact=False)
    assert load_scores(tmp_path / "merged.safetensors").info["shard"] is None

    with pytest.raises(MempruneError, match="missing"):
        merge_scores(parts[:2])
    with pytest.raises(MempruneError, match="both shard"):
        merge_scores([parts[0], parts[0], parts[1]])
    other = tmp_path / "other.safetensors"
    score(tiny, folder, augs=2, seed=9, shard="2/3", output=other)
    with pytest.raises(MempruneError, match="settings"):
        merge_scores([parts[0], parts[1], other])
    with pytest.raises(MempruneError, match="not a shard"):
        merge_scores([parts[0], tmp_path / "merged.safetensors"])


def test_single_image_shard_still_merges(tiny: TinyIAR, folder: Path, tmp_path: Path) -> None:
    # A shard with one image cannot be finished on its own, so shards keep only statistics valid for merging.
    parts = [tmp_path / f"p{i}.safetensors" for i in range(2)]
    records, _ = select_images(folder)
    two = records[:3]
    score(tiny, two, augment=False, shard="0/2", output=parts[0])
    score(tiny, two, augment=False, shard="1/2", output=parts[1])
    merged = merge_scores(parts)
    _same(merged.scores, score(tiny, two, augment=False).scores, exact=False)


def test_subset_and_bad_options(tiny: TinyIAR, folder: Path) -> None:
    r = score(tiny, folder, augment=False, per_class=2)
    assert r.total_images == 6
    labels = r.scores.info["labels"]
    assert [labels.count(c) for c in range(3)] == [2, 2, 2]
    with pytest.raises(MempruneError, match="--no-augment"):
        score(tiny, folder, augment=False, augs=4)
    with pytest.raises(MempruneError, match="output"):
        score(tiny, folder, resume=True)
    with pytest.raises(MempruneError, match="i/n"):
        score(tiny, folder, shard="3")
    with pytest.raises(MempruneError, match="--layers"):
        score(tiny, folder, layers="fc3")


def test_label_outside_model_classes(folder: Path) -> None:
    with pytest.raises(MempruneError, match="has label 2, but the model has 2 classes"):
        score(TinyIAR(num_classes=2), folder, augment=False)
