"""Streaming statistics against a direct numpy computation on the full value matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memprune.errors import MempruneError
from memprune.scoring.stats import StreamingStats, unitmem


def reference(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UnitMem, argmax (first index) and tie counts from the [N, S, H] matrix, straight from the definition."""
    n = values.shape[0]
    mx = values.max(0)
    arg = values.argmax(0)
    others = np.empty_like(mx, dtype=np.float64)
    for idx in np.ndindex(mx.shape):
        col = values[(slice(None), *idx)].astype(np.float64)
        others[idx] = np.delete(col, arg[idx]).mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        um = (mx - others) / (mx + others)
    um = np.where(mx > 0, um, 0.0)
    ties = (values == mx).sum(0) - 1
    assert n > 1
    return um, arg, ties


def fold(values: torch.Tensor, batch: int, order: np.ndarray | None = None) -> StreamingStats:
    n, s, h = values.shape
    stats = StreamingStats({"L": (s, h)})
    idx = np.arange(n) if order is None else order
    for b in range(0, n, batch):
        part = torch.as_tensor(idx[b : b + batch])
        stats.update("L", values[part], part)
        stats.add_images(len(part))
    return stats


@pytest.fixture
def values() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    v = torch.rand(23, 3, 17, generator=g)
    v[:, 0, 0] = 0.0  # a dead unit: 0/0
    v[[4, 9, 17], 1, 2] = 5.0  # a maximum reached by three images: argmax must be the first (4)
    v[:, 2, 3] = 0.25  # all equal: UnitMem 0
    v[7, 2, 4] = 3.0  # one image drives the unit
    v[np.r_[0:7, 8:23], 2, 4] = 0.0
    return v


@pytest.mark.parametrize("batch", [1, 4, 23])
def test_matches_direct_computation(values: torch.Tensor, batch: int) -> None:
    stats = fold(values, batch)
    done = stats.finish()
    um, arg, ties = reference(values.numpy())
    np.testing.assert_allclose(done.scores["L"].numpy(), um, atol=1e-6)
    np.testing.assert_array_equal(stats.tensors["L"]["argmax"].numpy(), arg)
    np.testing.assert_array_equal(stats.tensors["L"]["ties"].numpy(), ties)
    assert stats.tensors["L"]["argmax"][1, 2] == 4 and stats.tensors["L"]["ties"][1, 2] == 2
    assert done.scores["L"][0, 0] == 0 and done.dead["L"] == 1
    assert done.scores["L"][2, 3] == pytest.approx(0.0, abs=1e-7)
    assert done.scores["L"][2, 4] == pytest.approx(1.0)
    assert done.count == 23


def test_independent_of_batch_order(values: torch.Tensor) -> None:
    order = np.random.default_rng(0).permutation(values.shape[0])
    a, b = fold(values, 5), fold(values, 3, order)
    for f in ("max", "argmax", "ties"):
        assert torch.equal(a.tensors["L"][f], b.tensors["L"][f]), f
    torch.testing.assert_close(a.tensors["L"]["sum"], b.tensors["L"]["sum"], rtol=1e-12, atol=1e-12)


def test_merge_equals_single_pass(values: torch.Tensor) -> None:
    whole = fold(values, 4)
    parts = []
    for lo, hi in [(0, 9), (9, 10), (10, 23)]:
        st = StreamingStats({"L": (3, 17)})
        st.update("L", values[lo:hi], torch.arange(lo, hi))
        st.add_images(hi - lo)
        parts.append(st)
    merged = parts[2].merge_(parts[0]).merge_(parts[1])  # any order
    for f in ("max", "argmax", "ties"):
        assert torch.equal(merged.tensors["L"][f], whole.tensors["L"][f]), f
    torch.testing.assert_close(merged.tensors["L"]["sum"], whole.tensors["L"]["sum"], rtol=1e-12, atol=1e-12)
    assert int(merged.count) == 23


def test_state_dict_round_trip(values: torch.Tensor) -> None:
    stats = fold(values, 6)
    back = StreamingStats.from_state_dict(stats.state_dict())
    for f in ("max", "argmax", "sum", "ties"):
        assert torch.equal(back.tensors["L"][f], stats.tensors["L"][f])
    assert torch.equal(back.finish().scores["L"], stats.finish().scores["L"])


def test_unitmem_hand_values() -> None:
    # one image at 1, two at 0.5: mu_-max = 0.5 -> (1 - 0.5) / 1.5 = 1/3
    score, dead = unitmem(torch.tensor([1.0]), torch.tensor([2.0], dtype=torch.float64), 3)
    assert score.item() == pytest.approx(1 / 3) and dead == 0


def test_single_image_is_refused() -> None:
    stats = StreamingStats({"L": (1, 2)})
    stats.update("L", torch.ones(1, 1, 2), torch.tensor([0]))
    stats.add_images(1)
    with pytest.raises(MempruneError, match="at least 2"):
        stats.finish()


def test_non_finite_is_reported() -> None:
    stats = StreamingStats({"L": (1, 2)})
    stats.update("L", torch.tensor([[[1.0, float("inf")]], [[1.0, 2.0]]]), torch.tensor([0, 1]))
    stats.add_images(2)
    with pytest.raises(MempruneError, match="float32"):
        stats.finish()


def test_from_state_dict_rejects_incomplete() -> None:
    state = fold(torch.rand(3, 1, 2), 3).state_dict()
    del state["ties.L"]
    with pytest.raises(MempruneError, match="ties"):
        StreamingStats.from_state_dict(state)
