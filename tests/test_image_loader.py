"""One image loader for scoring, audit and FID: alpha composited on white, 16-bit scaled, same pixels everywhere."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from memprune.data import ViewPipeline, load_image
from memprune.evaluators import images as evaluator_images
from memprune.evaluators.audit_candidates import canonical_view
from memprune.plots.grid import to_pil


def _rgba(path):
    arr = np.zeros((8, 8, 4), dtype=np.uint8)
    arr[..., :3] = (200, 10, 10)  # the colour stored under fully transparent pixels
    arr[:4, :, 3] = 0
    arr[4:, :, 3] = 255
    Image.fromarray(arr, mode="RGBA").save(path)
    return path


def _sixteen_bit(path):
    arr = np.full((8, 8), 65535 // 2, dtype=np.uint16)  # mid gray at 16 bits
    arr[:, :4] = 65535
    Image.fromarray(arr).save(path)  # mode I;16 PNG
    return path


def test_alpha_is_composited_on_white(tmp_path):
    img = np.asarray(load_image(_rgba(tmp_path / "a.png")))
    assert img[0, 0].tolist() == [255, 255, 255]  # transparent -> white, not the stored red
    assert img[7, 7].tolist() == [200, 10, 10]


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    img = np.asarray(load_image(_sixteen_bit(tmp_path / "g.png")))
    assert img[0, 0].tolist() == [255, 255, 255]
    assert img[0, 7].tolist() == [127, 127, 127]  # 32767 / 65535 * 255 = 127.5 - eps; PIL's convert("RGB") would clip 32767 to 255


def test_scoring_audit_fid_and_figures_read_the_same_pixels(tmp_path):
    for path in (_rgba(tmp_path / "a.png"), _sixteen_bit(tmp_path / "g.png")):
        img = load_image(path)
        scoring = ViewPipeline("center", 8).view(img, "x")
        audit = canonical_view(img, "rar", 8)
        (fid,) = evaluator_images.to_float_images(path)
        assert torch.equal(scoring, audit) and torch.equal(scoring, fid)
        assert np.array_equal(np.asarray(to_pil(path)), np.asarray(img))
        assert evaluator_images.load_image is load_image
