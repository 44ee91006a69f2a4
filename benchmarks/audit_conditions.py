"""Paper vs robust extraction audit of the bundled demo VAR (``memprune demo`` data), with what is shared.

Audits the original bundled model on the duplicated images (32), a seeded class-balanced sample of 64 images
seen once (``memprune.demo.run.pick_candidates``, seed 0) and the 64 held-out images, once under
``--attack paper`` (1 condition) and once under ``--attack robust`` (12 conditions), on one
:class:`ReferenceSet`. Prints per-role counts (union, per condition, first condition) and timings as JSON.

    python benchmarks/audit_conditions.py [--batch 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from memprune.demo.assets import load_demo_assets
from memprune.demo.run import pick_candidates
from memprune.evaluators import load_sscd
from memprune.evaluators.audit_candidates import Candidate
from memprune.evaluators.conditions import default_conditions, prefix_tokens
from memprune.evaluators.multi_audit import ReferenceSet, audit_conditions
from memprune.families.var.model import load_var


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample of seen-once images")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    assets = load_demo_assets(None)
    model = load_var(assets.var_path, assets.vae_path, device="cpu")
    images = pick_candidates(assets, singles=64, duplicated=None, seed=args.seed) + assets.role("heldout")
    role = {im.id: im.role for im in images}
    cands = [Candidate(im.path, im.label, im.id) for im in images]
    sscd = load_sscd("onnx", device="cpu")
    t = time.perf_counter()
    refs = ReferenceSet.build(model, cands, sscd, batch_size=args.batch)
    out: dict = {"candidates": {r: sum(v == r for v in role.values()) for r in ("duplicated", "single", "heldout")},
                 "reference_seconds": round(time.perf_counter() - t, 1), "batch": args.batch,
                 "threads": torch.get_num_threads(), "sscd": sscd.backend_id}
    for attack in ("paper", "robust"):
        conds = default_conditions(model, attack)
        t = time.perf_counter()
        res = audit_conditions(model, refs, conds, sscd, batch_size=args.batch)
        seconds = time.perf_counter() - t
        by_role = {}
        for r in ("duplicated", "single", "heldout"):
            ids = [i for i in refs.ids if role[i] == r]
            keep = torch.tensor([role[i] == r for i in refs.ids])
            sub = res.extracted_matrix[keep]
            firsts = [f for f, k in zip(res.first_condition, keep.tolist()) if k and f]
            by_role[r] = {"extracted": res.count(ids), "of": len(ids),
                          "per_condition": {c.key: int(n) for c, n in zip(conds, sub.sum(dim=0).tolist())},
                          "first_condition": {c.key: firsts.count(c.key) for c in conds if firsts.count(c.key)}}
        out[attack] = {"conditions": [f"{c.key} ({prefix_tokens(model, c.prefix)} tokens)" for c in conds],
                       "seconds": round(seconds, 1), "by_role": by_role}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
