"""Converting checkpoints to safetensors (``memprune convert``), checked by reloading every tensor."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from memprune.errors import MempruneError
from memprune.io import check_output, checkpoint_files, open_checkpoint, staged_file, write_safetensors_to
from memprune.io.writer import read_safetensors_file
from memprune.io.names import stripped_names
from memprune.io.pickles import unsafe_load_trusted
from memprune.io.reader import _unwrap
from memprune.verify import _same_bits  # verify's bit comparison: NaN payloads and -0.0 count

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertResult:
    output: Path
    tensors: int
    source_format: str
    trusted_pickle: bool


def convert(source: str | os.PathLike, output: str | os.PathLike, *, trust_pickle: bool = False) -> ConvertResult:
    """Write ``source``'s tensors to ``output`` (safetensors) and check the round trip bit for bit.

    With ``trust_pickle`` the pickle is loaded with ``weights_only=False``: arbitrary code in it runs. This is
    never done implicitly; it is logged.
    """
    src = Path(source)
    out = check_output(output, checkpoint_files(source), suffix=".safetensors")
    if trust_pickle:
        state, _, _ = _unwrap(unsafe_load_trusted(src), src)
        tensors = {name: state[key] for name, key in stripped_names(state, src).items()}
        fmt, meta = "pickle", {}
    else:
        with open_checkpoint(src) as ckpt:
            tensors = {k: ckpt.get(k) for k in ckpt.keys()}
            fmt, meta = ckpt.format, dict(ckpt.metadata)
    meta["memprune.converted_from"] = src.name
    if trust_pickle:
        meta["memprune.trusted_pickle"] = "true"
    # Shared storage (tied weights) must be materialised: safetensors stores each tensor on its own.
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    # The round trip is checked on the temporary, so a failed conversion never replaces an existing output.
    with staged_file(out) as staged:
        write_safetensors_to(staged.tmp, [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()], tensors.items(), meta)
        back = read_safetensors_file(staged.tmp)
        bad = [k for k in tensors if k not in back or not _same_bits(back[k], tensors[k])]
        if bad:
            raise MempruneError(f"round trip changed {bad[0]}: conversion aborted, nothing was written")
        staged.commit()
    return ConvertResult(out, len(tensors), fmt, trust_pickle)

