"""RAR (bytedance/1d-tokenizer): timm ``Mlp`` at ``blocks.{i}.mlp.fc1`` -> erf-GELU -> ``blocks.{i}.mlp.fc2``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memprune.errors import MempruneError
from memprune.families.spec import AuditView, FamilySpec, LayerTemplate, PublishedSampling, register_family

if TYPE_CHECKING:
    from memprune.io import Checkpoint

# width -> (release, temperature, guidance scale, guidance power); bytedance/1d-tokenizer README_RAR.md
PUBLISHED_FID = {
    768: ("RAR-B", 1.0, 16.0, 2.75),
    1024: ("RAR-L", 1.02, 15.5, 2.5),
    1280: ("RAR-XL", 1.02, 6.9, 1.5),
    1408: ("RAR-XXL", 1.02, 8.0, 1.2),
}


def _describe(ckpt: Checkpoint) -> dict[str, Any]:
    hidden, width = ckpt.shape("blocks.0.mlp.fc1.weight")
    vocab = ckpt.shape("lm_head.weight")[0]
    head_dim = ckpt.shape("blocks.0.attn.q_norm.weight")[0] if "blocks.0.attn.q_norm.weight" in ckpt else None
    return {
        "depth": len(SPEC.blocks(ckpt.keys())),
        "width": width,
        "heads": width // head_dim if head_dim else None,
        "ffn_hidden": hidden,
        "vocab_size": vocab,
        # one id space: image tokens, the mask token, the classes, the null class
        "num_classes": ckpt.shape("embeddings.weight")[0] - vocab - 2,
    }


def _tokenizer(keys: set[str]) -> bool:
    # MaskGIT-VQGAN: a plain codebook, no 1x1 quant_conv (LlamaGen's VQ has one) and no residual quantizer (VAR's)
    return not any(k.startswith("quantize.quant_resi.") for k in keys) and not (
        {"quant_conv.weight", "quantize.codebook_used", "quantize.ema_vocab_hit_SV"} & keys
    )


def _sampling(model: Any) -> PublishedSampling:
    width = getattr(getattr(getattr(model, "transformer", None), "config", None), "hidden_size", None)
    if width is None:
        raise MempruneError("cannot read the RAR model width to pick its published FID setting: pass --cfg and --cfg-pow")
    nearest = min(PUBLISHED_FID, key=lambda w: abs(w - width))
    name, temperature, scale, power = PUBLISHED_FID[nearest]
    note = "" if nearest == width else f"; width {width} is no release, nearest is {name}"
    return PublishedSampling(scale, 0, 0.0, temperature, power, f"{name} published FID setting (README_RAR.md){note}")


SPEC = register_family(FamilySpec(
    name="rar",
    display_name="RAR",
    summary="RAR (randomized autoregressive, bytedance/1d-tokenizer)",
    official_repo="bytedance/1d-tokenizer",
    required_keys=("embeddings.weight", "lm_head.weight", "target_aware_pos_embed"),
    block_pattern=r"blocks\.(\d+)\.mlp\.fc1\.weight",
    block_container="blocks",
    units={
        "fc1": LayerTemplate("blocks.{i}.mlp.fc1", hook="blocks.{i}.mlp.act", out_columns="blocks.{i}.mlp.fc2.weight"),
        "fc2": LayerTemplate("blocks.{i}.mlp.fc2", hook="blocks.{i}.mlp.fc2"),
        "attn.proj": LayerTemplate("blocks.{i}.attn.proj", hook="blocks.{i}.attn.proj"),
    },
    describe_fn=_describe,
    loader="memprune.families.rar.model:load_rar",
    load_options=("num_heads",),
    tokenizer_name="the MaskGIT-VQGAN tokenizer maskgit-vqgan-imagenet-f16-256.bin (fun-research/TiTok)",
    tokenizer_uri="hf://fun-research/TiTok/maskgit-vqgan-imagenet-f16-256.bin",
    tokenizer_detect=_tokenizer,
    # Training: ADM's center_crop_arr(int(1.1 x)) then ten-crop (view = augmentation index mod 10).
    training_view="rar",
    # The attack's view: shorter side to the image size (BICUBIC), centre crop (torchvision Resize + CenterCrop).
    audit_view=AuditView("resize_crop", 1.0, "bicubic"),
    decode_note="tokenizer decode",
    sampling=_sampling,
    guidance="scale",  # RAR's guidance scale: 1 = no guidance (with a power schedule, cfg_pow)
    prefix_unit="tokens",
    paper_prefix=30,
    robust_prefixes=(16, 30, 64),
    prefix_sweep=(0, 1, 5, 14, 30),
    ranked_predictions=99,  # the attack's columns -100..-2 of 257
))
