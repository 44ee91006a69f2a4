"""``memprune patch``: scale the weights of the top-scoring units and write a verified safetensors file.

The default intervention is the paper's: multiply row j of ``fc1.weight`` by the factor and leave the bias
alone. Note what that does: the pre-activation becomes ``a*w_j.x + b_j``, not ``a*(w_j.x + b_j)``, and even with
``--bias`` the GELU makes ``GELU(a*z) != a*GELU(z)``. ``--target fc2`` instead scales column j of the output
projection, which multiplies the unit's contribution to the residual stream by exactly the factor.

Writing is in :mod:`memprune.patch_write`: a single safetensors input is copied in the kernel with only the
edited rows rewritten; other inputs are streamed tensor by tensor. Either way peak memory stays near one tensor
whatever the checkpoint size.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from memprune import __version__
from memprune.families import UNIT_KINDS, UnitLayer, detect_family
from memprune.families import FamilySpec as Adapter
from memprune.errors import MempruneError
from memprune.io import (
    check_output,
    checkpoint_files,
    checkpoint_sha256,
    open_checkpoint,
    sha256_file,
)
from memprune.manifest import (
    SCHEMA,
    authoritative_manifest,
    history_from,
    manifest_path_for,
)
from memprune.patch_write import PENDING_DIGEST, write_pair
from memprune.public import public_command, public_info, public_name
from memprune.scores import ScoreSet, load_scores, validate_scores
from memprune.selection import Selection, aggregate_groups, parse_top, select_units

TARGETS = ("fc1", "fc2")


@dataclass(frozen=True)
class TensorEdit:
    """Scale slices ``units`` of ``tensor`` along ``axis`` (0 = rows, 1 = columns) by ``factor``."""

    tensor: str
    axis: int
    units: tuple[int, ...]
    factor: float
    layer: str = ""


def scale_slices(t: torch.Tensor, edit: TensorEdit) -> torch.Tensor:
    """A new tensor equal to ``t`` with the edit applied; ``verify`` recomputes edits with this same function."""
    out = t.clone()
    if not edit.units:
        return out
    index, scaled = scaled_part(t, edit)
    out.index_copy_(edit.axis, index, scaled)
    return out


def scaled_part(t: torch.Tensor, edit: TensorEdit) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, slices)``: the edited slices of ``t`` (in ``edit.units`` order) after scaling.

    Half-precision weights are scaled in float32 and rounded once, so the result does not depend on how the
    hardware multiplies halves.
    """
    index = torch.tensor(edit.units, dtype=torch.long)
    part = t.index_select(edit.axis, index)
    if part.dtype in (torch.float16, torch.bfloat16) or part.dtype.is_floating_point and part.element_size() == 1:
        return index, (part.to(torch.float32) * edit.factor).to(part.dtype)
    return index, part * edit.factor


def plan_edits(layers: list[UnitLayer], selection: Selection, factor: float, target: str, bias: bool) -> list[TensorEdit]:
    """Turn selected units into tensor edits for the chosen target."""
    if target not in TARGETS:
        raise MempruneError(f"--target {target!r} is unknown: choose fc1 (weight rows) or fc2 (output columns)")
    edits: list[TensorEdit] = []
    for layer in layers:
        units = tuple(selection.units.get(layer.name, []))
        if not units:
            continue
        if target == "fc2":
            if layer.out_columns is None:
                raise MempruneError(f"--target fc2 needs an output projection, which {layer.name} ({layer.kind}) has not: use --target fc1")
            edits.append(TensorEdit(layer.out_columns, 1, units, factor, layer.name))
            continue
        edits.extend(TensorEdit(name, 0, units, factor, layer.name) for name in layer.rows)
        if bias:
            if layer.bias is None:
                raise MempruneError(f"--bias was given but {layer.name} has no bias: drop --bias")
            edits.append(TensorEdit(layer.bias, 0, units, factor, layer.name))
    return edits


@dataclass
class PatchResult:
    """What ``patch`` did (or, with ``dry_run``, would do)."""

    output: Path | None
    manifest_path: Path | None
    manifest: dict[str, Any]
    selection: Selection
    edits: list[TensorEdit]
    per_layer: dict[str, int] = field(default_factory=dict)
    layer_widths: dict[str, int] = field(default_factory=dict)
    verified: bool = False
    dry_run: bool = False


def check_factor(factor: float) -> float:
    if not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 0:
        raise MempruneError(f"--factor {factor} is invalid: give a finite number >= 0 (0.5 halves the units)")
    if factor == 1:
        raise MempruneError("--factor 1 would change nothing: give e.g. 0.5 to halve the selected units")
    return float(factor)


