"""A folder of images through the download and prepare stages: the same arrays as the IDX path, and DVC
reruns them when a file's content changes (not its timestamp)."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganops.data.datasets import fetch
from ganops.data.folder import FolderError
from ganops.data.prepare import prepare
from ganops.data.prepared import check_labelled, image_shape, load_manifest, load_split
from ganops.params import DataParams, PrepareParams
from pipeline_repo import make_pipeline_repo, write_synthetic_idx


def _write_folder(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Each split's images as PNGs in root/<split>/<label>/<index>.png (classes "0".."9")."""
    for split, (images, labels) in splits.items():
        for i, (image, label) in enumerate(zip(images, labels)):
            path = root / split / str(label) / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(path)
    return root


def _rows(images: np.ndarray, labels: np.ndarray) -> list[tuple[int, bytes]]:
    """A split as a multiset: sorted (label, pixels) pairs, so the order of the files does not matter."""
    return sorted((int(label), image.tobytes()) for image, label in zip(images, labels))


def test_a_folder_of_pngs_prepares_the_same_arrays_as_its_idx_files(tmp_path: Path):
    idx = write_synthetic_idx(tmp_path / "idx", n_train=120, n_test=40)
    fetch(params=DataParams(dataset="idx", idx_dir=str(idx)), out_dir=tmp_path / "raw-idx")
    prepare(raw_dir=tmp_path / "raw-idx", out_dir=tmp_path / "prepared-idx", params=PrepareParams())
    from_idx = {split: load_split(tmp_path / "prepared-idx", split) for split in ("train", "test")}

    folder = _write_folder(tmp_path / "images", from_idx)
    (folder / "train" / "3" / ".DS_Store").write_bytes(b"\0")  # skipped, counted
    (folder / "notes.txt").write_text("not an image")
    fetch(params=DataParams(dataset="folder", folder=str(folder)), out_dir=tmp_path / "raw-folder")
    manifest = prepare(raw_dir=tmp_path / "raw-folder", out_dir=tmp_path / "prepared-folder",
                       params=PrepareParams())
    for split in ("train", "test"):
        images, labels = load_split(tmp_path / "prepared-folder", split)
        assert images.shape[1:] == (28, 28) and images.dtype == np.uint8
        assert _rows(images, labels) == _rows(*from_idx[split]), split
    assert manifest["classes"] == [str(k) for k in range(10)] and manifest["num_classes"] == 10
    assert manifest["prepare_report"] == {"images": 160, "upscaled": 0, "skipped_hidden": 1,
                                          "skipped_not_an_image": 1}
    check_labelled(tmp_path / "prepared-folder", manifest, what="the classifier")  # labelled: no error


def test_colour_and_larger_folders_are_prepared_at_the_requested_shape(tmp_path: Path):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        for i in range(5):
            path = tmp_path / "images" / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), mode="RGB").save(path)
    fetch(params=DataParams(dataset="folder", folder=str(tmp_path / "images")), out_dir=tmp_path / "raw")
    params = PrepareParams(resolution=32, channels=3, transform="center-crop", test_fraction=0.2)
    manifest = prepare(raw_dir=tmp_path / "raw", out_dir=tmp_path / "prepared", params=params)
    train_x, train_y = load_split(tmp_path / "prepared", "train")
    test_x, test_y = load_split(tmp_path / "prepared", "test")
    assert train_x.shape == (8, 32, 32, 3) and test_x.shape == (2, 32, 32, 3)
    assert sorted(test_y.tolist()) == [0, 1]  # stratified: one held-out image per class
    assert (manifest["resolution"], manifest["channels"], manifest["classes"]) == (32, 3, ["cat", "dog"])
    assert image_shape(manifest) == (32, 3)


def test_unlabelled_folders_and_edits_after_the_inventory(tmp_path: Path):
    for i in range(6):
        Image.fromarray(np.full((28, 28), 40 * i, np.uint8), mode="L").save(tmp_path / f"{i}.png")
    fetch(params=DataParams(dataset="folder", folder=str(tmp_path)), out_dir=tmp_path / "raw")
    manifest = prepare(raw_dir=tmp_path / "raw", out_dir=tmp_path / "prepared", params=PrepareParams(test_fraction=0.5))
    assert manifest["labelled"] is False and manifest["num_classes"] == 1 and manifest["classes"] is None
    with pytest.raises(ValueError, match="unlabelled image folder, but a conditional GAN needs labels"):
        check_labelled(tmp_path / "prepared", load_manifest(tmp_path / "prepared"), what="a conditional GAN")
    # An image edited between the download and prepare stages is caught, not silently mixed in.
    Image.fromarray(np.full((28, 28), 255, np.uint8), mode="L").save(tmp_path / "3.png")
    with pytest.raises(FolderError, match=r"3\.png changed after the download stage inventoried it: rerun dvc repro"):
        prepare(raw_dir=tmp_path / "raw", out_dir=tmp_path / "prepared2", params=PrepareParams(test_fraction=0.5))
    assert not (tmp_path / "prepared2").exists()  # nothing half written


