"""Byte-level tools for writing a safetensors file that differs from its source in a few slices.

When only some rows of some tensors change and every dtype and shape stays, the output's data section is the
input's with those byte ranges replaced. Copying it in the kernel (``copy_file_range``, falling back to
``pread``/``pwrite``) and rewriting only the changed ranges in place is as fast as ``cp``; hashing runs in
threads beside it (hashlib releases the GIL on large buffers).
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass

from memprune.io.names import stripped_names

__all__ = ["Layout", "read_layout", "copy_range", "write_at"]

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