def _unit_kind(adapter: Adapter, ckpt, scores: ScoreSet) -> tuple[str, list[UnitLayer]]:
    """The unit-layer type the scores were computed on, found from their layer names."""
    first = next(iter(scores.scores))
    for kind in UNIT_KINDS:
        try:
            layers = adapter.unit_layers(ckpt, kind)
        except MempruneError:
            continue
        if any(layer.name == first for layer in layers):
            return kind, layers
    layers = adapter.unit_layers(ckpt, "fc1")
    raise MempruneError(f"scores name layer {first}, which this {adapter.name} checkpoint does not have (e.g. {layers[0].name})")


def patch(
    checkpoint: str | os.PathLike,
    scores: str | os.PathLike | ScoreSet,
    *,
    output: str | os.PathLike | None,
    top: str = "10%",
    factor: float = 0.5,
    scope: str = "global",
    aggregate: str | None = None,
    target: str | None = None,
    bias: bool = False,
    arch: str | None = None,
    layers_regex: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    verify: bool = True,
    command: str | None = None,
) -> PatchResult:
    """Scale the top units' weights and write ``output`` plus ``<output stem>.manifest.json``.

    Args:
        checkpoint: input checkpoint (any supported format).
        scores: a score file path or a loaded :class:`ScoreSet`.
        output: output ``.safetensors`` path (ignored with ``dry_run``).
        top: ``"10%"`` or a count.
        factor: multiplier for the selected slices (0 <= factor, != 1).
        scope: ``global`` ranking or top share per ``layer``.
        aggregate: reduction over position groups (VAR scales): ``max``, ``mean`` or ``sum``; ``None`` takes the
            score file's own ``info.aggregate`` (attribution and random scores are sums over groups), else ``max``
            (UnitMem, as the paper ranks units).
        target: ``fc1`` (rows of the unit's weight; SwiGLU: w3 rows) or ``fc2`` (output-projection columns);
            ``None``: the family spec's ``default_target``.
        bias: also scale the unit's bias entry (``fc1`` target only).
        arch, layers_regex: override architecture detection / use the generic adapter.
        force: accept scores computed on another checkpoint.
        dry_run: plan only, write nothing.
        verify: re-read the output and check it against the manifest.
        command: the command line to record (defaults to ``sys.argv``).

    Raises:
        MempruneError: on any invalid input; nothing is written in that case.
    """
    top_spec = parse_top(top)
    factor = check_factor(factor)
    if target == "fc2" and bias:
        raise MempruneError("--bias applies to the fc1 target only: the fc2 bias is shared by all units")
    ckpt_path = Path(checkpoint)
    out_path = None if dry_run else _check_outputs(_require(output), checkpoint, scores)
    score_set = scores if isinstance(scores, ScoreSet) else load_scores(scores)
    aggregate = aggregate or _declared_aggregate(score_set)
    with open_checkpoint(checkpoint) as ckpt, ThreadPoolExecutor(1, "memprune-digest") as pool:
        adapter = detect_family(ckpt, arch, layers_regex)
        target = target or adapter.default_target
        kind, layers = _unit_kind(adapter, ckpt, score_set)
        values = validate_scores(score_set, layers)
        agg, used = aggregate_groups(values, score_set.groups, aggregate, score_set.image_independent)
        selection = select_units(agg, top_spec, scope)
        edits = plan_edits(layers, selection, factor, target, bias)
        # The input digest is needed for the score check and the manifest; it is computed in a thread so that
        # on the copy path it overlaps the kernel copy of the data.
        hashing = pool.submit(checkpoint_sha256, ckpt.path)

        def accept(digest: str) -> None:
            if score_set.checkpoint_sha256 and score_set.checkpoint_sha256 != digest and not force:
                raise MempruneError(
                    f"scores were computed on checkpoint {score_set.checkpoint_sha256[:12]}... but {ckpt_path.name} is "
                    f"{digest[:12]}...: score this checkpoint, or pass --force"
                )

        manifest = _manifest(
            ckpt, adapter, kind, PENDING_DIGEST, score_set, scores, selection, edits, used,
            dict(top=top_spec.text, scope=scope, aggregate=aggregate, factor=factor, target=target, bias=bias, force=force),
            command,
        )
        per_layer = {name: len(u) for name, u in selection.units.items()}
        widths = {layer.name: layer.width for layer in layers}
        result = PatchResult(out_path, None, manifest, selection, edits, per_layer, widths, dry_run=dry_run)
        if dry_run:
            manifest["input"]["sha256"] = hashing.result()
            accept(manifest["input"]["sha256"])
            return result
        written = write_pair(ckpt, out_path, edits, manifest, hashing, accept, claimed=score_set.checkpoint_sha256, check=verify)
        result.manifest_path = written.manifest_path
    if verify:
        from memprune.verify import verify as verify_patch
        from memprune.verify import verify_written

        try:
            if written.bytes_checked:  # every unedited byte was compared already: re-read the edited tensors only
                verify_written(out_path, checkpoint, manifest)
            else:
                verify_patch(out_path, base=checkpoint)
        except KeyboardInterrupt:
            raise InterruptedAfterWrite(
                f"interrupted during verification: {out_path} and {result.manifest_path.name} were written but not "
                f"verified; run `memprune verify {out_path} --base {checkpoint}` or delete them"
            ) from None
        result.verified = True
    return result


