"""``score`` under torch.distributed (2 gloo ranks on 127.0.0.1) equals one process."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_model import TinyIAR, distributed_worker

from memprune.scores import load_scores
from memprune.scoring import score
from memprune.scoring.distributed import split_range


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_split_range_covers_everything() -> None:
    for n in (0, 1, 5, 9):
        for parts in (1, 2, 3, 4):
            pieces = [split_range(0, n, i, parts) for i in range(parts)]
            assert pieces[0][0] == 0 and pieces[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))


@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
@pytest.mark.parametrize("shard", [None, "1/2"])
def test_two_gloo_ranks_equal_one_process(folder: Path, tmp_path: Path, shard) -> None:
    kwargs = {"augs": 2, "batch_size": 2, "shard": shard, "checkpoint_every": 1}
    out = tmp_path / "dist.safetensors"
    mp.spawn(distributed_worker, args=(2, _free_port(), str(folder), str(out), kwargs), nprocs=2, join=True)
    single = score(TinyIAR(seed=0), folder, augs=2, batch_size=2, shard=shard)
    got = load_scores(out)
    assert got.info["settings"] == single.scores.info["settings"]
    for key, value in [*single.scores.scores.items(), *single.scores.stats.items()]:
        other = got.scores[key] if key in single.scores.scores else got.stats[key]
        if value.is_floating_point():
            torch.testing.assert_close(other, value, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(other, value), key
    assert not list(tmp_path.glob("*.partial.safetensors"))  # every rank cleaned its checkpoint
