"""Image loading helpers: every PIL mode, array layout and dtype ends up as float RGB in [0, 1]."""

from __future__ import annotations

import hashlib
import io
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memprune.errors import MempruneError
from memprune.evaluators.images import (
    download_file,
    iter_image_batches,
    list_image_files,
    load_image,
    pil_to_rgb,
    resize_shorter_side,
    resize_square,
    stack_resized,
    to_float_images,
)


def _rgb(h: int = 12, w: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_same_pixels_same_tensor_across_input_types() -> None:
    arr = _rgb()
    as_float = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    variants = [arr, arr[None], Image.fromarray(arr), torch.from_numpy(arr).permute(2, 0, 1), as_float, as_float[None]]
    for v in variants:
        (out,) = to_float_images(v)
        assert out.dtype == torch.float32 and out.shape == (3, 12, 20)
        torch.testing.assert_close(out, as_float, atol=0, rtol=0)


def test_sixteen_bit_gray_is_scaled_not_clipped() -> None:
    a = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(a)
    assert img.mode.startswith("I;16")
    out = np.asarray(pil_to_rgb(img))
    # PIL's own convert would clip every value >= 255 to 255; we scale from 0..65535.
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out[..., 0] == out[..., 2]).all()
    (t,) = to_float_images(a)  # uint16 numpy path
    torch.testing.assert_close(t[0, 0], torch.tensor([0, 256, 32768, 65535]) / 65535.0)


def test_alpha_is_composited_on_white() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # transparent black -> white
    out = np.asarray(pil_to_rgb(Image.fromarray(rgba, "RGBA")))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    (t,) = to_float_images(torch.from_numpy(rgba).permute(2, 0, 1))  # RGBA tensor path agrees
    assert t[:, 0, 1].tolist() == [1.0, 1.0, 1.0] and t[:, 0, 0].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("mode", ["L", "1", "P", "LA", "CMYK", "I", "F", "RGBA", "YCbCr"])
def test_every_pil_mode_becomes_rgb(mode: str, tmp_path: Path) -> None:
    img = Image.fromarray(_rgb(9, 7)).convert(mode)
    out = pil_to_rgb(img)
    assert out.mode == "RGB" and out.size == (7, 9)
    (t,) = to_float_images(img)
    assert t.shape == (3, 9, 7) and 0.0 <= float(t.min()) and float(t.max()) <= 1.0


def test_palette_with_transparency_and_files(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png", transparency=0)
    loaded = np.asarray(load_image(tmp_path / "p.png"))
    assert loaded[0, 0].tolist() == [255, 255, 255] and loaded[1, 1].tolist() == [10, 200, 30]
    Image.fromarray(_rgb()).save(tmp_path / "sub.jpg")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "d").mkdir()
    Image.fromarray(_rgb()).save(tmp_path / "d" / "x.PNG")
    files = list_image_files(tmp_path)
    assert [f.name for f in files] == ["x.PNG", "p.png", "sub.jpg"]
    assert [f.name for f in list_image_files(tmp_path, recursive=False)] == ["p.png", "sub.jpg"]


def test_bad_inputs_raise_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(MempruneError, match=r"\[0, 1\]"):
        to_float_images(torch.full((1, 3, 4, 4), -1.0))
    with pytest.raises(MempruneError, match="channel-last"):
        to_float_images(np.zeros((2, 5, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(MempruneError, match="not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(MempruneError, match="cannot read image"):
        load_image(tmp_path / "bad.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MempruneError, match="no image files"):
        list_image_files(tmp_path / "empty")
    with pytest.raises(MempruneError, match="not a directory"):
        list_image_files(tmp_path / "nope")
    with pytest.raises(MempruneError, match="unsupported image input"):
        to_float_images(3.5)


def test_resizes_and_batching() -> None:
    x = torch.rand(3, 100, 50)
    assert resize_square(x, 32, antialias=True).shape == (3, 32, 32)
    assert resize_shorter_side(x, 20).shape == (3, 40, 20)
    assert resize_shorter_side(torch.rand(1, 3, 30, 45), 20).shape == (1, 3, 20, 30)
    imgs = [torch.rand(3, 40, 40), torch.rand(3, 40, 40)]
    together = stack_resized(imgs, lambda t: resize_square(t, 16, antialias=True))
    alone = torch.cat([resize_square(i[None], 16, antialias=True) for i in imgs])
    torch.testing.assert_close(together, alone)
    mixed = stack_resized([torch.rand(3, 10, 20), torch.rand(3, 30, 30)], lambda t: resize_square(t, 8, antialias=False))
    assert mixed.shape == (2, 3, 8, 8)
    sizes = [len(b) for b in iter_image_batches([torch.rand(4, 3, 5, 5), _rgb()], 2)]
    assert sizes == [2, 2, 1]


def test_download_file_checks_sha_and_is_atomic(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"weights" * 100)
    url = "file://" + urllib.request.pathname2url(str(src))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = download_file(url, tmp_path / "cache" / "w.bin", sha256_prefix=digest[:8])
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(MempruneError, match="sha256"):
        download_file(url, tmp_path / "cache" / "bad.bin", sha256_prefix="00000000")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["w.bin"]  # no partial files left
    with pytest.raises(MempruneError, match="cannot download"):
        download_file("file:///nonexistent/x.bin", tmp_path / "cache" / "y.bin")


def test_jpeg_bytes_roundtrip_through_pil() -> None:
    buf = io.BytesIO()
    Image.fromarray(_rgb(32, 32)).save(buf, format="JPEG", quality=30)
    buf.seek(0)
    (t,) = to_float_images(Image.open(buf))
    assert t.shape == (3, 32, 32)
