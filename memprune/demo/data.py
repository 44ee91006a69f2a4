"""The demo's data as a data set: ``path,label`` CSVs every command reads (``memprune demo --export-data DIR``).

Writes into DIR:

* ``images/*.png``: the 416 bundled 36 px Twemoji (CC-BY 4.0, see ``ATTRIBUTION.txt``);
* ``train.csv``: the 352 distinct training images (32 duplicated + 320 seen once);
* ``duplicated.csv``: the 32 images seen 16 times in training; ``single.csv``: the 320 seen once;
* ``heldout.csv``: the 64 images never trained on;
* ``classes.json``: class name -> id (usable as ``--class-index``); labels in the CSVs are the ids;
* ``var_demo.safetensors`` / ``vae_demo.safetensors``: the model and its tokenizer.

Paths in the CSVs are relative to DIR, so the folder can be moved. Run as
``python -m memprune.demo.data DIR`` or ``memprune demo --export-data DIR``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from memprune.demo.assets import DemoAssets, DemoImage, load_demo_assets
from memprune.errors import MempruneError

LISTS = {"train": ("duplicated", "single"), "duplicated": ("duplicated",), "single": ("single",),
         "heldout": ("heldout",)}


@dataclass(frozen=True)
class ExportedData:
    """Where the exported lists and model files are."""

    root: Path
    lists: dict[str, Path]
    model: Path
    tokenizer: Path
    counts: dict[str, int]

    @property
    def files(self) -> list[Path]:
        return [*self.lists.values(), self.model, self.tokenizer, self.root / "classes.json",
                self.root / "ATTRIBUTION.txt"]


def export_data(dest: str | os.PathLike, assets: DemoAssets | None = None, model: str = "dense") -> ExportedData:
    """Copy the demo images and model and write the lists; files of an earlier export are replaced atomically.

    ``assets``: what to export (default: the bundled ``model``; ``memprune demo --export-data`` follows
    ``--model``).

    Raises:
        MempruneError: ``dest`` is a file, or the bundled assets are incomplete.
    """
    from memprune.io import atomic_write

    root = Path(dest)
    if root.exists() and not root.is_dir():
        raise MempruneError(f"--export-data {root} is a file: give a folder (it is created if missing)")
    data = assets or load_demo_assets(None, model)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for im in data.images:
        target = root / im.id
        if not target.is_file() or target.stat().st_size != im.path.stat().st_size:
            with atomic_write(target) as tmp:
                shutil.copyfile(im.path, tmp)
    for src, name in ((data.var_path, "var_demo.safetensors"), (data.vae_path, "vae_demo.safetensors"),
                      (data.root / "ATTRIBUTION.txt", "ATTRIBUTION.txt")):
        with atomic_write(root / name) as tmp:
            shutil.copyfile(src, tmp)
    with atomic_write(root / "classes.json") as tmp:
        Path(tmp).write_text(json.dumps({c: i for i, c in enumerate(data.classes)}, indent=1) + "\n")
    lists, counts = {}, {}
    for name, roles in LISTS.items():
        rows = [im for im in data.images if im.role in roles]
        lists[name] = _write_list(root / f"{name}.csv", rows)
        counts[name] = len(rows)
    return ExportedData(root, lists, root / "var_demo.safetensors", root / "vae_demo.safetensors", counts)


def _write_list(path: Path, images: list[DemoImage]) -> Path:
    from memprune.io import atomic_write

    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows([im.id, im.label] for im in images)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m memprune.demo.data DIR [rare|dense]``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m memprune.demo.data DIR [rare|dense]", file=sys.stderr)
        return 2
    try:
        out = export_data(args[0], model=args[1] if len(args) == 2 else "dense")
    except MempruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"demo data in {out.root}: " + ", ".join(f"{k}.csv ({v})" for k, v in out.counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
