"""MaskGIT-VQGAN tokenizer: reproduces the official tokenizer on the reference fixture (tests/fixtures/rar_tokenizer).

The fixture weights are not shipped: they are rebuilt from their seeded recipe and checked against the
official file's hashes before use (see tests/fixtures/rar_tokenizer/README.md).
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

from memprune.errors import MempruneError
from memprune.families.rar.maskgit_vqgan import (
    MaskGITVQGAN,
    MaskGITVQGANConfig,
    init_random_,
    load_maskgit_vqgan,
    maskgit_config_from_state_dict,
)

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "rar_tokenizer"
SEED = 4242
FIXTURE_CONFIG = MaskGITVQGANConfig(hidden_channels=32)
# sha256 of the official fixture file maskgit_vqgan_tiny.safetensors (its config.json, "files").
OFFICIAL_SAFETENSORS_SHA256 = "822d07e1b523528cb2600865d24ad34313b0cc0621f5b7a3b7da9039d716ecd7"
# sha256 over (name, dtype, shape, raw bytes) of every tensor of the official maskgit_vqgan_tiny.bin, in file order,
# computed once from that file with content_sha256 below.
OFFICIAL_CONTENT_SHA256 = "19adb68de9f288e315348c450a568f4a076e6fdfcf51af750fdea4ccc125fc6b"


def content_sha256(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k, v in sd.items():
        h.update(k.encode() + b"\0" + str(v.dtype).encode() + str(tuple(v.shape)).encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> object:
    # On the shared 2-core CI/dev machine, intra-op threads mostly wait for each other; restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fixture weights rebuilt from the recipe, written in the official format (.bin) and as safetensors."""
    sd = init_random_(MaskGITVQGAN(FIXTURE_CONFIG), torch.Generator().manual_seed(SEED)).state_dict()
    out = tmp_path_factory.mktemp("maskgit")
    paths = {"bin": out / "maskgit_vqgan_tiny.bin", "safetensors": out / "maskgit_vqgan_tiny.safetensors"}
    torch.save(sd, paths["bin"])
    save_file(dict(sd), str(paths["safetensors"]), metadata={"format": "pt"})
    return paths


