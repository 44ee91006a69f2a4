"""Throughput of RAR teacher forcing and prefix generation (images/s) on a randomly initialised model.

Measures what ``memprune score`` (teacher-forced passes with fc1 hooks) and ``memprune audit`` (greedy
generation from a 30-token ground-truth prefix, then decoding) spend their time on. The weights are random
(:func:`memprune.families.rar.model.build_random_rar`), which does not change the arithmetic cost.

Examples:
    python benchmarks/rar_forward.py --quick            # RAR-B on CPU, under ~3 minutes on 2 cores
    python benchmarks/rar_forward.py --device cuda --dtype bfloat16 --batch 32
    python benchmarks/rar_forward.py --config rar_xxl --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch

from memprune.families.rar.model import build_random_rar
from memprune.families.rar.transformer import RAR_CONFIGS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _timed(fn: Callable[[], object], device: torch.device, reps: int, warmup: Callable[[], object] | None = None) -> float:
    """Median wall time of ``reps`` calls after one warm-up call (of ``warmup`` if given, else of ``fn``)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    (warmup or fn)()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def run(config: str, device: str, dtype: str, batch: int, gen_batch: int, prefix: int, cfg: float, reps: int,
        decode: bool) -> dict[str, object]:  # fmt: skip
    """Build the model, time each workload, return the figures."""
    dev = torch.device(device)
    t0 = time.perf_counter()
    model = build_random_rar(RAR_CONFIGS[config], seed=0, device=dev, dtype=DTYPES[dtype])
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.vocab_size, (max(batch, gen_batch), model.seq_len), generator=g).to(dev)
    labels = torch.randint(0, model.num_classes, (max(batch, gen_batch),), generator=g).to(dev)
    out: dict[str, object] = {
        "config": config, "device": str(dev), "dtype": dtype, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "host": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, "build_s": round(build_s, 2),
    }  # fmt: skip
    with torch.inference_mode():
        s = _timed(lambda: model.teacher_forced(tokens[:batch], labels[:batch]), dev, reps)
        out["teacher_forced"] = {"batch": batch, "seconds": round(s, 4), "images_per_s": round(batch / s, 3)}
        pre = tokens[:gen_batch, :prefix]

        def gen(p: torch.Tensor = pre) -> torch.Tensor:
            return model.generate(labels[:gen_batch], prefix=p, cfg=cfg, greedy=True)

        # Warm up on a 4-step generation: same kernels (prefill + cached steps), a fraction of the time.
        s = _timed(gen, dev, reps, warmup=lambda: gen(tokens[:gen_batch, : model.seq_len - 4]))
        out["generate"] = {
            "batch": gen_batch, "prefix": prefix, "cfg": cfg, "steps": model.seq_len - prefix,
            "seconds": round(s, 4), "images_per_s": round(gen_batch / s, 3),
        }  # fmt: skip
        if decode:
            s = _timed(lambda: model.decode(tokens[:gen_batch]), dev, reps)
            out["decode"] = {"batch": gen_batch, "seconds": round(s, 4), "images_per_s": round(gen_batch / s, 3)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="rar_b", choices=sorted(RAR_CONFIGS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--batch", type=int, default=16, help="teacher-forcing batch")
    p.add_argument("--gen-batch", type=int, default=16, help="generation batch")
    p.add_argument("--prefix", type=int, default=30, help="ground-truth prefix tokens (the audit uses 30)")
    p.add_argument("--cfg", type=float, default=0.0, help="guidance scale (0 = conditional only, as in the audit)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--decode", action="store_true", help="also time tokenizer decoding")
    p.add_argument("--quick", action="store_true", help="small batches and one repetition (CPU smoke run)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--json", help="also write the figures to this file")
    a = p.parse_args()
    if a.threads > 0:
        # On a shared, oversubscribed CPU every parallel region waits for a descheduled worker thread, which
        # makes the many small ops of KV-cached decoding ~10x slower; one thread avoids that.
        torch.set_num_threads(a.threads)
    if a.quick:
        a.batch, a.gen_batch, a.reps = 2, 2, 1
    res = run(a.config, a.device, a.dtype, a.batch, a.gen_batch, a.prefix, a.cfg, a.reps, a.decode)
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
