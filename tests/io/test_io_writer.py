"""Writing: atomic, never over the input, no partial files after a crash or a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors import safe_open

from memprune.errors import MempruneError
from memprune.io import (
    atomic_write,
    check_output_path,
    save_safetensors,
    write_safetensors_stream,
)


def test_header_keeps_format_pt_and_string_metadata(tmp_path):
    save_safetensors({"a": torch.ones(3)}, tmp_path / "a.safetensors", {"memprune.version": "1"})
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        assert f.metadata() == {"memprune.version": "1", "format": "pt"}
    with pytest.raises(MempruneError, match="strings to strings"):
        save_safetensors({"a": torch.ones(3)}, tmp_path / "b.safetensors", {"n": 3})  # type: ignore[dict-item]


def test_failure_mid_stream_leaves_nothing(tmp_path):
    out = tmp_path / "out.safetensors"

    def produce():
        yield "a", torch.ones(2)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_safetensors_stream(out, [("a", torch.float32, (2,)), ("b", torch.float32, (2,))], produce())
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "keep.json"
    target.write_text("old")
    with pytest.raises(ValueError), atomic_write(target) as tmp:
        tmp.write_text("new")
        raise ValueError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_check_output_path(tmp_path):
    src = tmp_path / "in.safetensors"
    src.write_bytes(b"x")
    with pytest.raises(MempruneError, match="never writes over its input"):
        check_output_path(src, src)
    with pytest.raises(MempruneError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "o.safetensors", src)
    with pytest.raises(MempruneError, match="is a folder"):
        check_output_path(tmp_path, src)
    assert check_output_path(tmp_path / "o.safetensors", src).name == "o.safetensors"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_during_write_leaves_no_output_and_next_run_cleans_up(tmp_path):
    out = tmp_path / "big.safetensors"
    script = textwrap.dedent(
        f"""
        import time, torch
        from memprune.io import write_safetensors_stream
        specs = [(f"t{{i}}", torch.float32, (1024,)) for i in range(50)]
        def produce():
            for name, _, shape in specs:
                time.sleep(0.1)
                yield name, torch.ones(shape)
        write_safetensors_stream({str(out)!r}, specs, produce())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while not list(tmp_path.glob(".big.safetensors.*.tmp")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    save_safetensors({"a": torch.ones(1)}, out)  # the next write removes the dead process's temp file
    assert [p.name for p in tmp_path.iterdir()] == ["big.safetensors"]
