"""The architecture-independent model API that scoring, auditing and FID are written against.

Every runnable architecture (VAR, RAR, ...) wraps its transformer and its tokenizer in an
:class:`IARModel`. The commands never special-case an architecture: they only use what is declared here.

Conventions shared by all implementations:

* Images are float tensors ``[B, 3, H, W]`` in ``[0, 1]`` at ``image_size``.
* Tokens are one flat LongTensor ``[B, seq_len]`` in generation order (VAR: the scales concatenated,
  row-major within a scale; RAR/LlamaGen: raster order).
* ``teacher_forced(tokens, labels)`` returns logits ``[B, seq_len, V]`` where **row p predicts
  ``tokens[:, p]``**, class-conditional, label dropout off, eval mode.
* FFN hook points are named by their state-dict module paths (``blocks.3.ffn.fc1``), so a score file,
  a patch and a hook all speak of the same unit. The module returned for ``fc1`` outputs the
  *post-activation* value of fc1 (the ``act`` module), which is what UnitMem measures.
* ``position_groups()`` says which rows of the block sequence the statistics of a unit are taken over
  (VAR: one group per scale; RAR: the position predicting the last token). Row indices are into the
  sequence the transformer blocks see during ``teacher_forced``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PositionGroup:
    """A half-open range ``[begin, end)`` of block-sequence rows whose activations are averaged together."""

    name: str
    begin: int
    end: int


class IARModel(nn.Module, ABC):
    """A class-conditional image autoregressive model together with its tokenizer."""

    arch: str
    image_size: int
    num_classes: int
    vocab_size: int
    seq_len: int

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Tokenize images ``[B, 3, H, W]`` in [0, 1] to tokens ``[B, seq_len]`` (int64)."""

    @abstractmethod
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode tokens ``[B, seq_len]`` to images ``[B, 3, H, W]`` in [0, 1]."""

    @abstractmethod
    def teacher_forced(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Class-conditional teacher-forced logits ``[B, seq_len, V]`` (row p predicts ``tokens[:, p]``)."""

    @abstractmethod
    def generate(
        self,
        labels: torch.Tensor,
        *,
        prefix: torch.Tensor | None = None,
        cfg: float = 0.0,
        top_k: int = 0,
        top_p: float = 0.0,
        temperature: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Generate tokens ``[B, seq_len]``; the first ``prefix.shape[1]`` tokens are forced to ``prefix``.

        ``cfg`` follows the family's own published convention (VAR: guidance weight, 0 = none;
        RAR/LlamaGen: guidance scale, 1 = none); each implementation documents it.
        """

    @abstractmethod
    def hook_points(self, layer: str = "fc1") -> dict[str, nn.Module]:
        """Map unit-layer names (``blocks.{i}.ffn.fc1``) to the module whose forward output holds the units.

        ``layer`` is one of ``fc1`` (post-activation), ``fc2`` or ``attn.proj``. The output's last axis is
        the unit axis and its second axis the block-sequence row.
        """

    @abstractmethod
    def position_groups(self) -> list[PositionGroup]:
        """The row groups over which per-unit statistics are averaged (one score per group)."""

    def image_independent_groups(self) -> list[str]:
        """Position groups whose activations cannot depend on the image (VAR: scale 0 sees only the class).

        Their per-image statistics measure class selectivity, not memorization of an image, so selection
        leaves them out when it aggregates over groups.
        """
        return []

    def valid_prefix_lengths(self) -> list[int] | None:
        """Token counts a prefix may have (VAR: scale boundaries); ``None`` means any length."""
        return None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
