"""RAR (bytedance/1d-tokenizer): timm ``Mlp`` at ``blocks.{i}.mlp.fc1`` -> erf-GELU -> ``blocks.{i}.mlp.fc2``."""

from __future__ import annotations

from typing import Any

from memprune.adapters.base import Adapter, UnitLayer, linear_layer, register_adapter
from memprune.io import Checkpoint


@register_adapter
class RARAdapter(Adapter):
    name = "rar"
    summary = "RAR (randomized autoregressive), bytedance/1d-tokenizer rar_b..rar_xxl"
    block_pattern = r"blocks\.(\d+)\.mlp\.fc1\.weight"
    required_keys = ("embeddings.weight", "lm_head.weight", "target_aware_pos_embed")
    runnable = True

    def _layer(self, ckpt: Checkpoint, block: int, kind: str) -> UnitLayer:
        prefix = f"blocks.{block}"
        if kind == "fc1":
            return linear_layer(ckpt, f"{prefix}.mlp.fc1", block, kind, out_columns=f"{prefix}.mlp.fc2.weight")
        if kind == "fc2":
            return linear_layer(ckpt, f"{prefix}.mlp.fc2", block, kind)
        return linear_layer(ckpt, f"{prefix}.attn.proj", block, kind)

    def describe(self, ckpt: Checkpoint) -> dict[str, Any]:
        hidden, width = ckpt.shape("blocks.0.mlp.fc1.weight")
        vocab = ckpt.shape("lm_head.weight")[0]
        head_dim = ckpt.shape("blocks.0.attn.q_norm.weight")[0] if "blocks.0.attn.q_norm.weight" in ckpt else None
        return {
            "depth": len(self.blocks(ckpt.keys())),
            "width": width,
            "heads": width // head_dim if head_dim else None,
            "ffn_hidden": hidden,
            "vocab_size": vocab,
            # one id space: image tokens, the mask token, the classes, the null class
            "num_classes": ckpt.shape("embeddings.weight")[0] - vocab - 2,
        }

    def load_model(self, checkpoint: Any, tokenizer: Any, **kwargs: Any):
        from memprune.models.rar import load_rar

        return load_rar(checkpoint, tokenizer, **kwargs)
