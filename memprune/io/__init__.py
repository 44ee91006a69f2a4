"""The one door to disk: reading checkpoints safely and writing safetensors atomically.

Reading never executes untrusted code: safetensors are opened lazily with ``safe_open``; pickles
(``.pth``/``.pt``/``.bin``) go through ``torch.load(weights_only=True)`` and nothing else. Writing produces
safetensors only, through a temporary file in the target folder that is fsynced and renamed into place,
so a crash never leaves a partial output.
"""

from memprune.io.guard import check_output, checkpoint_files
from memprune.io.pickles import list_pickle_globals, load_pickle
from memprune.io.reader import Checkpoint, open_checkpoint, resolve_checkpoint_path
from memprune.io.writer import (
    atomic_write,
    check_output_path,
    checkpoint_sha256,
    load_state_dict,
    StagedFile,
    remove_stale_temps,
    save_safetensors,
    sha256_file,
    staged_file,
    write_json_atomic,
    write_safetensors_stream,
    write_safetensors_to,
)

__all__ = [
    "Checkpoint",
    "atomic_write",
    "StagedFile",
    "check_output",
    "check_output_path",
    "checkpoint_files",
    "remove_stale_temps",
    "staged_file",
    "write_safetensors_to",
    "checkpoint_sha256",
    "list_pickle_globals",
    "load_pickle",
    "load_state_dict",
    "open_checkpoint",
    "resolve_checkpoint_path",
    "save_safetensors",
    "sha256_file",
    "write_json_atomic",
    "write_safetensors_stream",
]
