"""Devices and output locations: refused at once, in one line, before anything is computed or written."""

from __future__ import annotations

import os

import pytest
from inputs_support import assert_one_line, invoke, tiny_scores

from memprune.errors import MempruneError
from memprune.families.loading import resolve_device


@pytest.mark.parametrize("device", ["mps", "xla", "meta", "cuda:-1", "gpu", ""])
def test_unsupported_devices(device):
    with pytest.raises(MempruneError, match="--device"):
        resolve_device(device)


@pytest.mark.parametrize("device", ["mps", "xla", "meta"])
def test_score_refuses_other_device_types_in_one_line(tmp_path, device):
    res = invoke("score", "m.safetensors", "--tokenizer", "t.safetensors", "--data", tmp_path / "none",
                 "-o", tmp_path / "s.safetensors", "--device", device)
    assert_one_line(res, f"--device {device}", "cpu")


def test_demo_refuses_meta_device(tmp_path):
    assert_one_line(invoke("demo", "--device", "meta", "-o", tmp_path / "d"), "--device meta")
    assert not (tmp_path / "d").exists()


def test_cpu_and_auto_still_resolve():
    assert resolve_device("cpu") == "cpu" and resolve_device("auto") in ("cpu", "cuda")


def test_demo_top_zero_leaves_no_folder(tmp_path):
    assert_one_line(invoke("demo", "--top", "0", "-o", tmp_path / "d"), "--top 0")
    assert not (tmp_path / "d").exists()


def test_demo_output_is_a_file(tmp_path):
    (tmp_path / "d").write_text("x")
    assert_one_line(invoke("demo", "-o", tmp_path / "d"), "is a file")


def test_score_output_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    res = invoke("score", "m.safetensors", "--tokenizer", "t.safetensors", "--data", tmp_path,
                 "-o", tmp_path / "f" / "s.safetensors")
    assert_one_line(res)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_report_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_one_line(invoke("report", tiny_scores(tmp_path), "-o", ro / "r"), "read-only")
    finally:
        ro.chmod(0o755)


def test_read_only_folders_as_access_reports_them(tmp_path, monkeypatch):
    # The same check under root, where chmod cannot make a folder read-only: access(2) is what decides.
    import memprune.io.paths as paths

    scores = tiny_scores(tmp_path)
    real = os.access
    monkeypatch.setattr(paths.os, "access", lambda p, mode: False if mode & os.W_OK else real(p, mode))
    assert_one_line(invoke("report", scores, "-o", tmp_path / "r"), "read-only", "choose another path")
    assert not (tmp_path / "r").exists()
    res = invoke("score", "m.safetensors", "--tokenizer", "t.safetensors", "--data", tmp_path,
                 "-o", tmp_path / "s.safetensors")
    assert_one_line(res, "read-only")
