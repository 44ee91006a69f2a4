"""The bundled demo assets: a tiny VAR trained on Twemoji with planted duplicates, and its images.

Everything lives in ``memprune/assets/demo/`` (package data), written by ``examples/train_demo_model.py``:

* ``var_demo.safetensors`` / ``vae_demo.safetensors``: the transformer and its multi-scale VQVAE in the official
  VAR / VQVAE key layouts (``load_var`` and ``memprune inspect`` read them like a release checkpoint);
* ``images/*.png``: 36 x 36 Twemoji (CC-BY 4.0, Twitter, Inc and other contributors; see ``ATTRIBUTION.txt``);
* ``ground_truth.json``: per image its class, its role (``duplicated``: in the training set ``repeats`` times,
  ``single``: once, ``heldout``: never) and its name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from memprune.data import ImageRecord
from memprune.errors import MempruneError

ROLES = ("duplicated", "single", "heldout")
_FILES = ("var_demo.safetensors", "vae_demo.safetensors", "ground_truth.json", "ATTRIBUTION.txt")


@dataclass(frozen=True)
class DemoImage:
    """One bundled image.

    Attributes:
        id: path relative to the assets folder (``images/1f600.png``), used as the image id everywhere.
        path: absolute path.
        label: class id (index into :attr:`DemoAssets.classes`).
        role: ``duplicated``, ``single`` or ``heldout``.
        name: the emoji's name.
    """

    id: str
    path: Path
    label: int
    role: str
    name: str

    def record(self) -> ImageRecord:
        """As a :class:`memprune.data.ImageRecord` (what scoring takes)."""
        return ImageRecord(self.path, self.label, self.id)


@dataclass(frozen=True)
class DemoAssets:
    """The bundled model files and images with their ground truth."""

    root: Path
    classes: list[str]
    images: list[DemoImage]
    repeats: int
    attribution: str

    @property
    def var_path(self) -> Path:
        return self.root / "var_demo.safetensors"

    @property
    def vae_path(self) -> Path:
        return self.root / "vae_demo.safetensors"

    def role(self, role: str) -> list[DemoImage]:
        """The images of one role, in ground-truth order."""
        if role not in ROLES:
            raise MempruneError(f"unknown image role {role!r}: choose one of {', '.join(ROLES)}")
        return [im for im in self.images if im.role == role]

    @property
    def training(self) -> list[DemoImage]:
        """The distinct training images (duplicated and single), in ground-truth order."""
        return [im for im in self.images if im.role != "heldout"]


def default_assets_dir() -> Path:
    """``memprune/assets/demo`` inside the installed package."""
    return Path(__file__).resolve().parent.parent / "assets" / "demo"


def load_demo_assets(root: str | os.PathLike | None = None) -> DemoAssets:
    """Read the ground truth and check that every bundled file is present.

    Raises:
        MempruneError: a file is missing (the install lacks its package data) or the ground truth is malformed.
    """
    base = Path(root) if root is not None else default_assets_dir()
    missing = [f for f in _FILES if not (base / f).is_file()]
    if missing:
        raise MempruneError(f"demo assets incomplete in {base} (missing {', '.join(missing)}): reinstall memprune "
                            "with its package data (pip install --force-reinstall memprune)")
    try:
        truth = json.loads((base / "ground_truth.json").read_text())
        images = [DemoImage(r["file"], base / r["file"], int(r["label"]), r["role"], r.get("name", ""))
                  for r in truth["images"]]
        classes, repeats = list(truth["classes"]), int(truth["repeats"])
    except (ValueError, KeyError, TypeError) as exc:
        raise MempruneError(f"{base / 'ground_truth.json'} is malformed ({exc}): reinstall memprune") from None
    absent = [im.id for im in images if not im.path.is_file()]
    if absent:
        raise MempruneError(f"{len(absent)} demo images missing in {base} (e.g. {absent[0]}): reinstall memprune")
    bad = [im.id for im in images if im.role not in ROLES or not 0 <= im.label < len(classes)]
    if bad:
        raise MempruneError(f"ground truth entry {bad[0]} has an unknown role or class: reinstall memprune")
    return DemoAssets(base, classes, images, repeats, (base / "ATTRIBUTION.txt").read_text().strip())
