"""``memprune convert``: turn a pickle into safetensors, the one deliberate place an unsafe load may happen."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memprune.cli import app
from memprune.cli._common import (
    FormatOpt,
    OutputFormat,
    OverwriteOpt,
    QuietOpt,
    VerboseOpt,
    check_overwrite,
    console,
    epilog,
    handle_errors,
    print_json,
    setup_logging,
)


@app.command(
    "convert",
    epilog=epilog(
        "memprune convert var_d16.pth -o var_d16.safetensors",
        "memprune convert old_training_ckpt.pth -o model.safetensors --trust-pickle",
    ),
)
@handle_errors
def convert_cmd(
    source: Annotated[str, typer.Argument(help="Checkpoint to convert (.pth/.pt/.bin or safetensors).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .safetensors path.")],
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow arbitrary code in the pickle to run. Only for files from a source you trust.", rich_help_panel="Dangerous Options")] = False,
    overwrite: OverwriteOpt = False,
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write a checkpoint's tensors as safetensors, then reload and compare every tensor."""
    from memprune.conversion import convert

    setup_logging(quiet, verbose)
    check_overwrite(output, overwrite, inputs=(source,))
    result = convert(source, output, trust_pickle=trust_pickle)
    if fmt is OutputFormat.json:
        print_json(result)
    else:
        console.print(f"wrote [bold]{result.output}[/]: {result.tensors} tensors, all equal after reload (source {result.source_format}{', TRUSTED pickle' if result.trusted_pickle else ''})")
