"""The demo's third column: ``memprune mitigate``'s recipe on the bundled model, rebuilt live, and its control.

``memprune mitigate`` with its default grid takes many minutes on CPU (docs/demo.md records the run and its
frontier); the demo replays the recipe it chose, every step measured in this run:

1. the multi-condition audit (the robust grid: VAR prefixes of 3, 4, 5 scales, greedy and sampled with seeds
   0..2) of the original model on the duplicated images; the extracted ones are the forget set, split in a
   selection half and a check half (seeded, as ``mitigate`` does);
2. attribution scores with the selection half as FORGET and RETAIN chosen as ``mitigate`` does (64 training
   images outside the forget set, class-balanced, seeded), the loss counted from the first generated token of the
   shortest prefix;
3. ``patch`` writes ``mitigated.safetensors`` (top ``share`` of units, fc1 rows x ``factor``, summed over
   scales) and a random-units control of the same count (``random.safetensors``).

The multi-condition audit of every model then reports the duplicated images extracted under any condition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memprune.demo.assets import DemoAssets, DemoImage

MITIGATE_METHOD = "attribution"
MITIGATE_SHARE = "60%"
MITIGATE_FACTOR = 0.0
"""The recipe ``memprune mitigate`` chose on the dense bundled model (docs/demo.md: command, seeds, frontier); each
model's own recipe is in :data:`memprune.demo.assets.DEMO_MODELS`."""


@dataclass
class RobustAudit:
    """The multi-condition audit's figures of each model on the duplicated images (union over conditions)."""

    conditions: list[str]
    paper_condition: str | None
    extracted: dict[str, int] = field(default_factory=dict)
    selection: dict[str, int] = field(default_factory=dict)
    check: dict[str, int] = field(default_factory=dict)
    forget: int = 0
    selection_half: int = 0
    check_half: int = 0
    units: int = 0


def _candidates(images: Sequence[DemoImage]) -> list[Any]:
    from memprune.evaluators.audit_candidates import Candidate

    return [Candidate(im.path, im.label, im.id) for im in images]


def build_mitigated(data: DemoAssets, original: Any, sscd: Any, out: Path, *, seed: int, batch_size: int,
                    dups: Sequence[DemoImage], retain: Sequence[DemoImage] | None = None, share: str = MITIGATE_SHARE,
                    factor: float = MITIGATE_FACTOR, prefixes: Sequence[int] | None = None,
                    seeds: Sequence[int] | None = None,
                    command: str = "memprune demo") -> tuple[RobustAudit, Any, dict[str, Any]]:
    """Audit the original under every condition, localize its extracted images, write the mitigated and random
    models; return the audit so far, the reference set and ``{name: PatchResult}``.

    ``dups``: the duplicated images audited; ``retain``: attribution's RETAIN images (default: ``mitigate``'s rule,
    64 training images outside the forget set, class-balanced, seeded); ``prefixes``/``seeds`` override the robust
    grid (tests use a small one).
    """
    from memprune.evaluators.conditions import default_conditions, paper_prefix, prefix_tokens
    from memprune.evaluators.multi_audit import ReferenceSet
    from memprune.io import checkpoint_sha256
    from memprune.mitigate.gate import union_audit
    from memprune.mitigate.run import split_halves
    from memprune.patching import patch
    from memprune.scoring.attribution import attribution_scores, random_score_set

    conds = default_conditions(original, "robust", prefixes, seeds)
    paper = next((c.key for c in conds if c.greedy and c.prefix == paper_prefix(original)), None)
    refs = ReferenceSet.build(original, _candidates(dups), sscd, batch_size=batch_size)
    base = union_audit(original, refs, conds, sscd, batch_size=batch_size, paper_key=paper)
    sel, chk = split_halves(sorted(base.extracted), seed)
    robust = RobustAudit([c.key for c in conds], paper, forget=len(base.extracted), selection_half=len(sel),
                         check_half=len(chk))
    robust.extracted["original"], robust.selection["original"], robust.check["original"] = (
        base.union_count, base.count(sel), base.count(chk))
    results: dict[str, Any] = {}
    digest = checkpoint_sha256(data.var_path)
    if sel:
        forget = [im.record() for im in dups if im.id in set(sel)]
        if retain is None:  # mitigate's own rule: a seeded, class-balanced sample of the images not extracted
            from memprune.mitigate.config import MitigateConfig
            from memprune.mitigate.run import _retain

            train = sorted((im.record() for im in data.training), key=lambda r: (r.label, r.id))  # as load_records
            retain_recs = _retain(train, sorted(base.extracted), MitigateConfig(seed=seed))
        else:
            retain_recs = [im.record() for im in retain]
        start = min(prefix_tokens(original, c.prefix) for c in conds)
        scores = attribution_scores(original, forget, retain_recs, digest=digest,
                                    batch_size=8, from_token=start)
        results["mitigated"] = patch(data.var_path, scores, output=out / "mitigated.safetensors", top=share,
                                     factor=factor, aggregate="sum", command=f"{command} (mitigate's recipe)")
        robust.units = results["mitigated"].selection.selected
        results["random"] = patch(data.var_path, random_score_set(original, seed, digest=digest),
                                  output=out / "random.safetensors", top=str(robust.units), factor=factor,
                                  aggregate="sum", command=f"{command} (random units, same count)")
    return robust, (refs, conds, sel, chk), results


def audit_more(robust: RobustAudit, ctx: Any, models: dict[str, Any], sscd: Any, batch_size: int) -> None:
    """The multi-condition audit of further models on the same references and halves."""
    from memprune.mitigate.gate import union_audit

    refs, conds, sel, chk = ctx
    for name, model in models.items():
        a = union_audit(model, refs, conds, sscd, batch_size=batch_size, paper_key=robust.paper_condition)
        robust.extracted[name], robust.selection[name], robust.check[name] = a.union_count, a.count(sel), a.count(chk)
