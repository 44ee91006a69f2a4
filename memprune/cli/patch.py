"""``memprune patch`` and ``memprune verify``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.table import Table

from memprune.cli import app
from memprune.cli._common import FamilyOrGeneric
from memprune.cli._common import (
    AllowPartialOpt,
    FormatOpt,
    OutputFormat,
    OverwriteOpt,
    QuietOpt,
    VerboseOpt,
    check_overwrite,
    console,
    epilog,
    err_console,
    handle_errors,
    print_json,
    refuse_partial_scores,
    setup_logging,
    warn_factor,
)

if TYPE_CHECKING:
    from memprune.patching import PatchResult
    from memprune.verify import VerifyReport


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
    scope: Annotated[Literal["global", "layer"], typer.Option("--scope", help="global: rank all units together; layer: top share within each layer.")] = "global",
    aggregate: Annotated[Literal["max", "mean", "sum"] | None, typer.Option("--aggregate", help="Reduce multi-scale scores over scales (default: what the score file declares, e.g. sum for attribution; else max).")] = None,
    target: Annotated[Literal["fc1", "fc2"] | None, typer.Option("--target", help="fc1: scale the unit's weight rows (paper; the families' default); fc2: scale its output columns (exact).")] = None,
    bias: Annotated[bool, typer.Option("--bias", help="Also scale the unit's fc1 bias entry.")] = False,
    arch: Annotated[FamilyOrGeneric | None, typer.Option("--arch", help="Skip detection.")] = None,
    layers: Annotated[str | None, typer.Option("--layers", help="Regex over weight names for the generic adapter.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Accept scores computed on another checkpoint.", rich_help_panel="Dangerous Options")] = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip re-reading and checking the output.")] = False,
    overwrite: OverwriteOpt = False,
    allow_partial: AllowPartialOpt = False,
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Scale the weights of the top-scoring units and write a verified safetensors file plus a JSON manifest."""
    from memprune.identify import refuse_non_score_file
    from memprune.patching import InterruptedAfterWrite, patch

    setup_logging(quiet, verbose)
    if not dry_run:
        check_overwrite(output, overwrite, inputs=(checkpoint, scores))
    refuse_non_score_file(scores)
    refuse_partial_scores(scores, allow_partial)
    warn_factor(factor)
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
    _render_patch(result, quiet, verbose)


def _patch_json(result: PatchResult) -> dict:
    return {
        "dry_run": result.dry_run,
        "output": result.output,
        "files": [] if result.dry_run else [str(result.output), str(result.manifest_path)],
        "architecture": result.manifest.get("architecture"),
        "manifest_path": result.manifest_path,
        "verified": result.verified,
        "selected": result.selection.selected,
        "total_units": result.selection.total,
        "threshold": result.selection.threshold,
        "per_layer": result.per_layer,
        "manifest": result.manifest,
    }


def _render_patch(result: PatchResult, quiet: bool, verbose: bool = False) -> None:
    sel, m = result.selection, result.manifest
    if quiet:  # one line: what was done and where it went
        where = "" if result.dry_run else f" -> {result.output}"
        console.print(f"{'would patch' if result.dry_run else 'patched'} {sel.selected:,} of {sel.total:,} units "
                      f"({100 * sel.selected / sel.total:.2f}%){where}", markup=False, highlight=False)
        return
    table = Table("layer", "units", "share of layer", title="selected units per layer")
    for name, count in result.per_layer.items():
        table.add_row(name, str(count), f"{100 * count / result.layer_widths[name]:.1f}%")
    console.print(table)
    if verbose:
        s, i = m["selection"], m["intervention"]
        console.print(f"architecture {m.get('architecture')}, unit layer {m.get('unit_layer')}; selection: top {s['top']}, "
                      f"scope {s['scope']}, aggregate {s['aggregate']} over groups {', '.join(map(str, s['groups_used']))}; "
                      f"intervention: {i['target']} x {i['factor']}, bias {i['bias']}", highlight=False)
        console.print(f"scores: {m['scores'].get('path')} (computed on checkpoint {str(m['scores'].get('checkpoint_sha256'))[:12]}); "
                      f"input {m['input']['path']} sha256 {m['input']['sha256'][:12]}", highlight=False)
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
    from memprune.verify import verify

    setup_logging(quiet, verbose)
    report = verify(patched, base, raise_on_failure=False)
    if fmt is OutputFormat.json:
        print_json({"ok": report.ok, **_report_json(report)})
    else:
        _render_report(report, quiet)
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


def _render_report(report: VerifyReport, quiet: bool = False) -> None:
    if not quiet:
        table = Table("check", "result", "detail")
        for c in report.checks:
            table.add_row(c.name, "[green]ok[/]" if c.ok else "[bold red]FAILED[/]", c.detail)
        console.print(table)
    elif not report.ok:  # the one line must still say what failed
        failed = ", ".join(c.name for c in report.checks if not c.ok)
        console.print(f"[bold red]verification failed[/]: {failed}", highlight=False)
        return
    verdict = "[bold green]verified[/]" if report.ok else "[bold red]verification failed[/]"
    compared = f"{report.tensors_checked} tensors compared with the base" if report.base else "self-checks only (pass --base to compare every tensor)"
    console.print(f"{verdict}: {report.units_edited:,} units in {report.tensors_edited} tensors edited, {compared}")
