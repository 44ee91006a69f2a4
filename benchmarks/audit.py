"""Throughput of the extraction audit (candidates/s) on a randomly initialised VAR-d16 with its full-size VQVAE.

One audited candidate costs: loading its canonical view, tokenizing it, decoding the reconstruction, one
teacher-forced pass (its greedy-hit rate under this model), greedy generation from the 4-scale (30-token)
prefix, decoding the generation, and SSCD descriptors of view, reconstruction and generation. The benchmark
times :func:`memprune.evaluators.audit.audit_batch` end to end and each stage on its own. Random weights do not
change the arithmetic cost. Images are scikit-image photos.

Examples:
    python benchmarks/audit.py --quick                 # CPU, 2 candidates per batch, 2 timed batches
    python benchmarks/audit.py --device cuda --batch 32 --batches 5 --sscd onnx
    python benchmarks/audit.py --depth 30 --device cuda --json audit_d30.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from memprune.evaluators import audit as A
from memprune.evaluators.sscd import load_sscd
from memprune.families.var.model import VARConfig, build_var_model
from memprune.families.var.vqvae import VQVAEConfig

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "cat")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _photos(folder: Path, n: int) -> list[A.Candidate]:
    from skimage import data

    out = []
    for k in range(n):
        name = PHOTOS[k % len(PHOTOS)]
        path = folder / f"{k:04d}_{name}.png"
        Image.fromarray(getattr(data, name)()).save(path)
        out.append(A.Candidate(path, k % 1000, path.name))
    return out


def _timed(fn, device):  # noqa: ANN001, ANN202
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=3, help="timed batches (one more runs first as warm-up)")
    parser.add_argument("--sscd", default="onnx", help="SSCD spec passed to load_sscd (onnx, a .torchscript.pt path...)")
    parser.add_argument("--quick", action="store_true", help="batch 2, 2 timed batches (CPU-friendly)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.batches = 2, 2
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    width = 64 * args.depth
    config = VARConfig(depth=args.depth, width=width, num_heads=args.depth, mlp_hidden=4 * width)
    model, build_s = _timed(lambda: build_var_model(config, VQVAEConfig(), seed=0, device=device, dtype=dtype), device)
    sscd = load_sscd(args.sscd, device=device)
    settings = A.AuditSettings(attack="paper", batch_size=args.batch)
    paper = settings.conditions(model)
    with tempfile.TemporaryDirectory() as tmp:
        cands = _photos(Path(tmp), args.batch * (args.batches + 1))
        batches = [list(enumerate(cands))[i : i + args.batch] for i in range(0, len(cands), args.batch)]
        A.audit_batch({"model": model}, sscd, batches[0], settings, paper)  # warm-up
        total = 0.0
        stages = dict.fromkeys(("load", "encode", "decode_reference", "teacher_forced", "generate", "decode_generation", "sscd"), 0.0)
        for chunk in batches[1:]:
            _, seconds = _timed(lambda: A.audit_batch({"model": model}, sscd, chunk, settings, paper), device)
            total += seconds
            views, t = _timed(lambda: A.load_views([c for _, c in chunk], model).to(device), device)
            stages["load"] += t
            tokens, t = _timed(lambda: model.encode(views), device)
            stages["encode"] += t
            recon, t = _timed(lambda: model.decode(tokens), device)
            stages["decode_reference"] += t
            labels = torch.tensor([c.label for _, c in chunk], device=device)
            _, t = _timed(lambda: A.greedy_hit_rates(model, tokens, labels), device)
            stages["teacher_forced"] += t
            gen, t = _timed(lambda: model.generate(labels, prefix=tokens[:, :30], greedy=True), device)
            stages["generate"] += t
            images, t = _timed(lambda: model.decode(gen), device)
            stages["decode_generation"] += t
            _, t = _timed(lambda: sscd.embed(torch.cat([views.cpu(), recon.cpu(), images.cpu()]), batch_size=3 * len(chunk)), device)
            stages["sscd"] += t
    n = args.batch * args.batches
    result = {
        "model": f"VAR-d{args.depth} (random init) + VQVAE ch160", "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "dtype": args.dtype, "batch": args.batch, "candidates_timed": n,
        "sscd": sscd.backend_id, "build_s": round(build_s, 2),
        "candidates_per_s": round(n / total, 3), "seconds_per_candidate": round(total / n, 3),
        "stage_seconds_per_candidate": {k: round(v / n, 3) for k, v in stages.items()},
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
