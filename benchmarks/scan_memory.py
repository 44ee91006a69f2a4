"""Memory of the candidate selection: every rate (before) against the bounded per-class top-k (now).

Builds N synthetic images in C classes (ImageNet-like ids), writes a ``scan.jsonl`` with one rate per image
(few distinct values, so ranks tie), and measures with ``tracemalloc`` the peak Python memory of picking the
top ``k`` per class from that log, beyond the image list itself (which the caller holds either way):

* ``every_rate``: what the scan did before: read the whole log, a dict of every rate, every image with its
  rate, then sort each class;
* ``top_k``: :func:`memprune.evaluators.audit_scan.replay_log` into a :class:`TopPerClass` (what ``--resume``
  and a fresh scan now keep).

Both must select the same images (checked). Prints JSON.

    python benchmarks/scan_memory.py [--images 1281167] [--classes 1000] [--per-class 5]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

from memprune.evaluators.audit_candidates import Candidate, select_top_per_class
from memprune.evaluators.audit_report import read_jsonl
from memprune.evaluators.audit_scan import TopPerClass, replay_log


def every_rate(log: Path, images: list[Candidate], k: int) -> list[Candidate]:
    """The selection as the scan made it before the heaps (``_read_scan`` + ``scan_models`` + a sort per class)."""
    done = {str(r["id"]): float(r["hit_rate"]) for r in read_jsonl(log)}
    scanned = [replace(c, hit_rate=done[c.id]) for c in images]
    by_class: dict[int, list[Candidate]] = {}
    for c in scanned:
        by_class.setdefault(c.label, []).append(c)
    return [c for label in sorted(by_class) for c in sorted(by_class[label], key=lambda c: (-c.hit_rate, c.id))[:k]]


def top_k(log: Path, images: list[Candidate], k: int) -> list[Candidate]:
    top = TopPerClass(k)
    replay_log(log, images, top)
    return top.ranked()


def measure(fn, *args):  # noqa: ANN001, ANN201
    tracemalloc.start()
    t = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, peak / 2**20, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_281_167)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(0)
    images = [Candidate(Path(f"/data/train/n{i % args.classes:08d}/n{i % args.classes:08d}_{i}.JPEG"), i % args.classes,
                        f"n{i % args.classes:08d}/n{i % args.classes:08d}_{i}.JPEG") for i in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "scan.jsonl"
        with open(log, "w", encoding="utf-8") as fh:
            for c in images:
                fh.write(json.dumps({"hit_rate": round(rng.random(), 2), "id": c.id, "label": c.label}, sort_keys=True) + "\n")
        new, new_mb, new_s = measure(top_k, log, images, args.per_class)
        old, old_mb, old_s = measure(every_rate, log, images, args.per_class)
        assert new == old == select_top_per_class(old, args.per_class), "the two selections differ"
        size = log.stat().st_size
    print(json.dumps({
        "images": args.images, "classes": args.classes, "per_class": args.per_class, "log_mb": round(size / 2**20, 1),
        "peak_mb": {"every_rate": round(old_mb, 1), "top_k": round(new_mb, 2)},
        "seconds": {"every_rate": round(old_s, 1), "top_k": round(new_s, 1)},
        "selected": len(new),
    }, indent=1))


if __name__ == "__main__":
    main()
