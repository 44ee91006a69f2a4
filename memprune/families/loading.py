"""Building a runnable model from checkpoint files, on the requested device and precision.

Shared by ``score``, ``audit``, ``fid`` and ``demo``: architecture detection picks the family spec, whose
``load_model`` builds our implementation of the network and its tokenizer from the official state dicts.
"""

from __future__ import annotations

import os

import torch

from memprune.errors import MempruneError
from memprune.families.base import IARModel

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}  # fmt: skip


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | str) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA (mixed precision; statistics stay float32/64), float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise MempruneError(f"--dtype {dtype!r} is unknown: choose auto, float32, bfloat16 or float16") from None


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available; otherwise ``cpu``, ``cuda`` or ``cuda:N`` of a present GPU.

    Other torch device types (``mps``, ``xla``, ``meta``...) are refused here, at once, rather than failing
    deep inside a model with a backend error (``meta`` tensors would even "run" and produce no numbers).
    """
    text = str(device).strip()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise MempruneError(f"--device {text!r} is not a torch device: use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise MempruneError(f"--device {text} is not supported: memprune runs on cpu or cuda (cuda:N); use --device cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MempruneError(f"--device {text} was asked for but CUDA is not available here: use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MempruneError(
                f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
    return text


def load_model(
    checkpoint: str | os.PathLike | IARModel,
    tokenizer: str | os.PathLike | None,
    *,
    device: str,
    dtype: str | torch.dtype,
    arch: str | None = None,
    digest: str | None = None,
    num_heads: int | None = None,
) -> tuple[IARModel, str | None]:
    """The runnable model (network + tokenizer) in eval mode on ``device``, and the checkpoint's digest.

    A checkpoint path goes through family detection and ``spec.load_model``; a model object is used as
    is (moved to ``device``), with ``digest`` recorded as its identity. ``num_heads`` is passed on only when
    given, and only to a family that declares it among its ``load_options`` (LlamaGen needs it for widths that
    are no release; the weights do not store it).
    """
    device = resolve_device(device)
    if isinstance(checkpoint, IARModel):
        return checkpoint.to(device).eval(), digest
    from memprune.families.spec import detect_family
    from memprune.io import checkpoint_sha256, open_checkpoint, resolve_checkpoint_path

    if tokenizer is None:
        raise MempruneError("running the model needs its tokenizer too: pass --tokenizer TOKENIZER_CHECKPOINT")
    path = resolve_checkpoint_path(checkpoint)
    with open_checkpoint(path) as ckpt:
        spec = detect_family(ckpt, arch)
    extra = {} if num_heads is None else {"num_heads": num_heads}
    try:
        model = spec.load_model(path, tokenizer, device=device, dtype=resolve_dtype(dtype, device), **extra)
    except MempruneError as exc:  # another family's tokenizer: name the one this model needs
        from memprune.identify import tokenizer_mismatch_message

        message = tokenizer_mismatch_message(spec.name, tokenizer)
        if message is None:
            raise
        raise MempruneError(message) from exc
    return model.eval(), digest or checkpoint_sha256(path)
