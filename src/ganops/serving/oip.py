"""The Open Inference Protocol (KServe's "v2" REST API) beside /v1, on the same generator and micro-batcher.

    GET  /v2                                   server metadata: name, version, extensions
    GET  /v2/health/live | /v2/health/ready    200, or 400 (the protocol's "4xx is false") while not ready
    GET  /v2/models/ganops-generator           model metadata: its input and output tensors
    GET  /v2/models/ganops-generator/ready     200, or 400 while not ready
    POST /v2/models/ganops-generator/infer     seeds or latents in, UINT8 images out

Each model route also answers under `/versions/<sha256>`: the model's one version is the SHA-256 of
the ONNX file (/v1's X-Ganops-Model-Sha256), its name the MLflow registered model's. Infer takes
`seed` INT64 [N] or `z` FP32 [N, z_dim], plus `label` INT64 [N] on a conditional model, as JSON or
as binary tensors (the binary tensor data extension, tritonclient's default), and returns `image`
UINT8 [N, R, R] (RGB: [N, R, R, 3]): the pixels of /v1's PNGs for the same seeds. Every error body
is the protocol's {"error": "..."}; health answers have no body.

    add_oip_routes(app, svc)    # by create_app, beside the /v1 router
"""
from __future__ import annotations

import asyncio
import functools
import json
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)
from starlette.requests import ClientDisconnect

from ganops import __version__
from ganops.sampling import MAX_SEED, latents
from ganops.serving.batcher import Overloaded, ShuttingDown
from ganops.serving.contract import Int
from ganops.serving.guard import key_matches
from ganops.serving.service import Service, service

MODEL_NAME = "ganops-generator"  # the MLflow registered model's name (ganops.export.REGISTERED_MODEL)
PLATFORM = "onnx_onnxv1"  # the protocol's platform name for an ONNX model run by ONNX Runtime
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "Inference-Header-Content-Length"  # the JSON part's length when binary tensors follow it
FP32_MAX = float(np.finfo(np.float32).max)  # a JSON number beyond it is no FP32
# Little-endian, as the binary extension lays tensors out.
DTYPES = {"INT64": np.dtype("<i8"), "FP32": np.dtype("<f4")}


class OipError(Exception):
    """A refused request, answered {"error": message} with `status` (by the handler add_oip_routes installs)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The protocol's error body, {"error": "..."}."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _oip_error(request: Request, exc: OipError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.headers)


# --- documented bodies ----------------------------------------------------------------------------


def _no_default(schema: dict) -> None:
    # An optional field without a default: a documented `"default": null` would be a value the API refuses.
    schema.pop("default", None)


def _optional(kind: Any, description: str) -> Any:
    return Annotated[kind, Field(None, description=description, json_schema_extra=_no_default)]


# A tensor carries its elements in "data" or, with the binary extension, after the JSON: one of the two.
_DATA_OR_BINARY = {"oneOf": [{"required": ["data"]},
                             {"required": ["parameters"], "properties": {"parameters": {"required": ["binary_data_size"]}}}]}
# A conditional model's two inputs, in either order: one 'seed' or 'z', and one 'label'.
_ONE_EACH = {"allOf": [
    {"contains": {"properties": {"name": {"enum": ["seed", "z"]}}}, "minContains": 1, "maxContains": 1},
    {"contains": {"properties": {"name": {"const": "label"}}}, "minContains": 1, "maxContains": 1}]}
Scalar = StrictStr | StrictInt | StrictFloat | StrictBool  # a parameter's value, in the protocol
Fp32 = Annotated[float, Field(strict=True, ge=-FP32_MAX, le=FP32_MAX)]


class InputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Scalar]
    binary_data_size: _optional(Int(ge=0, le=2**63 - 1), "the tensor is this many bytes after the JSON (binary extension)")


class OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Scalar]
    binary_data: _optional(StrictBool, "return this output as binary data (overrides binary_data_output)")


class RequestParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Scalar]
    binary_data_output: _optional(StrictBool, "return every output as binary data")


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["image"]
    parameters: _optional(OutputParameters, "binary_data")


class OipErrorBody(BaseModel):
    """Every v2 error: the protocol's error object."""

    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ResponseOutput(BaseModel):
    name: Literal["image"]
    datatype: Literal["UINT8"]
    shape: list[int]
    parameters: _optional(dict[str, int], "binary_data_size: the tensor's bytes after the JSON")
    data: _optional(list[Annotated[int, Field(ge=0, le=255)]], "the pixels, row-major (JSON outputs)")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: _optional(str, "the request's id")
    outputs: list[ResponseOutput]


