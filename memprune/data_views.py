"""Model input views of training images, and the one image loader.

Views (:class:`ViewPipeline`), all returning float ``[3, res, res]`` in [0, 1]:

* ``var``: the VAR training view: shorter side to ``round(1.125 * res)`` with PIL LANCZOS (long side
  truncated, as torchvision's ``Resize``), then a random ``res`` crop; no flip.
* ``rar``: the ten-crop views of RAR's pretokenization script: ADM ``center_crop_arr(int(1.1 * res))``
  (BOX halving while the short side is at least twice the target, then BICUBIC), then the centre crop, its
  flip, the four corner crops and their flips, enumerated in that order (augmentation k uses view k mod 10,
  so ``--augs 2`` is centre + flip and ``--augs 10`` is the full ten-crop set; the seed is not used).
* no augmentation (``augment=False``, any architecture): shorter side to ``res`` with LANCZOS, then the
  centre crop. An image whose shorter side already equals ``res`` is not resampled, so an image at the model
  resolution goes in unchanged.

Every pipeline resizes the shorter side to at least the crop size first, so an image smaller than the crop
is upscaled (LANCZOS / BICUBIC) rather than padded. Grayscale, palette, CMYK and RGBA images are converted
to RGB with PIL's ``convert("RGB")`` (alpha is dropped, as in torchvision's loader). Random crops draw from a
generator seeded by ``(seed, image id, augmentation index)`` through SHA-256, so a view never depends on
batch composition, shard or rank, and a resumed run sees the same views.

Image files are checked before they are opened: a FIFO or device listed as an image is refused (it would
block), and PIL's decompression-bomb guard (an image over ``Image.MAX_IMAGE_PIXELS`` pixels) becomes a one-line
error instead of a warning or a traceback.
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from memprune.errors import MempruneError
from memprune.io.paths import check_input_file, shown

if TYPE_CHECKING:
    from memprune.data import ImageRecord

VIEW_KINDS = ("var", "rar", "center")  # view recipes (named after the code they reproduce), not families
_DEEP_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# load_image refuses every image over the pixel limit itself (below), so PIL's multi-line warning for images
# between 1x and 2x the limit would only duplicate that error. A per-call catch_warnings is not thread-safe
# (images load in a thread pool), hence this one narrow, process-wide filter.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image fully and convert it to 8-bit RGB (:func:`pil_to_rgb`): the one loader of scoring, audit and FID.

    Raises:
        MempruneError: naming the file when it is missing, not a regular file, not an image, truncated, or so
            large that decoding it could exhaust memory (PIL's decompression-bomb limit).
    """
    p = Path(path)
    if not p.exists():
        raise MempruneError(f"image {shown(p)} not found: fix the data list or the path, or restore the file")
    check_input_file(p, "image")
    try:
        with Image.open(p) as img:
            _check_pixels(img, p)
            img.load()
            return pil_to_rgb(img)
    except FileNotFoundError:
        raise MempruneError(f"image {shown(p)} not found: fix the data list or the path, or restore the file") from None
    except Image.DecompressionBombError:
        raise _too_large(p) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise MempruneError(
            f"cannot read image {shown(p)} ({type(exc).__name__}: {str(exc)[:160]}): remove or replace the file"
        ) from None


