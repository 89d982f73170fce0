"""The domain feature extractor: a small CNN trained on the prepared data, saved with its config.

A labelled set trains it to predict the class. An unlabelled folder has no classes, so it trains on
a task that needs none: which of 0, 90, 180 or 270 degrees each image was rotated by (Gidaris et
al., 2018, "Unsupervised representation learning by predicting image rotations"). Telling upright
from rotated needs the shapes and parts that make the images what they are, so the penultimate
features separate real from generated images like class features do, at the same cost; they cannot
see what a rotation does not change (a set of textures, say): Inception FID covers that.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ganops.fileio import write_bytes, write_json
from ganops.data.prepared import image_shape, load_manifest, load_split, manifest_hash

# Bump when the architecture or preprocessing changes: the version string names the feature space
# that fid, kid, precision, ... are measured in, so numbers from different extractors never mix.
ARCH_VERSION = "ganops-cnn-v1"
TASKS = ("classes", "rotation")  # what the head predicts: the set's labels, or the rotation (unlabelled)
ROTATIONS = 4  # the rotation task's classes: k * 90 degrees, k = 0..3
WEIGHTS_FILE = "classifier.pt"
CONFIG_FILE = "classifier.json"


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything needed to rebuild the network: stored beside the weights as JSON."""

    num_classes: int = 10
    width: int = 32  # channels of the first conv; the second has twice as many
    feature_dim: int = 128  # the penultimate layer: the features the metrics use
    resolution: int = 28  # the images' (classifier.json files written before these keys: 28x28 grayscale)
    channels: int = 1
    task: str = "classes"  # TASKS (classifier.json files written before this key: classes)


class Classifier(nn.Module):
    """uint8-derived images [B, C, R, R] in [-1, 1] -> logits [B, num_classes]; `features` -> [B, D]."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        w, s = cfg.width, cfg.resolution // 4
        # Strided convs rather than conv + max-pool: 4-5x less CPU per step for the same accuracy
        # budget (91% on Fashion-MNIST in 3 epochs, about a minute on 2 cores).
        self.body = nn.Sequential(
            nn.Conv2d(cfg.channels, w, 5, stride=2, padding=2), nn.BatchNorm2d(w), nn.ReLU(),  # 28 -> 14
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),  # 14 -> 7
            nn.Flatten(),
            nn.Linear(2 * w * s * s, cfg.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, R, R] or [N, R, R, 3] -> float [N, C, R, R] in [-1, 1], the scaling the discriminator sees."""
    # Converted in numpy: a writable float copy, also of a read-only memory-mapped split's rows.
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)).div_(127.5).sub_(1.0)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over parameter names and bytes: independent of how torch.save lays out the file."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def feature_extractor_version(model: Classifier) -> str:
    task = "" if model.cfg.task == "classes" else f"-{model.cfg.task}"  # class features keep their old names
    return f"{ARCH_VERSION}{task}-{weights_sha256(model)[:12]}"


def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Images [B, C, R, R] each turned by k[i] * 90 degrees counter-clockwise."""
    out = x.clone()
    for quarter in range(1, ROTATIONS):
        pick = k == quarter
        if pick.any():
            out[pick] = torch.rot90(x[pick], quarter, dims=(2, 3))
    return out


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seed torch and force deterministic kernels for the block, restoring the global flag after."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@torch.no_grad()
def extract(
    model: Classifier, images: np.ndarray, *, batch_size: int = 1000, desc: str = "features"
) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [N, D], predicted classes int64 [N]) of uint8 images [N, R, R] or [N, R, R, 3]."""
    model.eval()
    feats, preds = [], []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=len(starts) < 2):
        h = model.features(to_input(images[start : start + batch_size]))
        feats.append(h.numpy())
        preds.append(model.head(h).argmax(dim=1).numpy())
    dim = model.cfg.feature_dim
    if not feats:
        return np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
    return np.concatenate(feats).astype(np.float32), np.concatenate(preds).astype(np.int64)


