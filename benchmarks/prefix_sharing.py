"""What sharing the ground-truth prefix pass saves in the multi-condition audit (bundled demo VAR, robust grid).

The robust grid runs, at each prefix, greedy decoding and three seeds: four completions of one prefix. With
prefix sharing (the default) the prefix pass and its KV cache are computed once per batch, prefix and guidance
and every condition continues from a copy; without it each condition's ``generate`` reruns the prefix.

Two measurements, each as the median of interleaved rounds (shared, per-condition, shared, ...) on the same
candidates, with the results checked bit for bit between the two paths:

* ``generation``: the completions alone (what sharing changes);
* ``audit``: :func:`audit_conditions` end to end (decoding the tokens and SSCD embedding included, which
  sharing does not change), with ``--audit``.

    python benchmarks/prefix_sharing.py [--candidates 32] [--batch 16] [--rounds 3] [--audit] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from memprune.demo.assets import load_demo_assets
from memprune.evaluators.audit_candidates import Candidate, load_views
from memprune.evaluators.conditions import default_conditions, prefix_tokens
from memprune.evaluators.multi_audit import ReferenceSet, audit_conditions, complete, prefill
from memprune.families.var.model import load_var


def generate_all(model, tokens: torch.Tensor, labels: torch.Tensor, conds, batch: int, share: bool) -> list[torch.Tensor]:
    """Every condition's completions of every batch, as :func:`audit_conditions` runs them."""
    out = []
    for start in range(0, len(tokens), batch):
        toks, labs = tokens[start : start + batch], labels[start : start + batch]
        states: dict = {}
        for cond in conds:
            n = prefix_tokens(model, cond.prefix)
            key = (n, model.prefill_group(cond.cfg))
            if share and key not in states:
                states[key] = prefill(model, toks, labs, n, cond)
            state = states[key] if share else None
            out.append(complete(model, toks, labs, n, cond, start, state))
    return out


def timed(fn):  # noqa: ANN001, ANN201
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=32, help="first N demo images (ground-truth order)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--audit", action="store_true", help="also time audit_conditions end to end (SSCD: slow)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    assets = load_demo_assets(None)
    model = load_var(assets.var_path, assets.vae_path, device="cpu")
    cands = [Candidate(im.path, im.label, im.id) for im in assets.images[: args.candidates]]
    conds = default_conditions(model, "robust")
    tokens = torch.cat([model.encode(load_views(cands[i : i + args.batch], model))
                        for i in range(0, len(cands), args.batch)])  # fmt: skip
    labels = torch.tensor([c.label for c in cands])
    sscd = refs = None
    if args.audit:
        from memprune.evaluators import load_sscd

        sscd = load_sscd("onnx", device="cpu")
        refs = ReferenceSet.build(model, cands, sscd, batch_size=args.batch)
    times: dict[str, list[float]] = {"generation_shared": [], "generation_per_condition": []}
    for _ in range(args.rounds):
        t_shared, shared = timed(lambda: generate_all(model, tokens, labels, conds, args.batch, True))
        t_alone, alone = timed(lambda: generate_all(model, tokens, labels, conds, args.batch, False))
        assert all(torch.equal(a, b) for a, b in zip(shared, alone)), "shared and per-condition tokens differ"
        times["generation_shared"].append(t_shared)
        times["generation_per_condition"].append(t_alone)
        if sscd is not None and refs is not None:
            run = lambda share: audit_conditions(model, refs, conds, sscd, batch_size=args.batch, share_prefix=share)  # noqa: E731
            t_a, res_a = timed(lambda: run(True))
            t_b, res_b = timed(lambda: run(False))
            assert torch.equal(res_a.similarity, res_b.similarity), "shared and per-condition rows differ"
            times.setdefault("audit_shared", []).append(t_a)
            times.setdefault("audit_per_condition", []).append(t_b)
    med = {k: round(statistics.median(v), 2) for k, v in times.items()}
    out = {
        "model": "bundled demo VAR", "seq_len": model.seq_len, "candidates": len(cands), "batch": args.batch,
        "conditions": [f"{c.key} ({prefix_tokens(model, c.prefix)} tokens)" for c in conds],
        "threads": torch.get_num_threads(), "rounds": args.rounds, "seconds_median": med,
        "seconds_all": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "generation_speedup": round(med["generation_per_condition"] / med["generation_shared"], 3),
    }
    if "audit_shared" in med:
        out["audit_speedup"] = round(med["audit_per_condition"] / med["audit_shared"], 3)
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
