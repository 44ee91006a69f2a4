"""Pickled checkpoints (``.pth``, ``.pt``, ``.bin``): loaded with ``weights_only=True`` and nothing else.

A pickle that needs arbitrary Python globals is never executed. Instead its opcodes are *read* (not run)
with :mod:`pickletools` to list the globals it would import, and the user is told how to convert it
deliberately (``memprune convert --trust-pickle``), which is the only place an unsafe load can happen.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path

import torch

from memprune.errors import MempruneError, UnsafeCheckpointError
from memprune.io.paths import check_input_file, shown

# Globals that torch's weights-only unpickler accepts anyway, plus argparse.Namespace (LlamaGen stores its
# training args next to the weights). Used only to decide which names to *report* as offending.
_BENIGN_PREFIXES = (
    "torch.",
    "collections.OrderedDict",
    "builtins.",
    "_codecs.encode",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.dtype",
    "numpy.ndarray",
    "argparse.Namespace",
)


def load_pickle(path: str | os.PathLike) -> object:
    """``torch.load`` a pickle with ``weights_only=True`` (memory-mapped when the file allows it).

    Raises:
        UnsafeCheckpointError: the file needs globals outside the weights-only allow-list; they are listed.
        MempruneError: the file is missing, truncated or not a torch pickle.
    """
    path = check_input_file(path, "checkpoint")  # a FIFO or /dev/urandom named .pth would block or never end
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        warnings.warn(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set; memprune ignores it and loads pickles with weights_only=True",
            stacklevel=2,
        )
    # mmap needs torch's zip container; legacy (pre-1.6) pickles must be read into memory.
    use_mmap = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as exc:
        found = list_pickle_globals(path)
        if not found:  # no global at all: not a pickle that needs code, just bytes that are not a checkpoint
            raise _unreadable(path, exc) from None
        offending = [g for g in found if not g.startswith(_BENIGN_PREFIXES)]
        if not offending:  # the weights-only unpickler refused something we did not spot; show its reason
            offending = [str(exc).splitlines()[0][:200]]
        raise UnsafeCheckpointError(
            f"{shown(path)} is a pickle that needs unsafe Python globals ({', '.join(offending[:8])}); memprune never "
            f"executes those. If you trust its source, convert it once with "
            f"`memprune convert --trust-pickle {path} -o {path.with_suffix('.safetensors').name}`"
        ) from None
    except RecursionError:
        raise MempruneError(
            f"{shown(path)} nests its contents too deeply to be a state dict: save model.state_dict() instead"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.load's failure types are open-ended; all mean "not readable"
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: BaseException) -> MempruneError:
    text = " ".join(str(exc).split())
    first = text.split(". ")[0][:160] if text else type(exc).__name__  # torch appends paragraphs of advice
    return MempruneError(
        f"cannot read {shown(path)} as a torch checkpoint ({first}); the file may be truncated or not a "
        "checkpoint: download it again"
    )


def list_pickle_globals(path: str | os.PathLike) -> list[str]:
    """The ``module.name`` globals a torch pickle would import, found by reading its opcodes (never run)."""
    try:
        data = _pickle_bytes(check_input_file(path, "checkpoint"))
    except MempruneError:
        raise
    except Exception:  # noqa: BLE001 - a damaged zip has no readable globals; the caller reports the load error
        return []
    found: list[str] = []
    strings: list[str] = []  # STACK_GLOBAL takes its module and name from the two last pushed strings
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - a malformed stream still yields what was read so far
        pass
    return list(dict.fromkeys(found))


def _pickle_bytes(path: Path) -> bytes:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("data.pkl")]
            return zf.read(names[0]) if names else b""
    with open(path, "rb") as f:
        return f.read()


def unsafe_load_trusted(path: str | os.PathLike) -> object:
    """Load a pickle with arbitrary code execution allowed. Only ``memprune convert --trust-pickle`` calls this."""
    check_input_file(path, "checkpoint")
    warnings.warn(f"loading {path} with weights_only=False because --trust-pickle was given", stacklevel=2)
    return torch.load(Path(path), map_location="cpu", weights_only=False)  # noqa: S614 - explicit user opt-in
