"""VAR (FoundationVision/VAR): ``blocks.{i}.ffn.fc1`` -> tanh-GELU -> ``blocks.{i}.ffn.fc2``."""

from __future__ import annotations

from typing import Any

from memprune.adapters.base import Adapter, UnitLayer, linear_layer, register_adapter
from memprune.io import Checkpoint


@register_adapter
class VARAdapter(Adapter):
    name = "var"
    summary = "VAR (next-scale prediction), FoundationVision/VAR var_d16..d36"
    block_pattern = r"blocks\.(\d+)\.ffn\.fc1\.weight"
    required_keys = ("class_emb.weight", "lvl_embed.weight", "word_embed.weight", "head.weight")
    runnable = True

    def _layer(self, ckpt: Checkpoint, block: int, kind: str) -> UnitLayer:
        prefix = f"blocks.{block}"
        if kind == "fc1":
            return linear_layer(ckpt, f"{prefix}.ffn.fc1", block, kind, out_columns=f"{prefix}.ffn.fc2.weight")
        if kind == "fc2":
            return linear_layer(ckpt, f"{prefix}.ffn.fc2", block, kind)
        return linear_layer(ckpt, f"{prefix}.attn.proj", block, kind)

    def describe(self, ckpt: Checkpoint) -> dict[str, Any]:
        hidden, width = ckpt.shape("blocks.0.ffn.fc1.weight")
        return {
            "depth": len(self.blocks(ckpt.keys())),
            "width": width,
            "heads": ckpt.shape("blocks.0.attn.scale_mul_1H11")[1] if "blocks.0.attn.scale_mul_1H11" in ckpt else None,
            "ffn_hidden": hidden,
            "vocab_size": ckpt.shape("head.weight")[0],
            "num_classes": ckpt.shape("class_emb.weight")[0] - 1,  # the last row is the null class
            "seq_len": ckpt.shape("pos_1LC")[1] if "pos_1LC" in ckpt else None,
            "scales": ckpt.shape("lvl_embed.weight")[0],
            "shared_adaln": "shared_ada_lin.1.weight" in ckpt,
        }

    def load_model(self, checkpoint: Any, tokenizer: Any, **kwargs: Any):
        from memprune.models.var import load_var

        return load_var(checkpoint, tokenizer, **kwargs)
