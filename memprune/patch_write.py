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

import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from memprune import __version__
from memprune.errors import MempruneError, VerificationError
from memprune.io import staged_file, write_safetensors_to
from memprune.io.splice import Layout, copy_range, first_difference, read_layout, sha256_of, slice_ranges, write_at
from memprune.io.writer import safetensors_header
from memprune.manifest import META_KEY, embeddable, manifest_path_for

PENDING_DIGEST = "0" * 64  # same length as a sha256 hex digest, so the header keeps its size when it is filled in


@dataclass(frozen=True)
class Written:
    """What :func:`write_pair` produced: the manifest path, and whether the unedited bytes were compared."""

    manifest_path: Path
    bytes_checked: bool


def write_pair(ckpt, out_path: Path, edits: list, manifest: dict[str, Any], input_digest: Callable[[], str], *,
               check: bool) -> Written:
    """Write the weights and the manifest as one commit that a reader can always judge.

    Both are written under temporary names first; then the weights are renamed into place, then the manifest.
    A crash before the first rename leaves the old pair; after it, the new weights carry their manifest in the
    header (authoritative), and an old sidecar left beside them fails ``verify``'s header-copy check.

    Args:
        input_digest: returns the input's checkpoint digest (raising if the scores do not belong to it); it is
            called once, possibly while the copy runs.
        check: on the copy path, compare every byte outside the edited slices with the input before committing.
    """
    sidecar = manifest_path_for(out_path)
    layout = _splice_layout(ckpt)
    with staged_file(out_path) as weights, staged_file(sidecar) as side:
        if layout is None:
            manifest["input"]["sha256"] = input_digest()
            out_digest = _write_stream(ckpt, weights.tmp, edits, manifest)
        else:
            out_digest = _write_spliced(ckpt, layout, weights.tmp, edits, manifest, input_digest, check)
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


def _write_spliced(ckpt, layout: Layout, file: Path, edits: list, manifest: dict[str, Any],
                   input_digest: Callable[[], str], check: bool) -> str:
    manifest["input"]["sha256"] = PENDING_DIGEST
    head_len = len(safetensors_header(_specs(ckpt), _metadata(ckpt, manifest)))
    with open(ckpt.path, "rb") as src, open(file, "r+b") as dst, ThreadPoolExecutor(1, "memprune-copy") as pool:
        copying = pool.submit(copy_range, src.fileno(), dst.fileno(), layout.data_start, head_len, layout.data_length)
        try:
            manifest["input"]["sha256"] = input_digest()  # hashed in another thread while the kernel copies
        finally:
            copying.result()
        head = safetensors_header(_specs(ckpt), _metadata(ckpt, manifest))
        if len(head) != head_len:
            raise RuntimeError("the header changed size when the input digest was filled in")
        write_at(dst.fileno(), 0, head)
        holes = _rewrite_edits(ckpt, layout, dst.fileno(), head_len, edits)
        test_hook("after-copy")
        dst.flush()
        hashing = pool.submit(sha256_of, file)
        try:
            if check:
                where = first_difference(ckpt.path, layout.data_start, file, head_len, layout.data_length, holes)
                if where is not None:
                    raise VerificationError(f"the copy of {ckpt.path.name} differs from it at data byte {where}, outside the edited slices: nothing was written; check the disk and re-run")
        finally:
            out_digest = hashing.result()
    return out_digest


def _rewrite_edits(ckpt, layout: Layout, fd: int, head_len: int, edits: list) -> list[tuple[int, int]]:
    """Write the edited slices over the copied bytes, one tensor at a time; returns the rewritten data ranges."""
    holes: list[tuple[int, int]] = []
    for edit in edits:
        tensor = ckpt.get(edit.tensor)
        scaled = scaled_checked(tensor, edit)
        raw = memoryview(scaled.contiguous().reshape(-1).view(torch.uint8).numpy())
        begin = layout.spans[edit.tensor][0]
        for lo, hi in slice_ranges(tuple(tensor.shape), tensor.element_size(), edit.axis, edit.units):
            write_at(fd, head_len + begin + lo, raw[lo:hi])
            holes.append((begin + lo, begin + hi))
    return holes


def scaled_checked(t: torch.Tensor, edit) -> torch.Tensor:
    """``scale_slices``, refusing a result that overflows the tensor's dtype (finite values becoming inf)."""
    from memprune.patching import scale_slices

    out = scale_slices(t, edit)
    if out.is_floating_point() and edit.units:
        index = torch.tensor(edit.units, dtype=torch.long)
        before, after = t.index_select(edit.axis, index), out.index_select(edit.axis, index)
        overflow = torch.isfinite(before) & ~torch.isfinite(after)
        if overflow.any():
            big = before[torch.isfinite(before)].abs().max().item()
            limit = torch.finfo(t.dtype).max
            raise MempruneError(
                f"--factor {edit.factor:g} overflows {t.dtype} in {edit.tensor} ({int(overflow.sum())} values become inf: "
                f"max |w| {big:.4g} x {edit.factor:g} > {limit:.4g}): choose a factor below {limit / big:.4g}; nothing was written"
            )
    return out
