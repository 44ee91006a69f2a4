"""memprune.data: sources, class indexes, subsets, image loading and the training views."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memprune.data import (
    ViewPipeline,
    balanced_subset,
    load_image,
    load_records,
    parse_fraction,
    read_class_index,
    to_tensor,
)
from memprune.errors import MempruneError


def _png(path: Path, size=(20, 16), mode="RGB", seed=0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    img = img.convert(mode) if mode != "P" else img.convert("P", palette=Image.Palette.ADAPTIVE)
    img.save(path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    for cls, n in (("n02", 2), ("n01", 3)):
        for i in range(n):
            _png(root / cls / f"sub/x{i}.png", seed=i)
    return root


def test_folder_sorted_classes_and_relative_ids(folder: Path) -> None:
    ds = load_records(folder)
    assert ds.classes == {"n01": 0, "n02": 1}
    assert [r.id for r in ds.records] == [f"n01/sub/x{i}.png" for i in range(3)] + [f"n02/sub/x{i}.png" for i in range(2)]
    assert [r.label for r in ds.records] == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("form", ["json_map", "json_list", "keras", "txt_pairs", "txt_synsets"])
def test_class_index_forms(folder: Path, tmp_path: Path, form: str) -> None:
    files = {
        "json_map": ("ci.json", json.dumps({"n01": 7, "n02": 3})),
        "json_list": ("ci.json", json.dumps(["x0", "x1", "x2", "n02", "y", "y2", "y3", "n01"])),
        "keras": ("ci.json", json.dumps({"3": ["n02", "goldfish"], "7": ["n01", "tench"]})),
        "txt_pairs": ("ci.txt", "n02 3\nn01 7\n"),
        "txt_synsets": ("ci.txt", "a x\nb y\nc z\nn02 goldfish, Carassius\nd\ne\nf\nn01 tench, Tinca tinca\n"),
    }
    name, text = files[form]
    (tmp_path / name).write_text(text)
    ds = load_records(folder, tmp_path / name)
    assert ds.classes == {"n01": 7, "n02": 3}
    assert [r.label for r in ds.records] == [3, 3, 7, 7, 7]  # ordered by class id


def test_class_index_errors(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "ci.json").write_text(json.dumps({"n01": 0}))
    with pytest.raises(MempruneError, match="'n02'.*not in the class index"):
        load_records(folder, tmp_path / "ci.json")
    (tmp_path / "dup.txt").write_text("n01\nn01\n")
    with pytest.raises(MempruneError, match="twice"):
        read_class_index(tmp_path / "dup.txt")


def test_empty_class_and_missing_data(folder: Path, tmp_path: Path) -> None:
    (folder / "n03").mkdir()
    (folder / "n03" / "notes.txt").write_text("no images here")
    with pytest.raises(MempruneError, match="n03 holds no images"):
        load_records(folder)
    with pytest.raises(MempruneError, match="does not exist"):
        load_records(tmp_path / "nope")


def test_csv_source(tmp_path: Path) -> None:
    _png(tmp_path / "imgs/a.png")
    _png(tmp_path / "imgs/b.png", seed=1)
    (tmp_path / "list.csv").write_text("path,label\nimgs/b.png,n01\nimgs/a.png,5\n")
    (tmp_path / "ci.txt").write_text("n00\nn01\n")
    ds = load_records(tmp_path / "list.csv", tmp_path / "ci.txt")
    assert [(r.id, r.label) for r in ds.records] == [("imgs/b.png", 1), ("imgs/a.png", 5)]
    assert ds.records[0].path == tmp_path / "imgs/b.png"
    (tmp_path / "bad.csv").write_text("path,label\nimgs/a.png,tench\n")
    with pytest.raises(MempruneError, match="line 2: unknown label 'tench'"):
        load_records(tmp_path / "bad.csv")
    (tmp_path / "nohead.csv").write_text("imgs/a.png,1\n")
    with pytest.raises(MempruneError, match="header"):
        load_records(tmp_path / "nohead.csv")


def test_balanced_subset_is_seeded_and_even(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for c in range(4):
        for i in range(10 if c else 2):  # class 0 is small
            (root / f"c{c}").mkdir(parents=True, exist_ok=True)
            (root / f"c{c}" / f"{i}.png").touch()
    recs = load_records(root).records
    a = balanced_subset(recs, per_class=3, seed=1)
    assert [sum(r.label == c for r in a) for c in range(4)] == [2, 3, 3, 3]
    assert a == balanced_subset(recs, per_class=3, seed=1)
    assert a != balanced_subset(recs, per_class=3, seed=2)
    assert a == sorted(a, key=recs.index)  # input order kept
    frac = balanced_subset(recs, fraction=parse_fraction("25%"), seed=0)  # 32 * 0.25 / 4 = 2 per class
    assert [sum(r.label == c for r in frac) for c in range(4)] == [2, 2, 2, 2]
    assert parse_fraction("1%") == pytest.approx(0.01)
    with pytest.raises(MempruneError):
        parse_fraction("150%")


def test_unreadable_image_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(MempruneError, match="broken.png"):
        load_image(bad)
    truncated = _png(tmp_path / "t.png", size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(MempruneError, match="t.png"):
        load_image(truncated)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    suffix = ".jpg" if mode == "CMYK" else ".png"
    img = load_image(_png(tmp_path / f"x{suffix}", mode=mode))
    assert img.mode == "RGB"
    assert ViewPipeline("center", 8).view(img, "x").shape == (3, 8, 8)


def test_center_view_keeps_image_at_resolution(tmp_path: Path) -> None:
    path = _png(tmp_path / "x.png", size=(16, 16))
    img = load_image(path)
    out = ViewPipeline("center", 16).view(img, "x")
    assert torch.equal(out, to_tensor(img))
    assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    wide = ViewPipeline("center", 16).view(load_image(_png(tmp_path / "w.png", size=(30, 16))), "w")
    assert torch.equal(wide, to_tensor(load_image(tmp_path / "w.png").crop((7, 0, 23, 16))))


def test_small_image_is_upscaled(tmp_path: Path) -> None:
    img = load_image(_png(tmp_path / "s.png", size=(5, 3)))
    for kind in ("center", "var", "rar"):
        assert ViewPipeline(kind, 16).view(img, "s").shape == (3, 16, 16)


def test_var_view_geometry_and_seeding(tmp_path: Path) -> None:
    img = load_image(_png(tmp_path / "v.png", size=(40, 30)))
    pipe = ViewPipeline("var", 16, seed=3)
    big = img.resize((24, 18), resample=Image.Resampling.LANCZOS)  # shorter side round(1.125 * 16) = 18
    crops = {tuple(to_tensor(big.crop((x, y, x + 16, y + 16))).flatten()[:50].tolist()): (x, y)
             for x in range(9) for y in range(3)}
    views = [pipe.view(img, "v", a) for a in range(6)]
    for v in views:
        assert tuple(v.flatten()[:50].tolist()) in crops  # every view is a 16-crop of the LANCZOS-resized image
    assert len({tuple(v.flatten().tolist()) for v in views}) > 1  # augmentations differ
    assert torch.equal(views[2], ViewPipeline("var", 16, seed=3).view(img, "v", 2))  # per (seed, id, aug)
    assert not torch.equal(views[2], ViewPipeline("var", 16, seed=4).view(img, "v", 2)) or not torch.equal(
        views[3], ViewPipeline("var", 16, seed=4).view(img, "v", 3))


def test_rar_ten_crop_views(tmp_path: Path) -> None:
    img = load_image(_png(tmp_path / "r.png", size=(50, 40)))
    pipe = ViewPipeline.for_arch("rar", 64)  # 1.1 x 64 = 70: corners and centre all differ
    v = [pipe.view(img, "r", k) for k in range(11)]
    assert torch.equal(v[1], v[0].flip(-1))  # view 1 = mirrored centre crop
    assert torch.equal(v[10], v[0])  # views cycle with period 10
    assert len({tuple(x.flatten().tolist()) for x in v[:10]}) == 10
