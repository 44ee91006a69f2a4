"""KV-cached RAR generation in raster order: the official guidance schedule, temperature, greedy, prefixes.

Mirrors ``RAR.generate`` of ``bytedance/1d-tokenizer`` (``modeling/rar.py``) and extends it with a
ground-truth prefix (the extraction audit forces the first N tokens) and optional top-k / top-p filtering
(both off by default; the official sampler has neither).
"""

from __future__ import annotations

import torch

from memprune.families.common import KVCache, pick_tokens
from memprune.families.rar.transformer import RARTransformer


def guidance_scale_at(
    step: int, seq_len: int, scale: float, power: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The official CFG schedule ``(scale - 1) * (1 - cos(pi * (step / n) ** power)) / 2 + 1``.

    Computed in float32 tensors exactly as the official loop does. With ``power > 0`` the scale rises from 1
    at step 0 to about ``scale`` at the end; with ``power = 0`` torch's ``0 ** 0 = 1`` makes it the constant
    ``scale`` at every step.

    Returns:
        A float32 tensor of shape [1] on ``device``.
    """
    pow_t = torch.ones(1, device=device) * power
    ramp = (1 - torch.cos(((step / seq_len) ** pow_t) * torch.pi)) * 1 / 2
    return (scale - 1) * ramp + 1


@torch.no_grad()
def generate_tokens(
    model: RARTransformer,
    cond_ids: torch.Tensor,
    prefix: torch.Tensor,
    *,
    cfg: float = 0.0,
    cfg_pow: float = 0.0,
    temperature: float = 1.0,
    greedy: bool = False,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Complete ``prefix`` [B, N] to [B, n] tokens, one token per step with a KV cache.

    Args:
        model: the generator.
        cond_ids: [B] class embedding rows (label + class offset).
        prefix: [B, N] forced first tokens (N may be 0).
        cfg: guidance scale as in the official code: 0 runs the conditional model only; any other value
            batches [cond, null] and uses ``uncond + (cond - uncond) * guidance_scale_at(step)``.
        cfg_pow: the schedule power (``guidance_scale_pow``).
        temperature, greedy, top_k, top_p, generator: see :func:`pick_tokens`.

    Returns:
        [B, n] int64 tokens whose first N columns equal ``prefix``.

    The first forward call fills the cache with cls, class and the whole prefix (causal mask), each later
    call feeds only the newest token, like the official loop.
    """
    cfgn = model.config
    n, b = cfgn.image_seq_len, cond_ids.shape[0]
    ids = prefix.long()
    if cfg != 0:
        cond_ids = torch.cat([cond_ids, torch.full_like(cond_ids, cfgn.null_class_id)])
    cache = KVCache(cfgn.depth, max_len=n + 1)  # rows 0..n: cls, class, tokens 0..n-2 are ever fed
    for step in range(ids.shape[1], n):
        seq = torch.cat([ids, ids]) if cfg != 0 else ids
        x, c = model.embed(seq, cond_ids, start=cache.length)
        h = model.run_blocks(x, c, cache)
        logits = model.head(h[:, -1:], c[:, -1:])[:, 0].float()  # the newest row predicts token `step`
        if cfg != 0:
            cond_logits, uncond_logits = logits[:b], logits[b:]
            scale = guidance_scale_at(step, n, cfg, cfg_pow, device=logits.device).to(logits.dtype)
            logits = uncond_logits + (cond_logits - uncond_logits) * scale
        nxt = pick_tokens(logits, temperature=temperature, greedy=greedy, top_k=top_k, top_p=top_p, generator=generator)
        ids = torch.cat([ids, nxt], dim=1)
    return ids
