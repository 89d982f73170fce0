"""What a model was made from: code commit, uncommitted changes, DVC experiment, data and params hashes."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ganops.data.prepared import load_manifest, manifest_hash
from ganops.params import LINEAGE_SECTIONS, Params, params_hash


def _git(args: list[str], cwd: str | Path) -> str | None:
    """stdout of a git command, or None outside a git repo / without git."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_commit(repo_dir: str | Path = ".") -> str:
    """HEAD's commit, or "" outside a git repo / without git."""
    return (_git(["rev-parse", "HEAD"], repo_dir) or "").strip()


# Files DVC itself rewrites while a pipeline runs: changes to them are not code or config changes.
_DIRTY_EXCLUDES = (":(exclude)dvc.lock", ":(exclude,glob)**/.gitignore")


def lineage_tags(*, manifest_dir: str | Path, params: Params, repo_dir: str | Path = ".") -> dict[str, str]:
    """What a model was made from: code commit, uncommitted changes, DVC experiment, data, params.

    params_sha256 hashes only the sections that shape a model (params_sha256_sections names them):
    changing serve.port or evaluate.seed leaves a model's lineage as it is.

    git_commit/git_dirty are "unknown" outside a git repo. git_dirty counts modified tracked files
    and untracked, non-ignored files, except dvc.lock and .gitignore files, which DVC rewrites
    during `dvc repro` itself.
    """
    load_manifest(manifest_dir)  # a clear error when prepare has not run
    head = _git(["rev-parse", "HEAD"], repo_dir)
    status = _git(["status", "--porcelain", "--", ".", *_DIRTY_EXCLUDES], repo_dir)
    if head is None or status is None:
        commit, dirty = "unknown", "unknown"
    else:
        commit, dirty = head.strip(), "true" if status.strip() else "false"
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "data_manifest_sha256": manifest_hash(manifest_dir),
        "params_sha256": params_hash(params),
        "params_sha256_sections": ",".join(LINEAGE_SECTIONS),
    }


def model_lineage_tags(meta: dict) -> dict[str, str]:
    """A saved generator's lineage (generator.json) as tags, for a run other than its training run."""
    lineage = meta.get("lineage", {})
    return {k: str(v) for k, v in lineage.items() if k != "mlflow_run_id" and v is not None}
