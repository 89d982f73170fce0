"""The /v1 API's contract for one model: request models, their parsing, and the documented bodies.

The server validates each request with the very models it publishes in its OpenAPI document, built
for the model it serves (conditional or not, its classes) and its limits (`serve.max_images`), so a
request that the document calls valid is accepted and one that it calls invalid is refused:

    contract = build_contract(conditional=True, num_classes=10, max_images=256)
    body = contract.parse_generate(b'{"seeds": [1, 2], "labels": 3}')   # or raises
    contract.generate_schema()                                           # its JSON Schema
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from ganops.sampling import MAX_SEED

# I-JSON (RFC 7493): integers beyond 2**53 - 1 are not exact in many JSON parsers (JavaScript's
# among them), so a JSON body carries seeds up to this; a URL path takes any seed up to MAX_SEED.
MAX_JSON_SEED = 2**53 - 1
_FORBID = ConfigDict(extra="forbid")


def _whole(value: object) -> object:
    # JSON Schema counts 3.0 as an integer, so this API does too (but never true, "3" or 3.5).
    return int(value) if isinstance(value, float) and value.is_integer() else value


def Int(*, ge: int, le: int) -> object:
    """A JSON integer in [ge, le], in JSON Schema's sense: 3 and 3.0 are both 3."""
    return Annotated[int, Field(strict=True, ge=ge, le=le), BeforeValidator(_whole)]


Seed = Int(ge=0, le=MAX_JSON_SEED)


class BadJson(ValueError):
    """The request body does not parse as JSON (HTTP 400)."""


class ErrorBody(BaseModel):
    """Every error other than 422: what went wrong and how to fix it."""

    detail: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: path, query or body, then the field")
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """422: the request does not match the schema; one entry per problem (at most 10)."""

    detail: list[FieldError]


class ImageItem(BaseModel):
    seed: int
    label: int | None
    png_base64: str


class ImagesBody(BaseModel):
    """POST /v1/generate with "format": "png"."""

    model_sha256: str
    images: list[ImageItem]


def invalid(loc: tuple[str | int, ...], msg: str, kind: str = "value_error") -> RequestValidationError:
    """A 422 in the documented shape, for a rule checked outside pydantic."""
    return RequestValidationError([{"loc": loc, "msg": msg, "type": kind}])


