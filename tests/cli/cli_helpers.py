"""Helpers for the CLI tests: a score file for the tiny VAR checkpoint (``tiny_var`` from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from memprune.io import checkpoint_sha256
from memprune.scores import ScoreSet, save_scores


def write_scores(path: Path, ckpt: Path, shard: dict | None = None) -> Path:
    values = {f"blocks.{i}.ffn.fc1": torch.rand(3, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)}
    info = {"shard": shard} if shard else {}
    save_scores(ScoreSet(values, ["scale0", "scale1", "scale2"], checkpoint_sha256(ckpt), "var", ["scale0"], info=info), path)
    return path
