"""Sample-quality metrics on feature vectors: FID, KID, precision/recall/density/coverage, class coverage."""
from __future__ import annotations

import contextlib
import io

import numpy as np

PR_NEAREST_K = 3  # precision/recall neighbourhood (Kynkäänniemi et al. 2019)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) of features [N, D], both float64, covariance with N - 1."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    tr (S1 S2)^(1/2) is computed as the sum of square roots of the eigenvalues of the symmetric PSD
    matrix S1^(1/2) S2 S1^(1/2), which has the same eigenvalues as S1 S2. Unlike scipy's sqrtm of
    the non-symmetric product (pytorch-fid, TTUR) it needs no eps retry, has no imaginary parts to
    drop, and gives exactly 0 for identical statistics even when rank-deficient (50 samples of 128-d:
    sqrtm gives -4e-6); on full-rank covariances the two agree to ~1e-9 relative.
    """
    from scipy import linalg

    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    w, v = linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    middle = root1 @ sigma2 @ root1
    eig = linalg.eigvalsh((middle + middle.T) / 2.0)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(value, 0.0)  # rounding can leave -1e-12 where the true value is 0


def check_kid_sizes(*, n_real: int, n_fake: int, subsets: int, subset_size: int) -> None:
    """Raise ValueError naming the evaluate param when the sets are too small for KID's subsets."""
    n = min(n_real, n_fake)
    if not 2 <= subset_size <= n:
        raise ValueError(
            f"evaluate.kid_subset_size={subset_size} must be in [2, {n}] (there are {n_fake} "
            f"generated and {n_real} real samples): lower it or raise num_samples"
        )
    if subsets < 1:
        raise ValueError(f"evaluate.kid_subsets={subsets} must be at least 1")


def check_nearest_k(*, n_real: int, n_fake: int, nearest_k: int) -> None:
    """Raise ValueError naming the evaluate param when the sets are too small for the k-NN metrics."""
    k = max(nearest_k, PR_NEAREST_K)
    if nearest_k < 1 or min(n_real, n_fake) < k + 2:  # the k-th neighbour besides the point itself
        raise ValueError(
            f"evaluate.nearest_k={nearest_k} (and {PR_NEAREST_K} for precision/recall) needs at least "
            f"{k + 2} samples in each set, got {n_real} real and {n_fake} generated: lower "
            "evaluate.nearest_k or raise num_samples"
        )


def poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between two equal-size sets under the cubic kernel k(a, b) = (a.b / d + 1)^3.

    Same-set pairs skip the diagonal (i != j): that is what makes the estimate unbiased, so two sets
    from one distribution score about 0, either sign. Equals torchmetrics' `poly_mmd` (tests).
    """
    m, d = x.shape
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(
    real: np.ndarray, fake: np.ndarray, *, subsets: int, subset_size: int, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018) in any feature space: (mean, std).

    `poly_mmd2` in float64 over `subsets` pairs of random subsets of `subset_size`, drawn without
    replacement from each set. (Written here rather than imported from torchmetrics, whose import
    alone takes seconds in every evaluate stage.)
    """
    n_real, n_fake = len(real), len(fake)
    check_kid_sizes(n_real=n_real, n_fake=n_fake, subsets=subsets, subset_size=subset_size)
    rng = np.random.Generator(np.random.PCG64(seed))
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    scores = np.empty(subsets)
    for i in range(subsets):
        r = rng.choice(n_real, subset_size, replace=False)
        f = rng.choice(n_fake, subset_size, replace=False)
        scores[i] = poly_mmd2(real[r], fake[f])
    return float(scores.mean()), float(scores.std())  # std with 1/n, as torchmetrics


def prdc(real: np.ndarray, fake: np.ndarray, *, nearest_k: int) -> dict[str, float]:
    """precision and recall (k=3) and density and coverage (k=`nearest_k`) with the `prdc` package.

    Precision/recall are Kynkäänniemi et al. 2019, density/coverage Naeem et al. 2020 (the package's
    authors), who recommend k=3 for the former and k=5 for the latter.
    """
    from prdc import compute_prdc

    check_nearest_k(n_real=len(real), n_fake=len(fake), nearest_k=nearest_k)
    real = np.asarray(real, np.float32)
    fake = np.asarray(fake, np.float32)
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        pr = compute_prdc(real, fake, PR_NEAREST_K)
        dc = pr if nearest_k == PR_NEAREST_K else compute_prdc(real, fake, nearest_k)
    return {
        "precision": float(pr["precision"]),
        "recall": float(pr["recall"]),
        "density": float(dc["density"]),
        "coverage": float(dc["coverage"]),
    }


def class_histogram(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts per class, int64 [num_classes]."""
    classes = np.asarray(classes, dtype=np.int64)
    if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"class ids must be in [0, {num_classes}), got {classes.min()}..{classes.max()}")
    return np.bincount(classes, minlength=num_classes).astype(np.int64)


def class_coverage(generated: np.ndarray, real: np.ndarray) -> float:
    """sum_k min(p_gen(k), p_real(k)) of two class histograms: 1 when the class shares match,
    dropping by each missing class's real share (1 - total variation distance)."""
    generated, real = np.asarray(generated, np.float64), np.asarray(real, np.float64)
    if generated.shape != real.shape or generated.sum() <= 0 or real.sum() <= 0:
        raise ValueError(f"need two non-empty histograms of the same length, got {generated} and {real}")
    return float(np.minimum(generated / generated.sum(), real / real.sum()).sum())
