"""VAR (FoundationVision/VAR): ``blocks.{i}.ffn.fc1`` -> tanh-GELU -> ``blocks.{i}.ffn.fc2``; next-scale prediction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memprune.families.spec import AuditView, FamilySpec, LayerTemplate, PublishedSampling, register_family

if TYPE_CHECKING:
    from memprune.io import Checkpoint


def _describe(ckpt: Checkpoint) -> dict[str, Any]:
    hidden, width = ckpt.shape("blocks.0.ffn.fc1.weight")
    return {
        "depth": len(SPEC.blocks(ckpt.keys())),
        "width": width,
        "heads": ckpt.shape("blocks.0.attn.scale_mul_1H11")[1] if "blocks.0.attn.scale_mul_1H11" in ckpt else None,
        "ffn_hidden": hidden,
        "vocab_size": ckpt.shape("head.weight")[0],
        "num_classes": ckpt.shape("class_emb.weight")[0] - 1,  # the last row is the null class
        "seq_len": ckpt.shape("pos_1LC")[1] if "pos_1LC" in ckpt else None,
        "scales": ckpt.shape("lvl_embed.weight")[0],
        "shared_adaln": "shared_ada_lin.1.weight" in ckpt,
    }


def _tokenizer(keys: set[str]) -> bool:
    # the multi-scale residual quantizer
    return any(k.startswith("quantize.quant_resi.") for k in keys) or "quantize.ema_vocab_hit_SV" in keys


def _sampling(model: Any) -> PublishedSampling:
    return PublishedSampling(1.5, 900, 0.96, 1.0, None, "VAR published FID setting (FoundationVision/VAR README)")


SPEC = register_family(FamilySpec(
    name="var",
    display_name="VAR",
    summary="VAR (next-scale prediction, FoundationVision/VAR)",
    official_repo="FoundationVision/VAR",
    required_keys=("class_emb.weight", "lvl_embed.weight", "word_embed.weight", "head.weight"),
    block_pattern=r"blocks\.(\d+)\.ffn\.fc1\.weight",
    block_container="blocks",
    units={
        "fc1": LayerTemplate("blocks.{i}.ffn.fc1", hook="blocks.{i}.ffn.act", out_columns="blocks.{i}.ffn.fc2.weight"),
        "fc2": LayerTemplate("blocks.{i}.ffn.fc2", hook="blocks.{i}.ffn.fc2"),
        "attn.proj": LayerTemplate("blocks.{i}.attn.proj", hook="blocks.{i}.attn.proj"),
    },
    describe_fn=_describe,
    loader="memprune.families.var.model:load_var",
    tokenizer_name="the VAR VQVAE tokenizer vae_ch160v4096z32.pth (FoundationVision/var)",
    tokenizer_uri="hf://FoundationVision/var/vae_ch160v4096z32.pth",
    tokenizer_detect=_tokenizer,
    # Training: shorter side round(1.125 x) with LANCZOS, seeded random crop, no flip (VAR's build_dataset).
    training_view="var",
    # The attack's view: the same resize, centre crop.
    audit_view=AuditView("resize_crop", 1.125, "lanczos"),
    decode_note="VQVAE decode of the full-resolution f_hat (same_shape=True), not the attack's same_shape=False path",
    sampling=_sampling,
    guidance="weight",  # VAR's cfg: 0 = no guidance
    prefix_unit="scales",
    paper_prefix=4,  # 4 scales = 30 tokens at 256 px
    robust_prefixes=(3, 4, 5),
    prefix_sweep=(0, 1, 2, 3, 4),
    ranked_predictions="last_scale",  # candidates are ranked on the greedy-hit rate of the last scale
))