@dataclass(frozen=True)
class Contract:
    conditional: bool
    num_classes: int | None
    max_images: int
    seeds_form: type[BaseModel]  # POST /v1/generate {"seeds": [...]}
    range_form: type[BaseModel]  # POST /v1/generate {"count": n, "start_seed": s}
    interpolate_form: type[BaseModel]

    def generate_schema(self) -> dict:
        # Exactly one form matches: each requires its own key and forbids every other.
        return {"oneOf": [self.seeds_form.model_json_schema(), self.range_form.model_json_schema()]}

    def parse_generate(self, body: bytes) -> BaseModel:
        data = _json_object(body)
        if ("seeds" in data) == ("count" in data):
            raise invalid(("body",), "pass either 'seeds' (a list) or 'count' (with 'start_seed'), not both")
        return _validate(self.seeds_form if "seeds" in data else self.range_form, data)

    def seeds_of(self, form: BaseModel) -> list[int]:
        if isinstance(form, self.seeds_form):
            return form.seeds
        return list(range(form.start_seed, form.start_seed + form.count))

    def parse_interpolate(self, body: bytes) -> BaseModel:
        return _validate(self.interpolate_form, _json_object(body))

    def parse_seed(self, text: str) -> int:
        """A path's seed: decimal digits only, at most MAX_SEED (422 otherwise)."""
        if not (text.isascii() and text.isdigit()):
            raise invalid(("path", "seed"), "Input should be a valid integer", "int_parsing")
        if len(text) > 19 or int(text) > MAX_SEED:  # 19 digits: no 4300-digit int() on the loop
            raise invalid(("path", "seed"), f"Input should be less than or equal to {MAX_SEED}", "less_than_equal")
        return int(text)

    def parse_label(self, text: str | None) -> int | None:
        """The `label` query parameter: required by a conditional model, refused by the others."""
        if not self.conditional:
            if text is not None:
                raise invalid(("query", "label"), "this model is unconditional: do not pass a label")
            return None
        top = self.num_classes - 1
        if text is None:
            raise invalid(("query", "label"), f"this model is conditional: pass a label in [0, {top}]", "missing")
        if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > top:
            raise invalid(("query", "label"), f"label {text[:20]!r} out of range [0, {top}]")
        return int(text)

    def labels_for(self, labels: int | list[int] | None, n: int) -> np.ndarray | None:
        """Image i's class is `labels[i % len(labels)]` (or the one label for all), int64 [n]."""
        if labels is None:
            return None
        if isinstance(labels, int):
            return np.full(n, labels, np.int64)
        return np.resize(np.asarray(labels, np.int64), n)

    def image_parameters(self, *, sha256: str | None) -> list[dict]:
        """OpenAPI parameters of an image URL; `sha256` for the model-versioned one."""
        params = []
        if sha256 is not None:
            params.append({"name": "sha256", "in": "path", "required": True,
                           "description": "the served model's SHA-256 (GET /v1/model names it)",
                           "schema": {"type": "string", "enum": [sha256]}})
        params.append({"name": "seed", "in": "path", "required": True,
                       "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEED}})
        if self.conditional:
            params.append({"name": "label", "in": "query", "required": True,
                           "description": "the class of the image",
                           "schema": {"type": "integer", "minimum": 0, "maximum": self.num_classes - 1}})
        return params


def build_contract(*, conditional: bool, num_classes: int | None, max_images: int,
                   image_shape: tuple[int, ...] = (28, 28)) -> Contract:
    """The request models for a model with (or without) `num_classes` classes, images of
    `image_shape` ([R, R] or [R, R, 3]) and these limits."""
    labels: dict[str, Any] = {}
    label: dict[str, Any] = {}
    if conditional:
        cls = Int(ge=0, le=num_classes - 1)
        labels["labels"] = (
            cls | Annotated[list[cls], Field(min_length=1, max_length=max_images)],
            Field(description="one class for every image, or a list: image i gets labels[i % len(labels)]"),
        )
        label["label"] = (cls, Field(description="the class of every image in the strip"))
    options = {
        "format": (Literal["grid", "png", "npy"], Field(
            "grid", description="grid: one PNG (image/png); png: JSON {images: [{seed, label, png_base64}]}; "
            f"npy: NumPy .npy of uint8 [N, {', '.join(map(str, image_shape))}] (application/octet-stream)")),
        "ncol": (Int(ge=1, le=256), Field(8, description="grid columns")),
    }
    seeds_form = create_model(
        "GenerateSeeds", __config__=_FORBID, __doc__="Images of these seeds, in this order.",
        seeds=(Annotated[list[Seed], Field(min_length=1, max_length=max_images)], Field(description="seeds to render")),
        **labels, **options,
    )
    range_form = create_model(
        "GenerateRange", __config__=_FORBID,
        __doc__="Images of seeds start_seed .. start_seed + count - 1.",
        count=(Int(ge=1, le=max_images), Field(description="how many images")),
        # The largest start leaves room for `max_images` seeds: no count runs past MAX_JSON_SEED.
        start_seed=(Int(ge=0, le=MAX_JSON_SEED - max_images + 1), Field(0)),
        **labels, **options,
    )
    interpolate_form = create_model(
        "Interpolate", __config__=_FORBID, __doc__="A strip of `steps` images from seed_a's latent to seed_b's.",
        seed_a=(Seed, ...), seed_b=(Seed, ...),
        steps=(Int(ge=2, le=max_images), Field(8, description="images, both ends included")),
        method=(Literal["slerp", "lerp"], Field(
            "slerp", description="slerp: spherical interpolation of the latents (default); lerp: linear")),
        **label,
    )
    return Contract(conditional=conditional, num_classes=num_classes if conditional else None,
                    max_images=max_images, seeds_form=seeds_form, range_form=range_form,
                    interpolate_form=interpolate_form)


def _json_object(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BadJson(f"the body is not valid JSON ({e}); send an object such as {{\"seeds\": [1, 2, 3]}}") from None
    if not isinstance(data, dict):
        raise invalid(("body",), "Input should be a valid dictionary or object", "model_type")
    return data


def _validate(model: type[BaseModel], data: dict) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(
            [{"loc": ("body", *err["loc"]), "msg": err["msg"], "type": err["type"]}
             for err in e.errors(include_url=False)]
        ) from None
