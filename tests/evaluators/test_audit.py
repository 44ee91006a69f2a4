"""The extraction audit library on a model that memorized some images exactly (real SSCD ONNX, real photos).

``Memorizer`` is an :class:`IARModel` whose tokenizer is a 32 x 32 RGB thumbnail (one token per channel value,
vocabulary 256) and whose transformer is a lookup table: given the ground-truth prefix of a memorized image it
regenerates that image; otherwise it continues with the tokens of a fixed unrelated image. Teacher forcing
predicts every token of a memorized image and about a third of the others. The expected audit outcome is
therefore known exactly, while the SSCD similarity is computed for real.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from memprune.errors import MempruneError
from memprune.evaluators import audit as A
from memprune.evaluators import audit_report as R
from memprune.families.base import IARModel, PositionGroup
from memprune.plots.grid import safe_name
from tests.families.fake_family import register_fake_family

pytest.importorskip("onnxruntime")
skimage_data = pytest.importorskip("skimage.data")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
THUMB = 32


# A fake model declares its family like a real one (raster prefixes and views).
register_fake_family("memorizer", like="rar")


class Memorizer(IARModel):
    arch = "memorizer"
    image_size = 128
    num_classes = 3
    vocab_size = 256
    seq_len = 3 * THUMB * THUMB

    def __init__(self, memorized: list[torch.Tensor], decoy: torch.Tensor) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.memorized = [m.long() for m in memorized]
        self.decoy = decoy.long()
        self.generate_calls = 0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        small = torch.nn.functional.interpolate(images, size=(THUMB, THUMB), mode="area")
        return small.mul(255).round().clamp(0, 255).long().flatten(1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        small = tokens.float().div(255).view(-1, 3, THUMB, THUMB)
        return torch.nn.functional.interpolate(small, size=(128, 128), mode="bilinear", align_corners=False).clamp(0, 1)

    def _known(self, tokens: torch.Tensor) -> bool:
        return any(torch.equal(tokens, m[: tokens.shape[0]]) for m in self.memorized)

    def teacher_forced(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pred = tokens.clone()
        for i, row in enumerate(tokens):
            if not self._known(row):  # right on every third position only
                pos = torch.arange(row.shape[0])
                pred[i] = torch.where((pos + int(labels[i])) % 3 == 0, row, (row + 1) % 256)
        return torch.nn.functional.one_hot(pred, 256).float()

    def generate(self, labels, *, prefix=None, cfg=0.0, top_k=0, top_p=0.0, temperature=1.0, greedy=False, seed=None):
        self.generate_calls += 1
        out = []
        for row in prefix:
            n = row.shape[0]
            match = next((m for m in self.memorized if n > 0 and torch.equal(row, m[:n])), None)
            out.append(match.clone() if match is not None else torch.cat([row, self.decoy[n:]]))
        return torch.stack(out)

    def hook_points(self, layer: str = "fc1"):
        return {}

    def position_groups(self) -> list[PositionGroup]:
        return [PositionGroup("all", 0, self.seq_len)]


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory):
    """Six photos in three class folders; the first image of classes 0 and 1 is memorized."""
    root = tmp_path_factory.mktemp("photos")
    paths = []
    for k, name in enumerate(PHOTOS):
        folder = root / f"class{k % 3}"
        folder.mkdir(exist_ok=True)
        path = folder / f"{k}_{name}.png"
        Image.fromarray(getattr(skimage_data, name)()).save(path)
        paths.append(path)
    return root, paths


@pytest.fixture(scope="module")
def sscd():
    from memprune.evaluators import load_sscd

    return load_sscd("onnx", device="cpu")


def _tokens(model: IARModel, path) -> torch.Tensor:
    cand = A.Candidate(path, 0, path.name)
    return model.encode(A.load_views([cand], model))[0]


@pytest.fixture(scope="module")
def memorizers(photo_set):
    root, paths = photo_set
    probe = Memorizer([], torch.zeros(Memorizer.seq_len))
    decoy_path = root.parent / "decoy.png"  # a photo outside the data set, unlike all of them
    Image.fromarray(skimage_data.retina()).save(decoy_path)
    decoy = _tokens(probe, decoy_path)
    full = Memorizer([_tokens(probe, paths[0]), _tokens(probe, paths[1])], decoy)
    patched = Memorizer([_tokens(probe, paths[1])], decoy)  # "forgot" paths[0]
    return full, patched


def _candidates(root):
    from memprune.data import load_records

    return A.candidates_from_records(load_records(root).records)


def test_selection_ranks_memorized_images_first(photo_set, memorizers):
    root, paths = photo_set
    full, _ = memorizers
    scanned = A.scan_hit_rates(full, _candidates(root), batch_size=4)
    rates = {c.id: c.hit_rate for c in scanned}
    assert rates["class0/0_astronaut.png"] == 1.0 and rates["class1/1_chelsea.png"] == 1.0
    assert all(0.2 < r < 0.5 for i, r in rates.items() if i not in ("class0/0_astronaut.png", "class1/1_chelsea.png"))
    top = A.select_top_per_class(scanned, per_class=1)
    assert [c.id for c in top] == ["class0/0_astronaut.png", "class1/1_chelsea.png", "class2/2_coffee.png"]
    assert [c.id for c in A.select_top_per_class(scanned, per_class=5)][:2] == ["class0/0_astronaut.png", "class0/3_rocket.png"]


def test_audit_counts_exactly_the_memorized_images(photo_set, memorizers, sscd, tmp_path):
    root, _ = photo_set
    full, _ = memorizers
    settings = A.AuditSettings(attack="paper", batch_size=4, sweep=True)
    results = A.run_audit({"model": full}, sscd, _candidates(root), settings, tmp_path)
    counted = [r for r in results if r.counted]
    assert len(counted) == 6 and all(r.prefix == 30 and r.prefix_tokens == 30 for r in counted)
    extracted = {r.id for r in counted if r.extracted}
    assert extracted == {"class0/0_astronaut.png", "class1/1_chelsea.png"}
    for r in counted:
        if r.extracted:
            assert r.similarity > 0.99 and r.token_match == 1.0 and r.hit_rate == 1.0
        else:
            assert r.similarity < 0.75 and r.token_match < 0.1
    # The sweep's empty prefix regenerates nothing; the counted prefix is the attack's 30 tokens.
    assert sorted({r.prefix for r in results}) == [0, 1, 5, 14, 30]
    assert not any(r.extracted for r in results if r.prefix == 0)
    summary = R.build_summary(results, models={"model": {}}, settings={"threshold": 0.75}, candidates={}, sscd={})
    assert summary["headline"]["extracted"] == 2
    assert summary["counts"]["model"]["sweep"]["0"]["extracted"] == 0
    assert summary["counts"]["model"]["sweep"]["30"] == {"prefix_tokens": 30, "extracted": 2, "candidates": 6}
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6 * 5


def test_baseline_before_after_and_report_files(photo_set, memorizers, sscd, tmp_path, check_png):
    root, _ = photo_set
    full, patched = memorizers
    models = {"baseline": full, "model": patched}
    results = A.run_audit(models, sscd, _candidates(root), A.AuditSettings(attack="paper", batch_size=3), tmp_path,
                          on_extracted=lambda r, imgs, row: R.save_extracted_images(tmp_path, r, imgs, row))
    summary = R.build_summary(results, models={"baseline": {}, "model": {}}, settings={"threshold": 0.75},
                              candidates={}, sscd={}, baseline="baseline")
    assert summary["comparison"] == {"before": 2, "after": 1, "reduction": 1, "reduction_percent": 50.0,
                                     "extracted_in_both": 1, "only_before": 1, "only_after": 0, "candidates": 6}
    assert summary["headline"]["reduction_percent"] == 50.0
    # Grid and images: both extracted-by-anyone candidates, with a column per model.
    grid = R.make_grid(tmp_path, results, ["baseline", "model"])
    assert grid is not None and check_png(grid)[0] > 2 * 4 * 128  # two cards of four cells side by side
    first = next(r for r in results if r.extracted)
    stem = safe_name(first.id)
    names = sorted(p.name for p in (tmp_path / "extracted").iterdir() if p.name.startswith(stem + "_"))
    assert names == [f"{stem}_{k}.png" for k in ("baseline", "image", "model", "reconstruction")]
    R.write_results_csv(results, tmp_path / "results.csv")
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].startswith("index,id,path,label,model") and len(rows) == 1 + 12


def test_resume_skips_done_candidates_and_repairs_a_torn_line(photo_set, memorizers, sscd, tmp_path):
    root, _ = photo_set
    full, _ = memorizers
    cands = _candidates(root)
    settings = A.AuditSettings(attack="paper", batch_size=2)
    reference = A.run_audit({"model": full}, sscd, cands, settings, tmp_path / "ref")
    out = tmp_path / "run"
    out.mkdir()
    lines = (tmp_path / "ref" / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])  # killed while writing row 4
    full.generate_calls = 0
    resumed = A.run_audit({"model": full}, sscd, cands, settings, out)
    assert full.generate_calls == 2  # rows 4, 5, 6 = two batches of at most two
    assert [r.to_json() for r in resumed] == [r.to_json() for r in reference]
    assert len((out / "results.jsonl").read_text().splitlines()) == 6
    full.generate_calls = 0
    A.run_audit({"model": full}, sscd, cands, settings, out)
    assert full.generate_calls == 0


def test_run_config_must_match_on_resume(tmp_path):
    R.check_or_write_config(tmp_path, {"threshold": 0.5}, resume=False)
    R.check_or_write_config(tmp_path, {"threshold": 0.75}, resume=False)  # nothing was done yet: free to restart
    (tmp_path / "results.jsonl").write_text("")
    with pytest.raises(MempruneError, match="--resume"):
        R.check_or_write_config(tmp_path, {"threshold": 0.75}, resume=False)
    R.check_or_write_config(tmp_path, {"threshold": 0.75}, resume=True)
    with pytest.raises(MempruneError, match="threshold was 0.75 and is now 0.5"):
        R.check_or_write_config(tmp_path, {"threshold": 0.5}, resume=True)


def test_candidate_lists(photo_set, tmp_path):
    root, paths = photo_set
    cands = [A.Candidate(p, k % 3, f"id{k}", 0.5) for k, p in enumerate(paths)]
    A.write_candidates(cands, tmp_path / "c.csv")
    back = A.read_candidates(tmp_path / "c.csv")
    assert [(c.id, c.label, c.hit_rate) for c in back] == [(c.id, c.label, 0.5) for c in cands]
    (tmp_path / "rel.jsonl").write_text(json.dumps({"path": "class0/0_astronaut.png", "label": 0}) + "\n")
    assert A.read_candidates(tmp_path / "rel.jsonl", data_root=root)[0].path == root / "class0/0_astronaut.png"
    (tmp_path / "bad.csv").write_text("path,label\nclass0/nope.png,0\nclass0/0_astronaut.png,0\n")
    with pytest.raises(MempruneError, match="1 candidate image.*nope.png.*--data"):
        A.read_candidates(tmp_path / "bad.csv", data_root=root)
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(MempruneError, match="empty"):
        A.read_candidates(tmp_path / "empty.csv")
    (tmp_path / "nolabel.csv").write_text("path,label\nclass0/0_astronaut.png,cat\n")
    with pytest.raises(MempruneError, match="integer label"):
        A.read_candidates(tmp_path / "nolabel.csv", data_root=root)


def test_empty_or_duplicate_candidates_are_refused(memorizers, sscd, photo_set, tmp_path):
    full, _ = memorizers
    with pytest.raises(MempruneError, match="empty"):
        A.run_audit({"model": full}, sscd, [], A.AuditSettings(attack="paper"), tmp_path)
    c = A.Candidate(photo_set[1][0], 0, "same")
    with pytest.raises(MempruneError, match="more than once"):
        A.run_audit({"model": full}, sscd, [c, c], A.AuditSettings(attack="paper"), tmp_path)
    with pytest.raises(MempruneError, match="per-class"):
        A.select_top_per_class([], 0)


def test_greedy_hit_rate_uses_the_ranked_rows():
    model = Memorizer([], torch.zeros(Memorizer.seq_len))
    tokens = torch.randint(0, 256, (2, Memorizer.seq_len))
    rates = A.greedy_hit_rates(model, tokens, torch.tensor([0, 1]))
    rows = A.ranked_positions(model)
    assert (rows.start, rows.stop) == (Memorizer.seq_len - 99, Memorizer.seq_len)
    expected = [((torch.arange(rows.start, rows.stop) + lab) % 3 == 0).float().mean().item() for lab in (0, 1)]
    assert rates.tolist() == pytest.approx(expected)


def test_var_prefixes_are_scales():
    from memprune.families.var.model import VARConfig, build_var_model
    from memprune.families.var.vqvae import VQVAEConfig

    cfg = VARConfig(depth=1, width=64, num_heads=1, mlp_hidden=128, vocab_size=64, cvae=8, num_classes=3)
    model = build_var_model(cfg, VQVAEConfig(vocab_size=64, z_channels=8, ch=32))
    assert A.default_prefix(model) == 4 and A.prefix_tokens(model, 4) == 30 and A.prefix_tokens(model, 0) == 0
    paper = A.AuditSettings(attack="paper", sweep=True)
    counted = paper.conditions(model)
    assert [c.key for c in counted] == ["p4-greedy"]
    assert [c.prefix for c in paper.sweep_conditions(model, counted)] == [0, 1, 2, 3]
    assert (A.ranked_positions(model).start, A.ranked_positions(model).stop) == (424, 680)
    with pytest.raises(MempruneError, match="--prefix 11 scales"):
        A.prefix_tokens(model, 11)


def test_canonical_view_is_the_attacks_centre_crop():
    img = Image.fromarray(np.arange(300 * 400 * 3, dtype=np.uint32).reshape(300, 400, 3).astype(np.uint8))
    var_view = A.canonical_view(img, "var", 256)
    rar_view = A.canonical_view(img, "rar", 256)
    assert var_view.shape == rar_view.shape == (3, 256, 256)
    expected = img.resize((384, 288), Image.Resampling.LANCZOS).crop((64, 16, 320, 272))
    assert torch.equal(var_view, torch.from_numpy(np.asarray(expected).copy()).permute(2, 0, 1).float() / 255)
    assert not torch.equal(var_view, rar_view)


def test_torn_jsonl_line_is_dropped(tmp_path):
    path = tmp_path / "x.jsonl"
    R.append_jsonl(path, [{"a": 1}, {"a": 2}])
    with open(path, "a") as fh:
        fh.write('{"a": ')
    assert R.read_jsonl(path, repair=True) == [{"a": 1}, {"a": 2}]
    R.append_jsonl(path, [{"a": 3}])
    assert R.read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}]
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(MempruneError, match="line 2"):
        R.read_jsonl(path)


def test_grid_class_names_come_from_an_image_folder(tmp_path):
    """The extraction grid names classes when the data does (ImageFolder sub-folders), else says ``class N``."""
    from PIL import Image

    from memprune.evaluators.audit_run import _class_names

    for name in ("cats", "dogs"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "data" / name / "a.png")
    assert _class_names(tmp_path / "data", None) == ["cats", "dogs"]
    assert _class_names(None, None) is None and _class_names(tmp_path / "list.csv", None) is None
