"""One tiny random model per family (VAR, RAR, LlamaGen), all at 128 px, and a seeded batch of ground truth.

Used by the prefix-sharing tests: small enough that every condition of a grid generates in well under a second.
"""

from __future__ import annotations

import torch

from memprune.families.base import IARModel

FAMILIES = ("var", "rar", "llamagen")
#: Prefixes (family unit) the tests complete from: 0 (nothing forced) and a few inside the sequence.
PREFIXES = {"var": (0, 2, 3), "rar": (0, 16, 30), "llamagen": (0, 16, 30)}


def tiny_model(family: str, seed: int = 3) -> IARModel:
    """A randomly initialised model of ``family`` whose weights all matter (distinct draws per seed)."""
    if family == "var":
        from memprune.families.var.model import VARConfig, build_var_model
        from memprune.families.var.vqvae import VQVAEConfig

        cfg = VARConfig(depth=2, width=64, num_heads=2, mlp_hidden=128, vocab_size=64, cvae=8, num_classes=3,
                        patch_nums=(1, 2, 4, 8))
        model = build_var_model(cfg, VQVAEConfig(vocab_size=64, z_channels=8, ch=32, num_hit_scales=4), seed=seed)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # VAR's own init leaves the blocks almost silent (AdaLN gamma 1e-5)
            for name, p in model.var.named_parameters():
                if p.ndim == 2 and "emb" not in name:
                    p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
                elif p.ndim == 1 and "scale_mul" not in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        return model
    if family == "rar":
        from memprune.families.rar.maskgit_vqgan import MaskGITVQGANConfig
        from memprune.families.rar.model import build_random_rar
        from memprune.families.rar.transformer import RARConfig

        config = RARConfig(hidden_size=64, depth=2, num_heads=4, mlp_hidden=256, codebook_size=64, num_classes=3,
                           image_seq_len=64)
        tok = MaskGITVQGANConfig(hidden_channels=32, num_res_blocks=1, z_channels=16, codebook_size=64, resolution=128)
        return build_random_rar(config, tok, seed=seed)
    if family == "llamagen":
        from memprune.families.llamagen.model import build_random_llamagen
        from memprune.families.llamagen.transformer import LlamaGenConfig
        from memprune.families.llamagen.vq import VQConfig

        config = LlamaGenConfig(dim=64, n_layer=2, n_head=4, ffn_hidden=256, vocab_size=64, num_classes=3,
                                block_size=64)
        return build_random_llamagen(config, VQConfig(ch=32, num_res_blocks=1, z_channels=32, codebook_size=64),
                                     seed=seed)
    raise ValueError(family)


def ground_truth(model: IARModel, batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random tokens ``[batch, seq_len]`` and labels ``[batch]`` (any tokens serve as a prefix)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.vocab_size, (batch, model.seq_len), generator=g)
    labels = torch.randint(0, model.num_classes, (batch,), generator=g)
    return tokens, labels
