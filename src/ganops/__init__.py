"""ganops: a reproducible GAN pipeline for small images (28, 32 or 64 px, grayscale or RGB), from raw bytes to an ONNX server."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["OnnxGenerator", "__version__"]


def __getattr__(name: str):
    # Imported on first use so that `import ganops` stays light (no onnxruntime, no torch).
    if name == "OnnxGenerator":
        from ganops.serving.inference import OnnxGenerator

        return OnnxGenerator
    raise AttributeError(f"module 'ganops' has no attribute {name!r}")
