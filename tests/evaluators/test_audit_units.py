"""Units of audit work: whole batches in full rounds, the last round split by conditions, for shards and ranks."""

from __future__ import annotations

import torch

from memprune.evaluators.audit import BatchImages, CandidateResult
from memprune.evaluators.audit_units import Unit, combine, plan, shard_units, slice_conditions, split, whole_batches
from memprune.scoring.distributed import shard_batches


def test_whole_batches_go_round_robin_and_only_the_last_round_is_split():
    units = whole_batches(5, 12)
    planned = plan(units, 4)
    assert planned[:4] == units[:4]  # a full round: one whole batch per worker, as before
    assert planned[4:] == [Unit(4, 0, 3), Unit(4, 3, 6), Unit(4, 6, 9), Unit(4, 9, 12)]
    assert plan(whole_batches(1, 12), 2) == [Unit(0, 0, 6), Unit(0, 6, 12)]  # 2 ranks, 1 batch: 6 conditions each
    assert plan(whole_batches(3, 12), 4) == whole_batches(3, 12)  # 3 tail batches on 4 workers: no even split
    assert plan(whole_batches(1, 2), 8) == [Unit(0, 0, 1), Unit(0, 1, 2)]  # never an empty slice
    assert plan(whole_batches(6, 2), 1) == whole_batches(6, 2)


def test_split_slices_cover_the_conditions_once():
    for n in range(1, 13):
        for parts in range(1, 15):
            pieces = split(Unit(0, 0, n), parts)
            assert [c for u in pieces for c in range(u.lo, u.hi)] == list(range(n))
            assert all(u.hi > u.lo for u in pieces)


def test_shards_keep_every_nth_batch_and_split_only_their_last_round():
    for batches, count in ((8, 4), (6, 3), (4, 2)):
        for i in range(count):
            assert [u.batch for u in shard_units(batches, 5, (i, count))] == shard_batches(batches, (i, count))
    parts = [shard_units(1, 4, (i, 2)) for i in range(2)]
    assert parts == [[Unit(0, 0, 2)], [Unit(0, 2, 4)]]
    every = sorted((u.batch, c) for i in range(3) for u in shard_units(7, 6, (i, 3)) for c in range(u.lo, u.hi))
    assert every == [(b, c) for b in range(7) for c in range(6)]  # every (batch, condition) exactly once


def test_a_slice_holds_counted_then_sweep_conditions():
    counted, extras = ["a", "b", "c"], ["x", "y"]
    assert slice_conditions(Unit(0, 1, 4), counted, extras) == (["b", "c"], ["x"])
    assert slice_conditions(Unit(0, 3, 5), counted, extras) == ([], ["x", "y"])


def _row(index: int, key: str, sim: float) -> CandidateResult:
    return CandidateResult(index, f"c{index}", "p", 0, "m", 1, 1, 0.5, sim, sim, 0.9, None, sim > 0.75, True, key)


def test_pictures_of_split_batches_keep_the_first_highest_cosine():
    blank = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)

    def images(value: int) -> BatchImages:
        return BatchImages(blank, blank, {"m": torch.full((2, 3, 2, 2), value, dtype=torch.uint8)})

    first = (Unit(0, 0, 2), [_row(0, "k0", 0.8), _row(0, "k1", 0.6), _row(1, "k0", 0.5), _row(1, "k1", 0.7)], images(1))
    second = (Unit(0, 2, 4), [_row(0, "k2", 0.8), _row(1, "k2", 0.9)], images(2))
    out = combine([second, first], [0, 1])
    assert out.generations["m"][0].unique().tolist() == [1]  # a tie with a later slice keeps the earlier one
    assert out.generations["m"][1].unique().tolist() == [2]
