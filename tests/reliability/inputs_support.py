"""Helpers for the hostile-input tests: run a command, and assert it failed with one clear line."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tiny_checkpoints import var_state_dict
from typer.testing import CliRunner

from memprune.cli import app
from memprune.io import save_safetensors
from memprune.scores import ScoreSet, save_scores

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "memprune" / "assets" / "demo"


def invoke(*args: object):
    """Run ``memprune ARGS`` in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)


def assert_one_line(result, *needles: str, code: int = 2) -> str:
    """Exit ``code``, exactly one non-empty stderr line containing each needle, no traceback anywhere."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, (result.exit_code, result.stderr, result.stdout)
    assert len(lines) == 1, lines
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def tiny_checkpoint(folder: Path, name: str = "var_tiny.safetensors") -> Path:
    path = folder / name
    save_safetensors(var_state_dict(), path)
    return path


def tiny_scores(folder: Path, name: str = "scores.safetensors", fill: float | None = None) -> Path:
    g = torch.Generator().manual_seed(0)
    values = {f"blocks.{i}.ffn.fc1": torch.rand(2, 64, generator=g) for i in range(2)}
    if fill is not None:
        values = {k: torch.full_like(v, fill) for k, v in values.items()}
    path = folder / name
    save_scores(ScoreSet(values, ["scale0", "scale1"], None, "var", ["scale0"]), path)
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path
