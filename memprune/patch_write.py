"""Writing a patched checkpoint and its manifest as one commit, at the speed of a copy when the layout allows.

Two ways to produce the weights:

* **Copy path** (a single safetensors input, the usual case): the output's data section is the input's, byte for
  byte, except the edited slices. It is copied in the kernel (``copy_file_range``) while the input's sha256 is
  computed in a thread; the header is written once that digest is known (its length does not depend on it), then
  only the edited rows are rewritten in place. The output's sha256 is computed from the written file while,
  with ``check``, the bytes outside the edited slices are compared with the input's.
* **Streaming path** (pickles, sharded sets): tensors are read, edited and written one at a time.

Both write under temporary names and commit weights first, manifest second (see :func:`write_pair`).
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import json
import os
import queue
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memprune import __version__
from memprune.errors import MempruneError, VerificationError
from memprune.io import staged_file, write_safetensors_to
from memprune.io.splice import Layout, copy_range, read_layout, write_at
from memprune.io.writer import safetensors_header
from memprune.manifest import META_KEY, embeddable, manifest_path_for

_SPLICE_CHUNK = 4 << 20  # copy/hash granularity: four buffers of this size are the copy path's working memory
PENDING_DIGEST = "0" * 64  # same length as a sha256 hex digest, so the header keeps its size when it is filled in


@dataclass(frozen=True)
class Written:
    """What :func:`write_pair` produced: the manifest path, and whether the unedited bytes were compared."""

    manifest_path: Path
    bytes_checked: bool


def write_pair(ckpt, out_path: Path, edits: list, manifest: dict[str, Any], digest: Future, accept: Callable[[str], None],
               *, claimed: str | None, check: bool) -> Written:
    """Write the weights and the manifest as one commit that a reader can always judge.

    Both are written under temporary names first; then the weights are renamed into place, then the manifest.
    A crash before the first rename leaves the old pair; after it, the new weights carry their manifest in the
    header (authoritative), and an old sidecar left beside them fails ``verify``'s header-copy check.

    Args:
        digest: the input's checkpoint digest, being computed in a thread.
        accept: raises when that digest shows the scores belong to another checkpoint (and it is not forced).
        claimed: the digest the score file names, if any: on the copy path the header is written with it at once.
        check: on the copy path, read every written byte back and compare it with the intended bytes.
    """
    sidecar = manifest_path_for(out_path)
    layout = _splice_layout(ckpt)
    with staged_file(out_path) as weights, staged_file(sidecar) as side:
        if layout is None:
            manifest["input"]["sha256"] = digest.result()
            accept(manifest["input"]["sha256"])
            out_digest = _write_stream(ckpt, weights.tmp, edits, manifest)
        else:
            out_digest = _write_spliced(ckpt, layout, weights.tmp, edits, manifest, digest, accept, claimed, check)
        manifest["output"] = {"path": out_path.name, "sha256": out_digest}
        side.tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        test_hook("before-commit")
        weights.commit()
        test_hook("between-renames")
        side.commit()
    return Written(sidecar, layout is not None and check)


def test_hook(point: str) -> None:
    """Tests place a kill at a named point of the write (``MEMPRUNE_TEST_PAUSE=point:seconds``)."""
    spec = os.environ.get("MEMPRUNE_TEST_PAUSE", "")
    name, _, seconds = spec.rpartition(":")
    if name == point:
        print(f"memprune-test-pause {point}", file=sys.stderr, flush=True)
        time.sleep(float(seconds or 30))


def _metadata(ckpt, manifest: dict[str, Any]) -> dict[str, str]:
    metadata = {k: v for k, v in ckpt.metadata.items() if k != META_KEY}
    metadata.update({
        "memprune.version": __version__,
        "memprune.source_sha256": manifest["input"]["sha256"],
        META_KEY: embeddable(manifest),
    })
    return metadata


def _specs(ckpt) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    return [(k, ckpt.dtype(k), ckpt.shape(k)) for k in ckpt.keys()]


def _write_stream(ckpt, file: Path, edits: list, manifest: dict[str, Any]) -> str:
    by_tensor = {e.tensor: e for e in edits}

    def produce():
        for key in ckpt.keys():
            tensor = ckpt.get(key)
            edit = by_tensor.get(key)
            yield key, (scaled_checked(tensor, edit) if edit else tensor)
            test_hook(f"after-tensor:{key}")

    return write_safetensors_to(file, _specs(ckpt), produce(), _metadata(ckpt, manifest))


def _splice_layout(ckpt) -> Layout | None:
    """The input's layout when the output can reuse its data section as is (one file, same offsets), else None."""
    if ckpt.format != "safetensors":
        return None
    layout = read_layout(ckpt.path)
    offset = 0
    for name, dtype, shape in _specs(ckpt):
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        if layout.spans.get(name) != (offset, offset + nbytes):
            return None
        offset += nbytes
    return layout if offset == layout.data_length else None


