"""``memprune push``: upload a patched checkpoint with its manifest and a model card to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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

if TYPE_CHECKING:
    from memprune.push import PushResult


@app.command(
    "push",
    epilog=epilog(
        "memprune push safe.safetensors --repo me/var-d16-memprune --dry-run",
        "memprune push safe.safetensors --repo me/var-d16-memprune --reports reports/ --base hf://FoundationVision/var/var_d16.pth",
        "memprune push safe.safetensors --repo org/var-d16-memprune --create-pr --commit-message 'Dampen 10% of units'",
    ),
)
@handle_errors
def push_cmd(
    patched: Annotated[str, typer.Argument(help="The .safetensors written by `memprune patch` (its .manifest.json beside it).")],
    repo: Annotated[str, typer.Option("--repo", "-r", help="Target repository OWNER/NAME; created if missing.")],
    reports: Annotated[list[Path] | None, typer.Option("--reports", help="Folder with audit_summary.json / fid.json (repeatable); the checkpoint's folder is always searched.")] = None,
    base: Annotated[str | None, typer.Option("--base", help="The checkpoint it was patched from (path or hf://...): run the full verify before pushing.")] = None,
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="Tokenizer path or hf:// reference to record (default: from the manifest, else the official one).")] = None,
    include_tokenizer: Annotated[bool, typer.Option("--include-tokenizer", help="Upload the tokenizer file itself (safetensors only).")] = False,
    license: Annotated[str | None, typer.Option("--license", help="License id for the card (default: carried over from the source repository).")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch to commit to (created if missing); with --create-pr, the PR's target.")] = None,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request instead of committing directly.")] = False,
    commit_message: Annotated[str | None, typer.Option("--commit-message", "-m", help="Commit summary.")] = None,
    token: Annotated[str | None, typer.Option("--token", help="Hub token (default: `hf auth login` or HF_TOKEN).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and print what would be uploaded, and the card; contact nothing.")] = False,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Training set to name on the card, e.g. ImageNet-1k (default: none).")] = None,
    include_audit_details: Annotated[bool, typer.Option("--include-audit-details", help="Also publish per-image audit results, training image ids and local paths (private by default).", rich_help_panel="Dangerous Options")] = False,
    force: Annotated[bool, typer.Option("--force", help="Push even if the manifest checks fail (pickles are always refused).", rich_help_panel="Dangerous Options")] = False,
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Upload a patched checkpoint, its manifest, a model card, the tokenizer reference and audit/FID reports."""
    from memprune.push import push

    setup_logging(quiet, verbose)
    result = push(
        patched, repo, reports=reports or (), base=base, tokenizer=tokenizer, include_tokenizer=include_tokenizer,
        license=license, private=private, revision=revision, create_pr=create_pr, commit_message=commit_message,
        token=token, dry_run=dry_run, force=force, dataset=dataset, include_audit_details=include_audit_details,
    )
    if fmt is OutputFormat.json:
        print_json(_push_json(result))
        return
    _render(result, quiet)


def _push_json(result: PushResult) -> dict:
    plan = result.plan
    return {
        "dry_run": result.dry_run,
        "repo_id": plan.repo_id,
        "files": [{"path_in_repo": f.path_in_repo, "kind": f.kind, "size": f.size, "sha256": f.sha256} for f in plan.files],
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in plan.checks],
        "warnings": plan.warnings,
        "commit_url": result.commit_url,
        "commit_oid": result.commit_oid,
        "pr_url": result.pr_url,
        "unchanged": result.unchanged,
        "card": plan.card,
    }


def _render(result: PushResult, quiet: bool) -> None:
    plan = result.plan
    for warning in plan.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if not quiet:
        table = Table("file", "kind", "size", "sha256", title=f"{'would upload' if result.dry_run else 'uploaded'} to {plan.repo_id}")
        for f in plan.files:
            table.add_row(f.path_in_repo, f.kind, f"{f.size:,}", f.sha256[:12])
        console.print(table)
        checks = ", ".join(f"{c.name} {'ok' if c.ok else 'FAILED'}" for c in plan.checks)
        console.print(f"checks: {checks}", highlight=False, soft_wrap=True)
    if result.dry_run and quiet:
        console.print(f"dry run: would upload {len(plan.files)} files to {plan.repo_id}", highlight=False)
        return
    if result.dry_run:
        console.print("\n[bold]README.md[/]\n", highlight=False)
        console.print(plan.card, markup=False, highlight=False, soft_wrap=True)
        return
    if result.unchanged and len(result.unchanged) == len(plan.files):
        console.print(f"nothing to do: every file is already on {plan.repo_id} at {result.commit_oid[:12] if result.commit_oid else '?'}")
    elif result.pr_url:
        console.print(f"opened pull request [bold]{result.pr_url}[/] (commit {result.commit_oid})")
    else:
        console.print(f"pushed commit [bold]{result.commit_url}[/]")
