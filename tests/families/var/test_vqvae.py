"""The multi-scale VQVAE on its own: layout, Phi table, quantizer invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memprune.families.var.vqvae import VQVAE, VQVAEConfig, phi_index_table

PN256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def test_phi_table_uses_float64_tie_breaking():
    # s = 2 and s = 7 are exact ties in real arithmetic; float64 rounding (as upstream) decides them.
    assert phi_index_table(4, 10) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
    assert phi_index_table(1, 10) == (0,) * 10
    assert phi_index_table(10, 10) == tuple(range(10))  # one Phi per scale
    # the float32 computation gives a different table, which is why float64 matters
    ticks32 = np.linspace(1 / 12, 11 / 12, 4).astype(np.float32)
    table32 = tuple(int(np.argmin(np.abs(ticks32 - np.float32(s / 9)))) for s in range(10))
    assert table32 != phi_index_table(4, 10)


def test_release_tokenizer_layout():
    # Built on the meta device: counts from the reference (324 entries, 108,948,355 parameters).
    with torch.device("meta"):
        vae = VQVAE(VQVAEConfig())
    sd = vae.state_dict()
    assert len(sd) == 324
    assert sum(p.numel() for p in vae.parameters()) == 108_948_355
    groups = {prefix: sum(k.startswith(prefix) for k in sd) for prefix in ("encoder.", "decoder.", "quantize.")}
    assert groups == {"encoder.": 132, "decoder.": 178, "quantize.": 10}
    assert tuple(sd["encoder.conv_out.weight"].shape) == (32, 640, 3, 3)
    assert tuple(sd["decoder.conv_in.weight"].shape) == (640, 32, 3, 3)
    assert tuple(sd["quantize.ema_vocab_hit_SV"].shape) == (10, 4096)
    assert "encoder.down.2.block.0.nin_shortcut.weight" in sd and "decoder.up.3.block.0.nin_shortcut.weight" in sd
    assert "encoder.down.4.attn.1.qkv.weight" in sd and "decoder.up.4.attn.2.proj_out.bias" in sd
    assert "quantize.quant_resi.qresi_ls.3.weight" in sd


@pytest.mark.parametrize(("layout", "num_phi", "key"), [
    ("shared", 1, "quantize.quant_resi.qresi.weight"), ("per_scale", 3, "quantize.quant_resi.2.weight"),
])
def test_other_phi_layouts_have_upstream_names(layout, num_phi, key):
    with torch.device("meta"):
        vae = VQVAE(VQVAEConfig(phi_layout=layout, num_phi=num_phi))
    assert key in vae.state_dict()


def test_width_must_be_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        VQVAE(VQVAEConfig(ch=48))


@pytest.fixture(scope="module")
def small_vae():
    torch.manual_seed(0)
    vae = VQVAE(VQVAEConfig(vocab_size=128, z_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                            num_hit_scales=4)).eval()
    return vae


def test_nearest_code_is_the_l2_argmin(small_vae):
    z = torch.randn(50, 8)
    expected = torch.cdist(z, small_vae.quantize.embedding.weight).argmin(dim=1)
    assert torch.equal(small_vae.quantize.nearest_code(z), expected)


@torch.no_grad()
def test_quantizer_invariants(small_vae):
    pns = (1, 2, 3, 4)
    f = small_vae.features(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert f.shape == (2, 8, 4, 4)
    indices, f_hat = small_vae.quantize.quantize(f, pns)
    assert [tuple(i.shape) for i in indices] == [(2, 1), (2, 4), (2, 9), (2, 16)]
    # f_hat is a deterministic function of the indices
    torch.testing.assert_close(small_vae.quantize.indices_to_fhat(indices, pns), f_hat, atol=1e-6, rtol=0)
    # teacher-forcing rows of scale s are the area-downsampled reconstruction of scales < s
    x = small_vae.quantize.teacher_forcing_input(indices, pns)
    assert x.shape == (2, 4 + 9 + 16, 8)
    # the scale-2 rows only see scales 0 and 1: recompute them from a 2-scale f_hat
    two = torch.zeros_like(f)
    for s in range(2):
        small_vae.quantize.add_scale(two, small_vae.quantize.embed_map(indices[s], pns[s]), s, pns)
    torch.testing.assert_close(x[:, 4:13], small_vae.quantize.next_input(two, 3), atol=1e-6, rtol=0)
    # residual quantization: the last scale codes the full-resolution residual left by the scales before it
    before_last = torch.zeros_like(f)
    for s in range(3):
        small_vae.quantize.add_scale(before_last, small_vae.quantize.embed_map(indices[s], pns[s]), s, pns)
    rest = (f - before_last).permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.equal(small_vae.quantize.nearest_code(rest).view(2, 16), indices[3])


@torch.no_grad()
def test_decode_is_clamped(small_vae):
    img = small_vae.fhat_to_img(torch.randn(1, 8, 4, 4) * 100)
    assert img.shape == (1, 3, 16, 16) and float(img.abs().max()) <= 1
