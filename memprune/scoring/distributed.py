"""Splitting the scoring set across shards and ranks, and reducing statistics with torch.distributed.

``memprune score`` runs unchanged under ``torchrun --nproc_per_node N``: each rank scores a contiguous part of
its shard's images and the statistics are reduced exactly (sums add; the largest maximum wins with the
smallest global image index; ties pool), so the result equals a single-process run up to float64 summation
order. The backend is NCCL for CUDA devices and gloo otherwise; the process group is created from the usual
``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` variables when torchrun set them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from memprune.errors import MempruneError
from memprune.scoring.stats import StreamingStats


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size, the backend, and whether we created the group."""

    rank: int = 0
    world_size: int = 1
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``--shard i/n`` -> ``(i, n)`` with ``0 <= i < n``; ``None`` passes through.

    Raises:
        MempruneError: not of the form i/n, or i outside [0, n).
    """
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise MempruneError(f"--shard {text!r} must look like i/n (e.g. 0/4 for the first of 4 parts)")
    i, n = int(match.group(1)), int(match.group(2))
    if n <= 0 or not 0 <= i < n:
        raise MempruneError(f"--shard {text}: the part index must be in 0..{max(n - 1, 0)} (parts are numbered from 0)")
    return i, n


def split_range(begin: int, end: int, part: int, parts: int) -> tuple[int, int]:
    """The ``part``-th of ``parts`` contiguous, near-equal pieces of ``[begin, end)``."""
    n = end - begin
    return begin + part * n // parts, begin + (part + 1) * n // parts


def init_distributed(device: torch.device | str) -> DistInfo:
    """Join (or create from torchrun's environment) the default process group; single process otherwise."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), dist.get_backend(), owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise MempruneError("WORLD_SIZE > 1 but this torch build has no torch.distributed: run a single process")
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), backend, owns_group=True)


def local_device(device: str, info: DistInfo) -> str:
    """``cuda`` under torchrun means this rank's GPU (``LOCAL_RANK``)."""
    if info.world_size > 1 and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


@torch.no_grad()
def all_reduce_stats(stats: StreamingStats, info: DistInfo) -> StreamingStats:
    """Reduce every rank's statistics in place so that all ranks hold the global ones.

    Max by ``MAX``; then each rank offers its argmax where its max equals the global one (else int64 max)
    and ``MIN`` picks the smallest global index; ties are ``SUM`` of (local ties + 1) over the ranks holding
    the maximum, minus 1; sums and the count by ``SUM``.
    """
    if info.world_size <= 1:
        return stats
    big = torch.iinfo(torch.int64).max
    for layer in stats.layers:
        t = stats.tensors[layer]
        local_max = t["max"].clone()
        dist.all_reduce(t["max"], op=dist.ReduceOp.MAX)
        holds = local_max == t["max"]
        arg = torch.where(holds, t["argmax"], torch.full_like(t["argmax"], big))
        dist.all_reduce(arg, op=dist.ReduceOp.MIN)
        t["argmax"] = arg
        ties = torch.where(holds, t["ties"] + 1, torch.zeros_like(t["ties"]))
        dist.all_reduce(ties, op=dist.ReduceOp.SUM)
        t["ties"] = ties - 1
        dist.all_reduce(t["sum"], op=dist.ReduceOp.SUM)
    dist.all_reduce(stats.count, op=dist.ReduceOp.SUM)
    return stats


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- batch-wise work
# ``audit`` and ``fid`` split their work by whole batches, composed exactly as one process composes them, so
# every batch computes bit for bit what a single process computes. Batch ``j`` of a step goes to rank
# ``j mod world``; after each step every rank receives every rank's output (``all_gather_object``), so all
# ranks stay in step (an error on one rank stops all of them at the same point) and rank 0 writes in batch order.


def shard_batches(n_batches: int, shard: tuple[int, int] | None) -> list[int]:
    """The batch indices of ``--shard i/n``: every n-th batch from i (all batches without a shard)."""
    if shard is None:
        return list(range(n_batches))
    index, count = shard
    return list(range(index, n_batches, count))


def steps(batches: list[int], info: DistInfo):  # noqa: ANN201 - Iterator[tuple[int | None, list[int]]]
    """Yield ``(this rank's batch or None, the step's batches)``; every rank sees the same number of steps."""
    for start in range(0, len(batches), max(info.world_size, 1)):
        step = batches[start : start + max(info.world_size, 1)]
        yield (step[info.rank] if info.rank < len(step) else None), step


def run_step(compute, mine: int | None, info: DistInfo) -> list:  # noqa: ANN001, ANN201
    """``compute(mine)`` on this rank, then every rank's output in rank order (``None`` for an idle rank).

    A failure on any rank is raised on every rank (as :class:`MempruneError` with that rank's message), so no
    rank waits forever for a partner that has stopped.
    """
    try:
        out = ("ok", None if mine is None else compute(mine))
    except MempruneError as exc:
        out = ("error", str(exc))
    except Exception as exc:  # noqa: BLE001 - reported on every rank, then raised
        if info.world_size <= 1:
            raise
        out = ("error", f"rank {info.rank}: {type(exc).__name__}: {exc}")
    if info.world_size <= 1:
        outs = [out]
    else:
        outs = [None] * info.world_size
        dist.all_gather_object(outs, out)
    for status, value in outs:  # type: ignore[misc]
        if status == "error":
            raise MempruneError(value)
    return [value for _, value in outs]  # type: ignore[misc]


def on_main(compute, info: DistInfo):  # noqa: ANN001, ANN201
    """Run ``compute()`` on rank 0 only and hand its result (or its error) to every rank."""
    if info.world_size <= 1:
        return compute()
    box: list = [None]
    if info.is_main:
        try:
            box[0] = ("ok", compute())
        except MempruneError as exc:
            box[0] = ("error", str(exc))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise MempruneError(value)
    return value


def join(device: str) -> tuple[DistInfo, str]:
    """:func:`init_distributed` and this rank's device (its own GPU under torchrun; set as current for NCCL)."""
    info = init_distributed(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    local = local_device(device, info)
    if info.world_size > 1 and local.startswith("cuda:"):
        torch.cuda.set_device(torch.device(local))
    return info, local


def leave() -> None:
    """Destroy the process group a torchrun command created (no-op for a single process or a caller's group)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
