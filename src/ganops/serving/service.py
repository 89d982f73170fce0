"""What the server's routes share: one Service per app and model (generator, batcher, contract, limits, lineage)."""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from prometheus_client import Counter

from ganops.params import ServeParams
from ganops.serving.batcher import MicroBatcher
from ganops.serving.contract import Contract
from ganops.serving.inference import OnnxGenerator
from ganops.serving.prometheus import Metrics


@dataclass
class Service:
    """What the routes share; one per app, at `app.state.service`."""

    generator: OnnxGenerator
    config: ServeParams
    api_key: str | None
    batcher: MicroBatcher
    metrics: Metrics  # the server's, shared by every model it has served
    images: Counter  # ganops_images_total of this model
    contract: Contract
    lineage: dict[str, str]  # the lineage headers of every image response
    lineage_raw: list[tuple[bytes, bytes]]  # the same, encoded once for the image GETs
    classes: list[str]
    index_html: bytes
    ready: bool = False
    warmup_error: str | None = None

    @property
    def cache_scope(self) -> str:
        # With a key, a shared cache must not hand protected images to clients without one.
        return "private" if self.api_key else "public"

    def image_path(self, seed: int | str) -> str:
        return f"/v1/models/{self.generator.sha256}/images/{seed}.png"


def service(request: Request) -> Service:
    """The app's Service, for a route."""
    return request.app.state.service
