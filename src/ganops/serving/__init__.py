"""Serving the exported ONNX generator: torch-free (no PyTorch, PyYAML, DVC or MLflow import in this package)."""
