"""A DVC remote round trip: push, lose cache and outputs, pull, and the pipeline is up to date."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline_repo import make_pipeline_repo

pytestmark = pytest.mark.slow


def cached_outputs(dvc_yaml: Path) -> list[str]:
    """Outputs DVC caches (and so pushes): outs/metrics/plots without `cache: false`."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    paths = []
    for stage in stages.values():
        for kind, default in (("outs", True), ("metrics", True), ("plots", True)):
            for entry in stage.get(kind, []):
                path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
                if (options or {}).get("cache", default):
                    paths.append(path)
    return paths


def file_hashes(root: Path, paths: list[str]) -> dict[str, str]:
    """sha256 of every file under `paths` (files or directories), keyed by repo-relative path."""
    hashes = {}
    for path in paths:
        target = root / path
        for f in sorted([target] if target.is_file() else target.rglob("*")):
            if f.is_file():
                hashes[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return hashes


def test_push_then_pull_into_an_empty_cache_restores_an_up_to_date_pipeline(tmp_path):
    # Push and pull are the same DVC mechanics for every stage: three stages' files and directories do.
    repo = make_pipeline_repo(tmp_path, stages=["download", "prepare", "classifier"])
    repo.run("dvc repro")
    # What a user commits after a run: dvc.lock, DVC's .gitignore entries, the uncached outputs.
    repo.run("git add -A && git commit -q -m 'reproduce the pipeline'")
    remote = tmp_path / "remote"
    repo.run(["dvc", "remote", "add", "-d", "local", remote])
    repo.run("git commit -q -am 'add the DVC remote'")

    outputs = cached_outputs(repo.path / "dvc.yaml")
    assert {"data/raw", "data/prepared"} <= set(outputs)
    before = file_hashes(repo.path, outputs)
    assert len(before) >= 10
    # The objects the remote must hold: each cached output's hash and, for a directory, its files'.
    cache = repo.path / ".dvc" / "cache" / "files" / "md5"
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text())
    expected = set()
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] in outputs:
                expected.add(out["md5"])
                if out["md5"].endswith(".dir"):
                    manifest = json.loads((cache / out["md5"][:2] / out["md5"][2:]).read_text())
                    assert len(manifest) == out["nfiles"]
                    expected.update(entry["md5"] for entry in manifest)
    pushed = repo.run(["dvc", "push"]).stdout
    assert f"{len(expected)} files pushed" in pushed, pushed
    md5s = remote / "files" / "md5"
    assert {f.parent.name + f.name for f in md5s.rglob("*") if f.is_file()} == expected

    shutil.rmtree(repo.path / ".dvc" / "cache")
    for path in outputs:
        target = repo.path / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    missing = repo.run(["dvc", "status"]).stdout
    assert "deleted:" in missing and "data/prepared" in missing

    repo.run(["dvc", "pull"])
    assert file_hashes(repo.path, outputs) == before

    again = repo.run(["dvc", "repro"]).stdout
    for name in lock["stages"]:
        assert f"Stage '{name}' didn't change, skipping" in again
    assert "Running stage" not in again
    assert repo.run(["dvc", "status"]).stdout.strip() == "Data and pipelines are up to date."
    assert "Cache and remote 'local' are in sync." in repo.run(["dvc", "status", "--cloud"]).stdout
    assert repo.run(["git", "status", "--porcelain"]).stdout == ""  # dvc.lock untouched
