"""The copy path of ``patch``: kernel copy + in-place rows gives the same file as streaming, and checks itself."""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "reliability"))
from reliability_helpers import cli, inputs, temporaries  # noqa: E402

import memprune.patch_write as pw  # noqa: E402
from memprune.errors import MempruneError, VerificationError  # noqa: E402
from memprune.io import load_state_dict, open_checkpoint  # noqa: E402
from memprune.io.splice import copy_range  # noqa: E402
from memprune.patching import patch  # noqa: E402
from memprune.verify import verify  # noqa: E402


@pytest.fixture
def st_inputs(tmp_path):
    return inputs(tmp_path, safetensors=True)


def _count_copies(monkeypatch):
    calls = []

    def counting(*args):
        calls.append(args)
        return copy_range(*args)

    monkeypatch.setattr(pw, "copy_range", counting)
    return calls


@pytest.mark.parametrize("target", ["fc1", "fc2"])
def test_copy_path_equals_the_streaming_path(tmp_path, st_inputs, monkeypatch, target):
    ckpt, scores = st_inputs
    calls = _count_copies(monkeypatch)
    fast = patch(ckpt, scores, output=tmp_path / "fast.safetensors", top="10%", target=target)
    assert calls and fast.verified
    monkeypatch.setattr(pw, "_splice_layout", lambda ckpt: None)
    slow = patch(ckpt, scores, output=tmp_path / "slow.safetensors", top="10%", target=target)
    a, b = load_state_dict(tmp_path / "fast.safetensors"), load_state_dict(tmp_path / "slow.safetensors")
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key].view(torch.uint8), b[key].view(torch.uint8)), key
    report = verify(tmp_path / "fast.safetensors", ckpt)  # the full, independent check
    assert report.ok and report.tensors_checked == len(a)
    with open_checkpoint(tmp_path / "fast.safetensors") as ck:
        assert ck.metadata["memprune.source_sha256"] == fast.manifest["input"]["sha256"] != pw.PENDING_DIGEST


def test_a_wrong_byte_in_the_copy_is_caught_before_anything_is_committed(tmp_path, st_inputs, monkeypatch):
    ckpt, scores = st_inputs

    def corrupting(src, dst, src_off, dst_off, length):
        copy_range(src, dst, src_off, dst_off, length)
        os.pwrite(dst, b"\x7f", dst_off + 5)  # pos_start, never edited

    monkeypatch.setattr(pw, "copy_range", corrupting)
    with pytest.raises(VerificationError, match="differs from the intended bytes at data byte 5"):
        patch(ckpt, scores, output=tmp_path / "out.safetensors", top="10%")
    assert not (tmp_path / "out.safetensors").exists() and temporaries(tmp_path) == []


def test_disk_full_during_the_kernel_copy(tmp_path, st_inputs, monkeypatch):
    ckpt, scores = st_inputs

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pw, "copy_range", full)
    with pytest.raises(MempruneError, match="nothing was written"):
        patch(ckpt, scores, output=tmp_path / "out.safetensors", top="10%")
    assert not (tmp_path / "out.safetensors").exists() and temporaries(tmp_path) == []


def test_without_copy_file_range_the_copy_goes_through_user_space(tmp_path, st_inputs, monkeypatch):
    ckpt, scores = st_inputs

    def unsupported(*args):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", unsupported, raising=False)
    patch(ckpt, scores, output=tmp_path / "out.safetensors", top="10%")
    assert verify(tmp_path / "out.safetensors", ckpt).ok


def test_scores_of_another_checkpoint_are_refused_on_the_copy_path(tmp_path, st_inputs):
    ckpt, scores = st_inputs
    other, _ = inputs(tmp_path / "other")
    with pytest.raises(MempruneError, match="scores were computed on checkpoint"):
        patch(other.with_name("var_tiny.pth"), scores, output=tmp_path / "x.safetensors", top="10%")
    st = tmp_path / "other" / "copy.safetensors"
    st.write_bytes(ckpt.read_bytes()[:-4] + b"\x00\x00\x80\x3f")  # same layout, one value changed
    with pytest.raises(MempruneError, match="scores were computed on checkpoint"):
        patch(st, scores, output=tmp_path / "y.safetensors", top="10%")
    assert not list(tmp_path.glob("?.safetensors")) and temporaries(tmp_path) == []


@pytest.mark.slow
def test_sigterm_after_the_copy_leaves_nothing(tmp_path, st_inputs):
    ckpt, scores = st_inputs
    out = tmp_path / "out.safetensors"
    proc = cli("patch", str(ckpt), "--scores", str(scores), "-o", str(out), env={"MEMPRUNE_TEST_PAUSE": "after-copy:60"})
    for line in proc.stderr:
        if line.startswith("memprune-test-pause"):
            break
    else:
        raise AssertionError(proc.wait())
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGTERM
    assert not out.exists() and temporaries(tmp_path) == []


@pytest.mark.parametrize("target", ["fc1", "fc2"])
def test_edits_spanning_copy_chunks(tmp_path, st_inputs, monkeypatch, target):
    """Chunks smaller than a row and than a tensor: every patch is cut at chunk borders correctly."""
    ckpt, scores = st_inputs
    monkeypatch.setattr(pw, "_SPLICE_CHUNK", 1000)  # not a multiple of a row (64 floats = 256 bytes)
    patch(ckpt, scores, output=tmp_path / "out.safetensors", top="30%", target=target)
    assert verify(tmp_path / "out.safetensors", ckpt).ok


def test_forced_scores_of_another_checkpoint_record_the_true_digest(tmp_path, st_inputs):
    ckpt, scores = st_inputs
    other = tmp_path / "other.safetensors"
    other.write_bytes(ckpt.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
    result = patch(other, scores, output=tmp_path / "out.safetensors", top="10%", force=True)
    from memprune.io import checkpoint_sha256

    assert result.manifest["input"]["sha256"] == checkpoint_sha256(other) and result.manifest["intervention"]["forced_score_mismatch"]
    assert verify(tmp_path / "out.safetensors", other).ok
