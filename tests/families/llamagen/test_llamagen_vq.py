"""LlamaGen VQ-16 tokenizer: reproduces the official tokenizer fixture (tests/fixtures/llamagen_tokenizer).

The 20 MB fixture weights are rebuilt from their seeded recipe (seed 4343, usage buffer seed 4344) and checked
against the official file's content hash and the official safetensors sha256, then loaded in both forms. The three
test images are the RAR tokenizer fixture's (identical files, sha256 in the fixture README).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from memprune.families.llamagen.vq import LlamaGenVQ, VQConfig, init_random_, load_llamagen_vq, vq_config_from_state_dict

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
FIX = FIXTURES / "llamagen_tokenizer"
CONFIG = VQConfig(ch=32, codebook_size=1024)
# sha256 over (name, dtype, shape, raw bytes) of the official vq16_tiny.pt["model"] tensors, in order.
OFFICIAL_CONTENT_SHA256 = "176629173423f87d99e052563659b9a5f42cbd3af0148ff09fa7af1a9501177b"
OFFICIAL_SAFETENSORS_SHA256 = "292c671b6d90520c050d213445bb089a06d3f1ef917150706ad1ff3764e4ebc0"
IMAGE_SHA256 = ("017d5cdfd9be6d1872741067f3c936f32a8d29a535fcb3449953f6a5c9cf3447",
                "b214e9faa34cbcc44c38e5cfb8808ca36dd2dad2e1d220eb9e79765337a8edbf")  # fmt: skip


def content_sha256(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k, v in sd.items():
        h.update(k.encode() + b"\0" + str(v.dtype).encode() + str(tuple(v.shape)).encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("llamagen_vq")
    sd = init_random_(LlamaGenVQ(CONFIG), torch.Generator().manual_seed(4343), usage_seed=4344).state_dict()
    assert content_sha256(sd) == OFFICIAL_CONTENT_SHA256, "the rebuilt tokenizer is not the official fixture's"
    torch.save({"model": sd}, out / "vq.pt")
    save_file(sd, out / "vq.safetensors", metadata={"format": "pt"})
    assert hashlib.sha256((out / "vq.safetensors").read_bytes()).hexdigest() == OFFICIAL_SAFETENSORS_SHA256
    return {"pt": out / "vq.pt", "safetensors": out / "vq.safetensors"}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    paths = [FIXTURES / "rar_tokenizer" / f"image_{i}.png" for i in range(3)]
    for p, digest in zip(paths, IMAGE_SHA256, strict=False):
        assert hashlib.sha256(p.read_bytes()).hexdigest() == digest
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    out = {}
    for name in ("encode", "decode"):
        with np.load(FIX / f"{name}.npz") as data:
            out.update(data)
    return out


@pytest.mark.parametrize("form", ["pt", "safetensors"])
def test_encode_decode_match_official(files: dict[str, Path], images: torch.Tensor, ref: dict[str, np.ndarray], form: str) -> None:
    vq = load_llamagen_vq(files[form])
    assert vq.config == CONFIG and torch.equal(
        vq.quantize.codebook_used[:3], torch.load(files["pt"], weights_only=True)["model"]["quantize.codebook_used"][:3]
    )
    seen = {}
    handle = vq.encoder.register_forward_hook(lambda _m, _i, o: seen.__setitem__("enc", o))
    latent = vq.encode_latent(images, 256)
    handle.remove()
    np.testing.assert_allclose(latent.numpy(), ref["prequant_latent"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(seen["enc"][:1].numpy(), ref["encoder_out_img0"], atol=1e-4, rtol=0)
    codes = vq.encode(images, 256)
    np.testing.assert_array_equal(codes.numpy(), ref["codes"])
    np.testing.assert_allclose(vq.quantize.lookup(codes, 16).numpy(), ref["quant"], atol=1e-6, rtol=0)
    raw = vq.decode_raw(codes, 16)
    np.testing.assert_allclose(raw.numpy(), ref["decoded"], atol=1e-4, rtol=0)
    img = vq.decode(codes, 16)
    assert float(img.min()) >= 0 and float(img.max()) <= 1
    torch.testing.assert_close(img, (raw.clamp(-1, 1) + 1) / 2)


def test_image_checks(files: dict[str, Path], images: torch.Tensor) -> None:
    from memprune.errors import MempruneError

    vq = load_llamagen_vq(files["safetensors"])
    with pytest.raises(MempruneError, match="384 px"):
        vq.encode(images, 384)
    with pytest.raises(MempruneError, match=r"\[0, 1\]"):
        vq.encode(images * 2 - 1, 256)


def test_released_vq16_layout_is_inferred() -> None:
    """The full-size VQ-16 key set and shapes (from the official code) load into the default config strictly."""
    shapes = json.loads((FIX / "full_size_state_dict_shapes.json").read_text())["shapes"]
    with torch.device("meta"):
        sd = {k: torch.empty(s) for k, s in shapes.items()}
        built = LlamaGenVQ(vq_config_from_state_dict(sd))
    assert built.config == VQConfig()
    assert {k: list(v.shape) for k, v in built.state_dict().items()} == shapes
    assert sum(v.numel() for v in built.state_dict().values()) == 71_948_939