def save_classifier(directory: str | Path, model: Classifier, extra: dict | None = None) -> dict:
    """Write weights and `classifier.json` (config, feature_extractor_version, `extra`); returns the JSON."""
    directory = Path(directory)
    meta = {
        "config": asdict(model.cfg),
        "feature_extractor_version": feature_extractor_version(model),
        "weights_sha256": weights_sha256(model),
        **(extra or {}),
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # Saved through a buffer: torch.save names the zip records after the (random) temp file name,
    # which would make identical weights differ byte for byte.
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(directory / WEIGHTS_FILE, buf.getvalue())
    write_json(directory / CONFIG_FILE, meta)
    return meta


def load_classifier(directory: str | Path) -> tuple[Classifier, dict]:
    """Rebuild the classifier saved by `save_classifier`: (model in eval mode, its JSON)."""
    directory = Path(directory)
    for p in (directory / CONFIG_FILE, directory / WEIGHTS_FILE):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: run the classifier stage first (dvc repro classifier)")
    meta = json.loads((directory / CONFIG_FILE).read_text())
    model = Classifier(ClassifierConfig(**meta["config"]))
    model.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    model.eval()
    if weights_sha256(model) != meta["weights_sha256"]:
        raise ValueError(
            f"{directory / WEIGHTS_FILE} does not match the weights_sha256 in {directory / CONFIG_FILE}: "
            "the model directory is corrupt; rerun the classifier stage (dvc repro -f classifier)"
        )
    return model, meta


def train_classifier(
    *,
    prepared_dir: str | Path,
    model_dir: str | Path,
    report_path: str | Path,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    width: int,
    feature_dim: int,
    max_steps: int = 0,
) -> dict:
    """Train the CNN on the train split, save it to `model_dir`, write its test accuracy to `report_path`.

    Labelled data: it predicts the class; an unlabelled folder: the rotation (module doc). The
    splits are read memory-mapped, one batch at a time. Deterministic: same data and arguments give
    the same weights (and feature_extractor_version) on the same machine. `max_steps` > 0 stops early
    (tests). Returns the report.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"classifier params must be positive: epochs={epochs}, batch_size={batch_size}, lr={lr}; "
            "fix the classifier section of params.yaml"
        )
    manifest = load_manifest(prepared_dir)
    task = "classes" if manifest.get("labelled", True) else "rotation"
    num_classes = int(manifest["num_classes"]) if task == "classes" else ROTATIONS
    train_x, train_y = load_split(prepared_dir, "train", mmap=True)
    test_x, test_y = load_split(prepared_dir, "test", mmap=True)
    if task == "rotation":  # each test image turned by (index mod 4) quarters: every angle equally often
        test_y = np.arange(len(test_y), dtype=np.int64) % ROTATIONS

    with _deterministic(seed):
        resolution, channels = image_shape(manifest)
        model = Classifier(ClassifierConfig(num_classes=num_classes, width=width, feature_dim=feature_dim,
                                            resolution=resolution, channels=channels, task=task))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        shuffle = torch.Generator().manual_seed(seed)
        n = len(train_y)
        steps_per_epoch = -(-n // batch_size)
        total = steps_per_epoch * epochs if max_steps <= 0 else min(max_steps, steps_per_epoch * epochs)
        # Cosine decay to 0: about a point of test accuracy for free in a 3-epoch budget.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        step = 0
        model.train()
        with tqdm(total=total, desc=f"classifier ({task})", unit="step") as bar:
            for _ in range(epochs):
                order = torch.randperm(n, generator=shuffle)
                for start in range(0, n, batch_size):
                    if step >= total:
                        break
                    # Sorted rows read a memory-mapped split in one forward sweep; the batch is a set.
                    idx = order[start : start + batch_size].sort().values.numpy()
                    x = to_input(train_x[idx])
                    if task == "classes":
                        target = torch.from_numpy(train_y[idx])
                    else:
                        target = torch.randint(ROTATIONS, (len(idx),), generator=shuffle)
                        x = rotate(x, target)
                    loss = nn.functional.cross_entropy(model(x), target)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    schedule.step()
                    step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()

    if task == "rotation":
        test_x = np.array(test_x)
        for quarter in range(1, ROTATIONS):  # np.rot90 over (row, column) turns like torch.rot90 over (H, W)
            test_x[quarter::ROTATIONS] = np.rot90(test_x[quarter::ROTATIONS], quarter, axes=(1, 2))
    _, test_pred = extract(model, test_x, desc="test accuracy")
    accuracy = float((test_pred == test_y).mean()) if len(test_y) else 0.0
    per_class = [
        float((test_pred[test_y == k] == k).mean()) if (test_y == k).any() else 0.0
        for k in range(num_classes)
    ]
    # "accuracy" of what the head predicts: classes, or rotations (a different number, a different name)
    name = "test_accuracy" if task == "classes" else "rotation_accuracy"
    meta = save_classifier(
        model_dir,
        model,
        {
            "dataset": manifest.get("dataset"),
            "data_manifest_sha256": manifest_hash(prepared_dir),
            name: accuracy,
            "train": {"seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr, "steps": step},
        },
    )
    # Flat numbers only (dvc metrics); no timings, so the same run writes the same bytes.
    worst = "min_class_accuracy" if task == "classes" else "min_rotation_accuracy"
    report = {name: accuracy, worst: min(per_class), "train_steps": step}
    write_json(report_path, report)
    return {**report, "task": task, "feature_extractor_version": meta["feature_extractor_version"]}
