"""``memprune report``: where memorization sits, from a score file.

* **heatmap**: per unit layer type, a ``blocks x groups`` matrix of summed UnitMem (the paper's Figure 1:
  blocks down, VAR scales across);
* **histograms**: per layer, the distribution of UnitMem over its ``groups x units`` entries (20 bins on [0, 1]);
* **top units**: the top share (default 10%) of units ranked globally by their UnitMem aggregated over the
  image-dependent groups with ``max`` (the default of ``memprune patch``); per block and layer type, how many
  of them sit there, as a share of all top units and of the block's own units;
* **NumMemUnits(x)**: for every scoring image, how many top units reach their maximum at x (the image at the
  unit's argmax, taken in the group where the unit's aggregated score comes from). Images memorized by many
  units come first.

Written as ``report.json`` and, when matplotlib is installed, ``heatmap.png``, ``histograms.png``,
``top_units.png`` and ``num_mem_units.png``.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from memprune.errors import MempruneError
from memprune.io import write_json_atomic
from memprune.io.paths import check_output_dir, shown
from memprune.scores import ScoreSet, load_scores
from memprune.selection import parse_top, select_units

BINS = 20
_BLOCK = re.compile(r"^(.*?)(?:blocks|layers|h)\.(\d+)\.(.+)$")


@dataclass
class Report:
    """Everything ``memprune report`` shows; JSON-serialisable via :func:`dataclasses.asdict`."""

    arch: str | None
    checkpoint_sha256: str | None
    images: int
    groups: list[str]
    image_independent: list[str]
    blocks: list[int]
    kinds: list[str]
    heatmap: dict[str, list[list[float]]]
    histograms: dict[str, list[int]]
    bin_edges: list[float]
    top: str
    top_threshold: float
    top_units: dict[str, list[int]]
    top_share_of_top: dict[str, list[float]]
    top_share_of_block: dict[str, list[float]]
    num_mem_units: list[int] | None
    top_images: list[dict[str, Any]]
    dead_units: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def split_layer(name: str, position: int) -> tuple[int, str]:
    """``blocks.3.ffn.fc1`` -> ``(3, "ffn.fc1")``; other names -> ``(position, name)``."""
    m = _BLOCK.match(name)
    return (int(m.group(2)), m.group(3)) if m else (position, name)


def _aggregate(scores: ScoreSet, used: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per layer the max over the used groups ``[H]`` and the group it comes from (first on ties)."""
    agg, where = {}, {}
    index = torch.tensor(used, dtype=torch.long)
    for name, value in scores.scores.items():
        v = value.float().index_select(0, index)
        best, pos = v.max(0)
        agg[name], where[name] = best, index[pos]
    return agg, where


def build_report(scores: ScoreSet | str | os.PathLike, top: str = "10%", top_images: int = 20) -> Report:
    """Summarise a score file (see the module docstring for each part).

    Raises:
        MempruneError: an empty score file or a ``top`` that selects nothing.
    """
    if isinstance(top_images, bool) or not isinstance(top_images, int) or top_images < 0:
        raise MempruneError(f"--images {top_images} must be 0 (none) or a positive number of images to list")
    spec = parse_top(top)
    s = scores if isinstance(scores, ScoreSet) else load_scores(scores)
    if not s.scores:
        raise MempruneError("the score file holds no scores")
    for name, value in s.scores.items():
        if not bool(torch.isfinite(value).all()):
            raise MempruneError(
                f"scores of {name} contain NaN or Inf: a --shard part scored alone has no scores of its own, so "
                "combine the parts with `memprune merge` first; otherwise score again"
            )
    names = list(s.scores)
    placed = [split_layer(n, i) for i, n in enumerate(names)]
    blocks = sorted({b for b, _ in placed})
    kinds = list(dict.fromkeys(k for _, k in placed))
    n_groups = len(s.groups)
    heat = {k: [[0.0] * n_groups for _ in blocks] for k in kinds}
    edges = torch.linspace(0, 1, BINS + 1)
    hist = {}
    for name, (block, kind) in zip(names, placed):
        v = s.scores[name].float()
        heat[kind][blocks.index(block)] = v.sum(1).tolist()
        hist[name] = torch.histc(v.clamp(0, 1), bins=BINS, min=0, max=1).long().tolist()
    used = [i for i, g in enumerate(s.groups) if g not in set(s.image_independent)] or list(range(n_groups))
    agg, where = _aggregate(s, used)
    sel = select_units(agg, spec, "global")
    counts = {k: [0] * len(blocks) for k in kinds}
    widths = {k: [0] * len(blocks) for k in kinds}
    for name, (block, kind) in zip(names, placed):
        counts[kind][blocks.index(block)] += len(sel.units[name])
        widths[kind][blocks.index(block)] += int(agg[name].numel())
    share_top = {k: [c / max(1, sel.selected) for c in counts[k]] for k in kinds}
    share_block = {k: [c / w if w else 0.0 for c, w in zip(counts[k], widths[k])] for k in kinds}
    notes = []
    nmu, tops = _num_mem_units(s, sel.units, where, top_images, notes)
    return Report(
        arch=s.arch, checkpoint_sha256=s.checkpoint_sha256, images=_image_count(s), groups=list(s.groups),
        image_independent=list(s.image_independent), blocks=blocks, kinds=kinds, heatmap=heat, histograms=hist,
        bin_edges=edges.tolist(), top=spec.text, top_threshold=sel.threshold, top_units=counts,
        top_share_of_top=share_top, top_share_of_block=share_block, num_mem_units=nmu, top_images=tops,
        dead_units=dict(s.info.get("dead_units", {})), notes=notes,
    )


