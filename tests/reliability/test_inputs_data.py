"""Hostile data for `score`: CSVs, class indexes and images. One clear line and exit 2, never a hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from inputs_support import DEMO, REPO, assert_one_line, fifo, invoke
from PIL import Image


def _score(tmp_path: Path, data: Path, *extra: object):
    return invoke("score", DEMO / "var_demo.safetensors", "--tokenizer", DEMO / "vae_demo.safetensors", "--data", data,
                  "--no-augment", "-o", tmp_path / "s.safetensors", "--device", "cpu", "--workers", "1", *extra)


def _csv(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "data.csv"
    path.write_text("path,label\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def _png(path: Path, size: tuple[int, int] = (36, 36)) -> Path:
    Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(path)
    return path


def test_field_over_128_kib(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('path,label\n"' + "a" * 200_000 + ",0\n", encoding="utf-8")  # an unclosed quote
    assert_one_line(_score(tmp_path, path), "malformed CSV", "field larger than field limit", "quot")
    assert not (tmp_path / "s.safetensors").exists()


def test_non_utf8_csv(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes("path,label\nimage_é.png,0\n".encode("latin-1"))
    assert_one_line(_score(tmp_path, path), "is not UTF-8 text", "0xe9", "save the CSV as UTF-8")


def test_csv_that_is_a_fifo(tmp_path):
    assert_one_line(_score(tmp_path, fifo(tmp_path / "data.csv")), "named pipe")


def test_class_index_that_is_a_fifo(tmp_path):
    data = _csv(tmp_path, ["a.png,0"])
    assert_one_line(_score(tmp_path, data, "--class-index", fifo(tmp_path / "classes.txt")), "class index", "named pipe")


def test_empty_path_in_csv(tmp_path):
    assert_one_line(_score(tmp_path, _csv(tmp_path, [",0"])), "line 2", "path is empty")


def test_fifo_listed_as_an_image(tmp_path):
    _png(tmp_path / "a.png")
    fifo(tmp_path / "b.png")
    assert_one_line(_score(tmp_path, _csv(tmp_path, ["a.png,0", "b.png,1"])), "image", "b.png", "named pipe")
    assert not (tmp_path / "s.safetensors").exists()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # checked in a plain process below
@pytest.mark.parametrize("side", [40, 50])  # 1600 px: PIL would only warn; 2500 px: PIL raises
def test_decompression_bomb(tmp_path, monkeypatch, side):
    _png(tmp_path / "a.png")
    _png(tmp_path / "bomb.png", (side, side))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the real limit is 89 Mpx; same code path, tiny file
    res = _score(tmp_path, _csv(tmp_path, ["bomb.png,0", "a.png,1"]))
    assert_one_line(res, "bomb.png", "decompression bomb")


def test_load_image_refuses_devices(tmp_path):
    from memprune.data import load_image
    from memprune.errors import MempruneError

    link = tmp_path / "img.png"
    link.symlink_to("/dev/urandom")
    with pytest.raises(MempruneError, match="character device"):
        load_image(link)


def test_pil_bomb_warning_never_reaches_stderr(tmp_path):
    # pytest records warnings itself, so check in a plain process that PIL's multi-line warning is not printed.
    _png(tmp_path / "big.png", (40, 40))
    code = (
        "from PIL import Image\nfrom memprune.data import load_image\nfrom memprune.errors import MempruneError\n"
        "Image.MAX_IMAGE_PIXELS = 1000\n"
        f"try:\n    load_image({str(tmp_path / 'big.png')!r})\nexcept MempruneError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "decompression bomb" in proc.stdout and proc.stderr == "", proc.stderr
