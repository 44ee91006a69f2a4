"""The group-mean reduction: exact, and unchanged by the CPU scratch buffer it reuses across calls."""

from __future__ import annotations

import torch

from memprune.families.base import PositionGroup
from memprune.scoring.hooks import GroupCapture


def test_reduction_is_bit_identical_across_reused_buffers() -> None:
    groups = [PositionGroup("g0", 0, 1), PositionGroup("g1", 1, 7), PositionGroup("g2", 7, 30)]
    cap = GroupCapture({"a": torch.nn.Identity(), "b": torch.nn.Identity()}, groups)
    gen = torch.Generator().manual_seed(0)
    kept = []
    for dtype in (torch.float32, torch.bfloat16, torch.float32):
        for batch in (5, 5, 2):
            out = torch.randn(batch, 30, 96, generator=gen).to(dtype)
            got = cap.reduce("a", out)
            expected = torch.stack([out.abs()[:, g.begin : g.end].mean(1, dtype=torch.float32) for g in groups], dim=1)
            assert torch.equal(got, expected) and got.dtype == torch.float32
            kept.append((got, expected))
    assert all(torch.equal(g, e) for g, e in kept)  # earlier results are not overwritten by later calls
    strided = torch.randn(30, 4, 96, generator=gen).transpose(0, 1)  # non-contiguous: no scratch buffer
    assert torch.equal(cap.reduce("b", strided),
                       torch.stack([strided.abs()[:, g.begin : g.end].mean(1, dtype=torch.float32) for g in groups], 1))
