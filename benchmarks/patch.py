"""Benchmark ``memprune patch`` on a synthetic checkpoint with VAR-d16 shapes (about 1.24 GB float32).

Prints the time of ``patch`` (with and without its verification pass) divided by the time of copying the
same file, and the peak resident memory of a ``patch`` process above an idle process that has imported the
same libraries, relative to the largest tensor. Two copy baselines are timed, both ending with fsync:
``shutil.copyfile`` (in-kernel ``copy_file_range`` on Linux, what ``cp`` does) and a streamed user-space
read/write copy (what any tool that transforms tensors has to do). One sha256 pass over the file is timed
too: ``patch`` makes two (input digest for the score check and the manifest, output digest while writing).
Targets (issue 2): patch <= 1.5 x copy time; peak RSS <= largest tensor + 300 MB.

Usage:
    python benchmarks/patch.py [--depth 16] [--workdir /tmp/memprune-bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from memprune.io import checkpoint_sha256
from memprune.scores import ScoreSet, save_scores


def var_shapes(depth: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The key layout and shapes of an official VAR checkpoint of this depth (see docs and var.md)."""
    c, L, v = 64 * depth, 680, 4096
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
        "pos_start": ((1, 1, c), torch.float32),
        "pos_1LC": ((1, L, c), torch.float32),
        "lvl_1L": ((1, L), torch.int64),
        "attn_bias_for_masking": ((1, 1, L, L), torch.float32),
        "word_embed.weight": ((c, 32), torch.float32),
        "word_embed.bias": ((c,), torch.float32),
        "class_emb.weight": ((1001, c), torch.float32),
        "lvl_embed.weight": ((10, c), torch.float32),
    }
    for i in range(depth):
        p = f"blocks.{i}"
        shapes |= {
            f"{p}.attn.scale_mul_1H11": ((1, depth, 1, 1), torch.float32),
            f"{p}.attn.q_bias": ((c,), torch.float32),
            f"{p}.attn.v_bias": ((c,), torch.float32),
            f"{p}.attn.zero_k_bias": ((c,), torch.float32),
            f"{p}.attn.mat_qkv.weight": ((3 * c, c), torch.float32),
            f"{p}.attn.proj.weight": ((c, c), torch.float32),
            f"{p}.attn.proj.bias": ((c,), torch.float32),
            f"{p}.ffn.fc1.weight": ((4 * c, c), torch.float32),
            f"{p}.ffn.fc1.bias": ((4 * c,), torch.float32),
            f"{p}.ffn.fc2.weight": ((c, 4 * c), torch.float32),
            f"{p}.ffn.fc2.bias": ((c,), torch.float32),
            f"{p}.ada_lin.1.weight": ((6 * c, c), torch.float32),
            f"{p}.ada_lin.1.bias": ((6 * c,), torch.float32),
        }
    shapes |= {
        "head_nm.ada_lin.1.weight": ((2 * c, c), torch.float32),
        "head_nm.ada_lin.1.bias": ((2 * c,), torch.float32),
        "head.weight": ((v, c), torch.float32),
        "head.bias": ((v,), torch.float32),
    }
    return shapes


def make_checkpoint(path: Path, depth: int) -> int:
    """Write the synthetic checkpoint tensor by tensor; returns the largest tensor's size in bytes."""
    from memprune.io import write_safetensors_stream

    shapes = var_shapes(depth)
    gen = torch.Generator().manual_seed(0)

    def produce():
        for name, (shape, dtype) in shapes.items():
            t = torch.zeros(shape, dtype=dtype) if dtype == torch.int64 else torch.randn(shape, generator=gen) * 0.02
            yield name, t

    write_safetensors_stream(path, [(k, d, s) for k, (s, d) in shapes.items()], produce())
    return max(torch.Size(s).numel() * torch.empty((), dtype=d).element_size() for s, d in shapes.values())


def child_peak_rss(code: str) -> tuple[float, int]:
    """Run Python code in a fresh process; return (seconds, its peak RSS in bytes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak < before:  # ru_maxrss of children is the max over all waited-for children
        peak = before
    return seconds, peak * 1024  # Linux reports KiB


def _timed_copy(src: Path, dst: Path, *, kernel: bool) -> float:
    """Seconds to copy ``src`` to ``dst`` and fsync it; ``dst`` is removed afterwards."""
    t0 = time.perf_counter()
    if kernel:
        shutil.copyfile(src, dst)
    else:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            while block := fin.read(16 << 20):
                fout.write(block)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t0
    dst.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="memprune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt, scores = work / "var.safetensors", work / "scores.safetensors"
    largest = make_checkpoint(ckpt, args.depth)
    size = ckpt.stat().st_size
    hidden = 4 * 64 * args.depth
    values = {f"blocks.{i}.ffn.fc1": torch.rand(10, hidden) for i in range(args.depth)}
    save_scores(ScoreSet(values, [f"scale{i}" for i in range(10)], checkpoint_sha256(ckpt), "var", ["scale0"]), scores)

    # Warm the page cache identically for every measurement, then time a plain copy.
    shutil.copyfile(ckpt, work / "warm.bin")
    (work / "warm.bin").unlink()
    copy_s = _timed_copy(ckpt, work / "copy.safetensors", kernel=True)
    stream_s = _timed_copy(ckpt, work / "copy.safetensors", kernel=False)
    t0 = time.perf_counter()
    checkpoint_sha256(ckpt)
    sha_s = time.perf_counter() - t0

    base_s, base_rss = child_peak_rss("import torch, memprune.patching, memprune.verify")
    runs = {}
    for label, verify in (("patch --no-verify", False), ("patch (with verify)", True)):
        out = work / f"out_{int(verify)}.safetensors"
        code = (
            "from memprune.patching import patch; "
            f"patch({str(ckpt)!r}, {str(scores)!r}, output={str(out)!r}, top='10%', factor=0.5, verify={verify})"
        )
        seconds, rss = child_peak_rss(code)
        runs[label] = {"seconds": seconds - base_s, "peak_rss_bytes": rss}
    result = {
        "checkpoint_bytes": size,
        "largest_tensor_bytes": largest,
        "copy_seconds": copy_s,
        "streamed_copy_seconds": stream_s,
        "sha256_seconds": sha_s,
        "import_only_seconds": base_s,
        "import_only_peak_rss_bytes": base_rss,
        "runs": runs,
    }
    print(f"checkpoint {size / 1e9:.2f} GB (VAR-d{args.depth} shapes), largest tensor {largest / 1e6:.1f} MB")
    print(f"copy (shutil.copyfile + fsync) {copy_s:.2f} s; streamed copy (read/write + fsync) {stream_s:.2f} s; one sha256 pass {sha_s:.2f} s")
    print(f"python + torch + memprune import alone: {base_s:.2f} s, peak RSS {base_rss / 1e6:.0f} MB (subtracted below)")
    for label, r in runs.items():
        extra = (r["peak_rss_bytes"] - base_rss) / 1e6
        print(
            f"{label:22s} {r['seconds']:6.2f} s = {r['seconds'] / copy_s:4.2f} x copy, {r['seconds'] / stream_s:4.2f} x streamed copy; "
            f"peak RSS {r['peak_rss_bytes'] / 1e6:.0f} MB = import + {extra:.0f} MB (largest tensor + {extra - largest / 1e6:.0f} MB)"
        )
    print(json.dumps(result))
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
