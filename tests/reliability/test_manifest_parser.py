"""Malformed manifests give one MempruneError (library) or one line with exit status 2 (CLI), never a traceback."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import inputs
from typer.testing import CliRunner

from memprune.cli import app
from memprune.errors import MempruneError
from memprune.io import open_checkpoint, save_safetensors
from memprune.manifest import META_KEY, SCHEMA, parse_manifest, validate_manifest
from memprune.patching import patch

VALID = {
    "schema": SCHEMA,
    "intervention": {"factor": 0.5, "target": "fc1", "bias": False},
    "layers": {"blocks.0.ffn.fc1": {"units": [1, 3], "tensors": {"blocks.0.ffn.fc1.weight": {"axis": 0}}}},
    "input": {"sha256": "ab"},
    "history": [],
}
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_manifest_or_one_error(data):
    try:
        result = parse_manifest(data, "m.manifest.json")
    except MempruneError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(result, dict) and result["schema"] == SCHEMA


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["intervention", "layers", "input", "output", "history", "selection"]),
       st.sampled_from([None, "factor", "target", "bias", "units", "tensors", "sha256", "axis"]), _json)
def test_any_field_replaced_by_any_json_gives_a_manifest_or_one_error(field, sub, value):
    manifest = json.loads(json.dumps(VALID))
    if sub is None or not isinstance(manifest.get(field), dict):
        manifest[field] = value
    elif field == "layers":
        entry = manifest["layers"]["blocks.0.ffn.fc1"]
        if sub == "axis":
            entry["tensors"]["blocks.0.ffn.fc1.weight"]["axis"] = value
        else:
            entry[sub] = value
    else:
        manifest[field][sub] = value
    text = json.dumps(manifest, allow_nan=True)
    try:
        result = parse_manifest(text, "m.manifest.json")
    except MempruneError as exc:
        assert "\n" not in str(exc)
        return
    # what passes is usable: the factor is a finite number and every unit an index
    factor = result["intervention"]["factor"]
    assert isinstance(factor, (int, float)) and factor >= 0
    for entry in result.get("layers", {}).values():
        assert all(isinstance(u, int) and u >= 0 for u in entry["units"])


def test_deep_nesting_is_one_error():
    with pytest.raises(MempruneError, match="not valid JSON"):
        parse_manifest("[" * 100_000 + "]" * 100_000, "m.json")


def test_valid_manifest_passes():
    assert validate_manifest(json.loads(json.dumps(VALID)), "x") == VALID


@pytest.fixture
def patched(tmp_path):
    ckpt, scores = inputs(tmp_path)
    out = tmp_path / "safe.safetensors"
    patch(ckpt, scores, output=out, top="10%")
    return ckpt, out


def _header_manifest(out, text):
    with open_checkpoint(out) as ck:
        tensors = {k: ck.get(k) for k in ck.keys()}
        meta = dict(ck.metadata)
    meta[META_KEY] = text
    save_safetensors(tensors, out, meta)


def _edit_sidecar(out, change):
    sidecar = out.with_name("safe.manifest.json")
    manifest = json.loads(sidecar.read_text())
    change(manifest)
    sidecar.write_text(json.dumps(manifest))


CASES = {
    "bad JSON in the header": lambda out: (out.with_name("safe.manifest.json").unlink(), _header_manifest(out, "{bad")),
    "header is a list": lambda out: (out.with_name("safe.manifest.json").unlink(), _header_manifest(out, "[1, 2]")),
    "missing intervention": lambda out: _edit_sidecar(out, lambda m: m.pop("intervention")),
    "factor is a string": lambda out: _edit_sidecar(out, lambda m: m["intervention"].update(factor="half")),
    "units are strings": lambda out: _edit_sidecar(out, lambda m: next(iter(m["layers"].values())).update(units=["a"])),
    "layers is a list": lambda out: _edit_sidecar(out, lambda m: m.update(layers=[1])),
    "history holds a number": lambda out: _edit_sidecar(out, lambda m: m.update(history=[3])),
    "sidecar is a folder": lambda out: (out.with_name("safe.manifest.json").unlink(), out.with_name("safe.manifest.json").mkdir()),
    "sidecar is not UTF-8": lambda out: out.with_name("safe.manifest.json").write_bytes(b"\xff\xfe{"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["verify", "verify-base", "inspect", "push"])
def test_malformed_manifests_are_one_line_in_every_command(patched, case, command):
    ckpt, out = patched
    CASES[case](out)
    args = {"verify": ["verify", str(out)], "verify-base": ["verify", str(out), "--base", str(ckpt)],
            "inspect": ["inspect", str(out)], "push": ["push", str(out), "--repo", "me/x", "--dry-run"]}[command]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, (res.output, res.exception)
    assert "Traceback" not in res.output and "error:" in res.output


def test_units_out_of_range_fail_verification_without_a_traceback(patched):
    ckpt, out = patched
    _edit_sidecar(out, lambda m: next(iter(m["layers"].values())).update(units=[10_000]))
    for args in (["verify", str(out)], ["verify", str(out), "--base", str(ckpt)]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 1, res.output
        assert "out of range" in res.output
