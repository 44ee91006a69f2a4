"""What every command shares: output format, verbosity, error handling, overwrite policy and rendering helpers.

Commands only parse arguments, call one library function and render its result: a rich table for people
(``--format table``, the default) or one schema-versioned JSON object on stdout for machines (``--format json``).
A :class:`~memprune.errors.MempruneError` becomes one red line on stderr and exit status 2, never a traceback;
under ``--format json`` a ``memprune.error/1`` object also goes to stdout. The conventions are written down in
``docs/cli.md`` (and the notes the helpers share).

This module must stay cheap to import: ``memprune --help`` loads it and must not import torch.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console

from memprune.errors import MempruneError
from memprune.families import known_families  # the registry only: no torch

# --arch choices come from the family registry; "generic" is the spec built from --layers (inspect, patch).
Family = Literal[tuple(sorted(known_families()))]  # type: ignore[valid-type]
FamilyOrGeneric = Literal[(*sorted(known_families()), "generic")]  # type: ignore[valid-type]

F = TypeVar("F", bound=Callable[..., Any])

# Both consoles follow sys.stdout / sys.stderr at print time; `setup_logging` fits them to where they point.
console = Console()
err_console = Console(stderr=True)

ERROR_SCHEMA = "memprune.error/1"
# The command being run (set by the root group): names the JSON object's schema.
current_command: str | None = None
# Wide enough for any path or URL: a piped value is never wrapped or cut, and tables take their natural width.
_PIPE_WIDTH = 1 << 15


class OutputFormat(str, enum.Enum):
    table = "table"
    json = "json"


FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="table for people, json for one machine-readable object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the one-line result (no tables, progress bars or notes).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Also print details (full tables, settings, timings) and debug logs on stderr.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1, or auto (cuda when present).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (default: refuse and say so).")]
AllowPartialOpt = Annotated[bool, typer.Option("--allow-partial", help="Accept a shard's score file (part of the images); normally `memprune merge` the shards first.")]


def resolve_device(spec: str) -> Any:
    """``auto`` -> cuda when present, else cpu (imported lazily: torch is not loaded for ``--help``)."""
    from memprune.families.loading import resolve_device as _resolve

    return _resolve(spec)


# ---------------------------------------------------------------------------------------------------------------
# Output and verbosity


def fit_console(c: Console) -> None:
    """On a terminal, wrap to its width; piped or redirected, never wrap, fold or cut a value."""
    c.width = None  # type: ignore[assignment]  # re-detect: the same process may print to a terminal and a pipe
    piped = not c.is_terminal
    c.soft_wrap = piped
    if piped:
        c.width = _PIPE_WIDTH


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        if record.levelno <= logging.DEBUG:
            return f"debug {record.name}: {text}"
        return text


_handler: logging.Handler | None = None
_hf_env_set = False  # whether HF_HUB_DISABLE_PROGRESS_BARS is ours (-q) rather than the user's


def setup_logging(quiet: bool, verbose: bool) -> None:
    """Apply ``-q``/``-v`` the same way in every command (call it first in the command body).

    Only the ``memprune`` loggers are configured: the root logger keeps Python's default (WARNING), so libraries
    such as httpx never print INFO lines. ``-q`` also silences huggingface_hub's progress bars.
    """
    global _handler
    if quiet and verbose:
        raise MempruneError("-q/--quiet and -v/--verbose contradict each other: pass one of them")
    fit_console(console)
    fit_console(err_console)
    logger = logging.getLogger("memprune")
    if _handler is not None:
        logger.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)  # sys.stderr of this call (tests swap it per invocation)
    _handler.setFormatter(_Formatter())
    logger.addHandler(_handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    warnings.showwarning = _show_warning  # library warnings as one "warning: ..." line, not file:line + source
    _hf_progress_bars(enabled=not quiet)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    warn(str(message))


def _hf_progress_bars(enabled: bool) -> None:
    """huggingface_hub's upload/download bars follow -q. Without importing it: the variable is read at its import."""
    global _hf_env_set
    var = "HF_HUB_DISABLE_PROGRESS_BARS"
    if not enabled and var not in os.environ:
        os.environ[var] = "1"
        _hf_env_set = True
    elif enabled and _hf_env_set:
        os.environ.pop(var, None)
        _hf_env_set = False
    else:
        return  # nothing of ours to change (a variable the user set is left as it is)
    if "huggingface_hub" in sys.modules:  # already imported: switch it directly
        from huggingface_hub import constants
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        if enabled:  # the variable may have been read at import while ours was set (several commands in one process)
            for module in (constants, sys.modules.get("huggingface_hub.utils.tqdm")):
                if getattr(module, var, None) is True:
                    setattr(module, var, None)
            enable_progress_bars()
        else:
            disable_progress_bars()


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    warn(str(message))


def warn(message: str) -> None:
    """A warning for people: one yellow line on stderr (shown with -q too; never on stdout)."""
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------------------------
# JSON


def jsonable(obj: Any) -> Any:
    """Convert dataclasses, paths, tensors and numpy values to plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


def print_json(data: Any, *, command: str | None = None) -> None:
    """Write the command's one JSON object to stdout: ``{"schema": "memprune.<command>/N", ...}``.

    Key names are the same in every command: ``architecture`` (never ``arch``) for the model family, ``output`` for
    the primary file written, ``files`` for the list of every file written.
    """
    body = jsonable(data)
    if not isinstance(body, dict):
        body = {"result": body}
    if "arch" in body and "architecture" not in body:
        body = {("architecture" if k == "arch" else k): v for k, v in body.items()}
    # A library result that carries its own schema (``memprune.audit/2``) keeps it: its version is the file's.
    schema = body.get("schema") or f"memprune.{command or current_command or 'memprune'}/1"
    body = {"schema": schema, **{k: v for k, v in body.items() if k != "schema"}}
    sys.stdout.write(json.dumps(body, indent=2) + "\n")
    sys.stdout.flush()


def print_json_error(message: str, exit_code: int) -> None:
    """The error object that replaces a command's JSON on failure (same exit status as the process)."""
    sys.stdout.write(json.dumps({"schema": ERROR_SCHEMA, "error": message, "exit_code": exit_code}, indent=2) + "\n")
    sys.stdout.flush()


