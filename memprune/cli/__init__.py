"""The ``memprune`` command line (typer + rich). Each command lives in its own module of this package.

Importing this package (as ``memprune --help`` does) must not import torch: command modules import their heavy
libraries inside the command bodies (see ``docs/cli.md``; a test enforces it).
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import typer
from typer.core import TyperGroup

from memprune.cli import _common

# Commands in the order a user runs them; `--help` lists them so, in these two panels.
_WORKFLOW = ("inspect", "score", "attribute", "report", "patch", "verify", "audit", "fid", "mitigate", "push")
_UTILITIES = ("merge", "fid-stats", "fid-compare", "convert", "demo")
WORKFLOW_PANEL = "Workflow (in the order you run it)"
UTILITIES_PANEL = "Utilities"


def _click_module() -> Any:
    """The click that typer uses (newer typer vendors its own copy)."""
    from typer import core

    return getattr(core, "_click", None) or core.click  # type: ignore[attr-defined]


def _usage_piece(param: Any, ctx: Any) -> list[str]:
    """``CHECKPOINT`` / ``[OUTPUT]`` / ``SHARDS...`` in the usage line, as click and most tools write them."""
    name = param.metavar if param.required else f"[{param.metavar}]"
    return [name + ("..." if param.nargs != 1 else "")]


class _MempruneGroup(TyperGroup):
    """The root group: names positionals in capitals, and answers usage errors in JSON under ``--format json``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            for param in command.params:
                if getattr(param, "param_type_name", "") == "argument" and param.metavar is None and param.name:
                    param.metavar = param.name.upper()  # CHECKPOINT, not {checkpoint}
                    param.get_usage_pieces = functools.partial(_usage_piece, param)  # type: ignore[method-assign]

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta["memprune.args"] = list(args)
        try:  # a root-level usage error (memprune --bogus) happens here, before any command is invoked
            return super().parse_args(ctx, args)
        except _click_module().exceptions.UsageError as exc:
            if not _common.wants_json(args):
                raise
            raise _common.fail(exc.format_message(), exc.exit_code, as_json=True) from None

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        _common.current_command = name
        return name, command, rest

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _click_module().exceptions.UsageError as exc:
            if not _common.wants_json(ctx.meta.get("memprune.args", [])):
                raise
            raise _common.fail(exc.format_message(), exc.exit_code, as_json=True) from None


app = typer.Typer(
    name="memprune",
    cls=_MempruneGroup,
    help="Find the neurons where an image autoregressive model memorized its training images, dampen them, "
    "and prove the privacy gain.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from memprune import __version__

        typer.echo(f"memprune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Find the neurons where an image autoregressive model memorized its training images, dampen them, and prove
    the privacy gain."""


# Command modules register themselves on `app` when imported; a module that is not present yet is skipped,
# so the CLI works while optional parts are being built.
_COMMAND_MODULES = ("inspect", "patch", "convert", "score", "report", "audit", "fid", "demo", "hub", "attribute", "mitigate")


def _load_commands() -> None:
    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(f"memprune.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"memprune.cli.{name}":
                raise
    _arrange_help()


def _arrange_help() -> None:
    """Workflow order and panels for `--help`, decided here once instead of in every command module."""
    order = {name: i for i, name in enumerate(_WORKFLOW + _UTILITIES)}
    app.registered_commands.sort(key=lambda c: order.get(c.name or "", len(order)))
    for info in app.registered_commands:
        if not isinstance(info.rich_help_panel, str):  # unset (None or typer's default placeholder)
            info.rich_help_panel = WORKFLOW_PANEL if info.name in _WORKFLOW else UTILITIES_PANEL


def main() -> None:
    """Console-script entry point."""
    _load_commands()
    app()


_load_commands()
