"""``memprune score`` and ``memprune merge``."""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from memprune.cli import app
from memprune.cli._common import Family
from memprune.cli._common import (
    DeviceOpt,
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
    setup_logging,
)
from memprune.errors import MempruneError


class _RateColumn(ProgressColumn):
    """Images per second over the task's recent history."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- img/s" if speed is None else f"{speed:.1f} img/s", style="progress.data.speed")


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator:
    """A progress callback whose bar appears only once scoring has started.

    Nothing is drawn while options, data and models are checked, so an error is the only line printed; the bar
    is transient, so an error or Ctrl-C during scoring is not preceded by a stale bar.
    """
    if not enabled:
        yield None
        return
    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), _RateColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    bar = Progress(*columns, console=err_console, transient=True)
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("score", total=total)
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()


def _interrupted(output: Path, every: int) -> None:
    """Ctrl-C: say what was kept. With --checkpoint-every the resume file stays on purpose."""
    kept = sorted(output.parent.glob(f"{glob.escape(output.name)}*.partial.safetensors")) if every else []
    if kept:
        err_console.print(
            f"[bold red]interrupted[/]: no score file was written; the scoring checkpoint {kept[0]} is kept on "
            "purpose: rerun the same command with --resume to continue",
            highlight=False, soft_wrap=True,
        )
    else:
        err_console.print("[bold red]interrupted[/]: no score file was written (nothing partial is left behind)")
    raise typer.Exit(130)


@app.command(
    "score",
    epilog=epilog(
        "memprune score var_d16.pth --tokenizer vae_ch160v4096z32.pth --data imagenet/train --fraction 1% -o scores.safetensors",
        "memprune score var_d16.pth --tokenizer vae.pth --data train.csv --per-class 5 --no-augment -o s.safetensors --device cuda",
        "memprune score rar_xxl.bin --tokenizer maskgit-vqgan-imagenet-f16-256.bin --data imagenet/train --class-index LOC_synset_mapping.txt --augs 2 -o rar.safetensors",
        "memprune score var_d30.pth --tokenizer vae.pth --data train --fraction 1% --shard 0/4 -o part0.safetensors --checkpoint-every 500 --resume",
        "torchrun --nproc_per_node 8 -m memprune score var_d30.pth --tokenizer vae.pth --data train --fraction 1% -o scores.safetensors --device cuda",
    ),
)
@handle_errors
def score_cmd(
    checkpoint: Annotated[str, typer.Argument(help="Model checkpoint (VAR .pth, RAR .bin, safetensors, hf://OWNER/NAME/FILE).")],
    tokenizer: Annotated[str, typer.Option("--tokenizer", "-t", help="The model's tokenizer checkpoint (VAR VQVAE / RAR MaskGIT-VQGAN), path or hf:// reference.")],
    data: Annotated[Path, typer.Option("--data", help="Image folder (one sub-folder per class) or a CSV with header path,label.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Score file to write (.safetensors).")],
    class_index: Annotated[Path | None, typer.Option("--class-index", help="JSON or text mapping folder/label names to class ids (default: sorted folder order).")] = None,
    fraction: Annotated[str | None, typer.Option("--fraction", help="Class-balanced seeded share of the data, e.g. 1%.")] = None,
    per_class: Annotated[int | None, typer.Option("--per-class", help="Class-balanced seeded number of images per class.")] = None,
    augs: Annotated[int | None, typer.Option("--augs", help="Training-augmentation views averaged per image (default 10).")] = None,
    no_augment: Annotated[bool, typer.Option("--no-augment", help="One deterministic view: resize shorter side + centre crop.")] = False,
    layers: Annotated[str, typer.Option("--layers", help="Unit layers: fc1 (post-activation, the paper's), fc2, attn.proj, or a comma list.")] = "fc1",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per forward.")] = 16,
    device: DeviceOpt = "auto",
    dtype: Annotated[Literal["auto", "float32", "bfloat16", "float16"], typer.Option("--dtype", help="auto: bfloat16 on CUDA, float32 on CPU.")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the subset and of the random crops.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")] = False,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Save the statistics every N images (0 = never).")] = 0,
    shard: Annotated[str | None, typer.Option("--shard", help="Score only part i of n (i/n, from 0); combine with `memprune merge`.")] = None,
    arch: Annotated[Family | None, typer.Option("--arch", help="Skip detection.")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Image-loading threads.")] = 2,
    num_heads: Annotated[int | None, typer.Option("--num-heads", help="LlamaGen head count, for widths that are no release (not stored in the weights).")] = None,
    overwrite: OverwriteOpt = False,
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Compute UnitMem for every unit (per position group: VAR scales, RAR last token) over training images."""
    from memprune.scoring.engine import score

    setup_logging(quiet, verbose)
    check_overwrite(output, overwrite)
    show = not quiet and fmt is OutputFormat.table and int(os.environ.get("RANK", "0")) == 0
    try:
        with _progress(show) as progress:
            result = score(
                checkpoint, data, tokenizer=tokenizer, output=output, class_index=class_index, fraction=fraction,
                per_class=per_class, augs=augs, augment=not no_augment, layers=layers, batch_size=batch_size,
                device=device, dtype=dtype, seed=seed, resume=resume, checkpoint_every=checkpoint_every, shard=shard,
                arch=arch, workers=workers, progress=progress, num_heads=num_heads,
            )  # fmt: skip
    except KeyboardInterrupt:
        _interrupted(output, checkpoint_every)
    if result.output is None:  # a non-zero rank under torchrun: rank 0 reports
        return
    if fmt is OutputFormat.json:
        print_json(_score_json(result))
        return
    _render_score(result, quiet)


