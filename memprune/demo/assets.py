"""The bundled demo models: two tiny VARs trained on emoji with planted duplicates, and their images.

Each lives in one folder of ``memprune/assets/`` (package data), written by ``examples/train_demo_model.py``:

* ``demo/`` (``--model dense``): 352 Twemoji training images, 32 duplicated x16 (62% of the training rows);
* ``demo_rare/`` (``--model rare``, the paper's regime): thousands of distinct Twemoji and OpenMoji images, about
  1% of them duplicated x16, the rest seen once; float16 weights.

Both folders hold:

* ``var_demo.safetensors`` / ``vae_demo.safetensors``: the transformer and its multi-scale VQVAE in the official
  VAR / VQVAE key layouts (``load_var`` and ``memprune inspect`` read them like a release checkpoint);
* ``images/*.png``: 36 x 36 emoji (licences and attribution in ``ATTRIBUTION.txt``);
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


@dataclass(frozen=True)
class DemoModel:
    """One bundled model and how the demo scores it.

    Attributes:
        name: ``dense`` or ``rare`` (``memprune demo --model``).
        folder: its folder under ``memprune/assets``.
        score_fraction: UnitMem is scored on a seeded class-balanced share of the training images (the paper
            scores 1% of ImageNet); ``None`` = every distinct training image.
        summary: one line for ``--help`` and the report.
        mitigate_share, mitigate_factor: the recipe ``memprune mitigate`` kept on this model (attribution scores),
            which the demo rebuilds live. Neither model reaches mitigate's default target; each recipe is the closest
            point of a documented run: ``dense`` within the default 1% budget (target 3), ``rare`` within a 3% budget
            (no localized point removes anything within 1% there). docs/demo.md gives both runs.
    """

    name: str
    folder: str
    score_fraction: float | None
    summary: str
    mitigate_share: str
    mitigate_factor: float


DEMO_MODELS = {
    "rare": DemoModel("rare", "demo_rare", 0.05, "the paper's regime: about 1% of thousands of distinct "
                      "training images duplicated x16 (Twemoji + OpenMoji)", "40%", 0.0),
    "dense": DemoModel("dense", "demo", None, "32 duplicated images x16 among 352 (62% of the training rows; "
                       "Twemoji)", "60%", 0.0),
}
DEFAULT_MODEL = "rare"


def demo_model(name: str) -> DemoModel:
    """The bundled model called ``name``.

    Raises:
        MempruneError: no such model.
    """
    if name not in DEMO_MODELS:
        raise MempruneError(f"--model {name!r} is not a bundled demo model: choose {' or '.join(DEMO_MODELS)}")
    return DEMO_MODELS[name]
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
    model: DemoModel = DEMO_MODELS["dense"]

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


def default_assets_dir(model: str = "dense") -> Path:
    """``memprune/assets/<folder of model>`` inside the installed package."""
    return Path(__file__).resolve().parent.parent / "assets" / demo_model(model).folder


def load_demo_assets(root: str | os.PathLike | None = None, model: str = "dense") -> DemoAssets:
    """Read the ground truth of ``model`` (from ``root`` if given) and check that every bundled file is present.

    Raises:
        MempruneError: a file is missing (the install lacks its package data) or the ground truth is malformed.
    """
    profile = demo_model(model)
    base = Path(root) if root is not None else default_assets_dir(model)
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
    return DemoAssets(base, classes, images, repeats, (base / "ATTRIBUTION.txt").read_text().strip(), profile)
