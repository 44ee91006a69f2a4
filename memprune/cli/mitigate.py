"""``memprune mitigate``: the cheapest patch that meets a privacy target under the multi-condition audit."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from memprune.cli import app
from memprune.cli._common import (
    DeviceOpt,
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
    OverwriteOpt,
    check_overwrite,
    refuse_distributed,
)

EXIT_NOT_REACHED = 3


@app.command(
    "mitigate",
    epilog=epilog(
        "memprune mitigate var.pth -t vae.pth --data train.csv --heldout heldout.csv -o mitigated/",
        "memprune mitigate var.pth -t vae.pth --data train.csv --heldout heldout.csv -o out/ --target 3 --max-quality-loss 1%",
        "memprune mitigate var.pth -t vae.pth --data train.csv --heldout heldout.csv -o out/ --methods attribution,random --shares 20%,40%,60% --factors 0,0.5",
        "memprune mitigate var.pth -t vae.pth --data train.csv --heldout heldout.csv -o out/ --config out_before/recipe.yaml",
    ),
)
@handle_errors
def mitigate_cmd(
    checkpoint: Annotated[str, typer.Argument(help="Model checkpoint (VAR .pth, RAR .bin, safetensors, hf://OWNER/NAME/FILE).")],
    tokenizer: Annotated[str, typer.Option("--tokenizer", "-t", help="The model's tokenizer checkpoint.")],
    data: Annotated[Path, typer.Option("--data", help="The training data (folder or path,label CSV): audit candidates, UnitMem and the retain set come from it.")],
    heldout: Annotated[Path, typer.Option("--heldout", help="Images never trained on (folder or CSV): the quality measure (held-out NLL).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder: mitigated.safetensors (+ manifest) when the target is met, mitigate.json, frontier.png, recipe.yaml.")],
    target: Annotated[str | None, typer.Option("--target", help="Audited images still allowed to be extracted (count, or a share of those extracted before such as 10%). Default 0.")] = None,
    max_quality_loss: Annotated[str | None, typer.Option("--max-quality-loss", help="Held-out NLL increase allowed: a share (1%) or nats/token (0.05). Default 1%.")] = None,
    methods: Annotated[str | None, typer.Option("--methods", help="Comma list of unitmem, attribution, random. Default all three.")] = None,
    shares: Annotated[str | None, typer.Option("--shares", help="Comma list of unit shares or counts to try. Default 10%,20%,40%,60%.")] = None,
    factors: Annotated[str | None, typer.Option("--factors", help="Comma list of fc1-row multipliers in [0, 1). Default 0.")] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", help="Re-audit and re-select at most this many times. Default 2.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the forget-set split, random units and retain sample. Default 0.")] = None,
    candidates_per_class: Annotated[int | None, typer.Option("--candidates-per-class", help="Audit candidates per class chosen by the attack's scan. Default 5.")] = None,
    candidates: Annotated[Path | None, typer.Option("--candidates", help="Audit these images instead (CSV path,label or an audit's candidates.csv).")] = None,
    prefixes: Annotated[str | None, typer.Option("--prefixes", help="Override the robust audit's prefixes (VAR: scales, e.g. 3,4,5).")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Override the robust audit's sampling seeds (e.g. 0,1,2).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Recipe file (YAML) with the same fields as these flags; flags override it.")] = None,
    class_index: Annotated[Path | None, typer.Option("--class-index", help="JSON or text mapping folder/label names to class ids.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per forward. Default 32.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch/onnxruntime CPU threads (1 is fastest on a busy machine).")] = None,
    device: DeviceOpt = "cpu",
    overwrite: OverwriteOpt = False,
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Audit under many attack conditions, sweep localization methods in memory, write the cheapest patch that
    meets the target within the quality budget, or exit 3 saying which point came closest."""
    from memprune.errors import MempruneError
    from memprune.mitigate.config import resolve_config
    from memprune.scoring.attribution import NothingToForget

    setup_logging(quiet, verbose)
    refuse_distributed("mitigate")
    check_overwrite(output, overwrite, folder=True, markers=("mitigate.json", "mitigated.safetensors"))
    flags = {"target": target, "max_quality_loss": max_quality_loss, "methods": methods, "shares": shares,
             "factors": factors, "rounds": rounds, "seed": seed, "candidates_per_class": candidates_per_class,
             "prefixes": prefixes, "seeds": seeds, "batch_size": batch_size}
    cfg = resolve_config(config, flags)
    if threads is not None:
        if threads < 1:
            raise MempruneError(f"--threads {threads} must be at least 1")
        import torch

        torch.set_num_threads(threads)
    cands = None
    if candidates is not None:
        from memprune.evaluators.audit_candidates import read_candidates

        cands = read_candidates(candidates)
    from memprune.mitigate.run import mitigate

    show = not quiet and fmt is OutputFormat.table
    say = (lambda msg: err_console.print(f"[dim]{msg}...[/]")) if show else None
    try:
        result = mitigate(checkpoint, tokenizer=tokenizer, data=data, heldout=heldout, output=output, config=cfg,
                          candidates=cands, class_index=class_index, device=device,
                          command=shlex.join(["memprune", *sys.argv[1:]]), progress=say)
    except NothingToForget as exc:
        if fmt is OutputFormat.json:
            print_json({"schema": "memprune.mitigate/1", "status": "nothing_to_do", "message": str(exc),
                        "output": None, "files": [str(output / "mitigate.json")]})
        else:
            console.print(f"nothing to do: {exc}", highlight=False)
        raise typer.Exit(0) from None
    if fmt is OutputFormat.json:
        from memprune.mitigate.frontier import to_json

        data_out = to_json(result)
        data_out["output"] = next((f for f in result.files if f.endswith("mitigated.safetensors")), None)
        print_json(data_out)
    else:
        _render(result, quiet, verbose)
    if not result.achieved:
        raise typer.Exit(EXIT_NOT_REACHED)


def _render(result, quiet: bool, verbose: bool) -> None:  # noqa: ANN001 - MitigateResult (lazy import)
    from memprune.mitigate.frontier import POINT_COLUMNS, point_rows

    if not quiet:
        b = result.baseline
        console.print(f"baseline: {b['extracted']} of {b['candidates']} candidates extracted under "
                      f"{len(result.conditions)} conditions (paper condition alone: {b.get('paper_extracted')}); "
                      f"held-out NLL {b['heldout_nll']:.4f}; target <= {result.allowed}, NLL <= {result.budget_nll:.4f}",
                      highlight=False)
        table = Table(*POINT_COLUMNS, title="memprune mitigate: sweep (forget set audited under every condition)")
        for row in point_rows(result):
            table.add_row(*row)
        console.print(table)
        if result.final:
            f = result.final
            console.print(f"re-audit of all candidates: {f['extracted']} of {f['candidates']} extracted "
                          f"(paper condition: {f.get('paper_extracted')})", highlight=False)
    style = "green" if result.achieved else "yellow"
    console.print(f"[{style}]{result.message}[/]", highlight=False)
    if not quiet:
        console.print("files: " + ", ".join(result.files), highlight=False, soft_wrap=True)
