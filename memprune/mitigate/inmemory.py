"""Trying a patch on the loaded model: scale the selected rows in place, measure, and put them back exactly.

A sweep point is planned with the same functions ``memprune patch`` uses (:func:`memprune.selection.aggregate_groups`,
:func:`memprune.selection.select_units`, :func:`memprune.patching.plan_edits`) and applied with the same
arithmetic (:func:`memprune.patching.scale_slices`), so the model measured in memory is the model ``patch``
writes. Only the edited rows are saved before the edit; they are copied back bit for bit afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from memprune.families.spec import UnitLayer
from memprune.errors import MempruneError
from memprune.families.base import IARModel
from memprune.patching import TensorEdit, plan_edits, scale_slices
from memprune.scores import ScoreSet, validate_scores
from memprune.selection import Selection, aggregate_groups, parse_top, select_units


def aggregate_for(scores: ScoreSet) -> str:
    """How a method's groups are reduced for ranking: UnitMem the paper's ``max``; attribution/random ``sum``."""
    return str(scores.info.get("aggregate", "max"))


@dataclass(frozen=True)
class PlannedPoint:
    """The units one (scores, share, factor) point selects, and the tensor edits that scale them."""

    selection: Selection
    edits: list[TensorEdit]
    aggregate: str


def plan_point(scores: ScoreSet, layers: list[UnitLayer], share: str, factor: float) -> PlannedPoint:
    """Select the top ``share`` of units (global ranking) and plan the fc1-row edits, as ``patch`` would."""
    values = validate_scores(scores, layers)
    how = aggregate_for(scores)
    agg, _ = aggregate_groups(values, scores.groups, how, scores.image_independent)
    selection = select_units(agg, parse_top(share), "global")
    return PlannedPoint(selection, plan_edits(layers, selection, factor, "fc1", False), how)


def parameter_map(model: IARModel, keys: list[str]) -> dict[str, torch.nn.Parameter]:
    """Checkpoint tensor name -> the model's parameter holding it (matched by module-path suffix).

    Raises:
        MempruneError: a tensor has no parameter, or several (the model's names do not follow the checkpoint).
    """
    params = dict(model.named_parameters())
    out = {}
    for key in keys:
        hits = [p for name, p in params.items() if name == key or name.endswith("." + key)]
        if len(hits) != 1:
            raise MempruneError(f"checkpoint tensor {key} matches {len(hits)} parameters of the loaded model: "
                                "mitigate needs a model whose parameter names follow the checkpoint's")
        out[key] = hits[0]
    return out


@contextlib.contextmanager
def applied(model: IARModel, edits: list[TensorEdit]) -> Iterator[None]:
    """The model with ``edits`` applied for the ``with`` block; the original rows are restored afterwards."""
    params = parameter_map(model, [e.tensor for e in edits])
    saved: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for e in edits:
                p = params[e.tensor]
                index = torch.tensor(e.units, dtype=torch.long, device=p.device)
                saved.append((p.data, e.axis, index, p.data.index_select(e.axis, index).clone()))
                # patch's own arithmetic (on CPU, where it builds its index), so memory and file agree
                p.data.copy_(scale_slices(p.data.cpu(), e).to(p.device))
        yield
    finally:
        with torch.no_grad():
            for data, axis, index, rows in reversed(saved):
                data.index_copy_(axis, index, rows)
