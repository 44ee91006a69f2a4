"""LlamaGen (FoundationVision/LlamaGen): SwiGLU FFN ``layers.{i}.feed_forward.{w1,w3,w2}``.

The unit is the SwiGLU hidden value ``h_j = silu(w1_j . x) * (w3_j . x)``. Its layer is named
``layers.{i}.feed_forward``. The default intervention scales **row j of w3**: h_j is linear in w3_j, so this
multiplies the unit exactly by the factor (scaling the w1 row would pass through the SiLU non-linearly).
``--target fc2`` scales column j of w2, which is also exact. Running the model is
:func:`memprune.models.llamagen.load_llamagen`.
"""

from __future__ import annotations

from typing import Any

from memprune.adapters.base import Adapter, UnitLayer, linear_layer, register_adapter
from memprune.io import Checkpoint
from memprune.models.llamagen_transformer import HEADS_BY_WIDTH


@register_adapter
class LlamaGenAdapter(Adapter):
    name = "llamagen"
    summary = "LlamaGen (Llama-style raster AR), FoundationVision/LlamaGen c2i_B..c2i_3B"
    block_pattern = r"layers\.(\d+)\.feed_forward\.w1\.weight"
    required_keys = ("tok_embeddings.weight", "output.weight")
    runnable = True

    def _layer(self, ckpt: Checkpoint, block: int, kind: str) -> UnitLayer:
        prefix = f"layers.{block}"
        if kind == "fc1":
            ff = f"{prefix}.feed_forward"
            width = ckpt.shape(f"{ff}.w3.weight")[0]
            return UnitLayer(ff, block, kind, width, (f"{ff}.w3.weight",), None, f"{ff}.w2.weight")
        if kind == "fc2":
            return linear_layer(ckpt, f"{prefix}.feed_forward.w2", block, kind)
        return linear_layer(ckpt, f"{prefix}.attention.wo", block, kind)

    def describe(self, ckpt: Checkpoint) -> dict[str, Any]:
        hidden, width = ckpt.shape("layers.0.feed_forward.w1.weight")
        info: dict[str, Any] = {
            "depth": len(self.blocks(ckpt.keys())),
            "width": width,
            "ffn_hidden": hidden,
            "vocab_size": ckpt.shape("output.weight")[0],
        }
        if "cls_embedding.embedding_table.weight" in ckpt:
            info["num_classes"] = ckpt.shape("cls_embedding.embedding_table.weight")[0] - 1
        # Not stored in the weights: the released factories' head count for this width, if it is one.
        info["heads"] = HEADS_BY_WIDTH.get(width)
        if "freqs_cis" in ckpt:
            info["seq_len"] = ckpt.shape("freqs_cis")[0] - 1
        stale = sum(1 for k in ckpt.keys() if ".attention.kv_cache." in k)
        if stale:
            info["kv_cache_buffers"] = stale  # saved after generation; ignored when the model is loaded
        return info

    def load_model(self, checkpoint: Any, tokenizer: Any, **kwargs: Any):
        from memprune.models.llamagen import load_llamagen

        return load_llamagen(checkpoint, tokenizer, **kwargs)
