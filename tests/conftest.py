"""Shared test fixtures: tiny random checkpoints saved in the official formats."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

# CPU float reductions depend on the thread count. Tests compare results bit for bit across processes (torchrun
# ranks run one thread each) and against fixtures recorded with one thread, so the suite runs with one thread
# (set before torch starts its pool; subprocesses inherit the variable).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
from tiny_checkpoints import var_state_dict

from memprune.io import save_safetensors


_LOGGING_DEFAULTS = (logging.getLogger("memprune").level, warnings.showwarning)


@pytest.fixture(autouse=True)
def _isolated_cli_logging():
    """A CLI call configures the ``memprune`` logger (own handler, no propagation) and ``warnings.showwarning``
    for the process, also from module-scoped fixtures; after each test put back the state the session started
    with, so later tests (``caplog``, pytest's warning capture) see the defaults."""
    yield
    logger = logging.getLogger("memprune")
    logger.handlers.clear()
    logger.setLevel(_LOGGING_DEFAULTS[0])
    logger.propagate = True
    warnings.showwarning = _LOGGING_DEFAULTS[1]


@pytest.fixture
def tiny_var(tmp_path: Path) -> Path:
    """A tiny VAR-layout checkpoint saved as a plain .pth state dict (the official release format)."""
    path = tmp_path / "var_tiny.pth"
    torch.save(var_state_dict(), path)
    return path


@pytest.fixture
def tiny_var_st(tmp_path: Path) -> Path:
    path = tmp_path / "var_tiny.safetensors"
    save_safetensors(var_state_dict(), path)
    return path


def _check_png(path: Path, min_size: tuple[int, int] = (64, 64), max_size: tuple[int, int] = (6000, 6000)) -> tuple[int, int]:
    """Open a written figure: a PNG within the size bounds whose pixels are not one flat colour."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG", f"{path} is {im.format}, not PNG"
        w, h = im.size
        arr = np.asarray(im.convert("L"), dtype=float)
    assert min_size[0] <= w <= max_size[0] and min_size[1] <= h <= max_size[1], f"{path} is {w}x{h}"
    assert arr.std() > 5 and (arr < 128).mean() > 0.001, f"{path} looks blank"
    return w, h


@pytest.fixture
def check_png():
    """``check_png(path, min_size=(w, h), max_size=(w, h))``: assert a figure is a non-blank PNG of sane size."""
    return _check_png
