"""The MLflow model registry of ganops-generator: version tags and the aliases champion and challenger.

    registry = Registry()                              # the store tracking_uri() names
    registry.set_tags(4, {"model_sha256": "ab12..."})
    registry.set_alias(CHALLENGER, 4)
    registry.alias_version(CHAMPION)                   # 3, or None when no version holds it
"""
from __future__ import annotations

from collections.abc import Mapping

from ganops.tracking import TrackingError, mlflow_client, store_description, tracking_uri

REGISTERED_MODEL = "ganops-generator"
CHALLENGER = "challenger"  # the latest version export registered
CHAMPION = "champion"  # the version to deploy: moved only by promotion (ganops.promote)


class Registry:
    """One registered model's versions, their tags and its aliases, in one MLflow store."""

    def __init__(self, name: str = REGISTERED_MODEL, *, uri: str | None = None):
        self.name = name
        self.uri = uri or tracking_uri()
        self._client = mlflow_client(self.uri)

    def tags(self, version: int) -> dict[str, str]:
        """The version's tags; TrackingError naming the store when it has no such version."""
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        try:
            return dict(self._client.get_model_version(self.name, str(version)).tags)
        except MlflowException as e:
            raise TrackingError(
                f"{self.name} v{version} is not in the MLflow registry of {store_description(self.uri)}: "
                "a reset store, or another one (MLFLOW_TRACKING_URI); rerun the export stage "
                "(dvc repro -f export) to register the model again") from e

    def set_tags(self, version: int, tags: Mapping[str, object], *, replace_prefix: str = "") -> None:
        """Set `tags` on the version; with `replace_prefix`, first drop its tags under that prefix
        that `tags` lacks (a rescored version must not keep a metric it no longer has)."""
        if replace_prefix:
            for key in self.tags(version):
                if key.startswith(replace_prefix) and key not in tags:
                    self._client.delete_model_version_tag(self.name, str(version), key)
        for key, value in tags.items():
            self._client.set_model_version_tag(self.name, str(version), key, str(value))

    def alias_version(self, alias: str) -> int | None:
        """The version `alias` names, or None (no such alias, or no such model yet)."""
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        try:
            aliases = self._client.get_registered_model(self.name).aliases
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise TrackingError(f"MLflow store {store_description(self.uri)} cannot be read: {e}") from e
        return int(aliases[alias]) if alias in aliases else None

    def set_alias(self, alias: str, version: int) -> None:
        """Point `alias` at the version (MLflow moves it off whichever version held it)."""
        self._client.set_registered_model_alias(self.name, alias, str(version))