@pytest.mark.slow
def test_dvc_reruns_download_and_prepare_on_content_not_timestamps(tmp_path: Path):
    idx = write_synthetic_idx(tmp_path / "idx", n_train=60, n_test=20)
    fetch(params=DataParams(dataset="idx", idx_dir=str(idx)), out_dir=tmp_path / "raw-idx")
    prepare(raw_dir=tmp_path / "raw-idx", out_dir=tmp_path / "prepared-idx", params=PrepareParams())
    folder = _write_folder(tmp_path / "images", {s: load_split(tmp_path / "prepared-idx", s) for s in ("train", "test")})
    repo = make_pipeline_repo(tmp_path / "p", stages=["prepare"], params_overrides={
        "data.dataset": "folder", "data.folder": str(folder), "prepare.subset": 0})
    first = repo.run("dvc repro")
    assert "inventoried 80 images" in first.stdout, first.stdout
    assert json.loads((repo.path / "data/prepared/manifest.json").read_text())["train"]["count"] == 60
    repo.run("git add -A && git commit -q -m folder")

    some = sorted((folder / "train").rglob("*.png"))[0]
    os.utime(some, (1, 1))  # a timestamp alone: nothing to redo
    assert "up to date" in repo.run("dvc status").stdout
    Image.fromarray(np.zeros((28, 28), np.uint8), mode="L").save(some)  # an edit: download and prepare rerun
    again = repo.run("dvc repro")
    assert "Running stage 'download'" in again.stdout and "Running stage 'prepare'" in again.stdout
    (folder / "test" / some.parent.name / "extra.png").write_bytes(some.read_bytes())  # an added file
    added = repo.run("dvc repro")
    assert "inventoried 81 images" in added.stdout
    assert json.loads((repo.path / "data/prepared/manifest.json").read_text())["test"]["count"] == 21


def test_decoding_in_worker_processes_gives_the_same_arrays(tmp_path: Path, monkeypatch):
    import ganops.data.prepare as prepare_module

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((30, 20), 10 * i, np.uint8), mode="L").save(tmp_path / "images" / label / f"{i}.png")
    fetch(params=DataParams(dataset="folder", folder=str(tmp_path / "images")), out_dir=tmp_path / "raw")
    one = prepare(raw_dir=tmp_path / "raw", out_dir=tmp_path / "one", params=PrepareParams())
    monkeypatch.setattr(prepare_module, "DECODE_CHUNK", 5)  # 5 chunks over 2 worker processes
    many = prepare(raw_dir=tmp_path / "raw", out_dir=tmp_path / "many", params=PrepareParams())
    assert many == one  # the manifest holds every array's SHA-256 and the upscaled count
    assert one["prepare_report"]["upscaled"] == 24  # 20 px wide: upscaled to 28, and counted


@pytest.mark.slow
def test_an_unlabelled_colour_folder_runs_the_whole_pipeline_to_a_served_rgb_png(tmp_path: Path):
    """Loose non-square RGB images (no class folders) -> dvc repro (every stage, 32 px RGB: the
    rotation classifier, label-free metrics, the quality curve) -> ONNX -> ganops serve."""
    import httpx
    from _serving import decode_png, running

    from ganops.params import ServeParams
    from ganops.serving.app import create_app
    from ganops.serving.inference import OnnxGenerator

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for k, name in enumerate(("blue", "green", "red")):
        for i in range(40):
            pixels = rng.integers(0, 60, (30, 40, 3), dtype=np.uint8)
            pixels[2:14, 10:20, 2 - k] = 220  # a coloured block hanging from the top: it has an upright
            Image.fromarray(pixels, mode="RGB").save(tmp_path / "images" / f"{name}-{i:02d}.png")
    repo = make_pipeline_repo(tmp_path / "p", params_overrides={
        "data.dataset": "folder", "data.folder": str(tmp_path / "images"), "prepare.subset": 0,
        "prepare.resolution": 32, "prepare.channels": 3, "prepare.transform": "center-crop",
        "prepare.test_fraction": 0.5})
    out = repo.run("dvc repro")
    assert "60 train / 60 test images of 32x32x3, unlabelled" in out.stdout, out.stdout
    assert "unlabelled set: rotation accuracy" in out.stdout, out.stdout
    classifier = json.loads((repo.path / "reports/classifier.json").read_text())
    assert set(classifier) == {"rotation_accuracy", "min_rotation_accuracy", "train_steps"}
    metrics = json.loads((repo.path / "reports/evaluate/metrics.json").read_text())
    assert np.isfinite(metrics["fid"]) and metrics["fid_real"] < metrics["fid"]  # scored against a real floor
    assert 0 <= metrics["upright_rate"] <= 1 and "class_coverage" not in metrics and "class_accuracy" not in metrics
    curve = (repo.path / "reports/train/quality.csv").read_text().splitlines()
    assert curve[0].startswith("step,") and len(curve) >= 2  # the per-epoch curve scored without labels
    assert Image.open(repo.path / "reports/evaluate/samples.png").mode == "RGB"
    assert Image.open(repo.path / "reports/evaluate/class_histogram.png").size[0] > 0  # the rotation histogram

    generator = OnnxGenerator.from_onnx(repo.path / "models/generator.onnx", providers="cpu")
    assert (generator.resolution, generator.channels, generator.image_shape) == (32, 3, (32, 32, 3))
    assert not generator.conditional
    expected = generator.generate([7])[0]
    with running(create_app(generator=generator, config=ServeParams(providers="cpu"), api_key=None)) as url:
        r = httpx.get(f"{url}/v1/images/7.png")
        info = httpx.get(f"{url}/v1/model").json()
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).mode == "RGB"
    assert np.array_equal(decode_png(r.content), expected)
    assert (info["resolution"], info["channels"]) == (32, 3)
