"""``memprune verify``: re-read a patched checkpoint and its base and check the manifest, bit for bit.

Passes only when: the manifest is present and its digests match both files; the key set, shapes and dtypes
equal the base's (buffers included, so strict loading still works); every tensor the manifest does not list
is bit-identical; every listed tensor equals the base with exactly the listed slices scaled by exactly the
factor (recomputed with the same function ``patch`` uses); and no edited tensor has a non-finite value
where the base was finite.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memprune.errors import MempruneError, VerificationError
from memprune.io import Checkpoint, checkpoint_sha256, open_checkpoint, sha256_file
from memprune.manifest import META_KEY, embeddable, manifest_path_for, read_manifest
from memprune.patching import TensorEdit, scale_slices, scaled_part


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class VerifyReport:
    """The outcome of every check; ``ok`` is True only if all passed."""

    patched: Path
    base: Path | None
    checks: list[Check] = field(default_factory=list)
    tensors_checked: int = 0
    tensors_edited: int = 0
    units_edited: int = 0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def edits_from_manifest(manifest: dict) -> dict[str, TensorEdit]:
    """The tensor edits a manifest declares, keyed by tensor name."""
    factor = float(manifest["intervention"]["factor"])
    edits: dict[str, TensorEdit] = {}
    for layer, entry in manifest.get("layers", {}).items():
        units = tuple(int(u) for u in entry["units"])
        for tensor, spec in entry["tensors"].items():
            edits[tensor] = TensorEdit(tensor, int(spec["axis"]), units, factor, layer)
    return edits


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Compare raw bytes: torch.equal would call NaN != NaN and -0.0 == 0.0.
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def verify(
    patched: str | os.PathLike, base: str | os.PathLike | None = None, *, raise_on_failure: bool = True
) -> VerifyReport:
    """Check a patched checkpoint against its manifest and, when given, the checkpoint it was patched from.

    Without ``base`` only what the patched file can show by itself is checked (:func:`self_checks`); with it,
    every tensor is also compared bit for bit with the base after re-applying the declared edits.

    Raises:
        VerificationError: when a check fails and ``raise_on_failure`` (one line; the report has the details).
        MempruneError: unreadable inputs or no manifest.
    """
    with open_checkpoint(patched) as out:
        manifest = read_manifest(out.path, out.metadata)
        if manifest is None:
            raise MempruneError(f"{out.path} has no memprune manifest (no {out.path.stem}.manifest.json, none in its header): nothing to verify against")
        report = VerifyReport(out.path, None)
        report.checks.extend(self_checks(out, manifest))
        edits = edits_from_manifest(manifest)
        report.tensors_edited = len(edits)
        report.units_edited = sum(len(e["units"]) for e in manifest.get("layers", {}).values())
        if base is not None:
            with open_checkpoint(base) as ref:
                report.base = ref.path
                _compare_with_base(report, manifest, edits, out, ref)
    if raise_on_failure and not report.ok:
        first = report.failures()[0]
        raise VerificationError(f"verification of {report.patched} failed: {first.name}: {first.detail}")
    return report


def verify_written(patched: str | os.PathLike, base: str | os.PathLike, manifest: dict[str, Any]) -> VerifyReport:
    """The verification ``patch`` runs after its copy path, which already compared every byte outside the edited
    slices with the base and hashed both files while writing.

    Re-checks what that comparison cannot show: the manifest beside the file and in its header, the key set,
    shapes, dtypes and header metadata against the base, and every edited tensor re-read from the written file
    against the base with the declared edit re-applied. ``memprune verify --base`` remains the independent check
    that decodes every tensor.

    Raises:
        VerificationError: a check failed.
    """
    with open_checkpoint(patched) as out, open_checkpoint(base) as ref:
        written = read_manifest(out.path, out.metadata)
        report = VerifyReport(out.path, ref.path)
        same = written == manifest
        report.checks.append(Check("manifest", same, "the manifest on disk is the one written" if same else "the manifest on disk differs from the one patch wrote"))
        header = out.metadata.get(META_KEY)
        report.checks.append(Check("header copy", header == embeddable(manifest), "the manifest equals the copy in the header"))
        edits = edits_from_manifest(manifest)
        report.tensors_edited = len(edits)
        report.units_edited = sum(len(e["units"]) for e in manifest.get("layers", {}).values())
        _check_keys(report, out, ref)
        _check_metadata(report, manifest, out, ref)
        bad = []
        for key, edit in edits.items():
            if key not in ref or key not in out or not _in_range(edit, ref.shape(key)):
                bad.append(f"{key}: missing or units out of range")
                continue
            # Only the edited slices: every other byte was compared with the base while it was written.
            index, expected = scaled_part(ref.get(key), edit)
            got = out.get(key).index_select(edit.axis, index)
            report.tensors_checked += 1
            if not _same_bits(expected, got):
                bad.append(f"{key}: the edited slices differ from the base scaled by {edit.factor}")
            elif got.is_floating_point() and not torch.isfinite(got).all() and torch.isfinite(ref.get(key).index_select(edit.axis, index)).all():
                bad.append(f"{key}: non-finite values appeared")
        report.checks.append(Check("edited tensors", not bad, "; ".join(bad[:5]) if bad else f"{report.tensors_checked} tensors match"))
    if not report.ok:
        first = report.failures()[0]
        raise VerificationError(f"verification of {report.patched} failed: {first.name}: {first.detail}")
    return report


def _compare_with_base(report: VerifyReport, manifest: dict, edits: dict[str, TensorEdit], out: Checkpoint, ref: Checkpoint) -> None:
    want_in = manifest.get("input", {}).get("sha256")
    have_in = checkpoint_sha256(ref.path)
    report.checks.append(Check("base digest", want_in == have_in, f"manifest {str(want_in)[:12]}, base {have_in[:12]}"))
    _check_keys(report, out, ref)
    _check_metadata(report, manifest, out, ref)
    bad: list[str] = []
    for key in ref.keys():
        if key not in out:
            continue
        edit = edits.get(key)
        if edit and not _in_range(edit, ref.shape(key)):
            bad.append(f"{key}: the manifest's units are out of range for shape {list(ref.shape(key))}")
            continue
        before, after = ref.get(key), out.get(key)
        expected = scale_slices(before, edit) if edit else before
        report.tensors_checked += 1
        if not _same_bits(expected, after):
            bad.append(_describe_mismatch(key, expected, after, edit))
        elif edit and after.is_floating_point() and (torch.isfinite(before) & ~torch.isfinite(after)).any():
            bad.append(f"{key}: non-finite values appeared")
    report.checks.append(Check("tensor contents", not bad, "; ".join(bad[:5]) if bad else f"{report.tensors_checked} tensors match"))


# Header keys patch sets on every output; every other key must be carried over from the base unchanged.
_PATCH_META = ("format", "memprune.version", "memprune.source_sha256", META_KEY)


def _check_metadata(report: VerifyReport, manifest: dict, out: Checkpoint, ref: Checkpoint) -> None:
    """The header metadata equals the base's, except the keys patch writes (which must hold what it writes)."""
    want = {k: v for k, v in ref.metadata.items() if k not in _PATCH_META}
    have = {k: v for k, v in out.metadata.items() if k not in _PATCH_META}
    problems = [f"added {k!r}" for k in sorted(have.keys() - want.keys())]
    problems += [f"dropped {k!r}" for k in sorted(want.keys() - have.keys())]
    problems += [f"changed {k!r}" for k in sorted(want.keys() & have.keys()) if want[k] != have[k]]
    source = out.metadata.get("memprune.source_sha256")
    if source != (manifest.get("input") or {}).get("sha256"):
        problems.append("memprune.source_sha256 is not the manifest's input digest")
    if out.metadata.get("format") != "pt":
        problems.append(f"format is {out.metadata.get('format')!r}, not 'pt'")
    detail = "; ".join(problems[:4]) if problems else f"{len(want)} base keys carried over, {len(_PATCH_META)} memprune keys"
    report.checks.append(Check("header metadata", not problems, detail))


