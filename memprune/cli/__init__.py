"""The ``memprune`` command line (typer + rich). Each command lives in its own module of this package."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="memprune",
    help="Find the neurons where an image autoregressive model memorized its training images, dampen them, "
    "and prove the privacy gain.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
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


def main() -> None:
    """Console-script entry point."""
    _load_commands()
    app()


_load_commands()
