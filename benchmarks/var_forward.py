"""Throughput of VAR's teacher-forced forward and of prefix generation (randomly initialised weights).

Examples:
    python benchmarks/var_forward.py                      # depth 16, batch 8, CPU
    python benchmarks/var_forward.py --quick              # batch 2, for a quick look
    python benchmarks/var_forward.py --device cuda --batch 32 --dtype bfloat16

The teacher-forced pass is what scoring (UnitMem) runs per image; prefix generation is the extraction
audit's greedy continuation from the first ``--prefix-scales`` scales with guidance ``--cfg`` (VAR
convention: 0 = none, which runs half the batch rows). Timings exclude model construction and one warm-up.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from memprune.families.var.model import VARConfig, build_var_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=16, help="VAR depth (release layouts: 16, 20, 24, 30, 36)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--prefix-scales", type=int, default=4, help="ground-truth scales kept (4 = 30 tokens)")
    parser.add_argument("--cfg", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="batch 2 (overrides --batch)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = parser.parse_args()
    if args.quick:
        args.batch = 2

    device = torch.device(args.device)
    model = build_var_model(VARConfig.release(args.depth), seed=0, device=device, dtype=getattr(torch, args.dtype))
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.vocab_size, (args.batch, model.seq_len), generator=gen).to(device)
    labels = torch.randint(0, model.num_classes, (args.batch,), generator=gen).to(device)
    prefix = tokens[:, : model.valid_prefix_lengths()[args.prefix_scales]]

    def forward() -> object:
        return model.teacher_forced(tokens, labels)

    def generate() -> object:
        return model.generate(labels, prefix=prefix, cfg=args.cfg, greedy=True)

    model.teacher_forced(tokens[:1], labels[:1])  # warm-up (allocator, kernels)
    model.generate(labels[:1], prefix=prefix[:1], cfg=args.cfg, greedy=True)
    t_forward = _time(forward, device, args.repeats)
    t_generate = _time(generate, device, args.repeats)
    result = {
        "depth": args.depth, "batch": args.batch, "device": str(device), "dtype": args.dtype,
        "threads": torch.get_num_threads(), "prefix_tokens": prefix.shape[1], "cfg": args.cfg,
        "teacher_forced_s": round(t_forward, 3), "teacher_forced_img_per_s": round(args.batch / t_forward, 3),
        "prefix_generate_s": round(t_generate, 3), "prefix_generate_img_per_s": round(args.batch / t_generate, 3),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"VAR-d{args.depth} ({sum(p.numel() for p in model.var.parameters()) / 1e6:.0f}M params), batch "
          f"{args.batch}, {device} {args.dtype}, {result['threads']} threads")
    print(f"  teacher-forced forward : {t_forward:7.2f} s  -> {result['teacher_forced_img_per_s']:.3f} images/s")
    print(f"  prefix generation      : {t_generate:7.2f} s  -> {result['prefix_generate_img_per_s']:.3f} images/s "
          f"({prefix.shape[1]}-token prefix, cfg {args.cfg}, greedy)")


if __name__ == "__main__":
    main()
