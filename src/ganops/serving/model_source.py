"""Where the served model comes from: a file checked against its sidecar, or a registry version fetched into a cache.

    source = ModelSource(spec="models:/ganops-generator@champion", expect_sha256=None, verify=True,
                         cache_dir=default_cache_dir(os.environ))     # or spec="models/generator.onnx"
    fetched = source.fetch()     # Fetched(path=<cache>/<sha256>.onnx, sha256=..., description="models:/...@champion (v3)")
    generator = load_generator(fetched, providers="cpu", intra_op_threads=1)

A registry version's bytes are downloaded into `cache_dir` as `<sha256>.onnx`, beside the sidecars an
export writes (`.sha256`, `.run.json`: the lineage headers), and checked against the version's
`model_sha256` tag before they are kept: a mismatch is refused and nothing is served. The name is the
hash, so a cached file is reused only when it still hashes to it (every load hashes the bytes it runs).
Each `fetch()` asks the registry again, so after the alias moved the next one fetches the new version;
a server drops the version it switched away from (`release`), so its cache holds one model or two.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ganops.fileio import sha256_file, write_bytes, write_json
from ganops.serving.inference import RUN_SIDECAR, OnnxGenerator, read_sidecar_sha256
from ganops.serving.registry_client import (
    SHA256_TAG,
    RegisteredVersion,
    RegistryError,
    RestRegistry,
    auth_headers,
    is_models_uri,
    parse_models_uri,
)

if TYPE_CHECKING:  # the full environment's reader of a local store, for annotations only
    from ganops.registry_local import LocalRegistry

log = logging.getLogger("ganops.serving.model_source")


class ModelVerificationError(RuntimeError):
    """The model's SHA-256 is not the one recorded at export (or there is nothing to check it against)."""


@dataclass(frozen=True)
class Fetched:
    """A model on local disk, its verified SHA-256, and where it came from (for logs and /admin/reload)."""

    path: Path
    sha256: str
    description: str


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """GANOPS_CACHE_DIR, else $XDG_CACHE_HOME/ganops/models, else ~/.cache/ganops/models."""
    if environ.get("GANOPS_CACHE_DIR"):
        return Path(environ["GANOPS_CACHE_DIR"])
    base = Path(environ["XDG_CACHE_HOME"]) if environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "ganops" / "models"


