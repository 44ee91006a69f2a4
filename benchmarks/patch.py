"""Benchmark ``memprune patch`` on a synthetic checkpoint with VAR-d16 shapes (about 1.24 GB float32).

Times, in interleaved rounds (median reported, since other processes share the machine): ``cp``'s in-kernel copy
(``shutil.copyfile``, i.e. ``copy_file_range``) + fsync, one sha256 pass, a streamed Python read/write copy, and
``patch`` with and without its verification, on the copy path (single safetensors input: kernel copy of the data
section, edited rows rewritten in place, digests in threads) and on the streaming path (what pickles and sharded
inputs use, and what every input used before). Each ``patch`` runs in a fresh process that times itself after its
imports and reports its own peak RSS; the import-only peak RSS is measured the same way.
Target (issue 15): ``patch`` including both digests and its verification at most 2 x ``cp``; peak RSS unchanged
(import + less than one tensor).

Usage:
    python benchmarks/patch.py [--depth 16] [--rounds 3] [--workdir /tmp/memprune-bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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


_CHILD = """
import json, resource, sys, time
import memprune.patch_write as pw
from memprune.patching import patch
if {stream}:
    pw._splice_layout = lambda ckpt: None
t0 = time.perf_counter()
if {run}:
    patch({ckpt!r}, {scores!r}, output={out!r}, top='10%', factor=0.5, verify={verify})
seconds = time.perf_counter() - t0
print(json.dumps({{"seconds": seconds, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""


def run_child(ckpt: Path, scores: Path, out: Path, *, verify: bool, stream: bool, run: bool = True) -> dict[str, float]:
    """One ``patch`` in a fresh process; returns its own timing (after imports) and peak RSS."""
    code = _CHILD.format(ckpt=str(ckpt), scores=str(scores), out=str(out), verify=verify, stream=stream, run=run)
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    if out.exists():
        out.unlink()
        out.with_name(out.name.replace(".safetensors", ".manifest.json")).unlink()
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--rounds", type=int, default=3)
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
    shutil.copyfile(ckpt, work / "warm.bin")  # warm the page cache identically for every measurement
    (work / "warm.bin").unlink()
    out = work / "out.safetensors"
    idle = run_child(ckpt, scores, out, verify=False, stream=False, run=False)
    cases = {
        "patch --no-verify (copy path)": dict(verify=False, stream=False),
        "patch (copy path, with verification)": dict(verify=True, stream=False),
        "patch --no-verify (streaming path)": dict(verify=False, stream=True),
        "patch (streaming path, with verification)": dict(verify=True, stream=True),
    }
    rounds: list[dict[str, float]] = []
    peaks: dict[str, int] = {}
    for _ in range(args.rounds):
        r = {"cp": _timed_copy(ckpt, work / "copy.safetensors", kernel=True),
             "streamed copy": _timed_copy(ckpt, work / "copy.safetensors", kernel=False)}
        t0 = time.perf_counter()
        checkpoint_sha256(ckpt)
        r["sha256"] = time.perf_counter() - t0
        # How much parallel capacity the machine has right now: two sha256 passes in two threads (1.0 x sha256
        # on two free cores, 2.0 x when the threads get one core between them).
        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(checkpoint_sha256, [ckpt, ckpt]))
        r["2 x sha256 in 2 threads"] = time.perf_counter() - t0
        for label, kw in cases.items():
            child = run_child(ckpt, scores, out, **kw)
            r[label] = child["seconds"]
            peaks[label] = max(peaks.get(label, 0), int(child["peak_rss_bytes"]))
        rounds.append(r)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    ratio = {k: statistics.median(r[k] / r["cp"] for r in rounds) for k in rounds[0]}
    print(f"checkpoint {size / 1e9:.2f} GB (VAR-d{args.depth} shapes), largest tensor {largest / 1e6:.1f} MB; "
          f"median of {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.1f}")
    print(f"{'measure':45s} {'seconds':>8s} {'x cp':>6s}")
    for k in med:
        print(f"{k:45s} {med[k]:8.2f} {ratio[k]:6.2f}")
    print(f"peak RSS: import only {idle['peak_rss_bytes'] / 1e6:.0f} MB")
    for label, peak in peaks.items():
        print(f"  {label:43s} {peak / 1e6:.0f} MB = import + {(peak - idle['peak_rss_bytes']) / 1e6:.0f} MB")
    print(json.dumps({"checkpoint_bytes": size, "largest_tensor_bytes": largest, "rounds": rounds, "median_seconds": med,
                      "median_ratio_to_cp": ratio, "peak_rss_bytes": peaks, "import_only_peak_rss_bytes": idle["peak_rss_bytes"]}))
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