def _in_range(edit: TensorEdit, shape: tuple[int, ...]) -> bool:
    return edit.axis < len(shape) and (not edit.units or (max(edit.units) < shape[edit.axis] and min(edit.units) >= 0))


def self_checks(ckpt: Checkpoint, manifest: dict[str, Any]) -> list[Check]:
    """What can be verified without the base: the output digest, the header copy of the manifest, that every
    edited tensor exists with the declared units in range, and that the edited slices are finite."""
    checks = [Check("format", ckpt.metadata.get("format") == "pt", f"header format={ckpt.metadata.get('format')!r}")]
    want = (manifest.get("output") or {}).get("sha256")
    have = sha256_file(ckpt.path)
    checks.append(Check("output digest", want == have, f"manifest {str(want)[:12]}, file {have[:12]}" if want else "the manifest records no output digest (its .manifest.json is missing)"))
    header = ckpt.metadata.get(META_KEY)
    checks.append(Check("header copy", header == embeddable(manifest), "the manifest equals the copy in the header" if header == embeddable(manifest) else (
        f"{manifest_path_for(ckpt.path).name} differs from the manifest in the safetensors header (left by an interrupted patch, "
        "or edited): the header copy is authoritative; re-run `memprune patch`") if header else "the header holds no memprune.manifest"))
    try:
        edits = edits_from_manifest(manifest)
    except (KeyError, TypeError, ValueError) as exc:
        return [*checks, Check("edited tensors exist", False, f"the manifest's layers/intervention are malformed ({exc!r})")]
    problems, non_finite = [], []
    for name, edit in edits.items():
        if name not in ckpt:
            problems.append(f"{name} missing")
            continue
        shape = ckpt.shape(name)
        if not _in_range(edit, shape):
            problems.append(f"{name} units out of range for shape {list(shape)}")
            continue
        part = ckpt.get(name).index_select(edit.axis, torch.tensor(edit.units, dtype=torch.long))
        if part.is_floating_point() and not torch.isfinite(part).all():
            non_finite.append(name)
    checks.append(Check("edited tensors exist", not problems, "; ".join(problems[:3]) if problems else f"{len(edits)} tensors"))
    checks.append(Check("edited slices finite", not non_finite, f"non-finite values in {non_finite[:3]}" if non_finite else "all finite"))
    return checks


