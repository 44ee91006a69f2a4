"""One GPU check: the CUDA tests, then speed and bf16 agreement on random full-size models; one table + JSON.

    python benchmarks/gpu_check.py                          # CUDA, full sizes (target: < 8 min on one H100/H200)
    python benchmarks/gpu_check.py --official-var ~/VAR     # also our VAR forward vs the official code
    python benchmarks/gpu_check.py --device cpu --quick     # tiny sizes, end to end on a CPU (what CI runs)

Installs nothing and downloads nothing. Models are random (same shapes and cost as the releases): VAR-d16 and
VAR-d30 with the full VQVAE, RAR-XXL with the MaskGIT-VQGAN tokenizer, LlamaGen-XXL (384 px) when
``memprune.families.llamagen.model`` exists at run time (otherwise a note). Per model:

* ``tf_fp32`` / ``tf_bf16``: teacher-forced images/s (random tokens, no tokenizer), exact fp32 vs bf16 autocast;
* ``score_overhead``: ``score`` (PNG loading, hooks, statistics) over a bare encode + teacher-forced pass on the
  same images, median of interleaved rounds (bf16 on CUDA, as ``score`` runs by default there);
* ``top10_overlap``: |A and B| / |A| of the top-10% unit sets (UnitMem max over image-dependent groups, global)
  of two ``score`` runs on the same images, fp32 (A) vs bf16 (B);
* ``prefix_cand_s``: greedy prefix completions per second, the audit's default prefix (VAR 4 scales, else 30
  tokens), guidance 1.5, bf16 on CUDA;
* ``fid_img_s``: FID images/s (published sampling settings, decode, Inception) without the distance step; the
  Inception weights are the real ones when cached locally, else random (same cost; noted).

``--official-var DIR`` runs ``benchmarks/var_vs_official.py`` (forward workload, VAR-d16 weights it makes) for
the agreement of our forward with the official code on the same weights (it runs on the CPU); without it, a note.
``pytest -m cuda`` runs first (skipped with ``--skip-pytest`` or on ``--device cpu``). Writes ``--json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchmarks/score.py: the bare forward and the image maker

from score import bare_forward, make_images  # noqa: E402

from memprune.data import ViewPipeline, load_records  # noqa: E402
from memprune.scoring import score  # noqa: E402
from memprune.selection import parse_top, select_units  # noqa: E402


class Skip(Exception):
    """A model or step that cannot run here; its message is the note."""


# ---------------------------------------------------------------------------------------------- models
def build(name: str, quick: bool, device: str) -> Any:
    """A random model of ``name`` (full size, or tiny with ``quick``) on ``device``, exact fp32 to start."""
    if name.startswith("var"):
        if quick and name != "var-d16":
            raise Skip("quick: the tiny VAR stands in for every depth (measured as var-d16)")
        from memprune.families.var.model import VARConfig, VQVAEConfig, build_var_model

        if quick:
            cfg = VARConfig(depth=2, width=64, num_heads=2, mlp_hidden=128, vocab_size=64, cvae=8, num_classes=4,
                            patch_nums=(1, 2, 4, 8))
            return build_var_model(cfg, VQVAEConfig(vocab_size=64, z_channels=8, ch=32, num_hit_scales=4), device=device)
        return build_var_model(VARConfig.release(int(name.split("-d")[1])), VQVAEConfig(), device=device)
    if name == "rar-xxl":
        from memprune.families.rar.maskgit_vqgan import MaskGITVQGANConfig
        from memprune.families.rar.model import build_random_rar
        from memprune.families.rar.transformer import RAR_CONFIGS, RARConfig

        if quick:
            cfg = RARConfig(hidden_size=64, depth=2, num_heads=4, mlp_hidden=128, codebook_size=64, num_classes=4)
            tok = MaskGITVQGANConfig(hidden_channels=32, num_res_blocks=1, z_channels=16, codebook_size=64)
            return build_random_rar(cfg, tok, device=device)
        return build_random_rar(RAR_CONFIGS["rar_xxl"], device=device)
    if name == "llamagen-xxl":
        if importlib.util.find_spec("memprune.families.llamagen.model") is None:
            raise Skip("no LlamaGen family in this memprune (memprune.families.llamagen.model missing)")
        from memprune.families.llamagen.model import build_random_llamagen
        from memprune.families.llamagen.transformer import LLAMAGEN_CONFIGS, LlamaGenConfig
        from memprune.families.llamagen.vq import VQConfig

        if quick:
            cfg = LlamaGenConfig(dim=64, n_layer=2, n_head=4, ffn_hidden=128, vocab_size=64, num_classes=4)
            return build_random_llamagen(cfg, VQConfig(ch=32, num_res_blocks=1, z_channels=32, codebook_size=64),
                                         device=device)
        return build_random_llamagen(LLAMAGEN_CONFIGS["GPT-XXL"], device=device)  # 24 x 24 tokens, 384 px
    raise Skip(f"unknown model {name}")


def _set_precision(model: Any, bf16: bool) -> None:
    # Every family keeps float32 weights and runs its transformer under autocast when amp_dtype is set.
    model.amp_dtype = torch.bfloat16 if bf16 else None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- measurements
def teacher_forced_rate(model: Any, batch: int, iters: int, device: str) -> float:
    """Images/s of ``teacher_forced`` on random tokens (one warm-up call first)."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.vocab_size, (batch, model.seq_len), generator=gen).to(device)
    labels = torch.randint(0, model.num_classes, (batch,), generator=gen).to(device)
    with torch.no_grad():
        model.teacher_forced(tokens, labels)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            model.teacher_forced(tokens, labels)
        _sync(device)
    return batch * iters / (time.perf_counter() - t0)