class InterruptedAfterWrite(KeyboardInterrupt):
    """Ctrl-C after the output was committed: the message says what exists and what to do with it."""


def _check_outputs(output: str | os.PathLike, checkpoint: str | os.PathLike, scores: Any) -> Path:
    """The weights path and its manifest path are both outputs; neither may be any input (by inode)."""
    inputs: list[Any] = list(checkpoint_files(checkpoint))
    for f in list(inputs):
        inputs.append(manifest_path_for(f))  # the input's own manifest is read: never replace it
    if not isinstance(scores, ScoreSet):
        inputs.append(scores)
    out = check_output(output, inputs, suffix=".safetensors")
    check_output(manifest_path_for(out), inputs, suffix=".manifest.json", what="manifest")
    return out


def _declared_aggregate(score_set: ScoreSet) -> str:
    """The reduction a score file asks for (``info.aggregate``), else UnitMem's ``max``."""
    declared = (score_set.info or {}).get("aggregate") if isinstance(score_set.info, dict) else None
    if declared is None:
        return "max"
    if declared not in ("max", "mean", "sum"):
        raise MempruneError(f"the score file declares aggregate {declared!r}: pass --aggregate max, mean or sum")
    return declared


def _require(output: str | os.PathLike | None) -> str | os.PathLike:
    if output is None:
        raise MempruneError("no output path: pass -o OUT.safetensors (or --dry-run to only plan)")
    return output


def _hub_provenance(path: Path) -> dict[str, Any] | None:
    """``{repo, path, revision, commit}`` when the checkpoint was resolved from an ``hf://`` reference."""
    from memprune.hub import (
        hub_provenance,  # lazy: the Hub client is only needed for Hub inputs
    )

    return hub_provenance(path)


def _manifest(ckpt, adapter, kind, digest, score_set, scores_arg, selection, edits, groups, options, command) -> dict[str, Any]:
    previous = authoritative_manifest(ckpt.path, ckpt.metadata)
    score_path = None if isinstance(scores_arg, ScoreSet) else Path(scores_arg)
    layers: dict[str, Any] = {}
    for name, units in selection.units.items():
        if units:
            layers[name] = {"units": units, "tensors": {e.tensor: {"axis": e.axis} for e in edits if e.layer == name}}
    return {
        "schema": SCHEMA,
        "memprune_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # File names only, never folders: the manifest is embedded in weights that get published.
        "command": public_command(command or shlex.join(["memprune", *sys.argv[1:]])),
        "input": {
            "path": public_name(str(ckpt.path)),
            "sha256": digest,
            "format": ckpt.format,
            "container": ckpt.container,
            "trusted_pickle": False,
            "hub": _hub_provenance(ckpt.path),
        },
        "scores": {
            "path": score_path.name if score_path else None,
            "sha256": sha256_file(score_path) if score_path else None,
            "checkpoint_sha256": score_set.checkpoint_sha256,
            "groups": score_set.groups,
            # Aggregate settings only: the per-image labels stay in the score file; paths become file names.
            "info": public_info(score_set.info),
            "tokenizer": public_info(score_set.info.get("tokenizer"), "tokenizer"),
        },
        "architecture": adapter.name,
        "unit_layer": kind,
        "selection": {
            "top": options["top"],
            "scope": options["scope"],
            "aggregate": options["aggregate"],
            "groups_used": groups,
            "threshold": selection.threshold,
            "selected": selection.selected,
            "total_units": selection.total,
        },
        "intervention": {
            "factor": options["factor"],
            "target": options["target"],
            "bias": options["bias"],
            "forced_score_mismatch": options["force"],
        },
        "layers": layers,
        "history": history_from(previous),
    }
