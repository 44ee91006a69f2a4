"""``memprune attribute``: localize memorization of a forget set by attribution (or the seeded random control)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from memprune.cli import app
from memprune.cli._common import Family
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
)


@app.command(
    "attribute",
    epilog=epilog(
        "memprune attribute var.pth --tokenizer vae.pth --forget audit/results.csv --retain retain.csv -o attr.safetensors",
        "memprune attribute var.pth --tokenizer vae.pth --forget extracted/ --retain seen_once/ --data train.csv -o attr.safetensors",
        "memprune attribute var.pth --tokenizer vae.pth --method random --seed 1 -o random.safetensors",
        "memprune patch var.pth --scores attr.safetensors --aggregate sum --top 20% --factor 0 -o patched.safetensors",
    ),
)
@handle_errors
def attribute_cmd(
    checkpoint: Annotated[str, typer.Argument(help="Model checkpoint (VAR .pth, RAR .bin, safetensors, hf://OWNER/NAME/FILE).")],
    tokenizer: Annotated[str, typer.Option("--tokenizer", "-t", help="The model's tokenizer checkpoint, path or hf:// reference.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Score file to write (.safetensors), read by `memprune patch`.")],
    forget: Annotated[Path | None, typer.Option("--forget", help="Images to forget: folder, path,label CSV, or an audit's candidates.csv/results.csv (its extracted images).")] = None,
    retain: Annotated[Path | None, typer.Option("--retain", help="Images to keep (same forms), e.g. training images that were not extracted.")] = None,
    method: Annotated[Literal["attribution", "random"], typer.Option("--method", help="attribution (activation x gradient, forget minus retain) or random (seeded control).")] = "attribution",
    data: Annotated[Path | None, typer.Option("--data", help="The training data: every forget image must be in it.")] = None,
    class_index: Annotated[Path | None, typer.Option("--class-index", help="JSON or text mapping folder/label names to class ids.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --method random.")] = 0,
    from_token: Annotated[int, typer.Option("--from-token", help="Count only predictions of tokens from this index on (the part an attack with that prefix generates; VAR 3 scales = 14). 0 = all.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward/backward.")] = 8,
    device: DeviceOpt = "cpu",
    arch: Annotated[Family | None, typer.Option("--arch", help="Skip architecture detection.")] = None,
    overwrite: OverwriteOpt = False,
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Score every FFN unit by how much removing it would raise the loss of FORGET images over RETAIN images.

    Writes the same score-file format as `memprune score` (its info records the method); rank it with
    `patch --aggregate sum` (the sum over position groups is the whole first-order estimate).
    """
    from memprune.scoring.attribution import NothingToForget, attribute

    setup_logging(quiet, verbose)
    check_overwrite(output, overwrite, inputs=(checkpoint, tokenizer, forget, retain, data))
    try:
        res = attribute(checkpoint, forget, retain, method=method, tokenizer=tokenizer, output=output, data=data,
                        class_index=class_index, seed=seed, from_token=from_token, batch_size=batch_size, device=device, arch=arch)
    except NothingToForget as exc:
        if fmt is OutputFormat.json:
            print_json({"schema": "memprune.attribute/1", "nothing_to_do": True, "reason": str(exc)})
        else:
            err_console.print(f"nothing to do: {exc}", highlight=False)
        raise typer.Exit(0) from None
    summary = {"schema": "memprune.attribute/1", "method": res.method, "output": str(res.output),
               "forget_images": res.forget, "retain_images": res.retain, "seconds": round(res.seconds, 2),
               "units": sum(int(v.shape[-1]) for v in res.scores.scores.values()),
               "groups": res.scores.groups}
    if fmt is OutputFormat.json:
        print_json(summary)
        return
    what = (f"{res.forget} forget vs {res.retain} retain images" if res.method == "attribution"
            else f"seed {res.info.get('seed')}")
    console.print(f"{res.method} scores of {summary['units']} units ({what}) written to {res.output} "
                  f"in {res.seconds:.1f}s", highlight=False)
    if not quiet:
        console.print(f"next: memprune patch {checkpoint} --scores {res.output} --aggregate sum --top 10% "
                      "--factor 0 -o patched.safetensors", highlight=False, soft_wrap=True)