def scoring(model: Any, data: Path, n: int, batch: int, rounds: int, device: str) -> dict[str, Any]:
    """Overhead (bf16 on CUDA) and the fp32/bf16 top-10% overlap, on the same ``n`` images."""
    records = load_records(data).records[:n]
    views = torch.stack([ViewPipeline("center", model.image_size).load(r, 1)[0] for r in records])
    labels = torch.tensor([r.label % model.num_classes for r in records])
    records = [type(r)(r.path, r.label % model.num_classes, r.id) for r in records]
    bf16 = device.startswith("cuda")
    _set_precision(model, bf16)
    bare_forward(model, views[:batch], labels[:batch], batch)  # warm-up
    ratios, runs = [], {}
    for _ in range(rounds):
        bare = bare_forward(model, views, labels, batch)
        res = score(model, records, augment=False, batch_size=batch, device=device, workers=4)
        ratios.append(res.seconds / bare)
        runs["bf16" if bf16 else "fp32"] = res.scores
    _set_precision(model, not bf16)
    runs["fp32" if bf16 else "bf16"] = score(model, records, augment=False, batch_size=batch, device=device).scores
    _set_precision(model, False)
    top = {k: _top_units(s) for k, s in runs.items()}
    return {"score_overhead": statistics.median(ratios), "overhead_rounds": ratios, "scored_images": n,
            "top10_overlap": len(top["fp32"] & top["bf16"]) / max(1, len(top["fp32"])), "top10_units": len(top["fp32"])}


def _top_units(scores: Any) -> set[tuple[str, int]]:
    used = [i for i, g in enumerate(scores.groups) if g not in set(scores.image_independent)] or list(range(len(scores.groups)))
    agg = {name: v.float()[used].amax(0) for name, v in scores.scores.items()}
    sel = select_units(agg, parse_top("10%"), "global")
    return {(name, u) for name, units in sel.units.items() for u in units}


def prefix_rate(model: Any, batch: int, device: str) -> float:
    """Greedy completions after the audit's default prefix, per second (bf16 on CUDA)."""
    bounds = model.valid_prefix_lengths()
    k = bounds[min(4, len(bounds) - 1)] if bounds else min(30, model.seq_len - 1)
    gen = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, model.vocab_size, (batch, k), generator=gen).to(device)
    labels = torch.randint(0, model.num_classes, (batch,), generator=gen).to(device)
    _set_precision(model, device.startswith("cuda"))
    with torch.no_grad():
        model.generate(labels[:1], prefix=prefix[:1], cfg=1.5, greedy=True)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        model.generate(labels, prefix=prefix, cfg=1.5, greedy=True)
        _sync(device)
    _set_precision(model, False)
    return batch / (time.perf_counter() - t0)


