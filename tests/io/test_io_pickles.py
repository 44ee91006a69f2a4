"""Untrusted pickles are never executed."""

from __future__ import annotations

import os

import pytest
import torch

from memprune.errors import UnsafeCheckpointError
from memprune.io import list_pickle_globals, open_checkpoint


class _Payload:
    """Unpickling this object would run os.system (creating a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "x": _Payload(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        open_checkpoint(path)
    message = str(info.value)
    assert "system" in message  # the offending global is named (posix.system / os.system)
    assert "memprune convert --trust-pickle" in message
    assert "\n" not in message
    assert not marker.exists()


def test_list_pickle_globals_reads_without_executing(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"x": _Payload(str(marker))}, tmp_path / "evil.pth")
    found = list_pickle_globals(tmp_path / "evil.pth")
    assert any(g.endswith("system") for g in found)
    assert not marker.exists()


def test_force_no_weights_only_env_is_ignored_with_a_warning(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    torch.save({"x": _Payload(str(marker))}, tmp_path / "evil.pth")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.warns(UserWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        with pytest.raises(UnsafeCheckpointError):
            open_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
