"""Unit selection: --top parsing, aggregation over scales, global and per-layer ranking, ties."""

from __future__ import annotations

import pytest
import torch

from memprune.errors import MempruneError
from memprune.selection import aggregate_groups, parse_top, select_units


@pytest.mark.parametrize("text, frac, count", [("10%", 0.1, None), ("0.5%", 0.005, None), ("100%", 1.0, None), ("500", None, 500)])
def test_parse_top(text, frac, count):
    spec = parse_top(text)
    assert spec.fraction == frac and spec.count == count


@pytest.mark.parametrize("text", ["0", "0%", "150%", "abc", "-5", "10 percent", ""])
def test_parse_top_rejects(text):
    with pytest.raises(MempruneError, match="--top"):
        parse_top(text)


def test_aggregate_excludes_image_independent_groups():
    scores = {"a": torch.tensor([[9.0, 9.0], [1.0, 2.0], [3.0, 0.0]])}
    agg, used = aggregate_groups(scores, ["scale0", "scale1", "scale2"], "max", ["scale0"])
    assert used == ["scale1", "scale2"] and agg["a"].tolist() == [3.0, 2.0]
    agg, _ = aggregate_groups(scores, ["scale0", "scale1", "scale2"], "mean", ["scale0"])
    assert agg["a"].tolist() == [2.0, 1.0]
    agg, _ = aggregate_groups(scores, ["scale0", "scale1", "scale2"], "sum", [])
    assert agg["a"].tolist() == [13.0, 11.0]
    with pytest.raises(MempruneError, match="--aggregate"):
        aggregate_groups(scores, ["a", "b", "c"], "median")


def test_global_selection_and_threshold():
    agg = {"l0": torch.tensor([0.1, 0.9, 0.5]), "l1": torch.tensor([0.8, 0.2, 0.7])}
    sel = select_units(agg, parse_top("50%"))
    assert sel.units == {"l0": [1], "l1": [0, 2]} and sel.selected == 3 and sel.total == 6
    assert sel.threshold == pytest.approx(0.7)


def test_layer_scope_takes_share_per_layer():
    agg = {"l0": torch.tensor([0.1, 0.9, 0.5, 0.4]), "l1": torch.tensor([0.0, 0.05, 0.02, 0.01])}
    sel = select_units(agg, parse_top("25%"), scope="layer")
    assert sel.units == {"l0": [1], "l1": [1]}


def test_ties_break_by_layer_order_then_index():
    agg = {"l0": torch.tensor([1.0, 1.0]), "l1": torch.tensor([1.0, 1.0])}
    assert select_units(agg, parse_top("3")).units == {"l0": [0, 1], "l1": [0]}


def test_count_larger_than_units_takes_all_and_tiny_share_errors():
    agg = {"l0": torch.tensor([0.3, 0.2])}
    assert select_units(agg, parse_top("10")).selected == 2
    with pytest.raises(MempruneError, match="rounds to 0 units"):
        select_units(agg, parse_top("1%"))
