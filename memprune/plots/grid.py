"""Image grids drawn with Pillow (no matplotlib needed): the audit's extraction grid and FID sample sheets.

The functions take plain data (ids, class names, images, cosines, flags), not audit or FID objects, so any
evaluator can draw them. Images may be float tensors ``[3, H, W]`` in [0, 1], uint8 arrays ``[H, W, 3]``, PIL
images or paths; a missing image (``None``) leaves a grey cell that says so.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from memprune.io import atomic_write

CELL = 128  # thumbnail side in px
GAP = 8
PAD = 12
EXTRACTED_COLOUR = (200, 30, 30)
SAFE_COLOUR = (20, 120, 50)
_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class GridRow:
    """One audited image in an extraction grid.

    Attributes:
        id: the image's id (shown in full, wrapped when long).
        class_name: what the class is called (``"class 3"`` when no names are known).
        images: column name -> image; the columns are the grid's ``columns`` (missing ones are drawn grey).
        cosines: model column -> SSCD cosine of its generation to the reference view (``None``: not run).
        extracted: model column -> whether that generation counts as extracted.
    """

    id: str
    class_name: str
    images: Mapping[str, Any]
    cosines: Mapping[str, float | None] = field(default_factory=dict)
    extracted: Mapping[str, bool] = field(default_factory=dict)


def class_name(label: int | None, names: Sequence[str] | None = None) -> str:
    """``names[label]`` when known, else ``"class N"`` (``"no class"`` for ``None``)."""
    if label is None:
        return "no class"
    if names is not None and 0 <= int(label) < len(names):
        return f"{names[int(label)]} ({int(label)})"
    return f"class {int(label)}"


def safe_name(image_id: str, limit: int = 80) -> str:
    """A file-name stem for an image id: ``[A-Za-z0-9._-]`` only, at most ``limit`` characters.

    When anything had to change (a ``/``, a space, a long id) a short hash of the full id is appended, so two
    ids never share a stem (``a/b`` and ``a_b`` both become ``a_b``, but with different hashes).
    """
    cleaned = _SAFE_CHARS.sub("_", image_id).strip("._") or "image"
    if cleaned == image_id and len(cleaned) <= limit:
        return cleaned
    digest = hashlib.sha1(image_id.encode("utf-8")).hexdigest()[:8]
    return f"{cleaned[: limit - 9]}-{digest}"


def to_pil(image: Any) -> Image.Image:
    """A float ``[3, H, W]`` tensor in [0, 1], uint8/float array ``[H, W, 3]``, PIL image or path -> RGB PIL image."""
    from memprune.data_views import load_image, pil_to_rgb  # the one image loader: same pixels as the audit's

    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dtype != torch.uint8:  # floats are in [0, 1], as every decoder returns them
            t = t.float().clamp(0, 1).mul(255).round().to(torch.uint8)
        return Image.fromarray(t.permute(1, 2, 0).numpy())
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font at ``size`` px (Pillow >= 10.1), else its small bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow 10.0 has no sized default font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, fnt: Any, width: int) -> list[str]:
    # Ids have no spaces to break at (paths, hashes): break anywhere, by measured width.
    lines, current = [], ""
    for ch in text:
        if current and draw.textlength(current + ch, font=fnt) > width:
            lines.append(current)
            current = ""
        current += ch
    return [*lines, current] if current else lines or [""]


def _cell(image: Any, size: int) -> Image.Image:
    if image is None:
        blank = Image.new("RGB", (size, size), (225, 225, 225))
        ImageDraw.Draw(blank).text((8, size // 2 - 8), "not saved", fill=(90, 90, 90), font=font(14))
        return blank
    # Nearest keeps small (32 px) images crisp when enlarged; larger ones shrink smoothly.
    pic = to_pil(image)
    resample = Image.Resampling.NEAREST if pic.width < size else Image.Resampling.BILINEAR
    return pic.resize((size, size), resample)


def render_extraction_grid(
    rows: Sequence[GridRow],
    columns: Sequence[str],
    models: Sequence[str],
    path: str | os.PathLike,
    *,
    threshold: float,
    title: str = "Extraction audit",
    reference: str = "the reference (tokenizer reconstruction)",
    across: int = 3,
    per_page: int = 15,
) -> list[Path]:
    """Draw ``rows`` as cards, ``across`` per line and ``per_page`` per page; returns the pages written.

    Each card shows the image id and class name, then one thumbnail per column (e.g. training image,
    reconstruction, the generation of every model). Under a model's generation: its SSCD cosine and
    EXTRACTED (red frame) or "not extracted" (green), judged against ``threshold``; ``reference`` names what
    the cosine is measured to (the legend says so). Page 1 is ``path``,
    page k > 1 is ``<stem>_p<k><suffix>`` beside it.
    """
    target = Path(path)
    pages = [rows[i : i + per_page] for i in range(0, len(rows), per_page)] or [[]]
    written = []
    for k, page in enumerate(pages, start=1):
        name = target if k == 1 else target.with_name(f"{target.stem}_p{k}{target.suffix}")
        head = f"{title}: page {k} of {len(pages)}, {len(rows)} image(s)"
        legend = (f"SSCD cosine of each generation to {reference}; above {threshold:.2f} = EXTRACTED (red frame), "
                  "otherwise not extracted (green)")
        img = _extraction_page(page, columns, models, threshold, (head, legend), min(across, max(1, len(page))))
        with atomic_write(name) as tmp:
            img.save(tmp, format="PNG", optimize=True)
        written.append(name)
    return written


def _extraction_page(rows: Sequence[GridRow], columns: Sequence[str], models: Sequence[str], threshold: float,
                     texts: tuple[str, str], across: int) -> Image.Image:
    f_title, f_text, f_small = font(20), font(15), font(13)
    card_w = len(columns) * CELL + (len(columns) - 1) * GAP
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    id_lines = max((len(_wrap(probe, r.id, f_small, card_w)) for r in rows), default=1)
    header_h = 18 * id_lines + 20 + 18  # id lines, class name, column names
    card_h = header_h + CELL + 40  # cosine and verdict below each generation
    n_lines = max(1, math.ceil(len(rows) / across))
    legend_h = 60
    width = PAD + across * (card_w + 3 * PAD)
    height = legend_h + n_lines * (card_h + 2 * PAD) + PAD
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    draw.text((PAD, 8), texts[0], fill="black", font=f_title)
    draw.text((PAD, 34), texts[1], fill=(60, 60, 60), font=f_small)
    for i, row in enumerate(rows):
        x = PAD + (i % across) * (card_w + 3 * PAD)
        y = legend_h + (i // across) * (card_h + 2 * PAD)
        _card(draw, page, row, columns, models, threshold, x, y, card_w, (f_text, f_small))
    return page


def _card(draw: ImageDraw.ImageDraw, page: Image.Image, row: GridRow, columns: Sequence[str], models: Sequence[str],
          threshold: float, x: int, y: int, card_w: int, fonts: tuple[Any, Any]) -> None:
    f_text, f_small = fonts
    lines = _wrap(draw, row.id, f_small, card_w)
    for j, line in enumerate(lines):
        draw.text((x, y + 18 * j), line, fill="black", font=f_small)
    y += 18 * len(lines)
    draw.text((x, y), row.class_name, fill=(40, 40, 140), font=f_text)
    y += 20
    for c, name in enumerate(columns):
        cx = x + c * (CELL + GAP)
        draw.text((cx, y), name[:18], fill=(80, 80, 80), font=f_small)
        page.paste(_cell(row.images.get(name), CELL), (cx, y + 18))
        if name not in models:
            continue
        cos, hit = row.cosines.get(name), bool(row.extracted.get(name))
        colour = EXTRACTED_COLOUR if hit else SAFE_COLOUR
        if hit:
            draw.rectangle((cx - 3, y + 15, cx + CELL + 2, y + 18 + CELL + 2), outline=colour, width=4)
        text = "not run" if cos is None else f"cos {cos:.3f} {'>' if cos > threshold else '<='} {threshold:.2f}"
        draw.text((cx, y + 22 + CELL), text, fill=colour if cos is not None else (90, 90, 90), font=f_small)
        draw.text((cx, y + 38 + CELL), "EXTRACTED" if hit else "not extracted", fill=colour, font=f_text)


def render_sample_grid(
    images: Sequence[Any], captions: Sequence[str], path: str | os.PathLike, *, across: int = 8, title: str = ""
) -> Path:
    """A sheet of ``images`` with one caption each (e.g. the class), ``across`` per line; written atomically."""
    f_title, f_small = font(18), font(13)
    n = len(images)
    lines = max(1, math.ceil(n / across))
    across = max(1, min(across, n))
    top = 34 if title else PAD
    page = Image.new("RGB", (PAD + across * (CELL + GAP), top + lines * (CELL + 22) + PAD), "white")
    draw = ImageDraw.Draw(page)
    if title:
        draw.text((PAD, 8), title, fill="black", font=f_title)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = PAD + (i % across) * (CELL + GAP), top + (i // across) * (CELL + 22)
        page.paste(_cell(image, CELL), (x, y))
        draw.text((x, y + CELL + 2), _wrap(draw, caption, f_small, CELL)[0], fill="black", font=f_small)
    target = Path(path)
    with atomic_write(target) as tmp:
        page.save(tmp, format="PNG", optimize=True)
    return target
