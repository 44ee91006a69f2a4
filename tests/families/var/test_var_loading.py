"""Loading VAR checkpoints: inference from the state dict, file formats, strictness and every error path."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from memprune.errors import MempruneError
from memprune.families.var.model import (
    VARConfig,
    VARModel,
    load_var,
    var_config_from_state_dict,
    vqvae_config_from_state_dict,
)
from memprune.families.var.transformer import VARTransformer


@pytest.fixture()
def var_sd(var_state_dicts):
    return dict(var_state_dicts["var"])


@pytest.fixture()
def vae_sd(var_state_dicts):
    return dict(var_state_dicts["vae"])


def test_config_inferred_from_state_dicts(var_sd, vae_sd):
    cfg = var_config_from_state_dict(var_sd)
    assert cfg == VARConfig(depth=3, width=192, num_heads=3, mlp_hidden=768, vocab_size=512, cvae=32,
                            num_classes=1000, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16))
    assert cfg.seq_len == 680 and cfg.begin_ends[-1] == (424, 680)
    vcfg = vqvae_config_from_state_dict(vae_sd)
    assert (vcfg.vocab_size, vcfg.z_channels, vcfg.ch, vcfg.ch_mult, vcfg.num_res_blocks) == (512, 32, 32,
                                                                                           (1, 1, 2, 2, 4), 2)
    assert (vcfg.phi_layout, vcfg.num_phi, vcfg.num_hit_scales, vcfg.downsample) == ("partial", 4, 10, 16)


def test_loaded_model_round_trips_every_tensor(var_model, var_sd, vae_sd):
    assert isinstance(var_model, VARModel)
    assert (var_model.image_size, var_model.seq_len, var_model.vocab_size, var_model.num_classes) == (256, 680,
                                                                                                   512, 1000)
    for own, ref in ((var_model.var.state_dict(), var_sd), (var_model.vae.state_dict(), vae_sd)):
        assert list(own) == list(ref)  # same keys in the official order, buffers included
        for key, value in ref.items():
            assert torch.equal(own[key], value), key
    assert var_model.vae.quantize.ema_vocab_hit_SV.sum() > 0  # the usage buffer is kept, not re-created


def test_load_from_safetensors_and_from_dicts(tmp_path, var_files, var_sd, vae_sd, var_model):
    save_file(var_sd, str(tmp_path / "var.safetensors"))
    save_file(vae_sd, str(tmp_path / "vae.safetensors"))
    from_st = load_var(tmp_path / "var.safetensors", str(tmp_path / "vae.safetensors"))
    before = var_sd["blocks.0.ffn.fc1.weight"].clone()
    from_dict = load_var(var_sd, vae_sd)
    for model in (from_st, from_dict):
        for (k, a), b in zip(model.state_dict().items(), var_model.state_dict().values(), strict=True):
            assert torch.equal(a, b), k
    # the model owns its tensors: editing it leaves the caller's dict alone
    with torch.no_grad():
        from_dict.var.blocks[0].ffn.fc1.weight.mul_(0)
    assert torch.equal(var_sd["blocks.0.ffn.fc1.weight"], before)


def test_training_checkpoint_wrapper_is_unwrapped(var_sd, vae_sd):
    wrapped = {"epoch": torch.tensor(3), "trainer": {"var_wo_ddp": var_sd, "vae_local": vae_sd}}
    model = load_var(wrapped, wrapped)
    assert model.config.depth == 3


def test_training_checkpoint_file_loads_like_its_dict(tmp_path, var_sd, vae_sd):
    """ar-ckpt-best.pth: both networks in one file; the reader unwraps the one asked for (model: the generator)."""
    from memprune.families.loading import load_model
    from memprune.io import open_checkpoint

    path = tmp_path / "ar-ckpt-best.pth"
    torch.save({"epoch": 3, "iter": 7, "trainer": {"var_wo_ddp": var_sd, "vae_local": vae_sd}}, path)
    with open_checkpoint(path) as ckpt:
        assert set(ckpt.keys()) == set(var_sd) and ckpt.container == "trainer.var_wo_ddp"
    with open_checkpoint(path, member="vae_local") as ckpt:
        assert set(ckpt.keys()) == set(vae_sd) and ckpt.container == "trainer.vae_local"
    from_file = load_var(path, path)
    from_dicts = load_var(var_sd, vae_sd)
    for (k, a), b in zip(from_file.state_dict().items(), from_dicts.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    model, digest = load_model(path, path, device="cpu", dtype="float32")  # what score/audit/fid call
    assert model.arch == "var" and len(digest) == 64


def test_explicit_patch_nums(var_sd, vae_sd):
    assert load_var(var_sd, vae_sd, patch_nums=[1, 2, 3, 4, 5, 6, 8, 10, 13, 16]).seq_len == 680
    with pytest.raises(MempruneError, match=r"patch_nums \(1, 2, 3, 4, 6, 9, 13, 18, 24, 32\) give 2240 tokens"):
        load_var(var_sd, vae_sd, patch_nums=(1, 2, 3, 4, 6, 9, 13, 18, 24, 32))
    # same token count and scale count, but not the schedule recorded in lvl_1L
    with pytest.raises(MempruneError, match="differ from .* recorded in the checkpoint's lvl_1L"):
        load_var(var_sd, vae_sd, patch_nums=(1, 2, 3, 4, 5, 6, 8, 13, 10, 16))


def test_patch_nums_from_known_schedule_without_lvl_buffer(var_sd):
    del var_sd["lvl_1L"]
    assert var_config_from_state_dict(var_sd).patch_nums == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def test_unknown_length_without_lvl_buffer_asks_for_patch_nums(var_sd):
    del var_sd["lvl_1L"]
    var_sd["pos_1LC"] = torch.zeros(1, 679, 192)
    with pytest.raises(MempruneError, match="pass patch_nums"):
        var_config_from_state_dict(var_sd)


def test_swapped_files_are_named(var_sd, vae_sd):
    with pytest.raises(MempruneError, match="given is a VQVAE tokenizer"):
        load_var(vae_sd, vae_sd)
    with pytest.raises(MempruneError, match="tokenizer given is a VAR transformer"):
        load_var(var_sd, var_sd)


def test_not_a_var(vae_sd):
    with pytest.raises(MempruneError, match="not a VAR transformer checkpoint: missing"):
        load_var({"layers.0.feed_forward.w1.weight": torch.zeros(2, 2)}, vae_sd)
    with pytest.raises(MempruneError, match="not a VAR VQVAE tokenizer"):
        vqvae_config_from_state_dict({"encoder.conv_in.weight": torch.zeros(32, 3, 3, 3)})
    with pytest.raises(MempruneError, match="is not a tensor"):
        load_var({"class_emb.weight": [1, 2]}, vae_sd)
    with pytest.raises(MempruneError, match="does not exist"):
        load_var("/nonexistent/var_d16.pth", vae_sd)


def test_tokenizer_vocabulary_mismatch(var_sd, vae_sd):
    vae_sd["quantize.embedding.weight"] = torch.zeros(1024, 32)
    vae_sd["quantize.ema_vocab_hit_SV"] = torch.zeros(10, 1024)
    with pytest.raises(MempruneError, match="codebook has 1024 codes but the VAR head predicts 512"):
        load_var(var_sd, vae_sd)


def test_tokenizer_code_width_mismatch(var_sd, vae_sd):
    var_sd["word_embed.weight"] = torch.zeros(192, 16)
    with pytest.raises(MempruneError, match="code width is 32 but the VAR word_embed expects 16"):
        load_var(var_sd, vae_sd)


def test_tokenizer_scale_count_mismatch(var_sd, vae_sd):
    vae_sd["quantize.ema_vocab_hit_SV"] = torch.zeros(7, 512)
    with pytest.raises(MempruneError, match="trained for 7 scales .* VAR uses 10 scales"):
        load_var(var_sd, vae_sd)


def test_missing_unexpected_and_misshaped_keys(var_sd, vae_sd):
    sd = dict(var_sd)
    del sd["blocks.1.attn.zero_k_bias"]
    with pytest.raises(MempruneError, match=r"missing \['blocks.1.attn.zero_k_bias'\]"):
        load_var(sd, vae_sd)
    sd = dict(var_sd, **{"blocks.0.ffn.fcg.weight": torch.zeros(3)})
    with pytest.raises(MempruneError, match=r"unexpected \['blocks.0.ffn.fcg.weight'\]"):
        load_var(sd, vae_sd)
    sd = dict(var_sd, **{"blocks.2.ffn.fc2.weight": torch.zeros(192, 700)})
    with pytest.raises(MempruneError, match=r"'blocks.2.ffn.fc2.weight' has shape \(192, 700\).*\(192, 768\)"):
        load_var(sd, vae_sd)
    vsd = dict(vae_sd)
    del vsd["decoder.up.4.attn.2.proj_out.bias"]
    with pytest.raises(MempruneError, match="tokenizer does not match"):
        load_var(var_sd, vsd)


def test_tokenizer_without_phi_convs_or_bad_width(vae_sd):
    no_phi = {k: v for k, v in vae_sd.items() if "quant_resi" not in k}
    with pytest.raises(MempruneError, match="no residual convs"):
        vqvae_config_from_state_dict(no_phi)
    vae_sd["encoder.conv_in.weight"] = torch.zeros(48, 3, 3, 3)
    with pytest.raises(MempruneError, match="ch=48 is not a multiple of 32"):
        vqvae_config_from_state_dict(vae_sd)


def test_unsupported_dtype(var_sd, vae_sd):
    with pytest.raises(MempruneError, match="dtype torch.float64 is not supported"):
        load_var(var_sd, vae_sd, dtype=torch.float64)


def test_half_precision_checkpoint_loads_as_float32(var_sd, vae_sd, var_model):
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in var_sd.items()}
    model = load_var(half, vae_sd)
    weight = model.var.blocks[0].ffn.fc1.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, var_sd["blocks.0.ffn.fc1.weight"].half().float())
    assert model.var.lvl_1L.dtype == torch.int64


@pytest.mark.parametrize(("depth", "params", "entries"), [
    (16, 310_283_520, 220), (20, 600_917_136, 272), (24, 1_033_399_360, 324), (30, 2_010_020_356, 402),
    (36, 2_353_893_904, 446),
])
def test_release_architectures_have_the_published_sizes(depth, params, entries):
    # Built on the meta device: no memory. Parameter counts from the reference (VAR README: 310M ... 2.3B).
    with torch.device("meta"):
        var = VARTransformer(VARConfig.release(depth))
    assert sum(p.numel() for p in var.parameters()) == params
    assert len(var.state_dict()) == entries
