"""Tiny random state dicts in the official key layouts of VAR, RAR and LlamaGen (for tests)."""

from __future__ import annotations

import torch


def var_state_dict(depth: int = 2, width: int = 16, vocab: int = 32, classes: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """A VAR-layout state dict (FoundationVision/VAR key names and buffers), random values."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    L, S, hidden = 30, 4, 4 * width
    sd: dict[str, torch.Tensor] = {
        "pos_start": r(1, 1, width),
        "pos_1LC": r(1, L, width),
        "lvl_1L": torch.zeros(1, L, dtype=torch.int64),
        "attn_bias_for_masking": torch.where(torch.rand(1, 1, L, L, generator=g) > 0.5, 0.0, float("-inf")),
        "word_embed.weight": r(width, 8),
        "word_embed.bias": r(width),
        "class_emb.weight": r(classes + 1, width),
        "lvl_embed.weight": r(S, width),
    }
    for i in range(depth):
        p = f"blocks.{i}"
        sd |= {
            f"{p}.attn.scale_mul_1H11": r(1, 2, 1, 1),
            f"{p}.attn.q_bias": r(width),
            f"{p}.attn.v_bias": r(width),
            f"{p}.attn.zero_k_bias": torch.zeros(width),
            f"{p}.attn.mat_qkv.weight": r(3 * width, width),
            f"{p}.attn.proj.weight": r(width, width),
            f"{p}.attn.proj.bias": r(width),
            f"{p}.ffn.fc1.weight": r(hidden, width),
            f"{p}.ffn.fc1.bias": r(hidden),
            f"{p}.ffn.fc2.weight": r(width, hidden),
            f"{p}.ffn.fc2.bias": r(width),
            f"{p}.ada_lin.1.weight": r(6 * width, width),
            f"{p}.ada_lin.1.bias": r(6 * width),
        }
    sd |= {
        "head_nm.ada_lin.1.weight": r(2 * width, width),
        "head_nm.ada_lin.1.bias": r(2 * width),
        "head.weight": r(vocab, width),
        "head.bias": r(vocab),
    }
    return sd


def rar_state_dict(depth: int = 2, width: int = 16, vocab: int = 32, classes: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """A RAR-layout state dict (bytedance/1d-tokenizer key names), random values."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {"cls_token": r(1, 1, width), "pos_embed": r(1, 20, width), "target_aware_pos_embed": r(1, 20, width)}
    for i in range(depth):
        p = f"blocks.{i}"
        sd |= {
            f"{p}.attn.qkv.weight": r(3 * width, width),
            f"{p}.attn.q_norm.weight": r(8),
            f"{p}.attn.proj.weight": r(width, width),
            f"{p}.attn.proj.bias": r(width),
            f"{p}.mlp.fc1.weight": r(4 * width, width),
            f"{p}.mlp.fc1.bias": r(4 * width),
            f"{p}.mlp.fc2.weight": r(width, 4 * width),
            f"{p}.mlp.fc2.bias": r(width),
        }
    sd |= {"embeddings.weight": r(vocab + classes + 2, width), "lm_head.weight": r(vocab, width), "lm_head.bias": r(vocab)}
    return sd


def llamagen_state_dict(depth: int = 2, width: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {"cls_embedding.embedding_table.weight": r(11, width), "tok_embeddings.weight": r(32, width)}
    for i in range(depth):
        p = f"layers.{i}"
        sd |= {
            f"{p}.attention.wqkv.weight": r(3 * width, width),
            f"{p}.attention.wo.weight": r(width, width),
            f"{p}.feed_forward.w1.weight": r(3 * width, width),
            f"{p}.feed_forward.w3.weight": r(3 * width, width),
            f"{p}.feed_forward.w2.weight": r(width, 3 * width),
        }
    sd |= {"norm.weight": r(width), "output.weight": r(32, width)}
    return sd
