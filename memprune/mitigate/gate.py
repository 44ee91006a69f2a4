"""The sweep's audit: the union over conditions, computed condition by condition on what is still not extracted.

An image counts as extracted if *any* condition extracts it, so once one condition has extracted it the others
need not run on it. The sweep audits the forget set at every point; skipping what is already decided cuts the
cost from ``images x conditions`` generations to about ``images`` for a point that barely changes the model. The
paper's condition (when it is in the grid) runs first on every image, so its count stays exact too. The
baseline and the re-audits of ``mitigate`` use it as well; ``memprune audit --attack robust`` gives every count
per condition.

Sampled conditions seed each batch from the global index of its first candidate (see ``multi_audit``), so a
point's samples depend on which images are still open; every point of a sweep is judged by the same rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class UnionAudit:
    """Which forget-set images some condition extracts, and the paper condition's own count."""

    ids: list[str]
    extracted: frozenset[str]
    paper_extracted: int | None

    @property
    def union_count(self) -> int:
        return len(self.extracted)

    def count(self, ids: Sequence[str]) -> int:
        return len(self.extracted & set(ids))


def union_audit(model: Any, refs: Any, conditions: Sequence[Any], sscd: Any, *, batch_size: int,
                paper_key: str | None = None) -> UnionAudit:
    """The union over ``conditions`` with early stopping per image (exact union, exact paper count)."""
    from memprune.evaluators.multi_audit import audit_conditions

    order = sorted(conditions, key=lambda c: c.key != paper_key)  # stable: the paper condition first
    ids = list(refs.ids)
    found: set[str] = set()
    paper = None
    open_rows = list(range(len(ids)))
    for cond in order:
        if not open_rows:
            break
        sub = refs.subset(open_rows)
        hit = audit_conditions(model, sub, [cond], sscd, batch_size=batch_size).extracted.tolist()
        newly = {sub.ids[k] for k, e in enumerate(hit) if e}
        if cond.key == paper_key:
            paper = len(newly)
        found |= newly
        open_rows = [r for r in open_rows if ids[r] not in found]
    return UnionAudit(ids, frozenset(found), paper)
