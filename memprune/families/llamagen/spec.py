"""LlamaGen (FoundationVision/LlamaGen): SwiGLU FFN ``layers.{i}.feed_forward.{w1,w3,w2}``.

The unit is the SwiGLU hidden value ``h_j = silu(w1_j . x) * (w3_j . x)``. Its layer is named
``layers.{i}.feed_forward``. The default intervention scales **row j of w3**: h_j is linear in w3_j, so this
multiplies the unit exactly by the factor (scaling the w1 row would pass through the SiLU non-linearly).
``--target fc2`` scales column j of w2, which is also exact. Running the model is
:func:`memprune.families.llamagen.model.load_llamagen`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memprune.families.spec import AuditView, FamilySpec, LayerTemplate, PublishedSampling, register_family

if TYPE_CHECKING:
    from memprune.io import Checkpoint

# width -> (release, guidance scale); FoundationVision/LlamaGen GETTING_STARTED.md (384 px runs)
PUBLISHED_FID = {
    768: ("LlamaGen-B", 2.0), 1024: ("LlamaGen-L", 2.0), 1280: ("LlamaGen-XL", 1.75),
    1536: ("LlamaGen-XXL", 1.75), 3200: ("LlamaGen-3B", 1.65),
}  # fmt: skip


def _describe(ckpt: Checkpoint) -> dict[str, Any]:
    hidden, width = ckpt.shape("layers.0.feed_forward.w1.weight")
    info: dict[str, Any] = {
        "depth": len(SPEC.blocks(ckpt.keys())),
        "width": width,
        "ffn_hidden": hidden,
        "vocab_size": ckpt.shape("output.weight")[0],
    }
    if "cls_embedding.embedding_table.weight" in ckpt:
        info["num_classes"] = ckpt.shape("cls_embedding.embedding_table.weight")[0] - 1
    # Not stored in the weights: the released factories' head count for this width, if it is one.
    from memprune.families.llamagen.transformer import HEADS_BY_WIDTH

    info["heads"] = HEADS_BY_WIDTH.get(width)
    if "freqs_cis" in ckpt:
        info["seq_len"] = ckpt.shape("freqs_cis")[0] - 1
    stale = sum(1 for k in ckpt.keys() if ".attention.kv_cache." in k)
    if stale:
        info["kv_cache_buffers"] = stale  # saved after generation; ignored when the model is loaded
    return info



def _tokenizer(keys: set[str]) -> bool:
    # VQ-16: a 1x1 quant_conv to 8 channels (VAR's VQVAE has one too, with its residual quantizer)
    var = any(k.startswith("quantize.quant_resi.") for k in keys) or "quantize.ema_vocab_hit_SV" in keys
    return not var and ("quant_conv.weight" in keys or "quantize.codebook_used" in keys)


def _sampling(model: Any) -> PublishedSampling:
    width = model.transformer.config.dim
    nearest = min(PUBLISHED_FID, key=lambda w: abs(w - width))
    name, scale = PUBLISHED_FID[nearest]
    note = "" if nearest == width else f"; width {width} is no release, nearest is {name}"
    return PublishedSampling(scale, 0, 0.0, 1.0, None, f"{name} published FID setting (GETTING_STARTED.md, 384 px){note}")


_FF = "layers.{i}.feed_forward"
SPEC = register_family(FamilySpec(
    name="llamagen",
    display_name="LlamaGen",
    summary="LlamaGen (class-conditional, FoundationVision/LlamaGen)",
    official_repo="FoundationVision/LlamaGen",
    required_keys=("tok_embeddings.weight", "output.weight"),
    block_pattern=r"layers\.(\d+)\.feed_forward\.w1\.weight",
    block_container="layers",
    units={
        # the unit h = silu(w1 x) * (w3 x): hooked at the identity module `hidden`, patched on w3 rows (exact)
        "fc1": LayerTemplate(_FF, hook=_FF + ".hidden", rows=(_FF + ".w3.weight",), bias=None, out_columns=_FF + ".w2.weight"),
        "fc2": LayerTemplate(_FF + ".w2", hook=_FF + ".w2"),
        "attn.proj": LayerTemplate("layers.{i}.attention.wo", hook="layers.{i}.attention.wo"),
    },
    describe_fn=_describe,
    loader="memprune.families.llamagen.model:load_llamagen",
    load_options=("num_heads",),  # not stored in the weights (wqkv is [3 dim, dim] for any head count)
    tokenizer_name="the LlamaGen VQ-16 tokenizer vq_ds16_c2i.pt (FoundationVision/LlamaGen)",
    tokenizer_uri="hf://FoundationVision/LlamaGen/vq_ds16_c2i.pt",
    tokenizer_detect=_tokenizer,
    # Training: the same ten-crops of center_crop_arr(1.1 x) as RAR (extract_codes_c2i.py --ten-crop).
    training_view="rar",
    # Not covered by the attack code: the centre view of its training ten-crop.
    audit_view=AuditView("center_crop_arr", 1.1),
    decode_note="tokenizer decode",
    sampling=_sampling,
    guidance="scale",  # LlamaGen's cfg_scale: 1 = no guidance
    prefix_unit="tokens",
    paper_prefix=30,
    robust_prefixes=(16, 30, 64),
    prefix_sweep=(0, 1, 5, 14, 30),
    ranked_predictions=99,  # not in the attack code: RAR's setting, the last 99 predictions of the raster
))