@dataclass(frozen=True)
class _Patch:
    """Bytes of the output's data section that differ from the input: ``data()`` at data offset ``offset``."""

    offset: int
    length: int
    data: Callable[[], bytes]


@dataclass(frozen=True)
class _Patches:
    """Non-overlapping patches sorted by offset, with the offsets alone for bisecting."""

    items: list[_Patch]
    offsets: list[int]


def _write_spliced(ckpt, layout: Layout, file: Path, edits: list, manifest: dict[str, Any],
                   digest: Future, accept: Callable[[str], None], claimed: str | None, check: bool) -> str:
    """The copy path. The header needs the input digest: when the score file names one (memprune's always do), it
    is written at once and confirmed when the input has been hashed, so hashing the input, copying and hashing
    the output all run together; otherwise (or for a forced mismatch) the input is hashed first."""
    patches = _patches(ckpt, layout, edits)
    guess = claimed or digest.result()
    out_digest = _splice_pass(ckpt, layout, file, manifest, guess, patches, check)
    actual = digest.result()
    accept(actual)  # raises when the scores belong to another checkpoint (unless forced)
    if actual != guess:  # --force with scores of another checkpoint: write the header with the true digest
        out_digest = _splice_pass(ckpt, layout, file, manifest, actual, patches, check)
    return out_digest


def _splice_pass(ckpt, layout: Layout, file: Path, manifest: dict[str, Any], input_sha: str, patches: _Patches,
                 check: bool) -> str:
    manifest["input"]["sha256"] = input_sha
    head = safetensors_header(_specs(ckpt), _metadata(ckpt, manifest))
    with open(ckpt.path, "rb") as src, open(file, "r+b") as dst, ThreadPoolExecutor(2, "memprune-splice") as pool:
        dst.truncate(len(head) + layout.data_length)
        write_at(dst.fileno(), 0, head)
        ready: queue.Queue | None = queue.Queue() if check else None
        free: queue.Queue | None = None
        if check:
            free = queue.Queue()
            for _ in range(_BUFFERS):
                free.put(memoryview(bytearray(min(_SPLICE_CHUNK, layout.data_length))))
        hashing = pool.submit(_intended_chunks, src.fileno(), layout, head, patches, ready, free)
        copying = pool.submit(_copy_and_check, src.fileno(), dst.fileno(), layout, len(head), patches, ready, free)
        where = copying.result()
        out_digest = hashing.result()
    test_hook("after-copy")
    if where is not None:
        raise VerificationError(f"the copy of {ckpt.path.name} differs from the intended bytes at data byte {where}: "
                                "nothing was written; check the disk and re-run")
    return out_digest


