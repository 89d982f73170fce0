"""The server's one configuration type, params.yaml's `serve` section, and its GANOPS_* overrides.

`ganops.params` loads the section from params.yaml into this same class; it lives here, apart from
the YAML loader, because a slim serving environment has no PyYAML.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass

ENV_PREFIX = "GANOPS_"
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


@dataclass(frozen=True)
class ServeParams:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 64  # most images in one micro-batched ONNX Runtime call
    max_wait_ms: float = 2.0  # how long a micro-batch waits to fill
    queue_size: int = 256  # requests waiting; beyond it the server answers 503
    max_images: int = 256  # per request (and interpolation steps)
    max_body_bytes: int = 65536
    micro_batching: bool = True  # false: one ONNX Runtime call per request (the benchmark's baseline)
    cache_max_age_s: int = 31536000  # max-age of the model-versioned image URLs (they never change)
    providers: str = "auto"  # auto | cpu | cuda
    ort_threads: int = 1  # ONNX Runtime intra-op threads; 0 = one per core (measured: see README)

    def __post_init__(self):
        for name in ("max_batch", "queue_size", "max_images", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_images < 2:
            raise ValueError(f"serve.max_images must be at least 2 (an interpolation has two ends), "
                             f"got {self.max_images}")
        if self.max_wait_ms < 0 or self.cache_max_age_s < 0 or self.ort_threads < 0:
            raise ValueError(
                "serve.max_wait_ms, serve.cache_max_age_s and serve.ort_threads must be >= 0; got "
                f"{self.max_wait_ms}, {self.cache_max_age_s}, {self.ort_threads}"
            )
        if not 0 <= self.port <= 65535:
            raise ValueError(f"serve.port must be in [0, 65535], got {self.port}")


def with_env(base: ServeParams, environ: Mapping[str, str]) -> ServeParams:
    """`base` with every GANOPS_<FIELD> variable present in `environ` applied (typed, checked)."""
    hints = typing.get_type_hints(ServeParams)
    changes: dict[str, object] = {}
    for f in dataclasses.fields(ServeParams):
        name = ENV_PREFIX + f.name.upper()
        if name not in environ:
            continue
        raw, kind = environ[name].strip(), hints[f.name]
        try:
            if kind is bool:
                if raw.lower() not in _TRUE + _FALSE:
                    raise ValueError(raw)
                changes[f.name] = raw.lower() in _TRUE
            else:
                changes[f.name] = kind(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not a valid {kind.__name__}") from None
    return dataclasses.replace(base, **changes)


def api_key_from_env(environ: Mapping[str, str]) -> str | None:
    """GANOPS_API_KEY, or None when unset or empty (an empty key would let everyone in anyway)."""
    return environ.get(ENV_PREFIX + "API_KEY") or None