# --- one model's contract: its tensors, and the parsing of an inference request -------------------


@dataclass(frozen=True)
class Inference:
    """What an inference request asks for: latents, labels, and how to send the images back."""

    z: np.ndarray  # float32 [N, z_dim]
    labels: np.ndarray | None  # int64 [N], conditional models only
    id: str | None
    binary_output: bool


@dataclass(frozen=True)
class OipContract:
    """The v2 tensors of one model, and the request model that the OpenAPI document publishes.

        oip = build_oip_contract(z_dim=100, conditional=False, num_classes=None, image_shape=(28, 28), max_images=256)
        request = oip.parse(body, header_length=None)    # or raises OipError(400)
    """

    z_dim: int
    conditional: bool
    num_classes: int | None
    image_shape: tuple[int, ...]
    max_images: int
    request_model: type[BaseModel]

    def metadata(self, version: str) -> dict:
        inputs = [{"name": "seed", "datatype": "INT64", "shape": [-1]},
                  {"name": "z", "datatype": "FP32", "shape": [-1, self.z_dim]}]
        if self.conditional:
            inputs.append({"name": "label", "datatype": "INT64", "shape": [-1]})
        return {"name": MODEL_NAME, "versions": [version], "platform": PLATFORM, "inputs": inputs,
                "outputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, *self.image_shape]}]}

    def parse(self, body: bytes, header_length: str | None) -> Inference:
        """An inference request's body (JSON, then binary tensors when `header_length` is given)."""
        header, binary = _split(body, header_length)
        try:
            data = json.loads(header, parse_constant=_no_constant)
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise OipError(400, f"the inference request is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise OipError(400, "the inference request must be a JSON object with 'inputs'")
        self._check_names(data.get("inputs"))  # before the schema, whose messages would say less
        try:
            form = self.request_model.model_validate(data)
        except ValidationError as e:
            raise OipError(400, _messages(e)) from None
        tensors = _tensors(form.inputs, binary)
        if "seed" in tensors:
            seeds = tensors["seed"]
            if seeds.min() < 0:  # binary INT64 can be negative; the JSON form is checked by the model
                raise OipError(400, f"seeds must be in [0, {MAX_SEED}], got {int(seeds.min())}")
            z = latents(seeds.tolist(), self.z_dim)
        else:
            z = tensors["z"]
            if not np.isfinite(z).all():
                raise OipError(400, "the latents 'z' must be finite numbers")
        labels = tensors.get("label")
        if labels is not None:
            if labels.shape[0] != z.shape[0]:
                raise OipError(400, f"'label' has {labels.shape[0]} elements for {z.shape[0]} images: pass one per image")
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise OipError(400, f"labels must be in [0, {self.num_classes - 1}]")
        binary_output = bool(form.parameters and form.parameters.binary_data_output)
        if form.outputs and form.outputs[0].parameters and form.outputs[0].parameters.binary_data is not None:
            binary_output = form.outputs[0].parameters.binary_data  # a named output's choice wins
        return Inference(z=z, labels=labels, id=form.id, binary_output=binary_output)


    def _check_names(self, inputs: object) -> None:
        """Which inputs: 'seed' or 'z', each once, and 'label' exactly when the model is conditional."""
        names = [i.get("name") for i in inputs if isinstance(i, dict)] if isinstance(inputs, list) else []
        if not names:
            return  # no inputs to name: the schema says what is missing
        if not self.conditional and "label" in names:
            raise OipError(400, "this model is unconditional: do not pass a 'label' input")
        if self.conditional and "label" not in names:
            raise OipError(400, f"this model is conditional: pass a 'label' input (INT64 [N], in [0, {self.num_classes - 1}])")
        if "seed" in names and "z" in names:
            raise OipError(400, "pass one of the inputs 'seed' (INT64 [N]) or 'z' (FP32 [N, z_dim]), not both")
        for name in ("seed", "z", "label"):
            if names.count(name) > 1:
                raise OipError(400, f"input {name!r} appears {names.count(name)} times: pass it once")


@functools.lru_cache(maxsize=8)
def build_oip_contract(*, z_dim: int, conditional: bool, num_classes: int | None,
                       image_shape: tuple[int, ...], max_images: int) -> OipContract:
    """The v2 contract of a model with latents of `z_dim`, images of `image_shape`, at most `max_images` per request."""
    count = Int(ge=1, le=max_images)
    one_dim = Annotated[list[count], Field(min_length=1, max_length=1)]

    def tensor(name: str, datatype: str, shape: Any, data: Any, doc: str) -> type[BaseModel]:
        return create_model(
            f"{name.capitalize()}Input", __config__=ConfigDict(extra="forbid", json_schema_extra=_DATA_OR_BINARY),
            __doc__=doc,
            name=(Literal[name], ...), datatype=(Literal[datatype], ...), shape=(shape, ...),
            parameters=(_optional(InputParameters, "binary_data_size, for a binary tensor"), None),
            data=(_optional(data, "the elements, row-major (flat or nested); or binary_data_size"), None),
        )

    def per_image(kind: Any) -> Any:
        return Annotated[list[kind], Field(min_length=1, max_length=max_images)]

    inputs = [
        tensor("seed", "INT64", one_dim, per_image(Int(ge=0, le=MAX_SEED)),
               "Seeds: image i is /v1's image of seed i (its latent is ganops.sampling.latent)."),
        tensor("z", "FP32", tuple[count, Literal[z_dim]],
               Annotated[list[Fp32], Field(min_length=z_dim, max_length=max_images * z_dim)]
               | per_image(Annotated[list[Fp32], Field(min_length=z_dim, max_length=z_dim)]),
               "Latents, instead of seeds: one row of z_dim numbers per image."),
    ]
    if conditional:
        inputs.append(tensor("label", "INT64", one_dim, per_image(Int(ge=0, le=num_classes - 1)),
                             "The class of each image (conditional models)."))
    request_model = create_model(
        "InferenceRequest", __doc__="Open Inference Protocol inference request: 'seed' or 'z'"
        + (", and 'label'" if conditional else "") + "; other top-level keys are ignored.",
        id=(_optional(StrictStr, "echoed in the response"), None),
        parameters=(_optional(RequestParameters, "binary_data_output"), None),
        inputs=(Annotated[list[Annotated[Union[tuple(inputs)], Field(discriminator="name")]],
                          Field(min_length=len(inputs) - 1, max_length=len(inputs) - 1,
                                json_schema_extra=_ONE_EACH if conditional else None)], ...),
        outputs=(_optional(Annotated[list[RequestedOutput], Field(max_length=1)], "default: 'image'"), None),
    )
    return OipContract(z_dim=z_dim, conditional=conditional, num_classes=num_classes if conditional else None,
                       image_shape=tuple(image_shape), max_images=max_images, request_model=request_model)


def contract_of(svc: Service) -> OipContract:
    """The contract of the model `svc` serves now (built once per kind of model)."""
    g = svc.generator
    return build_oip_contract(z_dim=g.z_dim, conditional=g.conditional, num_classes=g.num_classes,
                              image_shape=g.image_shape, max_images=svc.config.max_images)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # Python's json would read NaN and Infinity


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of a request body."""
    if header_length is None:
        return body, b""
    # 19 digits at most: int() of a 5000-digit header would raise, not refuse.
    if not (header_length.isascii() and header_length.isdigit() and len(header_length) <= 19) \
            or int(header_length) > len(body):
        raise OipError(400, f"{HEADER_LENGTH} must be the JSON part's length in bytes, at most the "
                            f"body's {len(body)}; got {header_length[:20]!r}")
    n = int(header_length)
    return body[:n], body[n:]


def _messages(e: ValidationError) -> str:
    """A pydantic error as one line per problem (at most 5), each with where: inputs[0].shape[0]: ..."""
    lines = []
    for err in e.errors(include_url=False)[:5]:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        too_many = err["loc"][-2:] == ("shape", 0) and err["type"] == "less_than_equal"
        hint = " (serve.max_images, per request)" if too_many else ""
        lines.append(f"{where or 'body'}: {err['msg']}{hint}")
    return "invalid inference request: " + "; ".join(lines)


def _tensors(inputs: list[BaseModel], binary: bytes) -> dict[str, np.ndarray]:
    """Each input's array in its declared shape, from its JSON data or its slice of the binary part."""
    out, offset = {}, 0
    for tensor in inputs:
        if tensor.parameters and "shared_memory_region" in tensor.parameters.model_extra:
            raise OipError(400, "the shared-memory extensions are not supported: send 'data' or binary tensors")
        size = tensor.parameters.binary_data_size if tensor.parameters else None
        if size is not None and tensor.data is not None:
            raise OipError(400, f"input {tensor.name!r} has both 'data' and parameters.binary_data_size: pass one")
        if size is None and tensor.data is None:
            raise OipError(400, f"input {tensor.name!r} has no 'data' (and no parameters.binary_data_size)")
        shape, dtype = tuple(tensor.shape), DTYPES[tensor.datatype]
        count = math.prod(shape)
        if size is not None:
            if size != count * dtype.itemsize:
                raise OipError(400, f"input {tensor.name!r} of shape {list(shape)} is {count * dtype.itemsize} "
                                    f"bytes of {tensor.datatype}, but binary_data_size is {size}")
            chunk = binary[offset : offset + size]
            if len(chunk) < size:
                raise OipError(400, f"the binary part ends before input {tensor.name!r}'s {size} bytes "
                                    f"(send {HEADER_LENGTH} with the JSON part's length)")
            offset += size
            array = np.frombuffer(chunk, dtype)
        else:
            array = np.asarray(tensor.data, dtype)
            if array.size != count:
                raise OipError(400, f"input {tensor.name!r} has shape {list(shape)} ({count} elements) but "
                                    f"{array.size} elements of data")
        out[tensor.name] = array.reshape(shape).astype(dtype.newbyteorder("="), copy=False)
    if offset != len(binary):
        raise OipError(400, f"the body has {len(binary)} bytes after the JSON part, but the inputs' "
                            f"binary_data_size add up to {offset}")
    return out


# --- routes -----------------------------------------------------------------------------------------


def _ready(svc: Service) -> bool:
    return svc.ready and not svc.batcher.closing


def _check_model(svc: Service, request: Request) -> None:
    """404 unless the path names the model served (and its version, when it names one)."""
    name = request.path_params["model_name"]
    if name != MODEL_NAME:
        raise OipError(404, f"unknown model {name[:80]!r}: this server serves {MODEL_NAME!r}")
    version = request.path_params.get("model_version")
    if version is not None and version != svc.generator.sha256:
        raise OipError(404, f"unknown version {version[:80]!r} of {MODEL_NAME!r}: this server serves "
                            f"version {svc.generator.sha256} (the model's SHA-256)")


async def server_metadata() -> dict:
    """The server: its name, version and protocol extensions."""
    return {"name": "ganops", "version": __version__, "extensions": EXTENSIONS}


async def server_live() -> Response:
    """The process answers (no body)."""
    return Response(status_code=200)


async def server_ready(request: Request) -> Response:
    """200 once the model is loaded and warmed up; 400 before that and while shutting down (no body)."""
    return Response(status_code=200 if _ready(service(request)) else 400)


async def model_metadata(request: Request) -> dict:
    """The model's name, version (its SHA-256), platform, and input and output tensors."""
    svc = service(request)
    _check_model(svc, request)
    return contract_of(svc).metadata(svc.generator.sha256)


async def model_ready(request: Request) -> Response:
    """200 when the model is ready for inference, else 400 (no body)."""
    svc = service(request)
    _check_model(svc, request)
    return Response(status_code=200 if _ready(svc) else 400)


async def infer(request: Request) -> Response:
    """Images of seeds (or latents, and labels), micro-batched with /v1's requests."""
    svc = service(request)
    _check_model(svc, request)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise OipError(415, f"Content-Encoding {encoding[:40]!r} is not supported: send the body uncompressed")
    body = await _read_body(request, svc.config.max_body_bytes)
    asked = contract_of(svc).parse(body, request.headers.get(HEADER_LENGTH))
    try:
        images = await svc.batcher.submit(asked.z, asked.labels)
    except ShuttingDown as e:  # the client's retry should reach a server that is staying up
        raise OipError(503, f"{e}; retry later", {"Retry-After": "1", "Connection": "close"}) from None
    except Overloaded as e:
        raise OipError(503, f"server overloaded: {e}; retry later", {"Retry-After": "1"}) from None
    svc.images.inc(len(images))
    head: dict = {"model_name": MODEL_NAME, "model_version": svc.generator.sha256}
    if asked.id is not None:
        head["id"] = asked.id
    output = {"name": "image", "datatype": "UINT8", "shape": list(images.shape)}
    head["outputs"] = [output]
    if asked.binary_output:
        output["parameters"] = {"binary_data_size": images.nbytes}
        header = json.dumps(head).encode()
        return Response(header + images.tobytes(), media_type="application/octet-stream",
                        headers={**svc.lineage, HEADER_LENGTH: str(len(header))})
    # A batch of 256 images is 200 000 numbers or more: encode them off the event loop.
    data = await asyncio.to_thread(_json_with_data, head, output, images)
    return Response(data, media_type="application/json", headers=svc.lineage)


def _json_with_data(head: dict, output: dict, images: np.ndarray) -> bytes:
    output["data"] = images.ravel().tolist()
    return json.dumps(head, separators=(",", ":")).encode()


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes `limit` bytes: a huge body is never held in memory."""
    too_big = OipError(413, f"request body over the {limit}-byte limit (serve.max_body_bytes)")
    length = request.headers.get("content-length")
    if length is not None and (not (length.isascii() and length.isdigit()) or len(length) > 19 or int(length) > limit):
        raise too_big
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
    except ClientDisconnect:
        raise OipError(400, "client disconnected") from None
    return b"".join(chunks)


# --- the router ---------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False)
_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


async def require_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_key_header)],
) -> None:
    """/v1's rule (Bearer or X-API-Key), answered with the protocol's error body."""
    if not key_matches(service(request).api_key, credentials and credentials.credentials, header_key):
        raise OipError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                       {"WWW-Authenticate": "Bearer"})


def _doc(description: str, model: Any = None, content: dict | None = None, headers: dict | None = None) -> dict:
    out: dict = {"description": description}
    for key, value in (("model", model), ("content", content), ("headers", headers)):
        if value is not None:
            out[key] = value
    return out


_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_NO_BODY = {}  # health answers: the status is the answer


def _inline(schema: dict) -> dict:
    """A JSON Schema with its `#/$defs/...` references replaced by their definitions: inside an OpenAPI
    document such a reference would point at the document's root."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        return [resolve(v) for v in node] if isinstance(node, list) else node

    return resolve(schema)


def add_oip_routes(app: FastAPI, svc: Service) -> None:
    """The /v2 routes for `svc`'s model, documented for it; model routes need the API key when set."""
    app.add_exception_handler(OipError, _oip_error)
    tags = ["v2 (Open Inference Protocol)"]
    health = APIRouter(prefix="/v2", tags=tags)
    health.add_api_route("", server_metadata, response_model=None, responses={200: _doc("the server", ServerMetadata)})
    health.add_api_route("/health/live", server_live, response_class=Response,
                         responses={200: _doc("alive", content=_NO_BODY)})
    health.add_api_route("/health/ready", server_ready, response_class=Response, responses={
        200: _doc("ready", content=_NO_BODY),
        400: _doc("not ready: warming up, warm-up failed, or shutting down", content=_NO_BODY)})
    app.include_router(health)

    auth = {401: _doc("missing or wrong API key", OipErrorBody)} if svc.api_key else {}
    models = APIRouter(prefix="/v2/models/{model_name}", tags=tags, responses={
        **auth, 404: _doc("another model or version: GET /v2/models/" + MODEL_NAME, OipErrorBody)},
        dependencies=[Depends(require_key)] if svc.api_key else [])
    name = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string", "enum": [MODEL_NAME]}}
    version = {"name": "model_version", "in": "path", "required": True, "description": "the model's SHA-256",
               "schema": {"type": "string", "enum": [svc.generator.sha256]}}
    # Inference-Header-Content-Length is described, not listed as a parameter: its one right value (the
    # JSON part's length) is no JSON Schema, so a fuzzer would send wrong ones on every valid body.
    body = {"description": f"{infer.__doc__} Binary tensor data extension: send {HEADER_LENGTH}, the JSON part's length in "
            "bytes, and the tensors with parameters.binary_data_size right after the JSON, in input order.",
            "requestBody": {"required": True, "content": {
        "application/json": {"schema": _inline(contract_of(svc).request_model.model_json_schema())},
        # The same JSON, then the binary tensors it announces (binary_data_size), in input order.
        **_BINARY}}}
    infer_docs = {
        200: _doc("the images: JSON, or (binary_data_output / binary_data) the JSON then the raw tensor",
                  InferenceResponse, content=_BINARY,
                  headers={HEADER_LENGTH: {"description": "with a binary output: the JSON part's length",
                                           "required": False, "schema": {"type": "string"}}}),
        400: _doc("a malformed request or one this model cannot run", OipErrorBody),
        413: _doc("the body is over serve.max_body_bytes", OipErrorBody),
        415: _doc("a compressed body (Content-Encoding)", OipErrorBody),
        503: _doc("overloaded or shutting down: retry after Retry-After seconds", OipErrorBody),
    }
    for prefix, params in (("", [name]), ("/versions/{model_version}", [name, version])):
        models.add_api_route(prefix, model_metadata, response_model=None, openapi_extra={"parameters": params},
                             responses={200: _doc("the model's tensors", ModelMetadata)})
        models.add_api_route(prefix + "/ready", model_ready, response_class=Response,
                             openapi_extra={"parameters": params}, responses={
                                 200: _doc("ready", content=_NO_BODY),
                                 400: _doc("not ready: warming up or shutting down", content=_NO_BODY)})
        models.add_api_route(prefix + "/infer", infer, methods=["POST"], response_class=Response,
                             openapi_extra={"parameters": params, **body}, responses=infer_docs)
    app.include_router(models)