def _patches(ckpt, layout: Layout, edits: list) -> _Patches:
    """The changed byte ranges: edited rows are read and scaled now (only those rows are read: a whole tensor per
    edit, freed between small long-lived row buffers, would fragment the heap); other edits rewrite their whole
    tensor, computed when needed so that memory stays near one tensor."""
    from memprune.patching import TensorEdit, scaled_part

    out: list[_Patch] = []
    fd = os.open(ckpt.path, os.O_RDONLY)
    try:
        for edit in edits:
            if not edit.units:
                continue
            dtype, shape = ckpt.dtype(edit.tensor), tuple(ckpt.shape(edit.tensor))
            begin = layout.spans[edit.tensor][0]
            itemsize = torch.empty((), dtype=dtype).element_size()
            if edit.axis == 0 and shape:
                row = (torch.Size(shape).numel() // shape[0]) * itemsize
                raw = bytearray(row * len(edit.units))
                for k, u in enumerate(edit.units):
                    os.preadv(fd, [memoryview(raw)[k * row : (k + 1) * row]], layout.data_start + begin + u * row)
                part = torch.frombuffer(raw, dtype=dtype).reshape(len(edit.units), *shape[1:]) if raw else torch.empty((0, *shape[1:]), dtype=dtype)
                # The same scaling function as scale_slices, applied to the rows alone: bit-identical results.
                local = TensorEdit(edit.tensor, 0, tuple(range(len(edit.units))), edit.factor, edit.layer)
                _, rows = scaled_part(part, local)
                _check_finite(part, local, rows)
                data = rows.contiguous().view(torch.uint8).numpy().tobytes()
                out += [_Patch(begin + u * row, row, lambda d=data, k=k: d[k * row : (k + 1) * row]) for k, u in enumerate(edit.units)]
            else:
                tensor = ckpt.get(edit.tensor)
                scaled_checked(tensor, edit)  # refuse an overflow before anything is written
                del tensor
                out.append(_Patch(begin, torch.Size(shape).numel() * itemsize, _whole(ckpt.path, layout, edit, dtype, shape)))
    finally:
        os.close(fd)
    out.sort(key=lambda p: p.offset)
    return _Patches(out, [p.offset for p in out])


def _whole(path: Path, layout: Layout, edit, dtype: torch.dtype, shape: tuple[int, ...]) -> Callable[[], bytes]:
    def data() -> bytes:
        begin, end = layout.spans[edit.tensor]
        fd = os.open(path, os.O_RDONLY)  # own descriptor: this runs in worker threads
        try:
            raw = bytearray(os.pread(fd, end - begin, layout.data_start + begin))
        finally:
            os.close(fd)
        tensor = torch.frombuffer(raw, dtype=dtype).reshape(shape) if raw else torch.empty(shape, dtype=dtype)
        return scaled_checked(tensor, edit).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()

    return data


def _clipped(patches: _Patches, lo: int, hi: int, cache: dict[int, bytes]) -> Iterator[tuple[int, bytes]]:
    """``(data offset, bytes)`` of the patches' parts inside ``lo..hi``; ``cache`` keeps the last whole-tensor
    patch, which can span several chunks, so it is computed once per thread."""
    start = max(bisect.bisect_right(patches.offsets, lo) - 1, 0)  # patches are sorted and do not overlap
    for p in patches.items[start:]:
        if p.offset >= hi:
            break
        if p.offset + p.length <= lo:
            continue
        if p.offset not in cache:
            cache.clear()
            cache[p.offset] = p.data()
        a, b = max(p.offset, lo), min(p.offset + p.length, hi)
        yield a, cache[p.offset][a - p.offset : b - p.offset]


def _overlay(buf: memoryview, src: int, layout: Layout, lo: int, hi: int, patches: _Patches, cache: dict[int, bytes]) -> memoryview:
    """Fill ``buf`` with data bytes ``lo..hi`` as the output must hold them: the input's, with the patches over them."""
    view = buf[: hi - lo]
    if os.preadv(src, [view], layout.data_start + lo) != hi - lo:
        raise OSError(errno.EIO, f"input ended inside its data section near byte {lo}")
    for at, data in _clipped(patches, lo, hi, cache):
        view[at - lo : at - lo + len(data)] = data
    return view


def _chunks(layout: Layout) -> list[tuple[int, int]]:
    return [(lo, min(lo + _SPLICE_CHUNK, layout.data_length)) for lo in range(0, layout.data_length, _SPLICE_CHUNK)]


# Buffers are allocated once per pass and recycled: allocating 8 MB per chunk in threads grows the heap (glibc
# arenas) far beyond what is in use at any moment.
_BUFFERS = 3


def _intended_chunks(src: int, layout: Layout, head: bytes, patches: _Patches,
                     ready: queue.Queue | None, free: queue.Queue | None) -> str:
    """sha256 of the header followed by the input's data with the patches applied (the output file's digest);
    with ``ready``, also hands every chunk on to :func:`_copy_and_check`, which gives the buffer back on ``free``."""
    h = hashlib.sha256(head)
    cache: dict[int, bytes] = {}
    own = memoryview(bytearray(min(_SPLICE_CHUNK, layout.data_length)))
    try:
        for lo, hi in _chunks(layout):
            buf = own if ready is None else free.get()
            if buf is None:  # the consumer stopped (mismatch or error)
                break
            view = _overlay(buf, src, layout, lo, hi, patches, cache)
            h.update(view)
            if ready is not None:
                ready.put((buf, view))
    finally:
        if ready is not None:
            ready.put(None)
    return h.hexdigest()


def _copy_and_check(src: int, dst: int, layout: Layout, head_len: int, patches: _Patches,
                    ready: queue.Queue | None, free: queue.Queue | None) -> int | None:
    """Copy chunk by chunk in the kernel and write the patches falling in each chunk; with ``ready`` (the
    intended chunks, in order), read each chunk back and compare. Returns the first differing data byte, or None."""
    cache: dict[int, bytes] = {}
    got = memoryview(bytearray(min(_SPLICE_CHUNK, layout.data_length))) if ready is not None else None
    try:
        for lo, hi in _chunks(layout):
            copy_range(src, dst, layout.data_start + lo, head_len + lo, hi - lo)
            for at, data in _clipped(patches, lo, hi, cache):
                write_at(dst, head_len + at, data)
            if ready is None:
                continue
            item = ready.get()
            if item is None:
                return lo
            buf, want = item
            view = got[: hi - lo]
            same = os.preadv(dst, [view], head_len + lo) == hi - lo and _same_bytes(view, want)
            free.put(buf)
            if not same:
                return lo + next((i for i in range(hi - lo) if view[i] != want[i]), 0)
        return None
    finally:
        if free is not None:
            free.put(None)  # lets the producer stop early if it is waiting for a buffer


def _same_bytes(a: memoryview, b: memoryview) -> bool:
    # numpy compares 8 bytes at a time; memoryview's own == goes element by element (20x slower).
    dtype = np.uint64 if len(a) % 8 == 0 else np.uint8
    return len(a) == len(b) and bool(np.array_equal(np.frombuffer(a, dtype), np.frombuffer(b, dtype)))


def _check_finite(tensor: torch.Tensor, edit, scaled: torch.Tensor) -> None:
    if scaled.is_floating_point():
        before = tensor.index_select(edit.axis, torch.tensor(edit.units, dtype=torch.long))
        overflow = torch.isfinite(before) & ~torch.isfinite(scaled)
        if overflow.any():
            _overflow(tensor, edit, before, overflow)


def scaled_checked(t: torch.Tensor, edit) -> torch.Tensor:
    """``scale_slices``, refusing a result that overflows the tensor's dtype (finite values becoming inf)."""
    from memprune.patching import scale_slices

    out = scale_slices(t, edit)
    if out.is_floating_point() and edit.units:
        index = torch.tensor(edit.units, dtype=torch.long)
        before, after = t.index_select(edit.axis, index), out.index_select(edit.axis, index)
        overflow = torch.isfinite(before) & ~torch.isfinite(after)
        if overflow.any():
            _overflow(t, edit, before, overflow)
    return out


def _overflow(t: torch.Tensor, edit, before: torch.Tensor, overflow: torch.Tensor) -> None:
    big = before[torch.isfinite(before)].abs().max().item()
    limit = torch.finfo(t.dtype).max
    raise MempruneError(
        f"--factor {edit.factor:g} overflows {t.dtype} in {edit.tensor} ({int(overflow.sum())} values become inf: "
        f"max |w| {big:.4g} x {edit.factor:g} > {limit:.4g}): choose a factor below {limit / big:.4g}; nothing was written"
    )