def _image_count(s: ScoreSet) -> int:
    if "count" in s.stats:
        return int(s.stats["count"].reshape(-1)[0])
    return len(s.images) if s.images else 0


def _num_mem_units(s: ScoreSet, units: dict[str, list[int]], where: dict[str, torch.Tensor], k: int,
                   notes: list[str]) -> tuple[list[int] | None, list[dict[str, Any]]]:
    """NumMemUnits(x) for every image, and the ``k`` images with the most (ties: lower index first)."""
    if not all(f"argmax.{n}" in s.stats for n in units):
        notes.append("no argmax statistics in this file (scores made elsewhere): NumMemUnits is not available")
        return None, []
    n_images = len(s.images) if s.images else int(max(int(s.stats[f"argmax.{n}"].max()) for n in units) + 1)
    counter: Counter[int] = Counter()
    for name, idx in units.items():
        if not idx:
            continue
        sel = torch.tensor(idx, dtype=torch.long)
        arg = s.stats[f"argmax.{name}"]
        # argmax is [S, H]; each selected unit's image is the one at the group its aggregated score came from.
        counter.update(arg[where[name][sel], sel].tolist())
    per_image = [counter.get(i, 0) for i in range(n_images)]
    labels = s.info.get("labels")
    order = sorted(range(n_images), key=lambda i: (-per_image[i], i))[:k]
    tops = [
        {"index": i, "id": s.images[i] if s.images else str(i), "num_mem_units": per_image[i],
         "label": labels[i] if labels and i < len(labels) else None}
        for i in order if per_image[i] > 0
    ]
    return per_image, tops


def write_report(
    report: Report,
    out_dir: str | os.PathLike,
    images: Mapping[str, str | os.PathLike] | None = None,
    class_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``report.json`` and the PNG figures (skipped with a note when matplotlib is missing).

    ``images`` (image id -> file) and ``class_names`` (class id -> name) put thumbnails and names beside the
    most memorized images in ``num_mem_units.png``; without them it shows ids and ``class N``.

    Returns:
        The files written.
    """
    out = check_output_dir(out_dir, "report output")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MempruneError(f"cannot create report folder {shown(out)} ({exc.strerror}): choose another -o") from None
    try:
        import matplotlib

        logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font-cache INFO lines are noise
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
        msg = "matplotlib is not installed, so no PNG figures were drawn: pip install 'memprune[plot]'"
        if msg not in report.notes:
            report.notes.append(msg)
    files = []
    if plt is not None:
        from memprune.plots import figures
        from memprune.plots.grid import class_name

        files += [figures.heatmap(report, out / "heatmap.png", plt), figures.histograms(report, out / "histograms.png", plt),
                  figures.top_units(report, out / "top_units.png", plt)]
        if report.top_images:
            found = {k: Path(v) for k, v in (images or {}).items()}
            thumbs = [found[t["id"]] if t["id"] in found and found[t["id"]].is_file() else None for t in report.top_images]
            names = [class_name(t["label"], class_names) for t in report.top_images]
            files.append(figures.num_mem_units(report, out / "num_mem_units.png", plt, thumbs, names))
    path = out / "report.json"
    write_json_atomic(path, asdict(report))
    return [path, *files]