def fid_rate(model: Any, n: int, batch: int, device: str, notes: list[str]) -> float:
    """FID images/s (sampling, decode, Inception; the distance step excluded)."""
    from memprune.evaluators import generation as G
    from memprune.evaluators.fid import FIDStats
    from memprune.evaluators.inception import FIDInceptionV3, load_inception
    from memprune.errors import MempruneError

    try:
        net = load_inception("auto", device=device)
    except MempruneError:
        net = FIDInceptionV3().to(device).eval()
        note = "FID Inception weights not cached here: random weights of the same network (timing only)"
        if note not in notes:
            notes.append(note)
    dim = 2048
    ref = FIDStats(torch.zeros(dim).double().numpy(), torch.eye(dim).double().numpy())
    labels = G.fid_labels(list(range(min(model.num_classes, n))), max(1, n // min(model.num_classes, n)))
    _set_precision(model, device.startswith("cuda"))
    run = G.evaluate_fid(model, net, ref, labels, G.published_settings(model), batch_size=batch, kid_subsets=0)
    _set_precision(model, False)
    return run.images_per_second


def official_var(path: str | None, quick: bool) -> dict[str, Any]:
    """Our VAR forward against the official code (CPU, ``var_vs_official.py``), or a note why not."""
    if not path:
        return {"note": "skipped: pass --official-var DIR (a FoundationVision/VAR checkout) to compare forwards"}
    if not (Path(path) / "models").is_dir():
        return {"note": f"skipped: {path} has no models/ folder (not a VAR checkout)"}
    script = HERE / "var_vs_official.py"
    with tempfile.TemporaryDirectory() as tmp:
        depth = "2" if quick else "16"
        subprocess.run([sys.executable, str(script), "make-weights", "--depth", depth, "--out", tmp], check=True,
                       capture_output=True, text=True)
        out = Path(tmp) / "compare.json"
        proc = subprocess.run([sys.executable, str(script), "compare", "--official", path, "--weights", tmp, "--depth",
                               depth, "--rounds", "1", "--workloads", "forward", "--json-out", str(out)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return {"note": f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"}
        return json.loads(out.read_text())


def run_pytest(skip: bool) -> dict[str, Any]:
    if skip:
        return {"note": "skipped"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"],
                          cwd=HERE.parent, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return {"exit_code": proc.returncode, "summary": tail, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny models and few images (CPU smoke run)")
    ap.add_argument("--models", default="var-d16,var-d30,rar-xxl,llamagen-xxl")
    ap.add_argument("--official-var", default=None, help="folder of a FoundationVision/VAR checkout")
    ap.add_argument("--skip-pytest", action="store_true")
    ap.add_argument("--json", default="gpu_check.json", help="where to write the results")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run with --device cpu --quick for the CPU smoke run")
    quick = args.quick
    sizes = dict(batch=4, tf_iters=1, images=8, rounds=1, fid_images=4) if quick else \
        dict(batch=16, tf_iters=5, images=128, rounds=3, fid_images=64)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "schema": "memprune.gpu_check/1", "device": args.device, "quick": quick, "sizes": sizes,
        "environment": {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "threads": torch.get_num_threads()},
        "pytest_cuda": run_pytest(args.skip_pytest or args.device == "cpu"), "models": {}, "notes": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folders: dict[int, Path] = {}
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            row: dict[str, Any] = {}
            try:
                t0 = time.perf_counter()
                model = build(name, quick, args.device)
                row["build_s"] = time.perf_counter() - t0
                if model.image_size not in folders:
                    folders[model.image_size] = make_images(Path(tmp) / str(model.image_size), sizes["images"],
                                                            size=model.image_size, classes=4)
                for bf16 in (False, True):
                    _set_precision(model, bf16)
                    row["tf_bf16" if bf16 else "tf_fp32"] = teacher_forced_rate(model, sizes["batch"], sizes["tf_iters"], args.device)
                _set_precision(model, False)
                row.update(scoring(model, folders[model.image_size], sizes["images"], sizes["batch"], sizes["rounds"], args.device))
                row["prefix_cand_s"] = prefix_rate(model, sizes["batch"], args.device)
                row["fid_img_s"] = fid_rate(model, sizes["fid_images"], sizes["batch"], args.device, result["notes"])
                if args.device.startswith("cuda"):
                    row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            except Skip as exc:
                row["note"] = str(exc)
            except Exception as exc:  # noqa: BLE001 - one failing model must not hide the others' figures
                row["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                model = None
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
            result["models"][name] = row
    result["official_var"] = official_var(args.official_var, quick)
    result["seconds"] = time.perf_counter() - started
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"wrote {args.json} ({result['seconds']:.0f} s)")
    return result


def table(result: dict[str, Any]) -> str:
    cols = [("tf_fp32", "tf fp32 img/s"), ("tf_bf16", "tf bf16 img/s"), ("score_overhead", "score/bare"),
            ("top10_overlap", "top10% fp32~bf16"), ("prefix_cand_s", "prefix cand/s"), ("fid_img_s", "FID img/s")]
    head = f"{'model':<14}" + "".join(f"{label:>18}" for _, label in cols)
    lines = [f"GPU check on {result['environment']['gpu'] or result['device']} (quick={result['quick']})", head]
    for name, row in result["models"].items():
        if "note" in row:
            lines.append(f"{name:<14}  {row['note']}")
            continue
        lines.append(f"{name:<14}" + "".join(f"{row[k]:>18.3f}" if isinstance(row.get(k), float) else f"{'-':>18}"
                                             for k, _ in cols))
        if "error" in row:  # the figures measured before the failure stay in the row
            lines.append(f"{'':<14}  error: {row['error']}")
    p = result["pytest_cuda"]
    lines.append(f"pytest -m cuda: {p.get('summary') or p.get('note')}")
    o = result["official_var"]
    lines.append(f"VAR vs official: {o.get('note') or json.dumps(o.get('agreement', o))[:200]}")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
