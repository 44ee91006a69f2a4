"""``build_report`` / ``write_report`` on hand-made score sets with known answers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from memprune.cli import app
from memprune.scores import ScoreSet, save_scores
from memprune.scoring import build_report, write_report


def _scores() -> ScoreSet:
    # 2 blocks x 3 groups x 10 units; group g0 is image-independent and must not drive the ranking.
    s0 = torch.zeros(3, 10)
    s1 = torch.zeros(3, 10)
    s0[0, :] = 1.0  # huge in g0 only: ignored by the top-unit ranking
    s1[1, 3], s1[2, 7] = 0.9, 0.8  # the two top units (top 10% of 20 units = 2)
    s1[2, 3] = 0.1
    arg0 = torch.zeros(3, 10, dtype=torch.long)
    arg1 = torch.zeros(3, 10, dtype=torch.long)
    arg1[1, 3], arg1[2, 3], arg1[2, 7] = 4, 1, 4  # both top units peak on image 4 (unit 3 in group g1)
    stats = {"argmax.blocks.0.ffn.fc1": arg0, "argmax.blocks.1.ffn.fc1": arg1, "count": torch.tensor([5])}
    return ScoreSet(scores={"blocks.0.ffn.fc1": s0, "blocks.1.ffn.fc1": s1}, groups=["g0", "g1", "g2"],
                    image_independent=["g0"], stats=stats, images=[f"im{i}.png" for i in range(5)],
                    info={"labels": [0, 0, 1, 1, 2]})


def test_report_numbers() -> None:
    r = build_report(_scores(), top="10%")
    assert r.blocks == [0, 1] and r.kinds == ["ffn.fc1"]
    assert r.heatmap["ffn.fc1"][0] == [10.0, 0.0, 0.0]
    assert r.heatmap["ffn.fc1"][1] == pytest.approx([0.0, 0.9, 0.9])
    assert r.top_units["ffn.fc1"] == [0, 2] and r.top_share_of_top["ffn.fc1"] == [0.0, 1.0]
    assert r.top_share_of_block["ffn.fc1"] == [0.0, 0.2]
    assert r.num_mem_units == [0, 0, 0, 0, 2]
    assert r.top_images == [{"index": 4, "id": "im4.png", "num_mem_units": 2, "label": 2}]
    assert sum(r.histograms["blocks.1.ffn.fc1"]) == 30


def test_write_report_files(tmp_path: Path, check_png) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "im4.png")
    files = write_report(build_report(_scores()), tmp_path / "rep", images={"im4.png": tmp_path / "im4.png"},
                         class_names=["cat", "dog", "tench"])
    names = {f.name for f in files}
    assert {"report.json", "heatmap.png", "histograms.png", "top_units.png", "num_mem_units.png"} <= names
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["num_mem_units"] == [0, 0, 0, 0, 2]
    for f in files:
        if f.suffix == ".png":
            check_png(f, min_size=(200, 150), max_size=(3000, 3000))
    with Image.open(tmp_path / "rep" / "num_mem_units.png") as im:  # the thumbnail is drawn
        arr = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    assert ((arr[:, 1] > 150) & (arr[:, 0] < 60) & (arr[:, 2] < 90)).sum() > 100


def test_single_group_family_gets_block_bars(tmp_path: Path, check_png) -> None:
    pytest.importorskip("matplotlib")
    s = _scores()
    one = ScoreSet(scores={k: v[1:2] for k, v in s.scores.items()}, groups=["all_tokens"], image_independent=[],
                   stats={"count": torch.tensor([5])}, images=s.images)
    files = write_report(build_report(one), tmp_path)
    w, h = check_png(tmp_path / "heatmap.png", min_size=(300, 200))
    assert w > h  # bars over blocks, not a one-column heatmap
    assert tmp_path / "heatmap.png" in files


def test_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    report = build_report(_scores())
    files = write_report(report, tmp_path)
    assert [f.name for f in files] == ["report.json"]
    assert any("matplotlib is not installed" in n for n in report.notes)


def test_report_cli(tmp_path: Path) -> None:
    save_scores(_scores(), tmp_path / "s.safetensors")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "s.safetensors"), "-o", str(tmp_path / "r"), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["top_images"][0]["id"] == "im4.png"
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_report_cli_with_data_draws_thumbnails_and_names(tmp_path: Path, check_png) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    s = _scores()
    names = ["apple", "apple", "bee", "bee", "cat"]  # class folders sorted by name: apple=0, bee=1, cat=2
    s.images = [f"{n}/im{i}.png" for i, n in enumerate(names)]
    for i, n in enumerate(names):
        (tmp_path / "data" / n).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (10, 200, 30)).save(tmp_path / "data" / n / f"im{i}.png")
    save_scores(s, tmp_path / "s.safetensors")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "s.safetensors"), "-o", str(tmp_path / "r"),
                                   "--data", str(tmp_path / "data")])
    assert res.exit_code == 0, res.output
    check_png(tmp_path / "r" / "num_mem_units.png")
    with Image.open(tmp_path / "r" / "num_mem_units.png") as im:
        arr = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    assert ((arr[:, 1] > 150) & (arr[:, 0] < 60) & (arr[:, 2] < 90)).sum() > 50  # the thumbnail of cat/im4.png
