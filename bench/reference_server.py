"""The anchor `ganops serve` must beat: a plain Starlette app calling the ONNX Runtime session per request.

    .venv/bin/python bench/reference_server.py --model models/generator.onnx --port 8001 --ort-threads 1

GET /v1/images/{seed}.png only: seed -> latent -> one session call -> PNG, in Starlette's thread
pool (a plain `def` endpoint), nothing else: no batching, no validation beyond the int route.
"""
from __future__ import annotations

import argparse
import io

import numpy as np
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ganops.serving.inference import OnnxGenerator
from ganops.sampling import latent, to_uint8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ort-threads", type=int, default=1)
    args = parser.parse_args()
    generator = OnnxGenerator.from_onnx(args.model, providers="cpu", intra_op_threads=args.ort_threads)
    labels = np.zeros(1, np.int64) if generator.conditional else None  # class 0, like the bench's ?label=0

    def image(request: Request) -> Response:
        z = latent(request.path_params["seed"], generator.z_dim)[None]
        buf = io.BytesIO()  # Pillow, as a plain server would encode (ganops has its own encoder)
        Image.fromarray(to_uint8(generator.run(z, labels))[0], mode="L").save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    app = Starlette(routes=[Route("/v1/images/{seed:int}.png", image)])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
