"""LlamaGen loading: released sizes and formats, config inference, and one clear line for every bad input."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
import torch

from memprune.errors import MempruneError
from memprune.families.llamagen.model import llamagen_config_from_state_dict, load_llamagen
from memprune.families.llamagen.transformer import (
    LLAMAGEN_CONFIGS,
    PUBLISHED_PARAMS_M,
    LlamaGenConfig,
    LlamaGenTransformer,
    ffn_hidden_size,
    init_random_,
    rope_table_2d,
)
from memprune.families.llamagen.vq import LlamaGenVQ, VQConfig
from memprune.families.llamagen.vq import init_random_ as init_vq_

SMALL = LlamaGenConfig(dim=64, n_layer=2, n_head=4, ffn_hidden=256, vocab_size=64, num_classes=10)
SMALL_VQ = VQConfig(ch=32, num_res_blocks=1, z_channels=32, codebook_size=64)


@pytest.fixture(scope="module")
def gpt_sd() -> dict[str, torch.Tensor]:
    return init_random_(LlamaGenTransformer(SMALL), torch.Generator().manual_seed(0)).state_dict()


@pytest.fixture(scope="module")
def vq_sd() -> dict[str, torch.Tensor]:
    return init_vq_(LlamaGenVQ(SMALL_VQ), torch.Generator().manual_seed(1)).state_dict()


@pytest.mark.parametrize("name", list(LLAMAGEN_CONFIGS))
def test_released_sizes_match_published_parameter_counts(name: str) -> None:
    cfg = LLAMAGEN_CONFIGS[name]
    assert cfg.ffn_hidden == ffn_hidden_size(cfg.dim)
    with torch.device("meta"):
        model = LlamaGenTransformer(cfg)
    sd = model.state_dict()
    assert round(sum(v.numel() for v in sd.values()) / 1e6, 1) == PUBLISHED_PARAMS_M[name]
    inferred = llamagen_config_from_state_dict(sd)  # heads from the width, grid from the release default
    assert inferred == cfg


def test_rope_table_layout() -> None:
    table = rope_table_2d(16, 16)
    assert table.shape == (257, 8, 2) and not table[0].any()  # class row all zeros (q, k vanish there)
    token = 1 + 3 * 16 + 5  # row 3, column 5
    freqs = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)
    angle = torch.cat([3 * freqs, 5 * freqs])  # the first half of the pairs by row, the second half by column
    torch.testing.assert_close(table[token], torch.stack([angle.cos(), angle.sin()], dim=-1))


def test_head_count_rules(gpt_sd: dict[str, torch.Tensor]) -> None:
    with pytest.raises(MempruneError, match="pass --num-heads"):
        llamagen_config_from_state_dict(gpt_sd)
    with pytest.raises(MempruneError, match="does not divide the width 64"):
        llamagen_config_from_state_dict(gpt_sd, num_heads=5)
    freqs = rope_table_2d(16, 32)  # head_dim 32 -> 2 heads, 16 x 16 grid
    cfg = llamagen_config_from_state_dict(gpt_sd, freqs_cis=freqs)
    assert (cfg.n_head, cfg.block_size) == (2, 256)
    with pytest.raises(MempruneError, match="contradicts the checkpoint's freqs_cis"):
        llamagen_config_from_state_dict(gpt_sd, num_heads=4, freqs_cis=freqs)


def test_released_wrappers_and_stale_kv_caches_load(tmp_path: Path, gpt_sd, vq_sd, caplog) -> None:
    ref = load_llamagen(gpt_sd, vq_sd, num_heads=4)
    tokens = torch.randint(0, 64, (1, 256), generator=torch.Generator().manual_seed(0))
    expected = ref.teacher_forced(tokens, torch.tensor([3]))
    stale = dict(gpt_sd)
    for i in range(2):  # what state_dict() returns after the official setup_caches()
        stale[f"layers.{i}.attention.kv_cache.k_cache"] = torch.zeros(2, 4, 264, 16)
        stale[f"layers.{i}.attention.kv_cache.v_cache"] = torch.zeros(2, 4, 264, 16)
    ddp = {"model": stale, "optimizer": {"state": {}}, "steps": 7, "args": argparse.Namespace(image_size=256)}
    torch.save(ddp, tmp_path / "ddp.pt")
    torch.save(dict(gpt_sd), tmp_path / "fsdp.pth")  # FSDP releases are bare state dicts
    torch.save({"model": vq_sd}, tmp_path / "vq.pt")
    with caplog.at_level(logging.WARNING, logger="memprune.families.llamagen.model"):
        for name in ("ddp.pt", "fsdp.pth"):
            model = load_llamagen(tmp_path / name, tmp_path / "vq.pt", num_heads=4)
            torch.testing.assert_close(model.teacher_forced(tokens, torch.tensor([3])), expected, rtol=0, atol=0)
    assert any("KV-cache buffers" in r.message for r in caplog.records)


def test_wrong_tokenizers_are_named(gpt_sd, vq_sd) -> None:
    from memprune.families.rar.maskgit_vqgan import MaskGITVQGAN, MaskGITVQGANConfig, load_maskgit_vqgan

    maskgit = MaskGITVQGAN(MaskGITVQGANConfig(hidden_channels=32, num_res_blocks=1, z_channels=16, codebook_size=64))
    with pytest.raises(MempruneError, match="MaskGIT-VQGAN tokenizer of RAR"):
        load_llamagen(gpt_sd, maskgit.state_dict(), num_heads=4)
    var_vae = {"encoder.conv_in.weight": torch.zeros(1), "quantize.embedding.weight": torch.zeros(1),
               "quant_conv.weight": torch.zeros(1), "quantize.quant_resi.qresi_ls.0.weight": torch.zeros(1)}  # fmt: skip
    with pytest.raises(MempruneError, match="VQVAE of VAR"):
        load_llamagen(gpt_sd, var_vae, num_heads=4)
    with pytest.raises(MempruneError, match="LlamaGen generator; pass it as the checkpoint"):
        load_llamagen(vq_sd, gpt_sd, num_heads=4)  # swapped arguments
    with pytest.raises(MempruneError, match="LlamaGen's VQ"):  # the reverse: RAR given LlamaGen's tokenizer
        load_maskgit_vqgan(vq_sd)
    small_book = init_vq_(LlamaGenVQ(VQConfig(ch=32, num_res_blocks=1, z_channels=32, codebook_size=32)), torch.Generator())
    with pytest.raises(MempruneError, match="32 codes but the checkpoint's tok_embeddings has 64 rows"):
        load_llamagen(gpt_sd, small_book.state_dict(), num_heads=4)


def test_other_families_as_checkpoint_are_named(vq_sd) -> None:
    with pytest.raises(MempruneError, match="VAR checkpoint"):
        load_llamagen({"blocks.0.ffn.fc1.weight": torch.zeros(1)}, vq_sd)
    with pytest.raises(MempruneError, match="RAR checkpoint"):
        load_llamagen({"blocks.0.mlp.fc1.weight": torch.zeros(1)}, vq_sd)


def test_384_grid_needs_matching_images_and_tokenizer(tmp_path: Path, gpt_sd, vq_sd) -> None:
    torch.save({"model": gpt_sd}, tmp_path / "c2i_S_384.pt")  # the released naming tells the resolution
    model = load_llamagen(tmp_path / "c2i_S_384.pt", vq_sd, num_heads=4)
    assert (model.image_size, model.seq_len, model.grid) == (384, 576, 24)
    with pytest.raises(MempruneError, match="works at 384 px"):
        model.encode(torch.rand(1, 3, 256, 256))
    vq8 = LlamaGenVQ(VQConfig(ch=32, encoder_ch_mult=(1, 2, 2, 4), decoder_ch_mult=(1, 2, 2, 4), num_res_blocks=1,
                              z_channels=32, codebook_size=64))  # fmt: skip
    with pytest.raises(MempruneError, match="downsamples 8x"):
        load_llamagen(tmp_path / "c2i_S_384.pt", vq8.state_dict(), num_heads=4)
    with_table = {**gpt_sd, "freqs_cis": rope_table_2d(24, 16)}  # some checkpoints carry the RoPE table
    with pytest.raises(MempruneError, match="24x24 grid at 256 px"):
        load_llamagen(with_table, vq_sd, image_size=256)
    assert load_llamagen(with_table, vq_sd).seq_len == 576


def test_real_var_tokenizer_is_named_and_the_reverse(gpt_sd, vq_sd, var_state_dicts) -> None:
    with pytest.raises(MempruneError, match="VQVAE of VAR"):
        load_llamagen(gpt_sd, var_state_dicts["vae"], num_heads=4)
    from memprune.families.var.model import load_var

    with pytest.raises(MempruneError, match="vae_ch160v4096z32.pth"):
        load_var(var_state_dicts["var"], vq_sd)
