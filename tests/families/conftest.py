"""Shared fixtures for the model tests (VAR section; other architectures add their own, prefixed by name)."""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

VAR_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "var"


def _unxz(src: Path, dst: Path) -> Path:
    with lzma.open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    return dst


@pytest.fixture(scope="session")
def var_fixture_dir() -> Path:
    return VAR_FIXTURES


@pytest.fixture(scope="session")
def var_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Decompressed weight files: ``var`` / ``vae`` (official tiny reference) and ``var_shared512``."""
    out = tmp_path_factory.mktemp("var_weights")
    return {
        "var": _unxz(VAR_FIXTURES / "var.pth.xz", out / "var.pth"),
        "vae": _unxz(VAR_FIXTURES / "vae.pth.xz", out / "vae.pth"),
        "var_shared512": _unxz(VAR_FIXTURES / "shared_aln_512" / "var.pth.xz", out / "var_shared512.pth"),
    }


@pytest.fixture(scope="session")
def var_state_dicts(var_files: dict[str, Path]) -> dict[str, dict[str, torch.Tensor]]:
    """The fixture state dicts in memory (tests must copy before editing them)."""
    return {k: torch.load(p, map_location="cpu", weights_only=True) for k, p in var_files.items()}


@pytest.fixture(scope="session")
def var_model(var_files: dict[str, Path]):
    """The tiny reference VAR (depth 3, V 512) with its tokenizer, loaded once. Do not modify it."""
    from memprune.families.var.model import load_var

    return load_var(var_files["var"], var_files["vae"])


@pytest.fixture(scope="session")
def var_ref() -> dict[str, np.ndarray]:
    with np.load(VAR_FIXTURES / "reference.npz") as data:
        return dict(data)


@pytest.fixture(scope="session")
def var_images() -> torch.Tensor:
    """The three reference images as float32 [3, 3, 256, 256] in [0, 1] (uint8 / 255)."""
    arrays = [np.asarray(Image.open(VAR_FIXTURES / f"image_{i}.png").convert("RGB")) for i in range(3)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="session")
def var_labels() -> torch.Tensor:
    return torch.from_numpy(np.load(VAR_FIXTURES / "labels.npy"))


@pytest.fixture(scope="session")
def var_tokens(var_model, var_images) -> torch.Tensor:
    """Our tokenization of the reference images (checked against the reference in the tests)."""
    return var_model.encode(var_images)
