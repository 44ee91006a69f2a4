"""The one door to disk: reading checkpoints safely and writing safetensors atomically.

Reading never executes untrusted code: safetensors headers are parsed strictly by :mod:`memprune.io.formats`
and tensors read one at a time; pickles (``.pth``/``.pt``/``.bin``) go through ``torch.load(weights_only=True)``
and nothing else. Every input must be a regular file (:mod:`memprune.io.paths`): a FIFO or device is refused
before it is opened. Writing produces
safetensors only, through a temporary file in the target folder that is fsynced and renamed into place,
so a crash never leaves a partial output.
"""

from memprune.io.formats import parse_index, parse_safetensors_header
from memprune.io.guard import check_output, checkpoint_files
from memprune.io.paths import check_input_file, check_output_dir, check_output_file
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
    "check_input_file",
    "check_output_dir",
    "check_output_file",
    "checkpoint_sha256",
    "list_pickle_globals",
    "load_pickle",
    "load_state_dict",
    "open_checkpoint",
    "parse_index",
    "parse_safetensors_header",
    "resolve_checkpoint_path",
    "save_safetensors",
    "sha256_file",
    "write_json_atomic",
    "write_safetensors_stream",
]
