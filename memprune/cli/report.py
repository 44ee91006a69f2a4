"""``memprune report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from memprune.cli import app
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
    handle_errors,
    print_json,
    refuse_partial_scores,
    setup_logging,
)


@app.command(
    "report",
    epilog=epilog(
        "memprune report scores.safetensors -o report/",
        "memprune report scores.safetensors -o report/ --top 5% --images 50",
        "memprune report scores.safetensors -o report/ --format json",
    ),
)
@handle_errors
def report_cmd(
    scores: Annotated[Path, typer.Argument(help="Score file from `memprune score` or `memprune merge`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for report.json and the PNG figures (created if missing).")],
    top: Annotated[str, typer.Option("--top", help="Share (10%) or count of top units for the per-block shares and NumMemUnits.")] = "10%",
    images: Annotated[int, typer.Option("--images", help="How many top images by NumMemUnits to list.")] = 20,
    data: Annotated[Path | None, typer.Option("--data", help="The scored image folder or CSV: thumbnails and class names in num_mem_units.png.")] = None,
    overwrite: OverwriteOpt = False,
    allow_partial: AllowPartialOpt = False,
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Heatmap of summed UnitMem (blocks x groups), histograms, top-unit shares and the most memorized images."""
    from dataclasses import asdict

    from memprune.identify import refuse_non_score_file
    from memprune.scoring.report import build_report, write_report

    from memprune.io.paths import check_output_dir

    setup_logging(quiet, verbose)
    check_output_dir(output, "report output")  # before any work: a bad -o fails at once
    refuse_non_score_file(scores)
    refuse_partial_scores(scores, allow_partial)
    report = build_report(scores, top=top, top_images=images)
    check_overwrite(output, overwrite, folder=True, markers=("report.json",))  # after the input is known to be good, before writing
    paths, names = _image_files(data) if data is not None else (None, None)
    files = write_report(report, output, images=paths, class_names=names)
    if fmt is OutputFormat.json:
        data = asdict(report)
        data["output"] = str(files[0]) if files else None
        data["files"] = [str(f) for f in files]
        print_json(data)
        return
    if not quiet:
        _render(report)
        for note in report.notes:
            console.print(f"[yellow]note:[/] {note}")
    console.print(f"wrote {', '.join(str(f) for f in files)}")


def _image_files(data: Path) -> tuple[dict[str, Path], list[str] | None]:
    from memprune.data import load_records

    ds = load_records(data)
    names = {v: k for k, v in ds.classes.items()}
    # Numeric class folders (0/, 1/, ...) carry no names: leave "class N".
    named = names and not all(n.isdigit() for n in names.values())
    listed = [names.get(i, f"class {i}") for i in range(max(names) + 1)] if named else None
    return {r.id: r.path for r in ds.records}, listed


def _render(r) -> None:
    for kind in r.kinds:
        table = Table("block", *r.groups, f"top {r.top}", "% of block", title=f"summed UnitMem per block ({kind})")
        for i, block in enumerate(r.blocks):
            row = [f"{v:.1f}" for v in r.heatmap[kind][i]]
            table.add_row(str(block), *row, str(r.top_units[kind][i]), f"{100 * r.top_share_of_block[kind][i]:.1f}")
        console.print(table)
    if r.top_images:
        table = Table("rank", "image", "label", "NumMemUnits", title=f"images by NumMemUnits (top {r.top} units)")
        for rank, t in enumerate(r.top_images, start=1):
            table.add_row(str(rank), t["id"], "" if t["label"] is None else str(t["label"]), str(t["num_mem_units"]))
        console.print(table)
    console.print(
        f"{r.images:,} images, {len(r.groups)} group(s) ({', '.join(r.image_independent) or 'none'} image-independent, "
        f"left out of the ranking); top {r.top} threshold {r.top_threshold:.4f}"
    )
