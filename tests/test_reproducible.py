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

# Outputs that exist to record the MLflow run, so differ between two runs; everything else (the model
# in models/gan, the ONNX file and its sha256 included) must be byte-identical.
RUN_ID_FILE = "reports/train/mlflow_run.json"      # a new MLflow run id each run
ONNX_RUN_FILE = "models/generator.onnx.run.json"   # the run and the registered version of the export
EXPORT_REPORT = "reports/export.json"              # the same, beside the export's facts
PROMOTE_REPORT = "reports/promote.json"            # a decision against the registry's champion of the time
CHECKPOINTS = ("models/checkpoints/last.pt",)  # run_id: a resume continues the same run
CHECKED_SEPARATELY = {RUN_ID_FILE, ONNX_RUN_FILE, EXPORT_REPORT, PROMOTE_REPORT, *CHECKPOINTS}
ONNX_FILE, ONNX_SIDECAR = "models/generator.onnx", "models/generator.onnx.sha256"


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
    assert set(CHECKPOINTS) <= set(files1), "the checkpoints' final content is compared too"

    # The known differences are exactly the MLflow run id (and what records it).
    assert run_id1 != run_id2, "the second run from scratch should have been a new MLflow run"

    assert ONNX_FILE in files1 and "models/gan/generator.json" in files1  # compared byte for byte above
    assert "mlflow_run_id" not in {p.key for p in onnx.load(str(repo.path / ONNX_FILE)).metadata_props}
    sidecar = (repo.path / ONNX_SIDECAR).read_text().split()[0]
    assert sidecar == hashlib.sha256((repo.path / ONNX_FILE).read_bytes()).hexdigest()

    for name in CHECKPOINTS:
        ckpt1 = torch.load(first / name, map_location="cpu", weights_only=True)
        ckpt2 = torch.load(repo.path / name, map_location="cpu", weights_only=True)
        assert (ckpt1["run_id"], ckpt2["run_id"]) == (run_id1, run_id2), name
        ckpt1["run_id"] = ckpt2["run_id"] = None
        assert _same(ckpt1, ckpt2, name) == [], f"{name} differs beyond run_id"

    run1, run2 = (json.loads((d / ONNX_RUN_FILE).read_text()) for d in (first, repo.path))
    assert (run1["mlflow_run_id"], run2["mlflow_run_id"]) == (run_id1, run_id2)
    report1, report2 = (json.loads((d / EXPORT_REPORT).read_text()) for d in (first, repo.path))
    assert report1["sha256"] == report2["sha256"] == sidecar  # identical weights, identical ONNX hash
    for r in (report1, report2):
        r["mlflow_run_id"] = r["model_run_id"] = r["registered_version"] = None
    assert report1 == report2, f"{EXPORT_REPORT} differs beyond the run ids and registered version"

    # The pipeline's promote stage: the first version had no champion to beat; the second, the same
    # model scored the same, does not beat itself by promote.margin, so the champion stays.
    promote1, promote2 = (json.loads((d / PROMOTE_REPORT).read_text()) for d in (first, repo.path))
    assert (promote1["decision"], promote1["reason"], promote1["champion"]) == ("promoted", "no champion yet", 1)
    assert (promote2["decision"], promote2["version"], promote2["champion"]) == ("refused", 2, 1), promote2
    assert promote2["challenger_value"] == promote2["champion_value"]
    assert promote2["reason"].startswith(f"{promote2['metric']} ") and "is not below champion v1's" in promote2["reason"]
