"""Benchmark of ``memprune score``: overhead over the bare forward, memory vs data size, and a VAR-d30 estimate.

    python benchmarks/score.py                      # CPU defaults, a few minutes on 2 cores
    python benchmarks/score.py --device cuda --images 2000 --batch-size 64

1. **Overhead.** The same images (a random small VAR at 64 px: depth 4, width 256, 4 scales, release-layout
   VQVAE with ch 32) are run (a) bare: views preloaded in memory, ``encode`` + ``teacher_forced`` per batch,
   no hooks; (b) the same plus the group-mean hooks; (c) plus the streaming statistics; (d) through
   ``score(...)`` (images read from PNG files by the prefetching loader). Each of ``--repeat`` rounds runs all
   four back to back; reported: the median over rounds of time(x) / time(bare), so (b), (c) and (d) show where
   the overhead goes.
2. **Memory.** Peak RSS (CPU) or peak CUDA memory of a fresh process scoring 100 and then 1000 images; the
   statistics are O(units x groups), so the two should be close (only the image-id list grows).
3. **Estimate** of 1% of ImageNet (12,811 images, 10 views each) on VAR-d30 on one GPU, from FLOPs:
   transformer ``2 x params x L`` plus attention ``4 x L^2 x C x depth`` per view, plus the VQVAE encoder
   (measured here by counting its convolution MACs at 256 px), divided by an assumed sustained bf16 throughput
   (``--gpu-tflops``, default 300 TFLOP/s, ~30-40% of an H100's dense bf16 peak), times the measured overhead.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from memprune.data import ViewPipeline, load_records
from memprune.families.var.model import VARConfig, VQVAEConfig, build_var_model
from memprune.scoring import score

SMALL = VARConfig(depth=4, width=256, num_heads=4, mlp_hidden=1024, vocab_size=512, num_classes=10,
                  patch_nums=(1, 2, 3, 4))
SMALL_VAE = VQVAEConfig(vocab_size=512, ch=32, num_hit_scales=4)


def make_images(root: Path, n: int, size: int = 64, classes: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        # smooth random images (low-frequency noise upsampled) so the tokenizer sees structure
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{i:05d}.png")
    return root


def _sync(model) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def bare_forward(model, views: torch.Tensor, labels: torch.Tensor, batch: int, stage: str = "bare") -> float:
    """One pass over preloaded views; ``stage`` adds the scoring pieces one at a time.

    ``bare``: encode + teacher_forced. ``hooks``: + the group-mean hooks. ``stats``: + the streaming statistics
    (everything ``score`` does except reading the images from disk and the run's bookkeeping).
    """
    from memprune.scoring.hooks import capture_groups
    from memprune.scoring.stats import StreamingStats

    points = model.hook_points("fc1")
    cap_ctx = capture_groups(points, model.position_groups()) if stage != "bare" else None
    stats = None
    _sync(model)
    t0 = time.perf_counter()
    with torch.no_grad():
        cap = cap_ctx.__enter__() if cap_ctx is not None else None
        try:
            for b in range(0, len(views), batch):
                x = views[b : b + batch].to(model.device)
                y = labels[b : b + batch].to(model.device)
                tokens = model.encode(x)
                if cap is not None:
                    cap.begin()
                model.teacher_forced(tokens, y)
                if cap is None:
                    continue
                values = cap.end()
                if stage == "stats":
                    if stats is None:
                        stats = StreamingStats({k: tuple(v.shape[1:]) for k, v in values.items()}, model.device)
                    index = torch.arange(b, b + len(x), device=model.device)
                    for name, value in values.items():
                        stats.update(name, value, index)
                    stats.add_images(len(x))
        finally:
            if cap_ctx is not None:
                cap_ctx.__exit__(None, None, None)
    _sync(model)
    return time.perf_counter() - t0


def overhead(args: argparse.Namespace, data: Path) -> dict:
    """Interleaved rounds of bare / hooks / stats / score on the same images; ratios per round, then the median.

    Interleaving puts every variant under the same machine load in each round (the build machine is shared), and
    the median of the per-round ratios is robust to a round disturbed by other jobs.
    """
    model = build_var_model(SMALL, SMALL_VAE, seed=0, device=args.device)
    records = load_records(data).records[: args.images]
    pipe = ViewPipeline("center", model.image_size)
    views = torch.stack([pipe.load(r, 1)[0] for r in records])
    labels = torch.tensor([r.label for r in records])
    bare_forward(model, views[: args.batch_size], labels[: args.batch_size], args.batch_size)  # warm-up
    rounds, cpu_rounds = [], []
    for _ in range(args.repeat):
        t, c = {}, {}
        for stage in ("bare", "hooks", "stats"):
            c0 = time.process_time()
            t[stage] = bare_forward(model, views, labels, args.batch_size, stage)
            c[stage] = time.process_time() - c0
        c0 = time.process_time()
        t["score"] = score(model, records, augment=False, batch_size=args.batch_size, device=args.device,
                           workers=args.workers).seconds
        c["score"] = time.process_time() - c0  # includes score()'s setup (probe forward, finishing): an upper bound
        rounds.append(t)
        cpu_rounds.append(c)
    med = {k: statistics.median(r[k] / r["bare"] for r in rounds) for k in ("hooks", "stats", "score")}
    cpu = {k: statistics.median(r[k] / r["bare"] for r in cpu_rounds) for k in ("hooks", "stats", "score")}
    return {"images": len(records), "batch_size": args.batch_size, "rounds": rounds, "cpu_rounds": cpu_rounds,
            "bare_s": statistics.median(r["bare"] for r in rounds), "score_s": statistics.median(r["score"] for r in rounds),
            "ratio": med["score"], "ratio_hooks": med["hooks"], "ratio_stats": med["stats"],
            "cpu_ratio": cpu["score"], "cpu_ratio_hooks": cpu["hooks"], "cpu_ratio_stats": cpu["stats"],
            "score_img_per_s": len(records) / statistics.median(r["score"] for r in rounds)}


def child(n: int, data: str, device: str, batch: int) -> None:
    model = build_var_model(SMALL, SMALL_VAE, seed=0, device=device)
    records = load_records(data).records[:n]
    score(model, records, augment=False, batch_size=batch, device=device)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"images": n, "peak_bytes": peak}))


def memory(args: argparse.Namespace, data: Path) -> list[dict]:
    out = []
    for n in (100, 1000):
        cmd = [sys.executable, __file__, "--child", str(n), "--data", str(data), "--device", args.device,
               "--batch-size", str(args.batch_size)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        out.append(json.loads(line))
    return out


def vae_encoder_macs(resolution: int = 256) -> float:
    """Multiply-accumulates of the release VQVAE encoder + quant_conv at ``resolution``, counted by hooks."""
    from memprune.families.var.vqvae import VQVAE

    with torch.device("meta"):
        vae = VQVAE(VQVAEConfig())
    macs = 0.0

    def conv_hook(mod, inp, out):
        nonlocal macs
        macs += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]

    hooks = [m.register_forward_hook(conv_hook) for m in vae.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        vae.features(torch.zeros(1, 3, resolution, resolution, device="meta"))
    except Exception:  # noqa: BLE001 - meta tensors cannot run every op; fall back to a published-size estimate
        macs = macs or 2.6e11
    for h in hooks:
        h.remove()
    return macs


def estimate(args: argparse.Namespace, ratio: float) -> dict:
    cfg = VARConfig.release(30)
    L, C, depth = cfg.seq_len, cfg.width, cfg.depth
    params = 2_010_020_356  # var.md, VAR-d30
    transformer = 2 * params * L + 4 * L * L * C * depth
    encoder = 2 * vae_encoder_macs(256)
    views = 12_811 * 10
    flops = views * (transformer + encoder)
    seconds = flops / (args.gpu_tflops * 1e12) * max(1.0, ratio)
    return {"views": views, "tflop_per_view": (transformer + encoder) / 1e12, "total_pflop": flops / 1e15,
            "assumed_tflops": args.gpu_tflops, "overhead_factor": max(1.0, ratio), "hours": seconds / 3600}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds (the median ratio is reported)")
    ap.add_argument("--skip-memory", action="store_true", help="only the overhead rounds")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpu-tflops", type=float, default=300.0)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.data, args.device, args.batch_size)
        return
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_images(Path(tmp) / "data", max(1000, args.images))
        over = overhead(args, data)
        print(f"overhead: {over['images']} images, batch {over['batch_size']}, median of {args.repeat} interleaved rounds: "
              f"bare {over['bare_s']:.2f}s, score {over['score_s']:.2f}s; ratio to bare: hooks {over['ratio_hooks']:.3f}, "
              f"+stats {over['ratio_stats']:.3f}, score {over['ratio']:.3f} ({over['score_img_per_s']:.1f} img/s); "
              f"process CPU time ratios: hooks {over['cpu_ratio_hooks']:.3f}, +stats {over['cpu_ratio_stats']:.3f}, "
              f"score {over['cpu_ratio']:.3f}")
        mem = memory(args, data) if not args.skip_memory else []
        for m in mem:
            print(f"memory: {m['images']} images -> peak {m['peak_bytes'] / 2**20:.1f} MiB")
    est = estimate(args, over["ratio"])
    print(f"estimate VAR-d30, 1% ImageNet x 10 views = {est['views']:,} views, {est['tflop_per_view']:.2f} TFLOP/view, "
          f"{est['total_pflop']:.0f} PFLOP -> {est['hours']:.2f} h at {est['assumed_tflops']:.0f} TFLOP/s "
          f"x overhead {est['overhead_factor']:.2f}")
    print(json.dumps({"overhead": over, "memory": mem, "estimate": est}, indent=2))


if __name__ == "__main__":
    main()
