"""Small generated inputs shared by the reliability tests (a tiny VAR checkpoint and scores for it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from tiny_checkpoints import var_state_dict

from memprune.io import checkpoint_sha256, save_safetensors
from memprune.scores import ScoreSet, save_scores

GROUPS = ["scale0", "scale1", "scale2"]
REPO = Path(__file__).resolve().parents[2]


def inputs(tmp_path: Path, *, safetensors: bool = False, dtype: torch.dtype | None = None) -> tuple[Path, Path]:
    """A tiny VAR checkpoint (``.pth`` or ``.safetensors``) and a score file computed "on" it, in ``tmp_path``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    state = var_state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    ckpt = tmp_path / ("var_tiny.safetensors" if safetensors else "var_tiny.pth")
    if safetensors:
        save_safetensors(state, ckpt)
    else:
        torch.save(state, ckpt)
    g = torch.Generator().manual_seed(0)
    values = {f"blocks.{i}.ffn.fc1": torch.rand(len(GROUPS), 64, generator=g) for i in range(2)}
    scores = tmp_path / "scores.safetensors"
    save_scores(ScoreSet(values, GROUPS, checkpoint_sha256(ckpt), "var", ["scale0"]), scores)
    return ckpt, scores


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".tmp"))


def cli(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    """``python -m memprune ARGS`` in a real subprocess (signals and resource limits need one)."""
    full_env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                "OMP_NUM_THREADS": "1", **(env or {})}
    kw.setdefault("preexec_fn", _default_signals)
    return subprocess.Popen([sys.executable, "-m", "memprune", *args], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _default_signals() -> None:
    # As from a terminal: a test run under `nohup` or as a background job (`cmd &`) inherits SIGHUP / SIGINT
    # ignored, and memprune rightly keeps an ignored signal ignored, so the signal tests would wait in vain.
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
