"""Shared test fixtures: tiny random checkpoints saved in the official formats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_checkpoints import var_state_dict

from memprune.io import save_safetensors


@pytest.fixture
def tiny_var(tmp_path: Path) -> Path:
    """A tiny VAR-layout checkpoint saved as a plain .pth state dict (the official release format)."""
    path = tmp_path / "var_tiny.pth"
    torch.save(var_state_dict(), path)
    return path


@pytest.fixture
def tiny_var_st(tmp_path: Path) -> Path:
    path = tmp_path / "var_tiny.safetensors"
    save_safetensors(var_state_dict(), path)
    return path
