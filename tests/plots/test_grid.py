"""Extraction grid and sample sheet: layout, verdict marks, pages, file names."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from memprune.plots.grid import CELL, GridRow, class_name, render_extraction_grid, render_sample_grid, safe_name


def _rows(n: int) -> list[GridRow]:
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        img = torch.from_numpy(rng.random((3, 32, 32))).float()
        cos = 0.9 if k % 2 == 0 else 0.5
        rows.append(GridRow(f"n01440764/some/long/path/image_{k:04d}_" + "x" * 60 + ".JPEG", class_name(k % 3, ["tench", "goldfish"]),
                            {"training image": img, "reconstruction": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                             "before": img, "after": None},
                            {"before": cos, "after": 0.3}, {"before": cos > 0.75, "after": False}))
    return rows


def test_extraction_grid_pages_and_marks(tmp_path, check_png):
    cols, models = ["training image", "reconstruction", "before", "after"], ["before", "after"]
    pages = render_extraction_grid(_rows(7), cols, models, tmp_path / "extracted_grid.png", threshold=0.75, per_page=6)
    assert [p.name for p in pages] == ["extracted_grid.png", "extracted_grid_p2.png"]
    w, h = check_png(pages[0], min_size=(3 * 4 * CELL, 2 * CELL), max_size=(2400, 1400))  # one screen, 3 cards across
    check_png(pages[1], min_size=(4 * CELL, CELL))
    with Image.open(pages[0]) as im:
        arr = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    red = ((arr[:, 0] > 150) & (arr[:, 1] < 80) & (arr[:, 2] < 80)).sum()
    green = ((arr[:, 1] > 90) & (arr[:, 0] < 60) & (arr[:, 2] < 90)).sum()
    assert red > 4 * CELL and green > 50  # red frames around extracted generations, green "not extracted"


def test_sample_grid(tmp_path, check_png):
    images = [torch.rand(3, 16, 16) for _ in range(10)]
    path = render_sample_grid(images, [class_name(i % 4) for i in range(10)], tmp_path / "g.png", across=4, title="samples")
    w, h = check_png(path, min_size=(4 * CELL, 3 * CELL))
    assert w < 5 * (CELL + 10) + 20


def test_names():
    assert class_name(1, ["a", "b"]) == "b (1)" and class_name(5, ["a"]) == "class 5" and class_name(None) == "no class"
    assert safe_name("1f306") == "1f306"
    a, b = safe_name("a/b.png"), safe_name("a_b.png")
    assert a != b and a.startswith("a_b.png-") and all(c.isalnum() or c in "._-" for c in a)
    assert len(safe_name("x" * 500)) <= 80 and safe_name("../..").startswith("image-")
