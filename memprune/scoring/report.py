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
import math
import os
import re
from collections import Counter
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


def write_report(report: Report, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``report.json`` and the PNG figures (skipped with a note when matplotlib is missing).

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
        files += _figures(report, out, plt)
    path = out / "report.json"
    write_json_atomic(path, asdict(report))
    return [path, *files]


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _figures(r: Report, out: Path, plt: Any) -> list[Path]:
    files = []
    fig, axes = plt.subplots(1, len(r.kinds), figsize=(1.5 + 0.6 * len(r.groups) * len(r.kinds), 1.5 + 0.3 * len(r.blocks)),
                             squeeze=False)
    for ax, kind in zip(axes[0], r.kinds):
        im = ax.imshow(r.heatmap[kind], aspect="auto", cmap="Reds", interpolation="nearest")
        ax.set_xticks(range(len(r.groups)), r.groups, rotation=60, fontsize=7)
        ax.set_yticks(range(len(r.blocks)), [str(b) for b in r.blocks], fontsize=7)
        ax.set_xlabel("position group")
        ax.set_ylabel("block")
        ax.set_title(f"summed UnitMem ({kind})", fontsize=9)
        fig.colorbar(im, ax=ax)
    files.append(_save(fig, out / "heatmap.png", plt))

    names = list(r.histograms)
    cols = min(6, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 1.8 * rows), squeeze=False, sharex=True)
    centers = [(a + b) / 2 for a, b in zip(r.bin_edges[:-1], r.bin_edges[1:])]
    for ax, name in zip(axes.flat, names):
        ax.bar(centers, r.histograms[name], width=1 / len(centers), color="tab:red")
        ax.set_yscale("symlog")
        ax.set_title(name, fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    files.append(_save(fig, out / "histograms.png", plt))

    fig, ax = plt.subplots(figsize=(max(4, 0.3 * len(r.blocks)), 3))
    width = 0.8 / len(r.kinds)
    for j, kind in enumerate(r.kinds):
        ax.bar([b + j * width for b in range(len(r.blocks))], [100 * v for v in r.top_share_of_block[kind]], width, label=kind)
    ax.set_xticks(range(len(r.blocks)), [str(b) for b in r.blocks], fontsize=7)
    ax.set_xlabel("block")
    ax.set_ylabel(f"% of block's units in top {r.top}")
    ax.legend(fontsize=7)
    files.append(_save(fig, out / "top_units.png", plt))

    if r.top_images:
        fig, ax = plt.subplots(figsize=(6, 0.25 * len(r.top_images) + 1))
        ax.barh(range(len(r.top_images)), [t["num_mem_units"] for t in r.top_images], color="tab:red")
        ax.set_yticks(range(len(r.top_images)), [t["id"] for t in r.top_images], fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel(f"NumMemUnits (top {r.top} units whose maximum is this image)")
        files.append(_save(fig, out / "num_mem_units.png", plt))
    return files
