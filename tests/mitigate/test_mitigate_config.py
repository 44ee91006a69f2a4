"""The mitigation recipe: flags and --config share fields; bad values are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from memprune.errors import MempruneError
from memprune.mitigate.config import (
    MitigateConfig,
    make_config,
    parse_budget,
    parse_target,
    read_config,
    resolve_config,
    write_recipe,
)


def test_target_and_budget_forms() -> None:
    assert parse_target("0").allowed(30) == 0 and parse_target("3").allowed(30) == 3
    assert parse_target("10%").allowed(29) == 2
    assert parse_budget("1%").limit(5.0) == pytest.approx(5.05)
    assert parse_budget("0.05").limit(5.0) == pytest.approx(5.05)


@pytest.mark.parametrize("bad", ["three", "-1", "1.5", "120%", ""])
def test_unparseable_target(bad: str) -> None:
    with pytest.raises(MempruneError, match="--target"):
        parse_target(bad)


@pytest.mark.parametrize("bad", ["one percent", "-0.1", "nan", "inf", ""])
def test_unparseable_budget(bad: str) -> None:
    with pytest.raises(MempruneError, match="--max-quality-loss"):
        parse_budget(bad)


def test_grid_without_valid_point() -> None:
    with pytest.raises(MempruneError, match="no valid point"):
        make_config({"shares": ""})
    with pytest.raises(MempruneError, match="--factors"):
        make_config({"factors": "1"})
    with pytest.raises(MempruneError, match="--top"):
        make_config({"shares": "0%"})
    with pytest.raises(MempruneError, match="--methods"):
        make_config({"methods": "unitmem,magic"})


def test_recipe_file_round_trip_and_flags_override(tmp_path: Path) -> None:
    cfg = make_config({"target": 3, "methods": "attribution,random", "shares": ["20%", "40%"], "factors": "0,0.5"})
    assert cfg.grid() == [(m, s, f) for m in ("attribution", "random") for s in ("20%", "40%") for f in (0.0, 0.5)]
    path = tmp_path / "recipe.yaml"
    write_recipe(cfg, path)
    assert make_config(read_config(path)) == cfg
    over = resolve_config(path, {"target": "1", "shares": None})
    assert over.target == "1" and over.shares == ("20%", "40%")
    assert resolve_config(None, {}) == MitigateConfig()


def test_recipe_unknown_key_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("target: 0\nshare: 10%\n")
    with pytest.raises(MempruneError, match="unknown recipe key 'share'") as err:
        resolve_config(path, {})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "target: [\n"])
def test_recipe_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(MempruneError, match="recipe file"):
        read_config(path)
