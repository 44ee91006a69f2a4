"""Property tests: any bytes give either a valid object or one MempruneError from the checkpoint parsers."""

from __future__ import annotations

import io
import json
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memprune.errors import MempruneError
from memprune.io.formats import (
    ST_ITEMSIZE,
    SafetensorsHeader,
    ShardIndex,
    parse_index,
    read_safetensors_header,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
# Entries that look like tensors, so the offset and size checks are reached, not just the type checks.
_entry = st.fixed_dictionaries({
    "dtype": st.sampled_from([*ST_ITEMSIZE, "X"]),
    "shape": st.lists(st.integers(-1, 4), max_size=3),
    "data_offsets": st.lists(st.integers(-1, 64), min_size=1, max_size=3),
})
_header = st.dictionaries(st.text(max_size=4), _entry | _json_values, max_size=4)


def _read(blob: bytes) -> SafetensorsHeader | None:
    try:
        header = read_safetensors_header(io.BytesIO(blob), len(blob), "f.safetensors")
    except MempruneError as exc:
        assert "\n" not in str(exc)
        return None
    covered = sum(t.end - t.begin for t in header.tensors.values())
    assert covered == len(blob) - header.data_start
    assert all(isinstance(v, str) for v in header.metadata.values())
    return header


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes_as_a_safetensors_file(blob):
    _read(blob)


@SETTINGS
@given(_header, st.binary(max_size=64), st.integers(-8, 8))
def test_structured_headers(header, data, length_skew):
    raw = json.dumps(header).encode()
    _read(struct.pack("<Q", max(0, len(raw) + length_skew)) + raw + data)


def _index(raw: bytes) -> ShardIndex | None:
    try:
        index = parse_index(raw, "model.safetensors.index.json")
    except MempruneError as exc:
        assert "\n" not in str(exc)
        return None
    assert index.weight_map and all(isinstance(v, str) and ".." not in v.split("/") for v in index.weight_map.values())
    assert all(isinstance(v, str) for v in index.metadata.values())
    return index


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes_as_an_index(raw):
    _index(raw)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["weight_map", "metadata", "x"]),
                       _json_values | st.dictionaries(st.text(max_size=5), st.text(max_size=12) | _json_values, max_size=3),
                       max_size=3))
def test_structured_indexes(obj):
    _index(json.dumps(obj).encode())


def test_a_valid_file_parses():
    raw = json.dumps({"__metadata__": {"k": "v"}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    header = _read(struct.pack("<Q", len(raw)) + raw + bytes(8))
    assert header is not None and header.tensors["w"].shape == (2,) and header.metadata == {"k": "v"}
