"""Byte-level tools for writing a safetensors file that differs from its source in a few slices.

When only some rows of some tensors change and every dtype and shape stays, the output's data section is the
input's with those byte ranges replaced. Copying it in the kernel (``copy_file_range``, falling back to
``pread``/``pwrite``) and rewriting only the changed ranges in place is as fast as ``cp``; hashing runs in
threads beside it (hashlib releases the GIL on large buffers).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from memprune.io.names import stripped_names

__all__ = ["Layout", "read_layout", "copy_range", "write_at", "sha256_of", "first_difference", "slice_ranges"]

_CHUNK = 16 << 20  # bytes per read: large enough for full disk speed, small enough to keep memory flat
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM}


@dataclass(frozen=True)
class Layout:
    """Where a single safetensors file keeps its tensors: ``spans[name] = (begin, end)`` within the data section."""

    data_start: int
    data_length: int
    spans: dict[str, tuple[int, int]]  # keyed by the prefix-stripped names memprune uses


def read_layout(path: str | os.PathLike) -> Layout:
    """The data section of a safetensors file already validated by ``safe_open`` (the reader opened it)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        total = os.fstat(f.fileno()).st_size
    header.pop("__metadata__", None)
    names = stripped_names(header, path)
    spans = {name: tuple(header[key]["data_offsets"]) for name, key in names.items()}
    return Layout(8 + size, total - 8 - size, spans)  # type: ignore[arg-type]


def copy_range(src: int, dst: int, src_offset: int, dst_offset: int, length: int) -> None:
    """Copy ``length`` bytes between open file descriptors without passing them through Python when possible."""
    done = 0
    kernel = hasattr(os, "copy_file_range")
    while done < length:
        n = length - done
        if kernel:
            try:
                copied = os.copy_file_range(src, dst, min(n, 1 << 30), src_offset + done, dst_offset + done)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                kernel = False  # another file system, or a kernel without it: copy through user space
                continue
            if copied == 0:
                raise OSError(errno.EIO, f"source ended {length - done} bytes early")
            done += copied
            continue
        block = os.pread(src, min(n, _CHUNK), src_offset + done)
        if not block:
            raise OSError(errno.EIO, f"source ended {length - done} bytes early")
        write_at(dst, dst_offset + done, block)
        done += len(block)


def write_at(fd: int, offset: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _chunks(path: str | os.PathLike, start: int = 0, length: int | None = None) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        left = length
        while left is None or left > 0:
            block = f.read(_CHUNK if left is None else min(_CHUNK, left))
            if not block:
                return
            if left is not None:
                left -= len(block)
            yield block


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (run it in a thread: the hashing releases the GIL)."""
    h = hashlib.sha256()
    for block in _chunks(path):
        h.update(block)
    return h.hexdigest()


def first_difference(a: str | os.PathLike, a_start: int, b: str | os.PathLike, b_start: int, length: int,
                     holes: Iterable[tuple[int, int]] = ()) -> int | None:
    """The first offset (relative to the starts) where two byte ranges differ outside ``holes``, else None.

    ``holes`` are ``(begin, end)`` ranges, relative to the starts, that are expected to differ.
    """
    cursor = 0
    for begin, end in [*sorted(holes), (length, length)]:
        if begin > cursor:
            for off, (x, y) in _paired(a, a_start + cursor, b, b_start + cursor, begin - cursor):
                if x != y:
                    return cursor + off + next(i for i in range(len(x)) if x[i] != y[i])
        cursor = max(cursor, end)
    return None


def _paired(a, a_start: int, b, b_start: int, length: int) -> Iterator[tuple[int, tuple[bytes, bytes]]]:
    offset = 0
    for x, y in zip(_chunks(a, a_start, length), _chunks(b, b_start, length)):
        if len(x) != len(y):
            n = min(len(x), len(y))
            yield offset, (x[:n], y[:n])
            raise OSError(errno.EIO, "files are shorter than their headers say")
        yield offset, (x, y)
        offset += len(x)
    if offset != length:
        raise OSError(errno.EIO, "files are shorter than their headers say")


def slice_ranges(shape: tuple[int, ...], itemsize: int, axis: int, units: Iterable[int]) -> list[tuple[int, int]]:
    """Byte ranges (relative to the tensor's first byte) that scaling ``units`` along ``axis`` can change.

    Rows (axis 0) are contiguous: one range per unit, neighbours merged. Any other axis touches the whole tensor.
    """
    numel = 1
    for d in shape:
        numel *= d
    if axis != 0 or not shape:
        return [(0, numel * itemsize)]
    row = (numel // shape[0]) * itemsize if shape[0] else 0
    ranges: list[tuple[int, int]] = []
    for u in sorted(set(units)):
        begin, end = u * row, (u + 1) * row
        if ranges and ranges[-1][1] == begin:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((begin, end))
    return ranges
