"""Run an exported ONNX generator with ONNX Runtime: seeds in, uint8 images out (no PyTorch)."""
from __future__ import annotations

import hashlib
import json
import numbers
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ganops.params import PROVIDERS
from ganops.sampling import MAX_SEED, latents, to_uint8

# The graph's names; export.py writes them and the server relies on them.
INPUT_Z = "z"
INPUT_LABEL = "label"
OUTPUT_IMAGE = "image"

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


RUN_SIDECAR = ".run.json"  # <model>.run.json: the MLflow run and registry version that made it (export writes it)


def read_sidecar_run(model_path: str | Path) -> dict[str, str]:
    """`<model_path>.run.json` ({"mlflow_run_id", "registered_version", ...}) as strings, or {} when absent.

    The run id is kept beside the model, not inside it, so identical weights give an identical file;
    a malformed sidecar only loses the lineage header, never the model.
    """
    sidecar = Path(f"{model_path}{RUN_SIDECAR}")
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items() if v is not None} if isinstance(data, dict) else {}


def read_sidecar_sha256(model_path: str | Path) -> str | None:
    """The hex hash in `<model_path>.sha256` (`sha256sum` format), or None when there is no sidecar.

    A malformed sidecar is an error rather than None: a server must not start on a model whose
    expected hash it cannot read.
    """
    sidecar = Path(f"{model_path}.sha256")
    if not sidecar.exists():
        return None
    fields = sidecar.read_text().split()
    digest = fields[0].lower() if fields else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(
            f"{sidecar} is not in sha256sum format ('<64 hex digits>  {Path(model_path).name}'); "
            "re-run the export stage (dvc repro export) to rewrite it"
        )
    return digest


def _session_providers(providers: str) -> list[str]:
    """Map "auto" | "cpu" | "cuda" to ONNX Runtime provider names, failing clearly on missing CUDA."""
    if providers not in PROVIDERS:
        raise ValueError(f"providers must be one of {', '.join(PROVIDERS)}, got {providers!r}")
    available = ort.get_available_providers()
    if providers == "cpu":
        return [_CPU]
    if providers == "cuda" and _CUDA not in available:
        raise ValueError(
            "providers='cuda' but this onnxruntime has no CUDAExecutionProvider "
            f"(available: {', '.join(available)}); install ganops[serve-gpu] (onnxruntime-gpu, "
            "not together with onnxruntime) or use providers='auto' or 'cpu'"
        )
    return [_CUDA, _CPU] if _CUDA in available else [_CPU]


def _decode_metadata(props: dict[str, str], path: Path) -> dict:
    """ONNX metadata_props (all strings) -> typed lineage; z_dim and conditional are required,
    num_classes too when conditional (the label input's range); an unconditional model has
    num_classes None, whatever an older export wrote there."""
    meta: dict = dict(props)
    try:
        meta["z_dim"] = int(props["z_dim"])
        meta["conditional"] = {"true": True, "false": False}[props["conditional"]]
        meta["num_classes"] = int(props["num_classes"]) if meta["conditional"] else None
        meta["classes"] = json.loads(props.get("classes", "[]"))
        # Exports made before these keys are 28x28 grayscale.
        meta["resolution"] = int(props.get("resolution", "28"))
        meta["channels"] = int(props.get("channels", "1"))
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"{path} lacks ganops metadata ({e!r}); export it with the export stage "
            "(dvc repro export), which writes z_dim, conditional, num_classes and classes"
        ) from e
    return meta


