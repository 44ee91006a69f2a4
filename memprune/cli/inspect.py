"""``memprune inspect``: what a checkpoint is, which tensors memprune would touch, and any manifest on it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from memprune.cli import app
from memprune.cli._common import FamilyOrGeneric
from memprune.cli._common import (
    FormatOpt,
    OutputFormat,
    QuietOpt,
    VerboseOpt,
    console,
    epilog,
    handle_errors,
    print_json,
    setup_logging,
)


@app.command(
    "inspect",
    epilog=epilog(
        "memprune inspect var_d16.pth",
        "memprune inspect safe.safetensors --format json",
        "memprune inspect model.safetensors.index.json --layers 'h\\.(\\d+)\\.mlp\\.c_fc\\.weight'",
    ),
)
@handle_errors
def inspect_cmd(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint: .safetensors, *.safetensors.index.json, .pth/.pt/.bin, or hf://OWNER/NAME/FILE.")],
    arch: Annotated[FamilyOrGeneric | None, typer.Option("--arch", help="Skip detection.")] = None,
    layers: Annotated[str | None, typer.Option("--layers", help="Regex over weight names for the generic adapter.")] = None,
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Show the detected architecture, size, FFN unit layers, dtypes and any memprune manifest."""
    from memprune.inspection import inspect_checkpoint

    setup_logging(quiet, verbose)
    info = inspect_checkpoint(checkpoint, arch=arch, layers=layers)
    if fmt is OutputFormat.json:
        print_json(info)
        return
    if quiet:  # one line: what it is and how many units
        steps = f"; memprune manifest with {len(info.manifest.get('history', [])) + 1} patch step(s)" if info.manifest else ""
        console.print(f"{info.path}: {info.architecture}, {info.total_units:,} units in {len(info.unit_layers)} layers, "
                      f"{info.num_parameters / 1e6:,.1f}M values{steps}", markup=False, highlight=False)
        return
    console.print(f"[bold]{info.path}[/] ({info.format}{', under ' + repr(info.container) if info.container else ''})")
    console.print(f"architecture: [bold cyan]{info.architecture}[/]  {info.summary}")
    if info.official_code:
        console.print(f"official code: {info.official_code} (memprune's implementation reproduces its outputs)",
                      highlight=False)
    facts = ", ".join(f"{k} {v}" for k, v in info.facts.items() if v is not None)
    console.print(f"{facts}; {info.num_parameters / 1e6:,.1f}M values in {info.num_tensors} tensors; dtypes {', '.join(info.dtypes)}")
    console.print(f"unit layers (fc1): {len(info.unit_layers)} x {info.units_per_layer} = {info.total_units:,} units")
    scope = "every block" if verbose else "first block; -v lists every block"
    table = Table("tensor", "role", "shape", "dtype", title=f"tensors memprune would touch ({scope})")
    for row in (r for r in info.touched if verbose or r["layer"] == info.unit_layers[0]):
        table.add_row(row["tensor"], row["role"], str(tuple(row["shape"])), row["dtype"])
    console.print(table)
    if info.manifest:
        m = info.manifest
        steps = len(m.get("history", [])) + 1
        sel = m.get("selection", {})
        console.print(
            f"memprune manifest: {steps} patch step(s); last: top {sel.get('top')} ({sel.get('selected')} units), "
            f"factor {m.get('intervention', {}).get('factor')}, target {m.get('intervention', {}).get('target')}"
        )
    else:
        console.print("no memprune manifest attached")
    if verbose and info.dropped:
        console.print(f"not tensors (left out): {', '.join(info.dropped)}", highlight=False)