def _check_keys(report: VerifyReport, out, ref) -> None:
    out_keys, ref_keys = set(out.keys()), set(ref.keys())
    extra, lost = sorted(out_keys - ref_keys), sorted(ref_keys - out_keys)
    detail = f"missing {lost[:3]} extra {extra[:3]}" if (extra or lost) else f"{len(ref_keys)} keys"
    report.checks.append(Check("same keys", not extra and not lost, detail))
    wrong = [k for k in ref_keys & out_keys if out.shape(k) != ref.shape(k) or out.dtype(k) != ref.dtype(k)]
    report.checks.append(Check("same shapes and dtypes", not wrong, f"differ: {sorted(wrong)[:3]}" if wrong else "all equal"))


def _describe_mismatch(key: str, expected: torch.Tensor, actual: torch.Tensor, edit: TensorEdit | None) -> str:
    if expected.shape != actual.shape or expected.dtype != actual.dtype:
        return f"{key}: shape/dtype changed"
    diff = (expected.double() - actual.double()).abs() if expected.is_floating_point() else (expected != actual).double()
    if diff.dim() >= 2:
        axis = edit.axis if edit else 0
        per = diff.flatten(2).amax(-1) if diff.dim() > 2 else diff
        slices = per.amax(1 - axis).nonzero().flatten().tolist()
        what = "rows" if axis == 0 else "columns"
        return f"{key}: {what} {slices[:5]} differ from what the manifest declares"
    return f"{key}: entries {diff.nonzero().flatten().tolist()[:5]} differ from what the manifest declares"
