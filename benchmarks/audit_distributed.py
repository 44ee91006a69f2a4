"""``memprune audit`` under ``torchrun --nproc_per_node 2`` against one process, on a generation-bound audit.

Builds a random VAR (default depth 8, width 512, 256 px, 10 scales) with a small VQVAE (ch 32, so that the
transformer's generation dominates), writes photos in two classes, and runs the real CLI
``memprune audit --candidates ... --prefixes 2 --seeds 0`` (greedy + one sampled condition, 2 models) as:

* ``single``: one process using both cores (``OMP_NUM_THREADS=2``: the fair baseline on 2 cores);
* ``single1``: one process, one thread (what each rank gets);
* ``torchrun``: ``python -m torch.distributed.run --nproc_per_node 2`` with one thread per rank (gloo).

The modes are interleaved round by round (the machine may be shared). The ``torchrun`` rows must equal the
``single1`` rows bit for bit (same thread count per process); the 2-thread process may differ in the last
bits, and the largest cosine difference is printed. The median wall time per mode is reported (process
start, model and SSCD loading included: what a user waits for).

Examples:
    python benchmarks/audit_distributed.py --depth 6 --width 384 --candidates 8 --batch 1 --rounds 2
    python benchmarks/audit_distributed.py --rounds 3 --candidates 16 --json audit_dist.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "cat")


def _setup(root: Path, depth: int, width: int, n: int) -> Path:
    from skimage import data

    from memprune.io import save_safetensors
    from memprune.models.var import VARConfig, build_var_model
    from memprune.models.vqvae import VQVAEConfig

    config = VARConfig(depth=depth, width=width, num_heads=width // 64, mlp_hidden=4 * width, num_classes=10)
    model = build_var_model(config, VQVAEConfig(ch=32), seed=0)
    save_safetensors({k: v.contiguous() for k, v in model.var.state_dict().items()}, root / "var.safetensors")
    save_safetensors({k: v.contiguous() for k, v in model.vae.state_dict().items()}, root / "vae.safetensors")
    other = build_var_model(config, VQVAEConfig(ch=32), seed=1)
    save_safetensors({k: v.contiguous() for k, v in other.var.state_dict().items()}, root / "other.safetensors")
    rows = ["path,label"]
    for k in range(n):
        path = root / "data" / f"{k:03d}_{PHOTOS[k % len(PHOTOS)]}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(getattr(data, PHOTOS[k % len(PHOTOS)])()).convert("RGB").save(path)
        rows.append(f"{path},{k % 2}")
    (root / "candidates.csv").write_text("\n".join(rows) + "\n")
    return root


def _run(mode: str, root: Path, out: Path, batch: int) -> float:
    args = ["audit", str(root / "other.safetensors"), "-t", str(root / "vae.safetensors"), "--baseline",
            str(root / "var.safetensors"), "--candidates", str(root / "candidates.csv"), "--prefixes", "2", "--seeds", "0",
            "--batch-size", str(batch), "--device", "cpu", "--sscd", "onnx", "--grid-rows", "0", "-q", "-o", str(out)]  # fmt: skip
    threads = "2" if mode == "single" else "1"
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    env.pop("WORLD_SIZE", None)
    if mode == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "memprune", *args]
    else:
        cmd = [sys.executable, "-m", "memprune", *args]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _rows(out: Path) -> list[dict]:
    return sorted((json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()),
                  key=lambda r: (r["index"], r["model"], r["condition"]))


def _max_diff(a: list[dict], b: list[dict]) -> float:
    if [(r["id"], r["model"], r["condition"]) for r in a] != [(r["id"], r["model"], r["condition"]) for r in b]:
        return float("inf")
    return max(abs(x["similarity"] - y["similarity"]) for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="single1,torchrun,single")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    modes = args.modes.split(",")
    times: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        root = _setup(Path(tmp), args.depth, args.width, args.candidates)
        first: dict[str, list[dict]] = {}
        identical: dict[str, bool] = {}
        for r in range(args.rounds):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                out = Path(tmp) / f"{mode}_{r}"
                load = os.getloadavg()[0]
                seconds = _run(mode, root, out, args.batch)
                first.setdefault(mode, _rows(out))
                times[mode].append(seconds)
                print(f"round {r} {mode:8s} {seconds:7.1f} s  load1={load:.1f}", flush=True)
        # Exactness is per thread count: 2 ranks x 1 thread must equal 1 process x 1 thread bit for bit; a
        # 2-thread process may differ in the last bits (its matmuls split reductions differently).
        base = first.get("single1")
        for mode, rows in first.items():
            identical[mode] = rows == base if base is not None else None
            print(f"{mode}: rows identical to single1: {identical[mode]}; max |similarity diff| "
                  f"{_max_diff(rows, base) if base is not None else 'n/a'}")
    if "torchrun" in identical and identical["torchrun"] is False:
        raise SystemExit("torchrun gave different results from one process with the same thread count")
    med = {m: statistics.median(v) for m, v in times.items()}
    result = {
        "model": f"random VAR d{args.depth} w{args.width} 256 px + VQVAE ch32, 2 models (baseline + audited)",
        "candidates": args.candidates, "batch": args.batch, "conditions": ["p2-greedy", "p2-s0"],
        "rounds": args.rounds, "seconds": times, "median_seconds": med, "identical_to_single1": identical,
        "ratio_torchrun_vs_single_2threads": med["torchrun"] / med["single"] if {"torchrun", "single"} <= set(med) else None,
        "ratio_torchrun_vs_single_1thread": med["torchrun"] / med["single1"] if {"torchrun", "single1"} <= set(med) else None,
        "cpus": os.cpu_count(), "torch": torch.__version__,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
