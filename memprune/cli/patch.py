"""``memprune patch`` and ``memprune verify``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from memprune.cli import app
from memprune.cli._common import (
    FormatOpt,
    OutputFormat,
    QuietOpt,
    VerboseOpt,
    console,
    epilog,
    err_console,
    handle_errors,
    print_json,
    setup_logging,
)
from memprune.patching import InterruptedAfterWrite, PatchResult, patch
from memprune.verify import VerifyReport, verify


@app.command(
    "patch",
    epilog=epilog(
        "memprune patch var_d16.pth --scores scores.safetensors --top 10% --factor 0.5 -o safe.safetensors",
        "memprune patch var_d16.pth --scores scores.safetensors --top 5% --scope layer --dry-run",
        "memprune patch rar_xxl.bin --scores s.npz --top 2000 --target fc2 -o rar_safe.safetensors --format json",
    ),
)
@handle_errors
def patch_cmd(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint to patch (never written over).")],
    scores: Annotated[str, typer.Option("--scores", "-s", help="Score file from `memprune score` (or .npz/.pt/.safetensors keyed by layer).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output .safetensors; the manifest goes beside it as <stem>.manifest.json.")] = None,
    top: Annotated[str, typer.Option("--top", help="Share (10%) or count (500) of units to patch.")] = "10%",
    factor: Annotated[float, typer.Option("--factor", help="Multiplier for the selected weights (0.5 halves them; 0 prunes).")] = 0.5,
    scope: Annotated[str, typer.Option("--scope", help="global: rank all units together; layer: top share within each layer.")] = "global",
    aggregate: Annotated[str, typer.Option("--aggregate", help="Reduce multi-scale scores over scales: max, mean or sum.")] = "max",
    target: Annotated[str, typer.Option("--target", help="fc1: scale the unit's weight rows (paper); fc2: scale its output columns (exact).")] = "fc1",
    bias: Annotated[bool, typer.Option("--bias", help="Also scale the unit's fc1 bias entry.")] = False,
    arch: Annotated[str | None, typer.Option("--arch", help="Skip detection: var, rar, llamagen or generic.")] = None,
    layers: Annotated[str | None, typer.Option("--layers", help="Regex over weight names for the generic adapter.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Accept scores computed on another checkpoint.", rich_help_panel="Dangerous Options")] = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip re-reading and checking the output.")] = False,
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Scale the weights of the top-scoring units and write a verified safetensors file plus a JSON manifest."""
    setup_logging(quiet, verbose)
    try:
        result = patch(
            checkpoint, scores, output=output, top=top, factor=factor, scope=scope, aggregate=aggregate,
            target=target, bias=bias, arch=arch, layers_regex=layers, force=force, dry_run=dry_run, verify=not no_verify,
        )
    except InterruptedAfterWrite as exc:  # the output exists: say so instead of "nothing was left behind"
        err_console.print(f"[bold red]interrupted[/]: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    if fmt is OutputFormat.json:
        print_json(_patch_json(result))
        return
    _render_patch(result, quiet)


def _patch_json(result: PatchResult) -> dict:
    return {
        "dry_run": result.dry_run,
        "output": result.output,
        "manifest_path": result.manifest_path,
        "verified": result.verified,
        "selected": result.selection.selected,
        "total_units": result.selection.total,
        "threshold": result.selection.threshold,
        "per_layer": result.per_layer,
        "manifest": result.manifest,
    }


def _render_patch(result: PatchResult, quiet: bool) -> None:
    sel, m = result.selection, result.manifest
    if not quiet:
        table = Table("layer", "units", "share of layer", title="selected units per layer")
        for name, count in result.per_layer.items():
            table.add_row(name, str(count), f"{100 * count / result.layer_widths[name]:.1f}%")
        console.print(table)
    console.print(
        f"{'would patch' if result.dry_run else 'patched'} {sel.selected:,} of {sel.total:,} units "
        f"({100 * sel.selected / sel.total:.2f}%), score threshold {sel.threshold:.4g}, "
        f"{m['intervention']['target']} x {m['intervention']['factor']}, aggregate {m['selection']['aggregate']} over {len(m['selection']['groups_used'])} group(s)"
    )
    if not result.dry_run:
        check = "verified" if result.verified else "not verified (--no-verify)"
        console.print(f"wrote [bold]{result.output}[/] and {result.manifest_path} ({check})")


@app.command(
    "verify",
    epilog=epilog(
        "memprune verify safe.safetensors --base var_d16.pth",
        "memprune verify safe.safetensors --base var_d16.pth --format json",
        "memprune verify safe.safetensors   # self-checks only, when the base is not at hand",
    ),
)
@handle_errors
def verify_cmd(
    patched: Annotated[str, typer.Argument(help="The patched .safetensors (its manifest is read from beside it or its header).")],
    base: Annotated[str | None, typer.Option("--base", help="The checkpoint it was patched from; without it only the self-checks run (digest, header copy, edited slices).")] = None,
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Check that only the listed units changed, by exactly the factor, and that digests match."""
    # Without --base, only what the patched file shows by itself can be checked.
    setup_logging(quiet, verbose)
    report = verify(patched, base, raise_on_failure=False)
    if fmt is OutputFormat.json:
        print_json({"ok": report.ok, **_report_json(report)})
    else:
        _render_report(report)
    if not report.ok:
        raise typer.Exit(1)


def _report_json(report: VerifyReport) -> dict:
    return {
        "patched": report.patched,
        "base": report.base,
        "tensors_checked": report.tensors_checked,
        "tensors_edited": report.tensors_edited,
        "units_edited": report.units_edited,
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks],
    }


def _render_report(report: VerifyReport) -> None:
    table = Table("check", "result", "detail")
    for c in report.checks:
        table.add_row(c.name, "[green]ok[/]" if c.ok else "[bold red]FAILED[/]", c.detail)
    console.print(table)
    verdict = "[bold green]verified[/]" if report.ok else "[bold red]verification failed[/]"
    compared = f"{report.tensors_checked} tensors compared with the base" if report.base else "self-checks only (pass --base to compare every tensor)"
    console.print(f"{verdict}: {report.units_edited:,} units in {report.tensors_edited} tensors edited, {compared}")