@pytest.fixture(scope="module")
def tokenizer(weight_files: dict[str, Path]) -> MaskGITVQGAN:
    return load_maskgit_vqgan(weight_files["bin"])


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    # The fixture's input x is uint8 / 255 in float32, NCHW; the PNGs hold exactly those pixels.
    arr = np.stack([np.asarray(Image.open(FIX / f"image_{i}.png").convert("RGB")) for i in range(3)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255).contiguous()


def test_regenerated_weights_equal_the_official_file(weight_files: dict[str, Path]) -> None:
    sd = torch.load(weight_files["bin"], map_location="cpu", weights_only=True)
    assert len(sd) == 168 and sum(v.numel() for v in sd.values()) == 3_906_211
    assert content_sha256(sd) == OFFICIAL_CONTENT_SHA256
    assert _sha256(weight_files["safetensors"]) == OFFICIAL_SAFETENSORS_SHA256


def test_encode_reproduces_official_codes_and_latent(tokenizer: MaskGITVQGAN, images: torch.Tensor) -> None:
    ref = np.load(FIX / "encode.npz")
    with torch.no_grad():
        latent = tokenizer.encode_latent(images)
    np.testing.assert_allclose(latent.numpy(), ref["prequant_latent"], rtol=0, atol=1e-4)
    codes = tokenizer.encode(images)
    assert codes.dtype == torch.int64 and codes.shape == (3, 256)
    np.testing.assert_array_equal(codes.numpy(), ref["codes"])


def test_codes_are_row_major_argmin(tokenizer: MaskGITVQGAN, images: torch.Tensor) -> None:
    # Independent check of the index order: token k is the nearest code of latent cell (k // 16, k % 16).
    with torch.no_grad():
        latent = tokenizer.encode_latent(images[:1]).double()[0]
    book = tokenizer.quantize.embedding.weight.double()
    codes = tokenizer.encode(images[:1])[0]
    for k in (0, 17, 100, 255):
        d = ((book - latent[:, k // 16, k % 16]) ** 2).sum(1)
        assert int(d.argmin()) == int(codes[k])


def test_decode_reproduces_official_images(tokenizer: MaskGITVQGAN) -> None:
    codes = torch.from_numpy(np.load(FIX / "encode.npz")["codes"])
    ref = np.load(FIX / "decode.npz")
    decoded = tokenizer.decode(codes)
    assert decoded.shape == (3, 3, 256, 256) and float(decoded.min()) >= 0 and float(decoded.max()) <= 1
    np.testing.assert_allclose(decoded.numpy(), ref["decoded"], rtol=0, atol=2e-4)
    raw = tokenizer.decode_raw(codes)
    np.testing.assert_allclose(raw[:1].numpy(), ref["decoder_raw_img0"], rtol=0, atol=2e-4)
    assert float(raw.min()) < 0 and float(raw.max()) > 1  # the clamp is exercised
    torch.testing.assert_close(tokenizer.decode(codes.view(3, 16, 16)), decoded, rtol=0, atol=0)


def test_safetensors_and_bin_load_identically(weight_files: dict[str, Path], tokenizer: MaskGITVQGAN) -> None:
    other = load_maskgit_vqgan(weight_files["safetensors"])
    for (k, a), (k2, b) in zip(tokenizer.state_dict().items(), other.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert not any(p.requires_grad for p in other.parameters()) and not other.training


def test_config_inferred_from_the_released_layout() -> None:
    spec = json.loads((FIX / "full_size_state_dict_shapes.json").read_text())
    sd = {k: torch.empty(shape, device="meta") for k, shape in spec["shapes"].items()}
    cfg = maskgit_config_from_state_dict(sd)
    assert cfg == MaskGITVQGANConfig()  # hidden 128, mult (1, 1, 2, 2, 4), 2 blocks, z 256, 1024 codes
    with torch.device("meta"):
        model = MaskGITVQGAN(cfg)
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert own == spec["shapes"] and sum(v.numel() for v in model.state_dict().values()) == spec["num_values"]


def test_fixture_config_inferred(weight_files: dict[str, Path]) -> None:
    sd = torch.load(weight_files["bin"], map_location="cpu", weights_only=True)
    cfg = maskgit_config_from_state_dict(sd)
    assert cfg == FIXTURE_CONFIG and cfg.num_tokens == 256 and cfg.downsample_factor == 16


# -- bad input ------------------------------------------------------------------------------------------------
def test_bad_images_are_rejected(tokenizer: MaskGITVQGAN, images: torch.Tensor) -> None:
    with pytest.raises(MempruneError, match=r"shape \(1, 3, 128, 128\), expected \[B, 3, 256, 256\]"):
        tokenizer.encode(torch.zeros(1, 3, 128, 128))
    with pytest.raises(MempruneError, match=r"span \[-0.796, 0.804\], expected \[0, 1\]"):
        tokenizer.encode(images[:1] * 2 - 1)
    with pytest.raises(MempruneError, match="dtype torch.uint8"):
        tokenizer.encode((images[:1] * 255).to(torch.uint8))


def test_bad_codes_are_rejected(tokenizer: MaskGITVQGAN) -> None:
    with pytest.raises(MempruneError, match=r"span \[1024, 1024\], expected \[0, 1023\]"):
        tokenizer.decode(torch.full((1, 256), 1024))
    with pytest.raises(MempruneError, match=r"shape \(1, 100\), expected \[B, 256\]"):
        tokenizer.decode(torch.zeros(1, 100, dtype=torch.long))


def test_bad_checkpoints_are_rejected(weight_files: dict[str, Path]) -> None:
    sd = torch.load(weight_files["bin"], map_location="cpu", weights_only=True)
    with pytest.raises(MempruneError, match="not a MaskGIT-VQGAN tokenizer.*RAR generator"):
        load_maskgit_vqgan({"lm_head.weight": torch.zeros(4, 4), "cls_token": torch.zeros(1, 1, 4)})
    missing = {k: v for k, v in sd.items() if k != "decoder.up.2.upsample_conv.bias"}
    with pytest.raises(MempruneError, match=r"1 missing \(first: decoder.up.2.upsample_conv.bias\)"):
        load_maskgit_vqgan(missing)
    with pytest.raises(MempruneError, match=r"1 unexpected \(first: decoder.extra.weight\)"):
        load_maskgit_vqgan({**sd, "decoder.extra.weight": torch.zeros(1)})
    bad = dict(sd)
    bad["decoder.conv_in.bias"] = torch.zeros(7)
    with pytest.raises(MempruneError, match=r"decoder.conv_in.bias has shape \(7,\), expected \(128,\)"):
        load_maskgit_vqgan(bad)
