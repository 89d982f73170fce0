"""The server's GANOPS_* environment overrides of params.yaml's `serve` section (ganops.params.ServeParams)."""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping

from ganops.params import ServeParams

ENV_PREFIX = "GANOPS_"
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


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
