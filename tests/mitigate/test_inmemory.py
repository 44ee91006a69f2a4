"""In-memory sweep points: the scaled model equals what `patch` writes, and undoing restores every bit."""

from __future__ import annotations

from pathlib import Path

import torch

from memprune.families import detect_family as detect_adapter
from memprune.demo import load_demo_assets
from memprune.io import open_checkpoint
from memprune.mitigate.inmemory import applied, plan_point
from memprune.mitigate.run import split_halves
from memprune.families.var.model import load_var
from memprune.patching import patch
from memprune.scoring.attribution import random_score_set


def test_apply_matches_patch_file_and_undo_is_exact(tmp_path: Path) -> None:
    assets = load_demo_assets()
    model = load_var(assets.var_path, assets.vae_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = random_score_set(model, 5)
    with open_checkpoint(assets.var_path) as ckpt:
        layers = detect_adapter(ckpt, None, None).unit_layers(ckpt, "fc1")
    plan = plan_point(scores, layers, "10%", 0.25)
    assert plan.aggregate == "sum" and plan.selection.selected == round(0.1 * 4 * 2048)
    out = tmp_path / "p.safetensors"
    patch(assets.var_path, scores, output=out, top="10%", factor=0.25, aggregate="sum")
    written = load_var(out, assets.vae_path).state_dict()
    with applied(model, plan.edits):
        now = model.state_dict()
        changed = [k for k in now if not torch.equal(now[k], before[k])]
        assert changed and all(k.endswith("ffn.fc1.weight") for k in changed)
        assert all(torch.equal(now[k], written[k]) for k in now)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_undo_also_after_an_error() -> None:
    assets = load_demo_assets()
    model = load_var(assets.var_path, assets.vae_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with open_checkpoint(assets.var_path) as ckpt:
        layers = detect_adapter(ckpt, None, None).unit_layers(ckpt, "fc1")
    plan = plan_point(random_score_set(model, 1), layers, "50%", 0.0)
    try:
        with applied(model, plan.edits):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_split_halves_is_seeded_and_disjoint() -> None:
    ids = [f"im{i}" for i in range(9)]
    a, b = split_halves(ids, 0)
    assert len(a) == 5 and len(b) == 4 and not set(a) & set(b) and sorted(a + b) == sorted(ids)
    assert split_halves(list(reversed(ids)), 0) == (a, b)
    assert split_halves(ids, 1) != (a, b)
