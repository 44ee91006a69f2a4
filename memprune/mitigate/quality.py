"""Held-out quality: mean token negative log-likelihood of images the model never trained on."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from memprune.data import ImageRecord
from memprune.families.base import IARModel


@torch.no_grad()
def heldout_nll(model: IARModel, images: Sequence[ImageRecord], batch_size: int = 32) -> float:
    """Mean token negative log-likelihood (nats/token) under teacher forcing with the true class.

    Images enter through the attack's canonical view (the one the audit forces), so the two measures see the
    same pixels. Anything with ``path``, ``label`` and ``id`` works (records, candidates, demo images).
    """
    from memprune.evaluators.audit_candidates import Candidate, load_views

    total, count = 0.0, 0
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        views = load_views([Candidate(im.path, im.label, im.id) for im in chunk], model)
        tokens = model.encode(views.to(model.device))
        labels = torch.tensor([im.label for im in chunk], device=model.device)
        logits = model.teacher_forced(tokens, labels)
        total += F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten(), reduction="sum").item()
        count += tokens.numel()
    return total / count
