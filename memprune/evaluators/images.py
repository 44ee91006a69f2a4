"""Image loading and resizing shared by the evaluators (SSCD, FID).

Every evaluator turns whatever the user hands it into the same thing first: one float32 tensor
``[3, H, W]`` in ``[0, 1]`` per image (:func:`to_float_images`). Resizing then happens in torch on those
floats, so a PIL image, a uint8 array and a float tensor holding the same pixels give the same result.

Accepted inputs (:data:`ImageInput`):

* ``torch.Tensor`` float ``[B, C, H, W]`` or ``[C, H, W]`` in ``[0, 1]`` (C = 1, 3 or 4); uint8 tensors in
  ``[0, 255]``. This is what :meth:`memprune.families.base.IARModel.decode` returns.
* ``numpy.ndarray`` in channel-last layout: ``[H, W]``, ``[H, W, C]`` or ``[B, H, W, C]``; uint8 (0-255),
  uint16 (0-65535), bool, or float in ``[0, 1]``.
* ``PIL.Image.Image`` of any mode (grayscale, RGBA, palette, 16-bit, CMYK, ...), or a path to an image file.
* A list/tuple of any of these (sizes may differ).

Colour handling: grayscale is repeated to three channels; an alpha channel is composited onto a white
background (dropping it would expose whatever colour transparent pixels happen to store); 16-bit and
32-bit integer images are scaled from 0..65535, not clipped at 255 as ``PIL.Image.convert`` would do. Files
and PIL images go through :func:`memprune.data_views.load_image` / ``pil_to_rgb``, the loader that scoring
and the audit use too, so one file gives the same pixels everywhere.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from memprune.data_views import load_image, pil_to_rgb  # the one image loader (re-exported here)
from memprune.errors import MempruneError
from memprune.io import atomic_write

ImageInput = Union[torch.Tensor, np.ndarray, Image.Image, str, os.PathLike, Sequence]
"""Anything the evaluators accept as images; see the module docstring."""

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
"""File suffixes (lower case) that :func:`list_image_files` picks up."""

_WHITE = 1.0


def list_image_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """List the image files under ``folder`` in a stable (sorted) order.

    Args:
        folder: Directory to scan.
        recursive: Also scan sub-directories.

    Returns:
        Sorted paths whose suffix is one of :data:`IMAGE_EXTENSIONS`.

    Raises:
        MempruneError: If ``folder`` is not a directory or holds no images.
    """
    root = Path(folder)
    if not root.is_dir():
        raise MempruneError(f"image folder {str(root)!r} does not exist or is not a directory; pass a folder of images")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise MempruneError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {str(root)!r}; check the path or the file suffixes"
        )
    return files


def to_float_images(images: ImageInput) -> list[torch.Tensor]:
    """Turn any accepted image input into a list of float32 ``[3, H, W]`` tensors in ``[0, 1]``.

    Tensors keep their device; arrays, PIL images and files become CPU tensors.

    Args:
        images: See :data:`ImageInput`.

    Returns:
        One tensor per image (sizes may differ).

    Raises:
        MempruneError: On an unsupported type, layout, dtype or value range.
    """
    return list(_iter_float_images(images))


def iter_image_batches(images: ImageInput, batch_size: int) -> Iterator[list[torch.Tensor]]:
    """Yield lists of at most ``batch_size`` float ``[3, H, W]`` images, converting lazily.

    Paths are opened only when their batch is reached, so a long list of files never sits in memory at once.
    """
    if batch_size < 1:
        raise MempruneError(f"batch_size must be >= 1, got {batch_size}")
    batch: list[torch.Tensor] = []
    for img in _iter_float_images(images):
        batch.append(img)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _iter_float_images(images: ImageInput) -> Iterator[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        yield from _tensor_to_float(images)
    elif isinstance(images, np.ndarray):
        yield from _tensor_to_float(_numpy_to_nchw(images))
    elif isinstance(images, Image.Image):
        yield _pil_to_float(images)
    elif isinstance(images, (str, os.PathLike)):
        yield _pil_to_float(load_image(images))
    elif isinstance(images, Sequence):
        for item in images:
            yield from _iter_float_images(item)
    else:
        raise MempruneError(
            f"unsupported image input of type {type(images).__name__}; pass tensors, numpy arrays, PIL images or paths"
        )


def _pil_to_float(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(pil_to_rgb(img), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _numpy_to_nchw(arr: np.ndarray) -> torch.Tensor:
    """Channel-last numpy (``[H,W]``, ``[H,W,C]``, ``[B,H,W,C]``) to a ``[B, C, H, W]`` tensor, same dtype."""
    if arr.ndim == 2:
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:
        arr = arr[None] if arr.shape[-1] in (1, 3, 4) else arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise MempruneError(
            f"numpy images must be channel-last [H,W], [H,W,C] or [B,H,W,C] with C in (1,3,4); got shape {arr.shape}"
        )
    if arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)


def _tensor_to_float(t: torch.Tensor) -> Iterator[torch.Tensor]:
    """``[B,C,H,W]`` or ``[C,H,W]`` tensor (uint8 or float in [0,1]) to float RGB ``[3,H,W]`` tensors."""
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[1] not in (1, 3, 4):
        raise MempruneError(f"image tensors must be [B,C,H,W] or [C,H,W] with C in (1,3,4); got shape {tuple(t.shape)}")
    t = t.detach()  # stays on its device: decoded GPU batches are not copied to the host and back
    if t.dtype == torch.uint8:
        t = t.float().div_(255.0)
    elif t.dtype == torch.bool:
        t = t.float()
    elif t.is_floating_point():
        t = t.float()
        lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 1.0)
        if lo < -1e-3 or hi > 1.0 + 1e-3 or not np.isfinite([lo, hi]).all():
            raise MempruneError(
                f"float images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                "map [-1, 1] images with (x + 1) / 2, or pass uint8"
            )
        t = t.clamp(0.0, 1.0)
    else:
        raise MempruneError(f"unsupported image dtype {t.dtype}; pass uint8 or float images")
    if t.shape[1] == 4:  # composite RGBA onto white: rgb * a + white * (1 - a)
        t = t[:, :3] * t[:, 3:] + _WHITE * (1.0 - t[:, 3:])
    elif t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    yield from (img.contiguous() for img in t)


def resize_square(image: torch.Tensor, size: int, *, antialias: bool) -> torch.Tensor:
    """Bilinearly resize ``[B, 3, H, W]`` (or ``[3, H, W]``) to ``size x size``; aspect ratio is not kept.

    ``align_corners=False`` throughout (the convention of torchvision's tensor ``Resize`` and of
    pytorch-fid). ``antialias=True`` low-pass filters when shrinking, like torchvision >= 0.17.
    """
    return _resize(image, (size, size), antialias=antialias)


def resize_shorter_side(image: torch.Tensor, size: int, *, antialias: bool = True) -> torch.Tensor:
    """Bilinearly resize so that the shorter side is ``size``, keeping the aspect ratio.

    The longer side becomes ``int(size * long / short)`` (truncated, as torchvision's ``Resize(int)``).
    """
    h, w = image.shape[-2:]
    if h <= w:
        out = (size, int(size * w / h))
    else:
        out = (int(size * h / w), size)
    return _resize(image, out, antialias=antialias)


def _resize(image: torch.Tensor, out_hw: tuple[int, int], *, antialias: bool) -> torch.Tensor:
    batched = image.ndim == 4
    x = image if batched else image[None]
    if tuple(x.shape[-2:]) != tuple(out_hw):
        x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False, antialias=antialias)
    return x if batched else x[0]


def stack_resized(images: Sequence[torch.Tensor], resize: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Resize each ``[3, H, W]`` image with ``resize`` and stack them into one ``[B, 3, h, w]`` batch.

    Images that already share a size are resized together (one interpolate call), which gives the same
    result as resizing them one by one.
    """
    if not images:
        raise MempruneError("no images given; pass at least one image")
    if all(img.shape == images[0].shape for img in images):
        return resize(torch.stack(list(images)))
    return torch.cat([resize(img[None]) for img in images])


# --- weight files shared by the evaluators: cache folder, hashing, download -----------------------------


def weights_cache_dir() -> Path:
    """Folder where evaluator weights are looked up and downloaded to.

    ``$MEMPRUNE_CACHE`` if set, else ``$XDG_CACHE_HOME/memprune``, else ``~/.cache/memprune``.
    """
    if os.environ.get("MEMPRUNE_CACHE"):
        return Path(os.environ["MEMPRUNE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "memprune"


def download_file(url: str, dest: str | os.PathLike, *, sha256_prefix: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically (temp file in the same folder, fsync, rename).

    Args:
        url: Source URL (``https://`` or ``file://``).
        dest: Target file; its folder is created.
        sha256_prefix: If given, the download must have a sha256 starting with it (a full digest works too).
        timeout: Socket timeout in seconds.

    Returns:
        ``dest`` as a Path.

    Raises:
        MempruneError: On a network error or a checksum mismatch (nothing is left at ``dest``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        with atomic_write(dest) as tmp, open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
            got = digest.hexdigest()
            if sha256_prefix and not got.startswith(sha256_prefix.lower()):
                raise MempruneError(
                    f"download of {url} has sha256 {got}, expected one starting with {sha256_prefix}; "
                    "the file changed upstream or the transfer was corrupted: retry, or pass a local copy"
                )
    except OSError as exc:
        raise MempruneError(f"cannot download {url} ({exc}); download it by hand and pass its path") from None
    return dest
