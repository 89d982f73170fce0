"""Byte-reproducibility: `dvc repro -f` twice from scratch gives identical outputs, bar the MLflow ids."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch
import yaml

from conftest import REPO
from pipeline_repo import make_pipeline_repo

# MLflow 3.17 itself triggers this SQLAlchemy deprecation when it opens a store.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

# Outputs that legitimately differ between two runs, and why. Everything else must be byte-identical.
RUN_ID_FILE = "reports/train/mlflow_run.json"  # a new MLflow run id each run
ONNX_FILE = "models/generator.onnx"            # its metadata records that run id ...
ONNX_SIDECAR = "models/generator.onnx.sha256"  # ... and so does its hash
EXPORT_REPORT = "reports/export.json"          # the run id (metadata) and sha256 of that ONNX file,
# and registered_version: each export registers a new version of ganops-generator in the same store.
GENERATOR_JSON = "models/gan/generator.json"   # lineage.mlflow_run_id
CHECKPOINT = "models/checkpoints/last.pt"      # run_id, so that a resume continues the same run
DETAILS_JSON = "reports/evaluate/details.json"  # generator_lineage.mlflow_run_id
CHECKED_SEPARATELY = {RUN_ID_FILE, ONNX_FILE, ONNX_SIDECAR, EXPORT_REPORT, GENERATOR_JSON, CHECKPOINT,
                      DETAILS_JSON}


def _lock_outs(repo_dir: Path) -> dict[str, str]:
    """{out path: md5 from dvc.lock} for every stage's outs (metrics and plots included)."""
    lock = yaml.safe_load((repo_dir / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def _file_hashes(repo_dir: Path, outs: list[str]) -> dict[str, str]:
    """sha256 of every file under the given outputs (directories walked), keyed by relative path.

    Per file, so that a difference names the file rather than a directory's aggregate hash.
    """
    hashes = {}
    for out in outs:
        path = repo_dir / out
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.name == ".gitignore":
                continue
            hashes[str(f.relative_to(repo_dir))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return hashes


def _code_hashes() -> dict[str, str]:
    """sha256 of the installed (editable) package the stages run (their scripts are copied at the start)."""
    files = sorted((REPO / "src" / "ganops").rglob("*.py"))
    return {str(f.relative_to(REPO)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _onnx_without_run_id(path: Path) -> tuple[bytes, str]:
    """The model serialized with its mlflow_run_id metadata blanked, and that run id."""
    model = onnx.load(str(path))
    run_ids = [p for p in model.metadata_props if p.key == "mlflow_run_id"]
    assert len(run_ids) == 1, f"{path}: expected one mlflow_run_id metadata prop, got {len(run_ids)}"
    run_id = run_ids[0].value
    run_ids[0].value = ""
    return model.SerializeToString(deterministic=True), run_id


def _same(a: object, b: object, where: str) -> list[str]:
    """Where two loaded checkpoints differ (tensors compared exactly), as readable paths."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if sorted(a, key=str) != sorted(b, key=str):
            return [f"{where} keys"]
        return [d for k in a for d in _same(a[k], b[k], f"{where}[{k!r}]")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def _snapshot(repo_dir: Path, outs: list[str], into: Path) -> None:
    """Copy the outputs checked separately, since the second run overwrites them."""
    for out in outs:
        if (repo_dir / out).exists():
            (into / out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo_dir / out, into / out)


@pytest.mark.slow
def test_repro_twice_is_byte_identical(tmp_path: Path):
    repo = make_pipeline_repo(tmp_path)
    first = tmp_path / "first"
    code_before = _code_hashes()

    repo.run("dvc repro -f")
    outs1 = _lock_outs(repo.path)
    files1 = _file_hashes(repo.path, list(outs1))
    _snapshot(repo.path, sorted(CHECKED_SEPARATELY), first)
    # models/checkpoints is persist: true, so DVC keeps it; without removing it the second run
    # would resume at the final step and retrain nothing.
    shutil.rmtree(repo.path / "models" / "checkpoints")
    repo.run("dvc repro -f")
    outs2 = _lock_outs(repo.path)
    files2 = _file_hashes(repo.path, list(outs2))
    # Stages import ganops from the working tree: an edit between the two runs is not a
    # reproducibility failure, and would otherwise read like one.
    code_after = _code_hashes()
    edited = sorted(f for f in {*code_before, *code_after} if code_before.get(f) != code_after.get(f))
    assert edited == [], f"the code changed while this test ran, so the runs are not comparable: {edited}"

    assert sorted(outs1) == sorted(outs2)
    assert sorted(files1) == sorted(files2), "the two runs wrote different sets of files"
    run_id1 = json.loads((first / RUN_ID_FILE).read_text())["run_id"]
    run_id2 = json.loads((repo.path / RUN_ID_FILE).read_text())["run_id"]
    differing = sorted(f for f in files1 if files1[f] != files2[f] and f not in CHECKED_SEPARATELY)
    # Say which of them merely record the run id (a new legitimate difference to list above).
    with_run_id = [f for f in differing if run_id2.encode() in (repo.path / f).read_bytes()]
    assert differing == [], (f"not byte-identical between two `dvc repro -f`: {differing}; "
                             f"of these, {with_run_id} contain the MLflow run id")
    assert CHECKPOINT in files1, "the checkpoint's final content is compared too"

    # The known differences are exactly the MLflow run id (and what records it).
    assert run_id1 != run_id2, "the second run from scratch should have been a new MLflow run"

    onnx1, onnx_run1 = _onnx_without_run_id(first / ONNX_FILE)
    onnx2, onnx_run2 = _onnx_without_run_id(repo.path / ONNX_FILE)
    assert (onnx_run1, onnx_run2) == (run_id1, run_id2)
    assert onnx1 == onnx2, f"{ONNX_FILE} differs beyond its mlflow_run_id metadata"
    for label, d in (("first", first), ("second", repo.path)):
        sidecar = (d / ONNX_SIDECAR).read_text().split()[0]
        assert sidecar == hashlib.sha256((d / ONNX_FILE).read_bytes()).hexdigest(), label

    gen1 = json.loads((first / GENERATOR_JSON).read_text())
    gen2 = json.loads((repo.path / GENERATOR_JSON).read_text())
    assert (gen1["lineage"]["mlflow_run_id"], gen2["lineage"]["mlflow_run_id"]) == (run_id1, run_id2)
    gen1["lineage"]["mlflow_run_id"] = gen2["lineage"]["mlflow_run_id"] = None
    assert gen1 == gen2, f"{GENERATOR_JSON} differs beyond lineage.mlflow_run_id"

    details1 = json.loads((first / DETAILS_JSON).read_text())
    details2 = json.loads((repo.path / DETAILS_JSON).read_text())
    assert (details1["generator_lineage"]["mlflow_run_id"],
            details2["generator_lineage"]["mlflow_run_id"]) == (run_id1, run_id2)
    details1["generator_lineage"]["mlflow_run_id"] = details2["generator_lineage"]["mlflow_run_id"] = None
    assert details1 == details2, f"{DETAILS_JSON} differs beyond generator_lineage.mlflow_run_id"

    ckpt1 = torch.load(first / CHECKPOINT, map_location="cpu", weights_only=True)
    ckpt2 = torch.load(repo.path / CHECKPOINT, map_location="cpu", weights_only=True)
    assert (ckpt1["run_id"], ckpt2["run_id"]) == (run_id1, run_id2)
    ckpt1["run_id"] = ckpt2["run_id"] = None
    assert _same(ckpt1, ckpt2, "last.pt") == [], f"{CHECKPOINT} differs beyond run_id"

    report1 = json.loads((first / EXPORT_REPORT).read_text())
    report2 = json.loads((repo.path / EXPORT_REPORT).read_text())
    assert report1["metadata"]["mlflow_run_id"] == run_id1
    assert report2["metadata"]["mlflow_run_id"] == run_id2
    for r in (report1, report2):
        r["metadata"]["mlflow_run_id"] = r["sha256"] = r["registered_version"] = None
    assert report1 == report2, f"{EXPORT_REPORT} differs beyond run id, ONNX hash and registered version"
