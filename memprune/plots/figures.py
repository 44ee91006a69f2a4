"""The ``memprune report`` figures (matplotlib, Agg backend): heatmap, histograms, top-unit shares, NumMemUnits.

Every function takes the :class:`~memprune.scoring.report.Report` (plain numbers) and the ``pyplot`` module
(imported by the caller, so that a missing matplotlib is one note, not an error) and writes one PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memprune.plots.grid import to_pil

if TYPE_CHECKING:
    from memprune.scoring.report import Report

FONT = 10
DPI = 110
_EXCLUDED = "#bdbdbd"


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _used_groups(r: Report) -> list[int]:
    return [i for i, g in enumerate(r.groups) if g not in set(r.image_independent)] or list(range(len(r.groups)))


def heatmap(r: Report, path: Path, plt: Any) -> Path:
    """Summed UnitMem per block and group, colour bar from 0; image-independent groups hatched as excluded.

    A family with one image-dependent group (RAR, LlamaGen) gets bars over the blocks instead: a one-column
    heatmap would spend its colour bar on a few percent of variation.
    """
    used = _used_groups(r)
    if len(used) == 1:
        return _block_bars(r, used[0], path, plt)
    fig, axes = plt.subplots(1, len(r.kinds), squeeze=False,
                             figsize=(2.5 + 0.55 * len(r.groups) * len(r.kinds), 2.2 + 0.32 * len(r.blocks)))
    for ax, kind in zip(axes[0], r.kinds):
        data = np.array(r.heatmap[kind], dtype=float)
        shown = np.ma.masked_array(data, mask=np.zeros_like(data, dtype=bool))
        shown.mask[:, [i for i in range(len(r.groups)) if i not in used]] = True
        vmax = float(shown.max()) if shown.count() and float(shown.max()) > 0 else 1.0
        cmap = plt.get_cmap("Reds").with_extremes(bad=_EXCLUDED)
        im = ax.imshow(shown, aspect="auto", cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
        for i in range(len(r.groups)):
            if i not in used:  # hatched and labelled: visibly not part of the ranking
                ax.add_patch(plt.Rectangle((i - 0.5, -0.5), 1, len(r.blocks), fill=False, hatch="//", edgecolor="#757575"))
        labels = [g if i in used else f"{g}\n(excluded)" for i, g in enumerate(r.groups)]
        ax.set_xticks(range(len(r.groups)), labels, rotation=60, fontsize=FONT - 2)
        ax.set_yticks(range(len(r.blocks)), [str(b) for b in r.blocks], fontsize=FONT - 2)
        excluded = f"\nhatched: {', '.join(r.image_independent)} is image-independent, left out of the ranking"
        ax.set_xlabel("position group (VAR: scale)" + (excluded if r.image_independent else ""), fontsize=FONT - 1)
        ax.set_ylabel("transformer block", fontsize=FONT)
        ax.set_title(f"summed UnitMem, {kind}", fontsize=FONT + 1)
        bar = fig.colorbar(im, ax=ax)
        bar.set_label("sum of UnitMem over the block's units", fontsize=FONT - 1)
    return _save(fig, path, plt)


def _block_bars(r: Report, group: int, path: Path, plt: Any) -> Path:
    fig, ax = plt.subplots(figsize=(max(5.0, 0.28 * len(r.blocks) * len(r.kinds) + 2), 3.4))
    width = 0.8 / len(r.kinds)
    for j, kind in enumerate(r.kinds):
        ax.bar([b + j * width for b in range(len(r.blocks))], [row[group] for row in r.heatmap[kind]], width, label=kind)
    ax.set_xticks([b + 0.4 - width / 2 for b in range(len(r.blocks))], [str(b) for b in r.blocks], fontsize=FONT - 2)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("transformer block", fontsize=FONT)
    ax.set_ylabel("sum of UnitMem over the block's units", fontsize=FONT)
    note = f"; excluded: {', '.join(r.image_independent)}" if r.image_independent else ""
    ax.set_title(f"summed UnitMem per block (group {r.groups[group]}{note})", fontsize=FONT + 1)
    if len(r.kinds) > 1:
        ax.legend(fontsize=FONT - 2)
    return _save(fig, path, plt)


def histograms(r: Report, path: Path, plt: Any) -> Path:
    """Per layer, how many (group, unit) entries fall in each UnitMem bin (log count), with the top-unit cut."""
    names = list(r.histograms)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows + 0.6), squeeze=False, sharex=True)
    centers = [(a + b) / 2 for a, b in zip(r.bin_edges[:-1], r.bin_edges[1:])]
    for ax, name in zip(axes.flat, names):
        ax.bar(centers, r.histograms[name], width=1 / len(centers), color="tab:red", edgecolor="white", linewidth=0.3)
        ax.set_yscale("symlog")
        ax.axvline(r.top_threshold, color="black", linestyle="--", linewidth=1)
        ax.set_title(name, fontsize=FONT - 1)
        ax.tick_params(labelsize=FONT - 2)
    for ax in axes[-1]:
        ax.set_xlabel("UnitMem", fontsize=FONT)
    for ax in axes[:, 0]:
        ax.set_ylabel("entries (log)", fontsize=FONT)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"UnitMem per layer (all groups x units); dashed: top {r.top} cut = {r.top_threshold:.3f} "
                 "(units above it are patched)", fontsize=FONT)
    fig.tight_layout()
    return _save(fig, path, plt)


def top_units(r: Report, path: Path, plt: Any) -> Path:
    """Per block, the share of its units that are among the top units."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.3 * len(r.blocks) + 2), 3.2))
    width = 0.8 / len(r.kinds)
    for j, kind in enumerate(r.kinds):
        ax.bar([b + j * width for b in range(len(r.blocks))], [100 * v for v in r.top_share_of_block[kind]], width, label=kind)
    ax.set_xticks(range(len(r.blocks)), [str(b) for b in r.blocks], fontsize=FONT - 2)
    ax.set_xlabel("transformer block", fontsize=FONT)
    ax.set_ylabel(f"% of block's units in top {r.top}", fontsize=FONT)
    ax.legend(fontsize=FONT - 2)
    return _save(fig, path, plt)


def num_mem_units(r: Report, path: Path, plt: Any, thumbnails: Sequence[Any | None], names: Sequence[str]) -> Path:
    """Images memorized by the most top units: bar per image with its thumbnail, class name and full id."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    n = len(r.top_images)
    fig, ax = plt.subplots(figsize=(8.0, 0.62 * n + 1.2))
    ax.barh(range(n), [t["num_mem_units"] for t in r.top_images], color="tab:red", height=0.6)
    ax.set_yticks(range(n), [f"{name}\n{t['id']}" for name, t in zip(names, r.top_images)], fontsize=FONT - 2)
    ax.invert_yaxis()
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel(f"NumMemUnits: top {r.top} units whose maximum is this image", fontsize=FONT)
    ax.set_title(f"most memorized of {r.images:,} scoring images", fontsize=FONT + 1)
    for k, thumb in enumerate(thumbnails):
        if thumb is None:
            continue
        pic = np.asarray(to_pil(thumb).resize((40, 40)))
        box = AnnotationBbox(OffsetImage(pic, zoom=0.55), (0, k), xybox=(-14, 0), xycoords=("axes fraction", "data"),
                             boxcoords="offset points", frameon=False, annotation_clip=False)
        ax.add_artist(box)
    if any(t is not None for t in thumbnails):
        ax.yaxis.set_tick_params(pad=30)
    return _save(fig, path, plt)