class OnnxGenerator:
    """An exported generator: `OnnxGenerator.from_onnx("models/generator.onnx").generate([0, 1, 2])`.

    One ONNX Runtime session; `run` and `generate` may be called from several threads at once.
    """

    def __init__(self, session: ort.InferenceSession, *, path: Path, sha256: str):
        self.session = session
        self.path = path
        self.sha256 = sha256
        props = session.get_modelmeta().custom_metadata_map
        # Older exports carry mlflow_run_id inside the file; newer ones beside it (read_sidecar_run).
        self.metadata = {**read_sidecar_run(path), **_decode_metadata(props, path)}
        self.z_dim: int = self.metadata["z_dim"]
        self.num_classes: int | None = self.metadata["num_classes"]  # None: no label input
        self.conditional: bool = self.metadata["conditional"]
        self.resolution: int = self.metadata["resolution"]
        self.channels: int = self.metadata["channels"]
        # What generate() returns per image: [R, R] grayscale or [R, R, 3] RGB (PNG's and Pillow's layout).
        self.image_shape: tuple[int, ...] = (self.resolution, self.resolution) + ((3,) if self.channels == 3 else ())
        self.provider: str = session.get_providers()[0]
        inputs = {i.name for i in session.get_inputs()}
        expected = {INPUT_Z, INPUT_LABEL} if self.conditional else {INPUT_Z}
        if inputs != expected:
            raise ValueError(
                f"{path} has inputs {sorted(inputs)}, expected {sorted(expected)} for a "
                f"{'conditional' if self.conditional else 'unconditional'} ganops generator"
            )

    @classmethod
    def from_onnx(
        cls, path: str | Path, providers: str = "auto", *, intra_op_threads: int = 0
    ) -> OnnxGenerator:
        """Load `path` on "auto" (CUDA when this onnxruntime has it, else CPU), "cpu" or "cuda".

        "cuda" without a CUDA-capable onnxruntime raises ValueError; CUDA that is available but
        that the session does not end up using (no driver, missing libraries) gives a warning,
        and `.provider` says what really runs. `intra_op_threads` 0 keeps ONNX Runtime's default.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: export a model first (dvc repro export writes models/generator.onnx)"
            )
        wanted = _session_providers(providers)
        # Hash and load the same bytes, so .sha256 describes exactly the model that runs.
        blob = path.read_bytes()
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3  # errors only: ORT's warnings about unused providers are noise
        try:
            session = ort.InferenceSession(blob, sess_options=options, providers=wanted)
        except Exception as e:  # ORT raises its own exception types for a corrupt file
            raise ValueError(f"{path} is not a loadable ONNX model: {e}") from e
        if wanted[0] == _CUDA and session.get_providers()[0] != _CUDA:
            warnings.warn(
                f"CUDA was requested for {path} but ONNX Runtime runs it on "
                f"{session.get_providers()[0]} (check the CUDA driver and cuDNN libraries)",
                RuntimeWarning,
                stacklevel=2,
            )
        return cls(session, path=path, sha256=hashlib.sha256(blob).hexdigest())

    def _check_labels(self, labels, n: int) -> np.ndarray | None:
        if not self.conditional:
            if labels is not None:
                raise ValueError(f"{self.path.name} is unconditional: do not pass labels")
            return None
        if labels is None:
            raise ValueError(
                f"{self.path.name} is conditional: pass labels in [0, {self.num_classes - 1}]"
            )
        if isinstance(labels, numbers.Integral) and not isinstance(labels, bool):
            labels = [labels] * n  # one label for every image
        arr = np.asarray(labels)
        if arr.ndim != 1 or arr.shape[0] != n or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"labels must be one integer or {n} integers (one per image), got {labels!r}"
            )
        if arr.size and (arr.min() < 0 or arr.max() >= self.num_classes):
            bad = arr[(arr < 0) | (arr >= self.num_classes)][0]
            raise ValueError(f"label {int(bad)} out of range [0, {self.num_classes - 1}]")
        return arr.astype(np.int64)

    def run(self, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Latents float32 [N, z_dim] (and int64 labels [N] when conditional) -> float32 [N, C, R, R]."""
        z = np.asarray(z)
        if z.ndim != 2 or z.shape[1] != self.z_dim or z.shape[0] == 0:
            raise ValueError(f"z must have shape [N >= 1, {self.z_dim}], got {list(z.shape)}")
        if not np.issubdtype(z.dtype, np.floating):
            raise ValueError(f"z must be floating point, got {z.dtype}")
        feeds = {INPUT_Z: np.ascontiguousarray(z, dtype=np.float32)}
        checked = self._check_labels(labels, z.shape[0])
        if checked is not None:
            feeds[INPUT_LABEL] = checked
        return self.session.run([OUTPUT_IMAGE], feeds)[0]

    def generate(
        self, seeds: Sequence[int], labels: int | Sequence[int] | None = None, *, batch_size: int = 256
    ) -> np.ndarray:
        """Seeds (via `ganops.sampling.latent`) -> uint8 images [N, R, R] (RGB: [N, R, R, 3]), in batches
        of `batch_size`.

        `labels` is one class for all images or one per seed; required iff the model is conditional.
        """
        seeds = list(seeds)
        if not seeds:
            raise ValueError("pass at least one seed")
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 0 <= s <= MAX_SEED:
                raise ValueError(f"seeds must be integers in [0, {MAX_SEED}], got {s!r}")
        checked = self._check_labels(labels, len(seeds))
        out = np.empty((len(seeds), *self.image_shape), dtype=np.uint8)
        for start in range(0, len(seeds), batch_size):
            stop = start + batch_size
            z = latents(seeds[start:stop], self.z_dim)
            part = None if checked is None else checked[start:stop]
            out[start:stop] = to_uint8(self.run(z, part))
        return out

    def __repr__(self) -> str:
        kind = f"conditional, {self.num_classes} classes" if self.conditional else "unconditional"
        shape = f"{self.resolution}x{self.resolution}{' RGB' if self.channels == 3 else ''}"
        return f"OnnxGenerator({str(self.path)!r}, {shape}, z_dim={self.z_dim}, {kind}, provider={self.provider})"
