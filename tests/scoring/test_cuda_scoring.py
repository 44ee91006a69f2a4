"""Scoring on a CUDA device gives the CPU's scores (fp32) and the same top units under bf16 (``pytest -m cuda``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_model import TinyIAR

from memprune.scoring import score

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_scores_match_cpu(tiny: TinyIAR, folder: Path) -> None:
    cpu = score(tiny, folder, augs=2, batch_size=3, seed=1, device="cpu", dtype="float32")
    gpu = score(TinyIAR(seed=0), folder, augs=2, batch_size=3, seed=1, device="cuda", dtype="float32")
    assert cpu.scores.images == gpu.scores.images
    for name, value in cpu.scores.scores.items():
        torch.testing.assert_close(gpu.scores.scores[name].cpu(), value, atol=1e-5, rtol=1e-5)
    assert gpu.scores.stats[f"argmax.{name}"].device.type == "cpu"  # written statistics come back to the host
