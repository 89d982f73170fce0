"""The MLflow model registry as the server reads it: a version's sha256 tag and its ONNX file, no mlflow needed.

    ref = parse_models_uri("models:/ganops-generator@champion")      # or models:/ganops-generator/3
    registry = RestRegistry("http://mlflow:5000", headers=auth_headers(os.environ))
    version = registry.resolve(ref)              # RegisteredVersion(version=3, sha256="ab12...", run_id=...)
    registry.download(version, Path("/tmp/part"))   # the version's model.onnx, as the registry holds it

A tracking server (what a deployment talks to) is read over its REST API with the standard library,
so the slim serving environment stays free of mlflow: the version by alias or number
(`registered-models/alias`, `model-versions/get`), where its files are (`model-versions/get-download-uri`)
and the file itself through the server's artifact proxy (`mlflow-artifacts/artifacts/...`, on by default
in `mlflow server`). A local store (sqlite:, file:) has no REST API: ganops.registry_local reads it with the
mlflow package (the full environment), with the same two calls; serving.model_source picks one of the two.
Credentials come from MLflow's own variables: MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MODEL_FILE = "model.onnx"  # MLflow's onnx flavor's name for the file inside a logged model
SHA256_TAG = "model_sha256"  # the version tag export sets (ganops.tracking.Tracker.log_onnx_model)
TRAIN_RUN_TAG = "train_run_id"  # the training run, the lineage header's run (export.run_export)
TIMEOUT_S = 30.0  # per HTTP call: a registry that does not answer fails the load, not the server
_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[0-9]+))")


class RegistryError(RuntimeError):
    """The registry cannot be reached, or has no such model, alias or version."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed `models:/<name>@<alias>` (alias set) or `models:/<name>/<version>` (version set)."""

    uri: str
    name: str
    alias: str | None
    version: str | None


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of a registered model, as far as serving needs it."""

    name: str
    version: int
    sha256: str | None  # the model_sha256 tag, lower-case; None when the version has none
    run_id: str  # the training run (train_run_id tag), else the run that logged the model


def is_models_uri(spec: str) -> bool:
    """A registry URI (`models:/...`) rather than a file path."""
    return spec.startswith("models:/")


def parse_models_uri(uri: str) -> ModelRef:
    """`models:/<name>@<alias>` or `models:/<name>/<version>`; ValueError for anything else."""
    m = _URI.fullmatch(uri)
    if m is None:
        raise ValueError(f"{uri!r} is not a model registry URI: use models:/<name>@<alias> "
                         "(e.g. models:/ganops-generator@champion) or models:/<name>/<version>")
    return ModelRef(uri=uri, name=m["name"], alias=m["alias"], version=m["version"])


def registered_version(name: str, version: str, tags: Mapping[str, str], run_id: str) -> RegisteredVersion:
    sha = tags.get(SHA256_TAG)
    return RegisteredVersion(name=name, version=int(version), sha256=sha.strip().lower() if sha else None,
                             run_id=tags.get(TRAIN_RUN_TAG) or run_id or "")


class RestRegistry:
    """A tracking server's registry over HTTP (standard library only)."""

    def __init__(self, base_url: str, *, headers: Mapping[str, str]):
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)

    def _open(self, url: str):
        request = urllib.request.Request(url, headers=self.headers)
        try:
            return urllib.request.urlopen(request, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as e:
            body = e.read(4096).decode("utf-8", "replace")
            try:
                message = json.loads(body).get("message", body)
            except ValueError:
                message = body
            raise RegistryError(f"the MLflow server at {self.base_url} answered {e.code}: {message.strip()[:300]}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RegistryError(f"cannot reach the MLflow server at {self.base_url} ({reason}): is it running, "
                                "and is MLFLOW_TRACKING_URI its address?") from None

    def _get(self, path: str, **query: str) -> dict:
        with self._open(f"{self.base_url}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}") as response:
            return json.load(response)

    def resolve(self, ref: ModelRef) -> RegisteredVersion:
        """The version the alias names now (or the numbered version), with its tags."""
        if ref.alias is not None:
            found = self._get("registered-models/alias", name=ref.name, alias=ref.alias)
        else:
            found = self._get("model-versions/get", name=ref.name, version=ref.version)
        mv = found["model_version"]
        tags = {t["key"]: t.get("value", "") for t in mv.get("tags", [])}
        return registered_version(ref.name, mv["version"], tags, mv.get("run_id", ""))

    def download(self, version: RegisteredVersion, dest: Path) -> None:
        """Write the version's ONNX file to `dest`, through the server's artifact proxy."""
        found = self._get("model-versions/get-download-uri", name=version.name, version=str(version.version))
        root = urllib.parse.urlsplit(found["artifact_uri"])
        if root.scheme == "mlflow-artifacts":
            # The proxy's own host when the URI names one (MLflow's client does the same), else this server.
            base = f"{urllib.parse.urlsplit(self.base_url).scheme}://{root.netloc}" if root.netloc else self.base_url
            path = urllib.parse.quote(f"{root.path.strip('/')}/{MODEL_FILE}")
            with self._open(f"{base}/api/2.0/mlflow-artifacts/artifacts/{path}") as response, open(dest, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        elif root.scheme == "file" and (local := Path(urllib.request.url2pathname(root.path), MODEL_FILE)).is_file():
            shutil.copyfile(local, dest)  # a store this machine mounts too
        else:
            raise RegistryError(
                f"{version.name} v{version.version}'s files are at {found['artifact_uri']}, which the slim "
                "environment cannot read: run the tracking server with artifact proxying (mlflow server "
                "--artifacts-destination <dir or bucket>, the default) or serve from the full environment")


def auth_headers(environ: Mapping[str, str]) -> dict[str, str]:
    """MLflow's credentials variables as HTTP headers: a bearer token, else basic auth, else none."""
    if environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {environ['MLFLOW_TRACKING_TOKEN']}"}
    if environ.get("MLFLOW_TRACKING_USERNAME"):
        pair = f"{environ['MLFLOW_TRACKING_USERNAME']}:{environ.get('MLFLOW_TRACKING_PASSWORD', '')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    return {}
