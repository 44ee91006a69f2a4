"""Attribution scores against exact single-unit removal, the random control, and the input checks."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from tiny_model import TinyIAR, make_image_folder

from memprune.data import load_records
from memprune.errors import MempruneError
from memprune.scores import load_scores
from memprune.scoring.attribution import (
    NothingToForget,
    _CanonicalViews,
    attribute,
    attribution_scores,
    check_sets,
    image_losses,
    random_score_set,
    read_image_list,
)


def _mean_loss(model, records, zero: tuple[str, int, int, int] | None = None) -> float:
    """Mean over images of the per-image mean token CE, optionally with unit u zeroed on rows [b, e)."""
    handle = None
    if zero is not None:
        name, unit, b, e = zero

        def hook(mod, args, out):
            out = out.clone()
            out[:, b:e, unit] = 0
            return out

        handle = model.hook_points("fc1")[name].register_forward_hook(hook)
    views = _CanonicalViews(model.arch, model.image_size)
    try:
        with torch.no_grad():
            x = torch.stack([views.load(r, 1)[0] for r in records])
            tokens = model.encode(x)
            labels = torch.tensor([r.label for r in records])
            return float(image_losses(model.teacher_forced(tokens, labels), tokens).double().mean())
    finally:
        if handle is not None:
            handle.remove()


@pytest.fixture
def sets(tmp_path: Path):
    records = load_records(make_image_folder(tmp_path / "data", per_class=(4, 4, 4))).records
    return records, records[::3], [r for i, r in enumerate(records) if i % 3]


def test_attribution_matches_exact_single_unit_removal(sets) -> None:
    records, forget, retain = sets
    model = TinyIAR(seed=1, hidden=256).double()
    torch.manual_seed(0)
    with torch.no_grad():  # small FFN weights: removing one of 256 units is a small perturbation
        for b in model.blocks:
            b.fc2.weight.mul_(0.02)
    scores = attribution_scores(model, forget, retain, batch_size=5)
    assert scores.info["method"] == "attribution" and scores.groups == ["g0", "g1"]
    base = _mean_loss(model, forget) - _mean_loss(model, retain)
    est, exact = [], []
    for name in ("blocks.0.ffn.fc1", "blocks.1.ffn.fc1"):
        for unit in range(0, 256, 16):
            for s, g in enumerate(model.position_groups()):
                z = (name, unit, g.begin, g.end)
                exact.append(_mean_loss(model, forget, z) - _mean_loss(model, retain, z) - base)
                est.append(float(scores.scores[name][s, unit]))
    est_t, exact_t = torch.tensor(est), torch.tensor(exact)
    # first order: errors are second order in the (small) removed activation
    assert (est_t - exact_t).abs().max() < 0.1 * exact_t.abs().max()
    assert torch.corrcoef(torch.stack([est_t, exact_t]))[0, 1] > 0.99
    # the whole-unit estimate is the sum over groups
    whole = ("blocks.1.ffn.fc1", 32, 0, 5)
    exact_whole = _mean_loss(model, forget, whole) - _mean_loss(model, retain, whole) - base
    assert abs(float(scores.scores["blocks.1.ffn.fc1"][:, 32].sum()) - exact_whole) < 0.1 * abs(exact_whole) + 1e-6


def test_random_scores_are_seeded_and_shaped() -> None:
    model = TinyIAR(seed=0)
    a, b, c = random_score_set(model, 3), random_score_set(model, 3), random_score_set(model, 4)
    for n in a.scores:
        assert a.scores[n].shape == (2, 16)
        assert torch.equal(a.scores[n], b.scores[n]) and not torch.equal(a.scores[n], c.scores[n])
        assert torch.equal(a.scores[n][0], a.scores[n][1])
    assert a.info == {**a.info, "method": "random", "seed": 3}


def test_attribute_writes_score_file_with_method(sets, tmp_path: Path) -> None:
    records, forget, retain = sets
    out = tmp_path / "attr.safetensors"
    res = attribute(TinyIAR(seed=0), forget, retain, output=out, checkpoint_digest="ab" * 32)
    loaded = load_scores(out)
    assert loaded.info["method"] == "attribution" and loaded.info["forget"]["images"] == len(forget)
    assert "path" not in str(loaded.info["forget"]) and res.forget == len(forget)
    assert torch.allclose(loaded.scores["blocks.0.ffn.fc1"], res.scores.scores["blocks.0.ffn.fc1"])


def test_bad_sets(sets, tmp_path: Path) -> None:
    records, forget, retain = sets
    with pytest.raises(NothingToForget):
        check_sets([], retain)
    with pytest.raises(MempruneError, match="both the forget and the retain"):
        check_sets(forget, retain + forget[:1])
    with pytest.raises(MempruneError, match="not in the training data"):
        check_sets(forget, retain, training=retain)
    with pytest.raises(MempruneError, match="retain set is empty"):
        check_sets(forget, [])


def test_audit_results_csv_is_a_forget_list(sets, tmp_path: Path) -> None:
    records = sets[0]
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "id", "path", "label", "model", "prefix", "extracted", "counted"])
        w.writerow([0, records[0].id, str(records[0].path), records[0].label, "model", 4, "True", "True"])
        w.writerow([0, records[0].id, str(records[0].path), records[0].label, "model", 3, "True", "True"])
        w.writerow([1, records[1].id, str(records[1].path), records[1].label, "model", 4, "False", "True"])
        w.writerow([2, records[2].id, str(records[2].path), records[2].label, "model", 4, "True", "False"])
    got = read_image_list(path).records
    assert [r.id for r in got] == [records[0].id]
    with open(path, "w", newline="") as fh:
        fh.write("index,id,path,label,extracted\n")
    assert read_image_list(path).records == []


def test_output_is_guarded_like_every_score_file(tmp_path):
    """``attribute -o`` goes through the one output guard: suffix, and never over a file of its image lists."""
    from memprune.errors import MempruneError
    from memprune.scoring.attribution import attribute

    forget = tmp_path / "forget"
    forget.mkdir()
    (forget / "a.safetensors").write_bytes(b"an input that happens to carry the suffix")
    with pytest.raises(MempruneError, match="must end in .safetensors"):
        attribute("m.safetensors", forget, tmp_path, tokenizer="t.safetensors", output=tmp_path / "q.npz")
    with pytest.raises(MempruneError, match="is the input file"):
        attribute("m.safetensors", forget, tmp_path, tokenizer="t.safetensors", output=forget / "a.safetensors")
