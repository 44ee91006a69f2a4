"""Reading VAR / VQVAE state dicts: architecture inference, compatibility checks and strict loading.

Everything is inferred from tensor shapes and buffers, never from file names, so tiny test models and
all releases (d16 ... d30 at 256 px, d36 at 512 px with shared AdaLN) go through the same code. Every
problem raises :class:`~memprune.errors.MempruneError` with one line naming what was found and what to do.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from memprune.errors import MempruneError
from memprune.families.state_dict import read_state_dict
from memprune.families.var.transformer import PATCH_NUMS_256, PATCH_NUMS_512, VARConfig
from memprune.families.var.vqvae import VQVAEConfig

StateDict = dict[str, torch.Tensor]

_KNOWN_SCHEDULES = {sum(p * p for p in pns): pns for pns in (PATCH_NUMS_256, PATCH_NUMS_512)}
_VAR_REQUIRED = ("class_emb.weight", "pos_start", "pos_1LC", "lvl_embed.weight", "word_embed.weight",
                 "head.weight", "blocks.0.ffn.fc1.weight")
_VAE_REQUIRED = ("quantize.embedding.weight", "encoder.conv_in.weight", "quant_conv.weight",
                 "decoder.conv_out.weight")


def read_var_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor], what: str) -> StateDict:
    """A VAR or tokenizer state dict from a path, ``hf://`` reference or mapping (never modified).

    A VAR training checkpoint (``{'trainer': {'var_wo_ddp': ..., 'vae_local': ...}}``) is unwrapped to the
    part named by ``what`` ("VAR checkpoint" or "tokenizer").
    """
    # a training checkpoint file holds both networks: read the one asked for (the reader unwraps it)
    sd: Mapping = read_state_dict(source, what, member="vae_local" if what == "tokenizer" else None)
    trainer = sd.get("trainer")
    if isinstance(trainer, Mapping):
        sd = trainer.get("vae_local" if what == "tokenizer" else "var_wo_ddp", sd)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise MempruneError(f"{what} entry {bad[0]!r} is not a tensor; pass a plain state dict of tensors")
    return dict(sd)


def _shape(sd: StateDict, key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


def _patch_nums_from_levels(lvl_1l: torch.Tensor) -> tuple[int, ...]:
    levels = lvl_1l.reshape(-1).long()
    counts = torch.bincount(levels).tolist()
    if not torch.equal(levels, torch.sort(levels).values) or any(c == 0 for c in counts):
        raise MempruneError("buffer lvl_1L is not a non-decreasing run of scale indices 0..S-1; "
                            "the checkpoint is corrupt or not a VAR")
    pns = tuple(math.isqrt(c) for c in counts)
    if any(p * p != c for p, c in zip(pns, counts, strict=True)):
        raise MempruneError(f"lvl_1L has per-scale token counts {counts}, which are not all squares; "
                            "the checkpoint is corrupt or not a VAR")
    return pns


def _infer_patch_nums(sd: StateDict, explicit: Sequence[int] | None) -> tuple[int, ...]:
    length, num_scales = _shape(sd, "pos_1LC")[1], _shape(sd, "lvl_embed.weight")[0]
    found = _patch_nums_from_levels(sd["lvl_1L"]) if "lvl_1L" in sd else None
    if explicit is not None:
        pns = tuple(int(p) for p in explicit)
        if sum(p * p for p in pns) != length or len(pns) != num_scales:
            hint = found or _KNOWN_SCHEDULES.get(length)
            raise MempruneError(f"patch_nums {pns} give {sum(p * p for p in pns)} tokens in {len(pns)} scales, "
                                f"but the checkpoint has {length} positions in {num_scales} scales; "
                                f"pass patch_nums matching the checkpoint (e.g. {hint})")
        if found is not None and found != pns:
            raise MempruneError(f"patch_nums {pns} differ from {found} recorded in the checkpoint's lvl_1L buffer; "
                                "omit patch_nums or pass the recorded ones")
        return pns
    if found is None:
        found = _KNOWN_SCHEDULES.get(length)
        if found is None:
            raise MempruneError(f"cannot infer patch_nums for {length} positions (no lvl_1L buffer and not a "
                                "known schedule); pass patch_nums=(...) explicitly")
    if sum(p * p for p in found) != length or len(found) != num_scales:
        raise MempruneError(f"lvl_1L implies patch_nums {found} ({sum(p * p for p in found)} tokens, {len(found)} "
                            f"scales) but pos_1LC has {length} positions and lvl_embed {num_scales} scales; "
                            "the checkpoint is inconsistent")
    return found


def var_config_from_state_dict(sd: Mapping[str, torch.Tensor],
                               patch_nums: Sequence[int] | None = None) -> VARConfig:
    """Infer a :class:`VARConfig` from a VAR transformer state dict.

    Args:
        sd: the state dict (``var_d16.pth`` etc., buffers included).
        patch_nums: optional explicit schedule; must agree with the checkpoint.

    Raises:
        MempruneError: the mapping is not a VAR transformer (e.g. it is the tokenizer) or is inconsistent.
    """
    sd = dict(sd)
    missing = [k for k in _VAR_REQUIRED if k not in sd]
    if missing:
        if "quantize.embedding.weight" in sd:
            raise MempruneError("the VAR checkpoint given is a VQVAE tokenizer (it has quantize.embedding.weight); "
                                "pass var_d*.pth as the checkpoint and vae_ch160v4096z32.pth as the tokenizer")
        raise MempruneError(f"not a VAR transformer checkpoint: missing {missing[:3]}, found keys like "
                            f"{sorted(sd)[:3]}; pass an official var_d*.pth state dict")
    width = _shape(sd, "class_emb.weight")[1]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    l2_norm = "blocks.0.attn.scale_mul_1H11" in sd
    # head_dim is 64 in every release, but read the head count from the per-head temperature when present.
    heads = _shape(sd, "blocks.0.attn.scale_mul_1H11")[1] if l2_norm else max(width // 64, 1)
    if width % heads:
        raise MempruneError(f"width {width} is not divisible by {heads} heads; the checkpoint is inconsistent")
    pns = _infer_patch_nums(sd, patch_nums)
    if _shape(sd, "pos_start")[1] != pns[0] ** 2:
        raise MempruneError(f"pos_start has {_shape(sd, 'pos_start')[1]} rows but the first scale has "
                            f"{pns[0] ** 2} tokens; pass matching patch_nums")
    return VARConfig(
        depth=depth, width=width, num_heads=heads, mlp_hidden=_shape(sd, "blocks.0.ffn.fc1.weight")[0],
        vocab_size=_shape(sd, "head.weight")[0], cvae=_shape(sd, "word_embed.weight")[1],
        num_classes=_shape(sd, "class_emb.weight")[0] - 1, patch_nums=pns,
        shared_aln="shared_ada_lin.1.weight" in sd, attn_l2_norm=l2_norm,
    )


def _count(sd: StateDict, pattern: str) -> int:
    n = 0
    while pattern.format(n) in sd:
        n += 1
    return n


def _phi_layout(sd: StateDict) -> tuple[str, int]:
    if "quantize.quant_resi.qresi_ls.0.weight" in sd:
        return "partial", _count(sd, "quantize.quant_resi.qresi_ls.{}.weight")
    if "quantize.quant_resi.qresi.weight" in sd:
        return "shared", 1
    if "quantize.quant_resi.0.weight" in sd:
        return "per_scale", _count(sd, "quantize.quant_resi.{}.weight")
    raise MempruneError("tokenizer has no residual convs (quantize.quant_resi.*); only VAR's multi-scale "
                        "VQVAE with Phi convs (e.g. vae_ch160v4096z32.pth) is supported")


def vqvae_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> VQVAEConfig:
    """Infer a :class:`VQVAEConfig` from a VAR tokenizer state dict (``vae_ch160v4096z32.pth``).

    Raises:
        MempruneError: the mapping is not a VAR VQVAE (e.g. it is the transformer) or has an illegal width.
    """
    sd = dict(sd)
    missing = [k for k in _VAE_REQUIRED if k not in sd]
    if missing:
        if "class_emb.weight" in sd:
            raise MempruneError("the tokenizer given is a VAR transformer (it has class_emb.weight); pass "
                                "vae_ch160v4096z32.pth as the tokenizer and var_d*.pth as the checkpoint")
        raise MempruneError(f"not a VAR VQVAE tokenizer: missing {missing[:3]}, found keys like {sorted(sd)[:3]}; "
                            "pass vae_ch160v4096z32.pth")
    ch = _shape(sd, "encoder.conv_in.weight")[0]
    if ch % 32:
        raise MempruneError(f"tokenizer width ch={ch} is not a multiple of 32 (its GroupNorms use 32 groups)")
    levels = _count(sd, "encoder.down.{}.block.0.conv1.weight")
    ch_mult = tuple(_shape(sd, f"encoder.down.{i}.block.0.conv1.weight")[0] // ch for i in range(levels))
    layout, num_phi = _phi_layout(sd)
    vocab, z = _shape(sd, "quantize.embedding.weight")
    hits = _shape(sd, "quantize.ema_vocab_hit_SV")[0] if "quantize.ema_vocab_hit_SV" in sd else 10
    return VQVAEConfig(vocab_size=vocab, z_channels=z, ch=ch, ch_mult=ch_mult,
                       num_res_blocks=_count(sd, "encoder.down.0.block.{}.conv1.weight"),
                       quant_conv_ks=_shape(sd, "quant_conv.weight")[-1], phi_layout=layout, num_phi=num_phi,
                       num_hit_scales=hits)


def check_tokenizer_fits(var_cfg: VARConfig, vae_cfg: VQVAEConfig) -> None:
    """Raise if the tokenizer cannot serve the transformer (vocabulary, code width, scale count)."""
    if vae_cfg.vocab_size != var_cfg.vocab_size:
        raise MempruneError(f"tokenizer codebook has {vae_cfg.vocab_size} codes but the VAR head predicts "
                            f"{var_cfg.vocab_size}; pass the tokenizer the VAR was trained with")
    if vae_cfg.z_channels != var_cfg.cvae:
        raise MempruneError(f"tokenizer code width is {vae_cfg.z_channels} but the VAR word_embed expects "
                            f"{var_cfg.cvae}; pass the tokenizer the VAR was trained with")
    num_scales = len(var_cfg.patch_nums)
    if vae_cfg.num_hit_scales != num_scales:
        raise MempruneError(f"tokenizer was trained for {vae_cfg.num_hit_scales} scales (ema_vocab_hit_SV rows) "
                            f"but the VAR uses {num_scales} scales {var_cfg.patch_nums}; pass a matching tokenizer")
    if vae_cfg.phi_layout == "per_scale" and vae_cfg.num_phi != num_scales:
        raise MempruneError(f"tokenizer has {vae_cfg.num_phi} per-scale Phi convs but the VAR uses {num_scales} "
                            "scales; pass a matching tokenizer")


def load_strict(module: nn.Module, sd: StateDict, what: str, device: torch.device | str, *,
                copy: bool = True) -> None:
    """Strictly load ``sd`` into ``module`` (built on the meta device), as float32 on ``device``.

    Missing keys, unexpected keys and shape mismatches raise MempruneError before anything is assigned.
    The module takes the tensors over (``assign``), so no second copy of the weights is made. With
    ``copy`` (the caller still holds ``sd``), tensors already float32 on ``device`` are cloned so that later
    in-place edits of the model (patching) leave the caller's mapping untouched.
    """
    expected = module.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise MempruneError(f"{what} does not match the inferred architecture: missing {missing[:3]} "
                            f"({len(missing)} in all), unexpected {unexpected[:3]} ({len(unexpected)} in all); "
                            "pass an unmodified official state dict")
    for key, ref in expected.items():
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise MempruneError(f"{what} tensor {key!r} has shape {tuple(sd[key].shape)}, the inferred "
                                f"architecture expects {tuple(ref.shape)}; the checkpoint is inconsistent")
    prepared = {}
    for key, ref in expected.items():
        src = sd[key]
        dtype = torch.float32 if src.is_floating_point() else ref.dtype
        out = src.detach().to(device=device, dtype=dtype)
        prepared[key] = out.clone() if copy and out.data_ptr() == src.data_ptr() else out
    module.load_state_dict(prepared, strict=True, assign=True)
