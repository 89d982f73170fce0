"""A local MLflow store's model versions for serving (sqlite:, file:): serving.registry_client's two calls, via mlflow.

    registry = LocalRegistry("sqlite:///mlflow.db")          # what registry_for picks for a non-HTTP store
    version = registry.resolve(parse_models_uri("models:/ganops-generator@champion"))
    registry.download(version, Path("/tmp/part"))

Outside serving/ because it imports mlflow (the full environment only); a tracking server needs none of it.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ganops.serving.registry_client import (
    MODEL_FILE,
    ModelRef,
    RegisteredVersion,
    RegistryError,
    registered_version,
)
from ganops.tracking import mlflow_client, store_description


class LocalRegistry:
    """RestRegistry's `resolve` and `download`, on a store the mlflow package opens directly."""

    def __init__(self, uri: str):
        self.uri = uri
        self._client = mlflow_client(uri)

    def resolve(self, ref: ModelRef) -> RegisteredVersion:
        """The version a models:/ URI names now, with its tags; RegistryError when there is none."""
        from mlflow.exceptions import MlflowException

        try:
            if ref.alias is not None:
                mv = self._client.get_model_version_by_alias(ref.name, ref.alias)
            else:
                mv = self._client.get_model_version(ref.name, ref.version)
        except MlflowException as e:
            raise RegistryError(f"{ref.uri} is not in the registry of {store_description(self.uri)}: {e.message}") from None
        return registered_version(ref.name, mv.version, mv.tags, mv.run_id or "")

    def download(self, version: RegisteredVersion, dest: Path) -> None:
        """Write the version's ONNX file to `dest`."""
        import mlflow

        root = self._client.get_model_version_download_uri(version.name, str(version.version))
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/{MODEL_FILE}", dst_path=tmp,
                                                        tracking_uri=self.uri)
            shutil.copyfile(local, dest)
