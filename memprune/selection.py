"""Choosing which units to patch: ``--top``, ``--scope`` and ``--aggregate``.

Scores arrive per layer as ``[S, H]`` (S position groups: the VAR scales, or one group). They are first
reduced over the groups to one value per unit, then ranked. Ranking is a stable sort on the negated score,
so ties are broken by layer order and then unit index, and the same scores always select the same units.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from memprune.errors import MempruneError

AGGREGATES = ("max", "mean", "sum")
SCOPES = ("global", "layer")


@dataclass(frozen=True)
class TopSpec:
    """``--top``: a share of the units (``fraction``) or a number of them (``count``)."""

    text: str
    fraction: float | None = None
    count: int | None = None

    def size(self, total: int) -> int:
        """How many of ``total`` units this selects (a share is rounded to the nearest unit)."""
        if self.count is not None:
            return min(self.count, total)
        return int(round(self.fraction * total))  # type: ignore[operator]


def parse_top(text: str | int | float) -> TopSpec:
    """Parse ``10%``, ``0.5%`` or a count such as ``500``.

    Raises:
        MempruneError: zero, negative, above 100 %, or not a number.
    """
    raw = str(text).strip()
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*%", raw)
    if match:
        pct = float(match.group(1))
        if not 0 < pct <= 100:
            raise MempruneError(f"--top {raw} is out of range: give a share in (0%, 100%], e.g. 10%")
        return TopSpec(raw, fraction=pct / 100)
    if re.fullmatch(r"\d+", raw):
        count = int(raw)
        if count <= 0:
            raise MempruneError(f"--top {raw} selects nothing: give a positive count or a share such as 10%")
        return TopSpec(raw, count=count)
    raise MempruneError(f"--top {raw!r} is not a share or a count: write e.g. 10% or 500")


def aggregate_groups(
    scores: dict[str, torch.Tensor], groups: list[str], how: str = "max", exclude: list[str] | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Reduce ``[S, H]`` scores over the position groups to ``[H]`` per layer.

    Groups listed in ``exclude`` (e.g. VAR's class-only scale 0) are left out unless nothing else remains.

    Returns:
        The per-layer ``[H]`` scores and the names of the groups that were used.
    """
    if how not in AGGREGATES:
        raise MempruneError(f"--aggregate {how!r} is unknown: choose one of {', '.join(AGGREGATES)}")
    keep = [i for i, g in enumerate(groups) if g not in set(exclude or [])] or list(range(len(groups)))
    used = [groups[i] for i in keep] if groups else []
    index = torch.tensor(keep, dtype=torch.long)
    out = {}
    for name, value in scores.items():
        if value.dim() != 2 or (groups and value.shape[0] != len(groups)):
            raise MempruneError(f"scores for {name} have shape {tuple(value.shape)}: expected [{len(groups)}, H] (one row per group)")
        v = value.index_select(0, index)
        out[name] = {"max": v.amax(0), "mean": v.mean(0), "sum": v.sum(0)}[how]
    return out, used


@dataclass(frozen=True)
class Selection:
    """The units chosen for patching.

    Attributes:
        units: layer name -> sorted unit indices (every layer present, possibly empty).
        threshold: the lowest aggregated score among the selected units.
        selected: how many units were selected.
        total: how many units there were.
    """

    units: dict[str, list[int]]
    threshold: float
    selected: int
    total: int


def select_units(agg: dict[str, torch.Tensor], top: TopSpec, scope: str = "global") -> Selection:
    """Pick the highest-scoring units globally or within each layer."""
    if scope not in SCOPES:
        raise MempruneError(f"--scope {scope!r} is unknown: choose global or layer")
    names = list(agg)
    total = sum(int(v.numel()) for v in agg.values())
    units: dict[str, list[int]] = {n: [] for n in names}
    lowest = math.inf
    if scope == "global":
        flat = torch.cat([agg[n].reshape(-1).float() for n in names])
        n_sel = top.size(total)
        _require_some(n_sel, top, total)
        order = torch.argsort(-flat, stable=True)[:n_sel]
        offsets = torch.tensor([0] + [int(agg[n].numel()) for n in names]).cumsum(0)
        layer_of = torch.searchsorted(offsets, order, right=True) - 1
        for pos, layer in zip(order.tolist(), layer_of.tolist()):
            units[names[layer]].append(pos - int(offsets[layer]))
        lowest = float(flat[order[-1]])
    else:
        for n in names:
            v = agg[n].reshape(-1).float()
            n_sel = top.size(int(v.numel()))
            _require_some(n_sel, top, int(v.numel()))
            order = torch.argsort(-v, stable=True)[:n_sel]
            units[n] = order.tolist()
            lowest = min(lowest, float(v[order[-1]]))
    units = {n: sorted(u) for n, u in units.items()}
    return Selection(units=units, threshold=lowest, selected=sum(len(u) for u in units.values()), total=total)


def _require_some(n_sel: int, top: TopSpec, total: int) -> None:
    if n_sel <= 0:
        raise MempruneError(f"--top {top.text} of {total} units rounds to 0 units: choose a larger share or a count")
