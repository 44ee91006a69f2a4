"""Helpers and fixtures for the Hub tests: a tiny patched VAR-layout checkpoint, a hand-built Hub cache, and
the environment (cache, offline switch, stand-in Hub) huggingface_hub is pointed at."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from memprune.io import checkpoint_sha256, save_safetensors
from memprune.patching import patch
from memprune.scores import ScoreSet, save_scores

WIDTH, HIDDEN, DEPTH = 8, 32, 2
GROUPS = ["scale0", "scale1", "scale2"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny_var_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The keys the VAR adapter needs (FoundationVision/VAR names), random values, 2 blocks of width 8."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    sd = {
        "class_emb.weight": r(1001, WIDTH),  # 1000 classes + the null class
        "lvl_embed.weight": r(len(GROUPS), WIDTH),
        "word_embed.weight": r(WIDTH, 4),
        "head.weight": r(16, WIDTH),
    }
    for i in range(DEPTH):
        p = f"blocks.{i}"
        sd |= {
            f"{p}.ffn.fc1.weight": r(HIDDEN, WIDTH),
            f"{p}.ffn.fc1.bias": r(HIDDEN),
            f"{p}.ffn.fc2.weight": r(WIDTH, HIDDEN),
            f"{p}.ffn.fc2.bias": r(WIDTH),
            f"{p}.attn.proj.weight": r(WIDTH, WIDTH),
            f"{p}.attn.proj.bias": r(WIDTH),
        }
    return sd


def make_patched(folder: Path, *, base: Path | None = None, name: str = "safe.safetensors", top: str = "10%") -> tuple[Path, Path]:
    """Write a base checkpoint (unless given), UnitMem scores for it, and the patched output; return (base, patched)."""
    folder.mkdir(parents=True, exist_ok=True)
    if base is None:
        base = folder / "var_tiny.safetensors"
        save_safetensors(tiny_var_state_dict(), base)
    g = torch.Generator().manual_seed(1)
    scores = {f"blocks.{i}.ffn.fc1": torch.rand(len(GROUPS), HIDDEN, generator=g) for i in range(DEPTH)}
    score_path = folder / "scores.safetensors"
    save_scores(ScoreSet(scores, GROUPS, checkpoint_sha256(base), "var", ["scale0"]), score_path)
    out = folder / name
    patch(base, score_path, output=out, top=top, factor=0.5, command="memprune patch var_tiny.safetensors -s scores.safetensors -o safe.safetensors")
    return base, out


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file (what the Hub cache names non-LFS blobs by)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fill_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str, ref: str = "main") -> Path:
    """Lay out a Hub cache by hand: blobs/<oid>, snapshots/<commit>/<file> -> ../../blobs/<oid>, refs/<ref>."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / ref).write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    for name, data in files.items():
        oid = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else git_blob_sha1(data)
        (repo_dir / "blobs" / oid).write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo_dir / "blobs" / oid, link.parent))
    return snapshot
