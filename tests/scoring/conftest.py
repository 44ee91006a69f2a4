from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tiny_model: also importable in spawned worker processes

from tiny_model import TinyIAR, make_image_folder  # noqa: E402


@pytest.fixture
def tiny() -> TinyIAR:
    return TinyIAR(seed=0)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")