def _score_json(result) -> dict:
    s = result.scores
    return {
        "output": result.output,
        "files": [str(result.output)],
        "architecture": s.arch,
        "partial": result.shard is not None,
        "images": result.images,
        "total_images": result.total_images,
        "shard": result.shard,
        "world_size": result.world_size,
        "seconds": result.seconds,
        "images_per_second": result.images_per_second,
        "resumed_from": result.resumed_from,
        "groups": s.groups,
        "image_independent_groups": s.image_independent,
        "layers": {n: list(v.shape) for n, v in s.scores.items()},
        "dead_units": result.dead,
        "tied_units": result.tied,
        "checkpoint_sha256": s.checkpoint_sha256,
    }


def _render_score(result, quiet: bool) -> None:
    s = result.scores
    if not quiet:
        table = Table("layer", "mean UnitMem", "max UnitMem", "dead", "tied", title="UnitMem per layer (over groups x units)")
        for name, v in s.scores.items():
            table.add_row(name, f"{v.mean():.4f}", f"{v.max():.4f}", str(result.dead.get(name, 0)), str(result.tied.get(name, 0)))
        console.print(table)
    part = f" (shard {result.shard[0]}/{result.shard[1]} of {result.total_images})" if result.shard else ""
    dead = sum(result.dead.values())
    if quiet:
        console.print(f"wrote {result.output}: {result.images:,} images{part}{', partial: merge the shards next' if part else ''}",
                      markup=False, highlight=False)
        return
    console.print(
        f"scored {result.images:,} images{part} x {len(s.groups)} group(s) in {result.seconds:.1f}s "
        f"({result.images_per_second:.2f} img/s, {result.world_size} process(es)); {dead:,} dead unit entries"
    )
    if result.shard:  # a part: the next step is merging every part, not a report of this one
        i, n = result.shard
        console.print(f"wrote [bold]{result.output}[/] (shard {i}/{n}, partial); next: run the other shards, then "
                      f"memprune merge PART0 ... PART{n - 1} -o scores.safetensors", highlight=False)
        return
    console.print(f"wrote [bold]{result.output}[/]; next: memprune report {result.output} -o report/")


@app.command(
    "merge",
    epilog=epilog(
        "memprune merge part0.safetensors part1.safetensors part2.safetensors part3.safetensors -o scores.safetensors",
        "memprune merge parts/*.safetensors -o scores.safetensors --format json",
    ),
)
@handle_errors
def merge_cmd(
    shards: Annotated[list[Path], typer.Argument(help="Score files of `memprune score --shard i/n` runs, or the -o folders of `memprune audit/fid --shard i/n` runs (all n parts).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Merged score file (or, for audit/fid parts, folder) to write.")],
    overwrite: OverwriteOpt = False,
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Combine shard score files exactly (sums add; max/argmax by larger max, then smaller image index); audit and fid part folders too."""
    from memprune.evaluators.merge_parts import part_kind
    from memprune.scoring.merge import merge_scores

    setup_logging(quiet, verbose)
    kinds = {part_kind(p) for p in shards}
    if kinds != {None}:
        _merge_parts(shards, output, kinds, overwrite, fmt, quiet)
        return
    check_overwrite(output, overwrite)
    result = merge_scores(shards, output)
    if fmt is OutputFormat.json:
        print_json({"output": result.output, "files": [str(result.output)], "shards": result.shards, "images": result.images,
                    "dead_units": result.dead, "tied_units": result.tied})
        return
    console.print(f"merged {result.shards} shards ({result.images:,} images) into [bold]{result.output}[/]")


def _merge_parts(parts: list[Path], output: Path, kinds: set, overwrite: bool, fmt: OutputFormat, quiet: bool) -> None:
    """``memprune merge`` of ``audit`` / ``fid`` part folders (memprune.evaluators.merge_parts)."""
    from memprune.evaluators.merge_parts import merge_audits, merge_fids

    if len(kinds) != 1:
        raise MempruneError("give parts of one kind: all score files, all audit part folders or all fid part folders")
    kind = kinds.pop()
    markers = ("audit_summary.json", "results.jsonl") if kind == "audit" else ("fid.json", "samples_stats.npz")
    check_overwrite(output, overwrite, folder=True, markers=markers)
    merged = (merge_audits if kind == "audit" else merge_fids)(parts, output)
    main = output / ("audit_summary.json" if kind == "audit" else "fid.json")
    if fmt is OutputFormat.json:
        print_json({"kind": kind, "output": str(main), "files": [str(main)], "parts": merged.parts, "result": merged.result})
        return
    if kind == "audit":
        head = merged.result["headline"]
        line = f"merged {merged.parts} audit parts: extracted {head['extracted']} of {head['candidates']} candidates"
    else:
        line = f"merged {merged.parts} fid parts: FID {merged.result['fid']:.3f} on {merged.result['num_images']} images"
    console.print(f"{line}; wrote {main}", highlight=False)
