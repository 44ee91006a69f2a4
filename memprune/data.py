"""Scoring and audit data: image lists, class-balanced subsets and the models' training views.

A data set is a list of :class:`ImageRecord` (path, label, id). The id is the image's path relative to the
data root (POSIX separators), so score files and audit reports name images, never row numbers.

Sources (:func:`load_records`):

* an ImageFolder-style directory, one sub-folder per class (files found recursively, sorted). Class ids
  follow a ``--class-index`` file when given, otherwise the sorted folder names (torchvision's order,
  which for ImageNet synset folders is the official 0..999 order);
* a CSV file with the header ``path,label``; paths are relative to the CSV's folder (or absolute); a label
  is an integer class id, or a class name when a class index is given.

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
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from memprune.errors import MempruneError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".jxl")
VIEW_KINDS = ("var", "rar", "center")

__all__ = [
    "ImageRecord",
    "DataSet",
    "ViewPipeline",
    "load_records",
    "read_class_index",
    "balanced_subset",
    "parse_fraction",
    "load_image",
    "to_tensor",
    "view_seed",
    "class_counts",
    "check_labels",
]


@dataclass(frozen=True)
class ImageRecord:
    """One image: where it is, its class id and its stable id (path relative to the data root)."""

    path: Path
    label: int
    id: str


@dataclass(frozen=True)
class DataSet:
    """Images in a fixed order plus a description of where they came from.

    Attributes:
        records: the images, in global index order.
        classes: class name -> class id for the classes that have images.
        source: the folder or CSV file read.
    """

    records: list[ImageRecord]
    classes: dict[str, int]
    source: str

    def describe(self) -> dict[str, object]:
        """A JSON-serialisable summary (stored in score files)."""
        return {"source": self.source, "images": len(self.records), "classes": len({r.label for r in self.records})}


# ---------------------------------------------------------------------------------------------- class index
def read_class_index(path: str | os.PathLike) -> dict[str, int]:
    """Read a mapping of class (folder) names to class ids.

    Accepted forms: JSON ``{"n01440764": 0, ...}``, JSON ``["n01440764", ...]`` (position = id), the Keras
    ``imagenet_class_index.json`` form ``{"0": ["n01440764", "tench"], ...}``, or text with one class per line,
    either ``name id`` pairs or just names / ``LOC_synset_mapping.txt`` lines (line order = id).

    Raises:
        MempruneError: unreadable file, unknown layout, or a name given twice.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MempruneError(f"cannot read class index {p} ({exc}): give a JSON or text file") from None
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MempruneError(f"class index {p} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        pairs = _json_pairs(obj, p)
    else:
        pairs = _text_pairs(text)
    mapping: dict[str, int] = {}
    for name, cid in pairs:
        if name in mapping:
            raise MempruneError(f"class index {p} lists {name!r} twice: each class name must appear once")
        mapping[name] = cid
    if not mapping:
        raise MempruneError(f"class index {p} is empty: list one class name per line or a JSON name -> id map")
    return mapping


def _json_pairs(obj: object, p: Path) -> list[tuple[str, int]]:
    if isinstance(obj, list) and all(isinstance(x, str) for x in obj):
        return [(name, i) for i, name in enumerate(obj)]
    if isinstance(obj, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in obj.values()):
        return [(str(k), int(v)) for k, v in obj.items()]
    if isinstance(obj, dict) and all(isinstance(v, list) and v and isinstance(v[0], str) for v in obj.values()):
        try:
            return [(v[0], int(k)) for k, v in obj.items()]
        except ValueError:
            pass
    raise MempruneError(
        f"class index {p} has an unknown layout: use {{\"name\": id}}, [\"name\", ...] or {{\"id\": [\"name\", ...]}}"
    )


def _text_pairs(text: str) -> list[tuple[str, int]]:
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if rows and all(len(r) == 2 and re.fullmatch(r"-?\d+", r[1]) for r in rows):
        return [(r[0], int(r[1])) for r in rows]
    return [(r[0], i) for i, r in enumerate(rows)]


# ---------------------------------------------------------------------------------------------- sources
def load_records(data: str | os.PathLike, class_index: str | os.PathLike | None = None) -> DataSet:
    """List the images of an ImageFolder-style directory or a ``path,label`` CSV.

    Args:
        data: a folder with one sub-folder per class, or a ``.csv`` file.
        class_index: optional class name -> id file (:func:`read_class_index`).

    Returns:
        The data set, ordered by class id and then by image id.

    Raises:
        MempruneError: missing source, a class folder without images, a folder or label not in the class
            index, a malformed CSV, or no images at all.
    """
    root = Path(data)
    mapping = read_class_index(class_index) if class_index is not None else None
    if not root.exists():
        raise MempruneError(f"data {root} does not exist: give an image folder (one sub-folder per class) or a CSV")
    if root.is_dir():
        records, classes = _folder_records(root, mapping)
    elif root.suffix.lower() == ".csv":
        records, classes = _csv_records(root, mapping)
    else:
        raise MempruneError(f"data {root} is neither a folder nor a .csv file: give an image folder or a path,label CSV")
    if not records:
        raise MempruneError(f"no images found in {root} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    records.sort(key=lambda r: (r.label, r.id))
    return DataSet(records=records, classes=classes, source=str(root))


def _folder_records(root: Path, mapping: dict[str, int] | None) -> tuple[list[ImageRecord], dict[str, int]]:
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise MempruneError(f"{root} has no class sub-folders: put each class's images in its own folder, or use a CSV")
    if mapping is None:
        classes = {name: i for i, name in enumerate(folders)}
    else:
        unknown = [f for f in folders if f not in mapping]
        if unknown:
            raise MempruneError(
                f"class folder {unknown[0]!r} ({len(unknown)} in all) is not in the class index: "
                "add it to --class-index or remove the folder"
            )
        classes = {name: mapping[name] for name in folders}
    records = []
    for name in folders:
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise MempruneError(f"class folder {root / name} holds no images: add images or remove the folder")
        records += [ImageRecord(p, classes[name], p.relative_to(root).as_posix()) for p in files]
    return records, classes


def _csv_records(path: Path, mapping: dict[str, int] | None) -> tuple[list[ImageRecord], dict[str, int]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "label"} <= {h.strip() for h in reader.fieldnames}:
            raise MempruneError(f"{path} must start with the header line 'path,label' (found {reader.fieldnames})")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    records, classes, seen = [], {}, set()
    for line, row in enumerate(rows, start=2):
        label = _csv_label(row["label"], mapping, path, line)
        image = Path(row["path"])
        full = image if image.is_absolute() else path.parent / image
        rid = image.as_posix()
        if rid in seen:
            raise MempruneError(f"{path} line {line}: {rid} is listed twice; each image may appear once")
        seen.add(rid)
        classes[row["label"]] = label
        records.append(ImageRecord(full, label, rid))
    return records, classes


def _csv_label(text: str, mapping: dict[str, int] | None, path: Path, line: int) -> int:
    if mapping is not None and text in mapping:
        return mapping[text]
    if re.fullmatch(r"\d+", text):
        return int(text)
    hint = "it is not in --class-index" if mapping is not None else "give an integer class id or pass --class-index"
    raise MempruneError(f"{path} line {line}: unknown label {text!r}: {hint}")


# ---------------------------------------------------------------------------------------------- subsets
def parse_fraction(text: str | float) -> float:
    """``1%`` -> 0.01, ``0.5`` -> 0.5. Raises MempruneError outside (0, 1]."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise MempruneError(f"--fraction {raw!r} is not a share: write e.g. 1% or 0.01") from None
    if not 0 < value <= 1:
        raise MempruneError(f"--fraction {raw} is out of range: give a share in (0%, 100%]")
    return value


def balanced_subset(
    records: Sequence[ImageRecord], *, fraction: float | None = None, per_class: int | None = None, seed: int = 0
) -> list[ImageRecord]:
    """A seeded, class-balanced subset: the same number of images from every class.

    ``per_class`` takes that many images per class; ``fraction`` takes ``round(fraction * N / C)`` per class
    (at least 1), i.e. the share of the whole set spread evenly over the C classes, as the paper's "1% of
    ImageNet, evenly sampled across classes". A class with fewer images contributes all of them. Each class
    is sampled with its own generator seeded by ``(seed, class id)``, so adding a class does not change the
    others. The result keeps the input order.
    """
    if (fraction is None) == (per_class is None):
        raise MempruneError("give exactly one of --fraction and --per-class")
    by_class: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_class.setdefault(r.label, []).append(i)
    if per_class is not None:
        if per_class <= 0:
            raise MempruneError(f"--per-class {per_class} selects nothing: give a positive number")
        k = per_class
    else:
        k = max(1, round(fraction * len(records) / max(1, len(by_class))))  # type: ignore[operator]
    keep: list[int] = []
    for label, idx in by_class.items():
        rng = np.random.default_rng([seed & 0xFFFFFFFF, label])
        chosen = rng.choice(len(idx), size=min(k, len(idx)), replace=False)
        keep += [idx[j] for j in chosen]
    return [records[i] for i in sorted(keep)]


# ---------------------------------------------------------------------------------------------- images
def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image fully and convert it to RGB.

    Raises:
        MempruneError: naming the file when it is missing, not an image, or truncated.
    """
    p = Path(path)
    try:
        with Image.open(p) as img:
            img.load()
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")  # PIL warns on palette+transparency straight to RGB
            return img.convert("RGB")
    except FileNotFoundError:
        raise MempruneError(f"image {p} does not exist: fix the data list or restore the file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MempruneError(f"cannot read image {p} ({type(exc).__name__}: {exc}): remove or replace the file") from None


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
        """The training views of ``arch`` (var or rar; others fall back to var's), or the centre view."""
        if not augment:
            return cls("center", resolution, seed)
        # LlamaGen trains on the same ten-crops of center_crop_arr(1.1 x) (extract_codes_c2i.py --ten-crop) as RAR.
        return cls("rar" if arch in ("rar", "llamagen") else "var", resolution, seed)

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


def class_counts(records: Sequence[ImageRecord]) -> dict[int, int]:
    """Images per class id."""
    return dict(sorted(Counter(r.label for r in records).items()))


def check_labels(records: Sequence[ImageRecord], num_classes: int) -> None:
    """Every label must be a class of the model.

    Raises:
        MempruneError: naming the first image whose label is out of range.
    """
    for r in records:
        if not 0 <= r.label < num_classes:
            raise MempruneError(
                f"image {r.id} has label {r.label}, but the model has {num_classes} classes [0, {num_classes - 1}]: "
                "fix the labels or pass a --class-index that maps folders to the model's class ids"
            )