def wants_json(args: list[str]) -> bool:
    """Whether a raw command line asked for ``--format json`` (for errors raised before parsing finished)."""
    for i, arg in enumerate(args):
        if arg == "--format=json" or (arg == "--format" and i + 1 < len(args) and args[i + 1] == "json"):
            return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# Errors


def fail(message: str, exit_code: int, as_json: bool) -> typer.Exit:
    """Print one error line on stderr (and the JSON error object on stdout with --format json)."""
    err_console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
    if as_json:
        print_json_error(message, exit_code)
    return typer.Exit(exit_code)


def handle_errors(fn: F) -> F:
    """Turn MempruneError, an OS error (disk full, permission) and Ctrl-C into one line and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = kwargs.get("fmt") is OutputFormat.json
        try:
            return fn(*args, **kwargs)
        except MempruneError as exc:
            raise fail(str(exc), 2, as_json) from None
        except OSError as exc:  # the library checks inputs first; what is left is the disk or the system
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            raise fail(f"{exc.strerror or exc}{where}: check the path, its permissions and the free disk space", 2, as_json) from None
        except KeyboardInterrupt:
            raise fail("interrupted: no half-written file was left behind (a run that can --resume keeps its progress)", 130, as_json) from None

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------------
# Guards shared by several commands


def check_overwrite(output: str | os.PathLike | None, overwrite: bool, *, folder: bool = False,
                    inputs: tuple[str | os.PathLike | None, ...] = (), markers: tuple[str, ...] = (),
                    alternative: str = "") -> None:
    """Refuse to replace an existing output unless ``--overwrite`` was given (call before any work starts).

    A file output is refused when the file exists. A folder output is refused when it holds one of ``markers`` (the
    files a previous run of the command left there, e.g. ``report.json``), so ``-o .`` or a folder of other files is
    fine; without markers, when it is not empty. An output that is one of ``inputs`` is left to the library's guard,
    whose message ("memprune never writes over its input") is the right one even with ``--overwrite``.
    ``alternative`` names another way out (``--resume to continue it``).
    """
    if output is None or overwrite or str(output).startswith("hf://"):
        return
    out = Path(output)
    other = f"{alternative}, " if alternative else ""
    if folder:
        if out.exists() and not out.is_dir():
            raise MempruneError(f"output {out} is a file, not a folder: choose another -o folder")
        if not out.is_dir():
            return
        found = [m for m in markers if (out / m).exists()] if markers else [p.name for p in out.iterdir()][:1]
        if found:
            what = f"{found[0]} from an earlier run" if markers else "other files"
            raise MempruneError(f"output folder {out} already holds {what}: pass {other}--overwrite to replace it, "
                                "or choose another -o folder")
        return
    if out.is_dir():
        return  # the library names the problem ("give a file path")
    if out.exists() and not any(_same_file(out, i) for i in inputs if i is not None):
        raise MempruneError(f"output {out} already exists: pass {other}--overwrite to replace it, or choose another -o path")


def _same_file(a: Path, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def warn_factor(factor: float) -> None:
    """A factor above 1 amplifies the selected units (strengthens memorization) instead of dampening them."""
    if factor > 1:
        warn(f"--factor {factor:g} is above 1: it AMPLIFIES the selected units instead of dampening them "
             "(use a factor in [0, 1), e.g. 0.5, to mitigate memorization)")


def refuse_distributed(command: str) -> None:
    """``torchrun`` starts one process per GPU; commands that do not split their work must not run N times."""
    world = os.environ.get("WORLD_SIZE", "1")
    if not world.isdigit() or int(world) <= 1:
        return
    if os.environ.get("RANK", "0") != "0":
        raise typer.Exit(2)  # rank 0 says why; the others leave quietly
    raise MempruneError(
        f"memprune {command} does not distribute over processes yet (WORLD_SIZE={world}): run it as one process "
        f"(python -m memprune {command} ... --device cuda), or split the work yourself (e.g. one run per --classes "
        "range or --candidates list) on separate GPUs"
    )


def refuse_partial_scores(scores: str | os.PathLike, allow_partial: bool) -> None:
    """A shard's score file covers part of the images: report/patch on it would silently use half the data."""
    if allow_partial:
        return
    from memprune.identify import score_file_shard

    shard = score_file_shard(scores)
    if shard is None:
        return
    i, n = shard.get("index"), shard.get("count")
    part = f" (images {shard['begin']} to {shard['end'] - 1} of the list)" if isinstance(shard.get("end"), int) else ""
    raise MempruneError(
        f"{scores} holds the scores of shard {i}/{n} only{part}: combine all {n} shards first with "
        f"`memprune merge PART0 ... PART{int(n) - 1 if isinstance(n, int) else 'N'} -o scores.safetensors`, "
        "or pass --allow-partial to use this part anyway"
    )


def epilog(*examples: str) -> str:
    """An ``Examples:`` section for ``--help`` (lines kept apart with rich markup mode)."""
    return "Examples:\n\n" + "\n\n".join(f"  $ {e}" for e in examples)
