"""What every command shares: output format, verbosity, error handling and rendering helpers.

Commands only parse arguments, call one library function and render its result: a rich table for people
(``--format table``, the default) or one JSON object on stdout for machines (``--format json``). A
:class:`~memprune.errors.MempruneError` becomes one red line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from memprune.errors import MempruneError
from memprune.models.loading import resolve_device  # noqa: F401  (re-exported for the commands)

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)


class OutputFormat(str, enum.Enum):
    table = "table"
    json = "json"


FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="table for people, json for one machine-readable object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the result (no progress or notes).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log details of every step to stderr.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1, or auto (cuda when present).")]


def setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def handle_errors(fn: F) -> F:
    """Turn MempruneError (and a missing file) into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MempruneError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]: no partial output was left behind")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


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


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(jsonable(data), indent=2) + "\n")
    sys.stdout.flush()


def epilog(*examples: str) -> str:
    """An ``Examples:`` section for ``--help`` (lines kept apart with rich markup mode)."""
    return "Examples:\n\n" + "\n\n".join(f"  $ {e}" for e in examples)
