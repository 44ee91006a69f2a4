"""Hostile score files and resume state: one clear line and exit 2, or the right result, never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from inputs_support import assert_one_line, invoke, tiny_scores

from memprune.errors import MempruneError
from memprune.io import open_checkpoint, save_safetensors
from memprune.scores import KIND, load_scores

sys.path.insert(0, str(Path(__file__).parents[1] / "scoring"))
from tiny_model import TinyIAR, make_image_folder  # noqa: E402


def _report(tmp_path: Path, scores: Path, *extra: object):
    return invoke("report", scores, "-o", tmp_path / "r", *extra)


def _memprune_file(path: Path, tensors: dict[str, torch.Tensor], **meta: str) -> Path:
    save_safetensors(tensors, path, {"memprune.kind": KIND, **meta})
    return path


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ({"memprune.groups": "[not json"}, "memprune.groups is not valid JSON"),
        ({"memprune.groups": '{"a": 1}'}, "memprune.groups has the wrong type"),
        ({"memprune.images": "[1, 2]"}, "memprune.images has the wrong type"),
        ({"memprune.info": "[]"}, "memprune.info has the wrong type"),
        ({"memprune.groups": '["a", "b", "c"]'}, "names 3 group(s)"),
    ],
)
def test_bad_metadata(tmp_path, meta, needle):
    path = _memprune_file(tmp_path / "s.safetensors", {"unitmem.blocks.0.ffn.fc1": torch.rand(2, 8)}, **meta)
    assert_one_line(_report(tmp_path, path), needle)
    assert not (tmp_path / "r").exists()


def test_memprune_file_without_unitmem_tensors(tmp_path):
    path = _memprune_file(tmp_path / "s.safetensors", {"stats.count": torch.tensor([3])})
    assert_one_line(_report(tmp_path, path), "holds no unitmem.* tensors")


def test_argmax_outside_the_image_list(tmp_path):
    path = _memprune_file(
        tmp_path / "s.safetensors",
        {"unitmem.blocks.0.ffn.fc1": torch.rand(1, 8), "stats.argmax.blocks.0.ffn.fc1": torch.full((1, 8), 7)},
        **{"memprune.images": '["a.png", "b.png"]', "memprune.groups": '["all"]'},
    )
    assert_one_line(_report(tmp_path, path), "points outside the image list")


def test_truncated_npz(tmp_path):
    np.savez(tmp_path / "s.npz", **{"blocks.0.ffn.fc1": np.random.rand(64).astype(np.float32)})
    raw = (tmp_path / "s.npz").read_bytes()
    (tmp_path / "s.npz").write_bytes(raw[: len(raw) // 2])
    assert_one_line(_report(tmp_path, tmp_path / "s.npz"), "cannot read", "truncated")


def test_non_numeric_npz(tmp_path):
    np.savez(tmp_path / "s.npz", **{"blocks.0.ffn.fc1": np.array(["a", "b"])})
    assert_one_line(_report(tmp_path, tmp_path / "s.npz"), "non-numeric")


def test_complex_npz_is_refused_not_truncated_to_its_real_part(tmp_path):
    np.savez(tmp_path / "s.npz", **{"blocks.0.ffn.fc1": np.ones(8) * (1 + 2j)})
    assert_one_line(_report(tmp_path, tmp_path / "s.npz"), "complex")
    with pytest.raises(MempruneError, match="complex"):
        load_scores(tmp_path / "s.npz")


def test_complex_pt_scores(tmp_path):
    torch.save({"blocks.0.ffn.fc1": torch.ones(8, dtype=torch.complex64)}, tmp_path / "s.pt")
    with pytest.raises(MempruneError, match="real numbers"):
        load_scores(tmp_path / "s.pt")


def test_report_on_nan_scores(tmp_path):
    path = tiny_scores(tmp_path, fill=float("nan"))
    assert_one_line(_report(tmp_path, path), "NaN", "memprune merge")
    assert not (tmp_path / "r").exists()


def test_report_negative_images(tmp_path):
    assert_one_line(_report(tmp_path, tiny_scores(tmp_path), "--images", "-1"), "--images -1")
    assert not (tmp_path / "r").exists()


def test_report_output_is_a_file(tmp_path):
    (tmp_path / "r").write_text("x")
    assert_one_line(_report(tmp_path, tiny_scores(tmp_path)), "is a file")


def test_report_output_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    assert_one_line(invoke("report", tiny_scores(tmp_path), "-o", tmp_path / "f" / "r"), "is a file")


def test_score_workers_must_be_positive(tmp_path):
    res = invoke("score", "m.safetensors", "--tokenizer", "t.safetensors", "--data", tmp_path, "-o",
                 tmp_path / "s.safetensors", "--workers", "-1")
    assert_one_line(res, "--workers -1")


def test_score_output_is_a_folder(tmp_path):
    res = invoke("score", "m.safetensors", "--tokenizer", "t.safetensors", "--data", tmp_path, "-o", tmp_path)
    assert_one_line(res, "is a folder")


class Killed(Exception):
    pass


def _killed_run(tmp_path: Path) -> tuple[TinyIAR, Path, Path, Path]:
    from memprune.scoring import score

    tiny, folder = TinyIAR(seed=0), make_image_folder(tmp_path / "data")
    out = tmp_path / "s.safetensors"

    def kill(done: int, total: int) -> None:
        if done >= 4:
            raise Killed

    with pytest.raises(Killed):
        score(tiny, folder, augment=False, batch_size=2, output=out, checkpoint_every=1, progress=kill)
    return tiny, folder, out, out.with_name("s.safetensors.partial.safetensors")


def _tamper(partial: Path, *, next_position: str | None = None, count: int | None = None) -> None:
    with open_checkpoint(partial) as ckpt:
        meta, state = dict(ckpt.metadata), {k: ckpt.get(k) for k in ckpt.keys()}
    if next_position is not None:
        meta["memprune.next"] = next_position
    if count is not None:
        state["count"] = torch.tensor([count])
    save_safetensors(state, partial, meta)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"next_position": "8"}, "records 8 images done but its statistics hold 4"),
        ({"count": 9}, "statistics hold 9"),
        ({"next_position": "99"}, "outside this run's images"),
        ({"next_position": "x"}, "not a number"),
    ],
)
def test_tampered_resume_state_is_refused(tmp_path, change, needle):
    from memprune.scoring import score

    tiny, folder, out, partial = _killed_run(tmp_path)
    _tamper(partial, **change)
    with pytest.raises(MempruneError, match="damaged or was edited") as info:
        score(tiny, folder, augment=False, batch_size=2, output=out, checkpoint_every=1, resume=True)
    assert needle in str(info.value) and not out.exists()


def test_merge_refuses_a_damaged_shard_record(tmp_path):
    from memprune.scores import ScoreSet, save_scores

    for i, shard in enumerate(["x", {"index": 0, "count": 2}]):
        stats = {"max.l": torch.ones(1, 4), "argmax.l": torch.zeros(1, 4, dtype=torch.long),
                 "sum.l": torch.ones(1, 4, dtype=torch.float64), "ties.l": torch.zeros(1, 4, dtype=torch.int32),
                 "count": torch.tensor([1])}
        save_scores(ScoreSet({"l": torch.rand(1, 4)}, ["all"], stats=stats, info={"shard": shard}), tmp_path / f"p{i}.safetensors")
    res = invoke("merge", tmp_path / "p0.safetensors", tmp_path / "p1.safetensors", "-o", tmp_path / "m.safetensors")
    assert_one_line(res, "not a valid i/n pair")


def test_garbage_resume_file_says_start_over(tmp_path):
    from memprune.scoring import score

    tiny, folder, out, partial = _killed_run(tmp_path)
    partial.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(MempruneError, match="cannot resume from .*delete it to start over") as info:
        score(tiny, folder, augment=False, batch_size=2, output=out, resume=True)
    assert "download" not in str(info.value)