def verify_model(*, model_path: str | Path, expect_sha256: str | None, verify: bool) -> str:
    """Hash the model and check it against `expect_sha256` and the `<model>.sha256` sidecar.

    Returns the hex digest. Raises ModelVerificationError on a mismatch (always: `verify=False`
    only allows a model with nothing to check against, it never allows a wrong one), or when there
    is nothing to check against and `verify` is true.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelVerificationError(
            f"{model_path} not found: export a model first (dvc repro export writes models/generator.onnx)"
        )
    actual = sha256_file(model_path)
    fix = "re-export it (dvc repro export) or restore the exported file; --no-verify skips this check"
    if expect_sha256 is not None and expect_sha256.strip().lower() != actual:
        raise ModelVerificationError(
            f"{model_path} has sha256 {actual}, but the expected sha256 (--expect-sha256 / "
            f"GANOPS_MODEL_SHA256) is {expect_sha256.strip().lower()}: {fix}"
        )
    try:
        recorded = read_sidecar_sha256(model_path)
    except ValueError as e:
        raise ModelVerificationError(str(e)) from e
    if recorded is not None and recorded != actual:
        raise ModelVerificationError(
            f"{model_path} has sha256 {actual}, but {model_path}.sha256 recorded {recorded} at "
            f"export: the model changed after export; {fix}"
        )
    if recorded is None and expect_sha256 is None:
        if not verify:
            log.warning("--no-verify: serving %s (sha256 %s) unchecked: no sidecar, no expected hash",
                        model_path, actual)
            return actual
        raise ModelVerificationError(
            f"cannot verify {model_path}: no sidecar {model_path}.sha256 and no --expect-sha256 / "
            f"GANOPS_MODEL_SHA256 (its sha256 is {actual}); copy the sidecar written by the export "
            "stage beside the model, pass the expected hash, or pass --no-verify"
        )
    return actual


@dataclass(frozen=True)
class ModelSource:
    """A file path or a `models:/` URI, and how to check what it gives (see the module docstring)."""

    spec: str
    expect_sha256: str | None  # --expect-sha256: pins one model, so a reload to another is refused
    verify: bool  # False: a model with nothing to check against is allowed (never a mismatching one)
    cache_dir: Path  # where registry versions are downloaded to

    def fetch(self) -> Fetched:
        """The model as it is now: checked, on local disk. Raises ModelVerificationError, RegistryError, ValueError."""
        if not is_models_uri(self.spec):
            digest = verify_model(model_path=self.spec, expect_sha256=self.expect_sha256, verify=self.verify)
            return Fetched(path=Path(self.spec), sha256=digest, description=self.spec)
        return self._fetch_registered()

    def _fetch_registered(self) -> Fetched:
        ref = parse_models_uri(self.spec)
        registry = registry_for(os.environ)
        version = registry.resolve(ref)
        described = f"{self.spec} (v{version.version})"
        expected = {h.strip().lower() for h in (version.sha256, self.expect_sha256) if h}
        if not expected and self.verify:
            raise ModelVerificationError(
                f"cannot verify {described}: the version has no {SHA256_TAG} tag (the export stage sets it) "
                "and no --expect-sha256 / GANOPS_MODEL_SHA256 is given; tag it, pass the hash, or --no-verify")
        if len(expected) > 1:
            raise ModelVerificationError(
                f"{described} has the {SHA256_TAG} tag {version.sha256}, but the expected sha256 (--expect-sha256 "
                f"/ GANOPS_MODEL_SHA256) is {self.expect_sha256.strip().lower()}: nothing is served")
        want = next(iter(expected), None)
        path = self.cache_dir / f"{want}.onnx"
        if want is None or not path.is_file() or sha256_file(path) != want:
            path = self._download(registry, version, want, described)
        else:
            log.info("%s: sha256 %s, already in %s", described, want, self.cache_dir)
        write_bytes(Path(f"{path}.sha256"), f"{path.stem}  {path.name}\n".encode())
        write_json(Path(f"{path}{RUN_SIDECAR}"), {"mlflow_run_id": version.run_id, "registered_model": version.name,
                                                  "registered_version": version.version})
        return Fetched(path=path, sha256=path.stem, description=described)

    def release(self, fetched: Fetched) -> None:
        """Forget a model the server no longer serves: a registry version's cached files are deleted (a
        later fetch downloads it again); a file source is never touched."""
        if is_models_uri(self.spec) and fetched.path.parent == self.cache_dir:
            for suffix in ("", ".sha256", RUN_SIDECAR):
                Path(f"{fetched.path}{suffix}").unlink(missing_ok=True)

    def _download(self, registry: RestRegistry | LocalRegistry, version: RegisteredVersion, want: str | None,
                  described: str) -> Path:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.cache_dir, prefix=".download-", suffix=".part")
        os.close(fd)
        part = Path(name)
        try:
            registry.download(version, part)
            actual = sha256_file(part)
            if want is not None and actual != want:
                raise ModelVerificationError(
                    f"{described} downloaded with sha256 {actual}, but its {SHA256_TAG} tag (or --expect-sha256) "
                    f"says {want}: the registry's file or its tag changed after export; nothing is served")
            if want is None:
                log.warning("--no-verify: serving %s (sha256 %s) unchecked: no %s tag, no expected hash",
                            described, actual, SHA256_TAG)
            path = self.cache_dir / f"{actual}.onnx"
            os.replace(part, path)
            log.info("%s: sha256 %s, downloaded to %s", described, actual, path)
            return path
        finally:
            part.unlink(missing_ok=True)


def load_generator(fetched: Fetched, *, providers: str, intra_op_threads: int) -> OnnxGenerator:
    """Load a fetched model; refuse it when the bytes loaded are not the bytes verified (the file changed)."""
    generator = OnnxGenerator.from_onnx(fetched.path, providers=providers, intra_op_threads=intra_op_threads)
    if generator.sha256 != fetched.sha256:
        raise ModelVerificationError(
            f"{fetched.path} changed while it was loaded (sha256 {fetched.sha256} -> {generator.sha256}); "
            "load it again once the file is in place"
        )
    return generator


def registry_for(environ: Mapping[str, str]) -> RestRegistry | LocalRegistry:
    """The registry MLFLOW_TRACKING_URI names: a server over REST; a local store, or none set (the repository's
    own), through ganops.registry_local and the mlflow package (the full environment only)."""
    uri = environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith(("http://", "https://")):
        return RestRegistry(uri, headers=auth_headers(environ))
    if importlib.util.find_spec("mlflow") is None:
        raise RegistryError(
            "a models:/ URI needs MLFLOW_TRACKING_URI=http(s)://<tracking server> in this environment "
            f"(it has no mlflow package for {uri or 'the repository store'!r})")
    from ganops.registry_local import LocalRegistry
    from ganops.tracking import tracking_uri

    return LocalRegistry(uri or tracking_uri())