def pil_to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB.

    Alpha (RGBA, LA, palette transparency) is composited onto white: dropping it would expose whatever colour
    the transparent pixels happen to store. Integer modes deeper than 8 bits (``I;16*`` and ``I``, as 16-bit
    PNG/TIFF files open) are scaled from 0..65535, where PIL's own ``convert`` would clip at 255; float mode ``F``
    is read as ``[0, 1]``, or as ``[0, 255]`` when its maximum exceeds 1.
    """
    if img.mode in _DEEP_GRAY_MODES:
        gray = _deep_gray_to_uint8(np.asarray(img), is_float=img.mode == "F")
        return Image.fromarray(gray, mode="L").convert("RGB")
    if img.mode == "P":  # PIL warns on palette+transparency straight to RGB
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _deep_gray_to_uint8(arr: np.ndarray, *, is_float: bool) -> np.ndarray:
    values = np.nan_to_num(arr.astype(np.float64))
    if is_float:
        scale = 1.0 if values.size == 0 or values.max() <= 1.0 else 255.0
    else:
        scale = 65535.0
    return np.round(np.clip(values / scale, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_pixels(img: Image.Image, p: Path) -> None:
    # Image.open already refuses twice the limit; between 1x and 2x PIL only warns (a multi-line warning on
    # stderr) and would decode it. Refuse it too, before decoding. No training image comes near 89 Mpixels.
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.size[0] * img.size[1] > limit:
        raise _too_large(p)


def _too_large(p: Path) -> MempruneError:
    return MempruneError(
        f"image {shown(p)} is larger than PIL's limit of {Image.MAX_IMAGE_PIXELS:,} pixels (a possible decompression "
        "bomb): remove it from the data, or shrink it if it is genuine"
    )


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 ``[3, H, W]`` in [0, 1] (uint8 / 255, as torchvision's ToTensor)."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)


def view_seed(seed: int, image_id: str, aug: int) -> int:
    """A 64-bit seed from (seed, image id, augmentation index), stable across processes and platforms."""
    digest = hashlib.sha256(f"{seed}\x00{image_id}\x00{aug}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _resize_shorter(img: Image.Image, size: int, resample: int) -> Image.Image:
    w, h = img.size
    if min(w, h) == size:
        return img
    # torchvision Resize(int): the shorter side becomes `size`, the longer int(size * long / short) (truncated).
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return img.resize(new, resample=resample)


def _crop(img: Image.Image, top: int, left: int, size: int) -> Image.Image:
    return img.crop((left, top, left + size, top + size))


def _center(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    return _crop(img, int(round((h - size) / 2.0)), int(round((w - size) / 2.0)), size)


def _center_crop_arr(img: Image.Image, size: int) -> Image.Image:
    """ADM's ``center_crop_arr``: BOX-halve while the short side >= 2 size, BICUBIC to size, centre crop."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.Resampling.BICUBIC)
    w, h = img.size
    top, left = (h - size) // 2, (w - size) // 2
    return _crop(img, top, left, size)


@dataclass(frozen=True)
class ViewPipeline:
    """How an image becomes one model input view.

    Attributes:
        kind: ``var``, ``rar`` (training augmentations) or ``center`` (no augmentation).
        resolution: the model's image size.
        seed: base seed of the random crops.
    """

    kind: str
    resolution: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in VIEW_KINDS:
            raise MempruneError(f"unknown view pipeline {self.kind!r}: choose one of {', '.join(VIEW_KINDS)}")
        if self.resolution <= 0:
            raise MempruneError(f"resolution {self.resolution} must be positive")

    @classmethod
    def for_arch(cls, arch: str, resolution: int, *, augment: bool = True, seed: int = 0) -> ViewPipeline:
        """The training views the family spec of ``arch`` declares (an undeclared one is an error), or the centre view."""
        if not augment:
            return cls("center", resolution, seed)
        from memprune.families import get_family

        return cls(get_family(arch).need("training_view"), resolution, seed)

    def describe(self) -> str:
        res = self.resolution
        if self.kind == "var":
            return f"var: shorter side {round(1.125 * res)} (LANCZOS) + seeded random crop {res}, no flip"
        if self.kind == "rar":
            return f"rar: center_crop_arr({int(1.1 * res)}) + ten-crop {res} (view = aug index mod 10)"
        return f"center: shorter side {res} (LANCZOS, skipped when already {res}) + centre crop {res}"

    def view(self, img: Image.Image, image_id: str, aug: int = 0) -> torch.Tensor:
        """View number ``aug`` of an RGB image as float ``[3, res, res]`` in [0, 1]."""
        res = self.resolution
        if self.kind == "center":
            return to_tensor(_center(_resize_shorter(img, res, Image.Resampling.LANCZOS), res))
        if self.kind == "var":
            big = _resize_shorter(img, round(1.125 * res), Image.Resampling.LANCZOS)
            rng = random.Random(view_seed(self.seed, image_id, aug))
            w, h = big.size
            top, left = rng.randint(0, h - res), rng.randint(0, w - res)
            return to_tensor(_crop(big, top, left, res))
        return to_tensor(self._ten_crop(img, aug % 10))

    def _ten_crop(self, img: Image.Image, k: int) -> Image.Image:
        res = self.resolution
        big = _center_crop_arr(img, int(1.1 * res))
        s = big.size[0]
        # centre, then the four corners (top-left, top-right, bottom-left, bottom-right); odd k = mirrored.
        spots = [(int(round((s - res) / 2.0)),) * 2, (0, 0), (0, s - res), (s - res, 0), (s - res, s - res)]
        top, left = spots[k // 2]
        out = _crop(big, top, left, res)
        return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if k % 2 else out

    def load(self, record: ImageRecord, augs: int) -> torch.Tensor:
        """Read a record once and return its ``augs`` views, ``[augs, 3, res, res]``."""
        img = load_image(record.path)
        return torch.stack([self.view(img, record.id, a) for a in range(augs)])
