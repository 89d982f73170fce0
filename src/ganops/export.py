"""Export the EMA generator to one deterministic ONNX file, gated on parity with PyTorch, and register it."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import ganops
from ganops.fileio import sha256_file, write_bytes, write_json
from ganops.serving.inference import INPUT_LABEL, INPUT_Z, OUTPUT_IMAGE, RUN_SIDECAR
from ganops.networks import load_generator
from ganops.params import MIN_OPSET, ExportParams
from ganops.registry import CHALLENGER, REGISTERED_MODEL, Registry
from ganops.sampling import latents

# Lineage keys copied from generator.json's "lineage" into the ONNX metadata_props.
# No MLflow run id: it goes beside the file (<onnx>.run.json), so identical weights give identical bytes.
LINEAGE_KEYS = ("git_commit", "data_manifest_sha256", "params_sha256", "dataset")


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree by more than export.parity_atol."""


def _strip_debug_info(model: onnx.ModelProto) -> None:
    """Drop per-node metadata and doc strings: they hold absolute source paths and stack traces,
    which would make the bytes depend on where the repository is checked out."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        graph.doc_string = ""
        del graph.metadata_props[:]
        for value in (*graph.input, *graph.output, *graph.value_info):
            value.doc_string = ""
            del value.metadata_props[:]
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            graphs.extend(a.g for a in node.attribute if a.HasField("g"))
            graphs.extend(a.graphs for a in node.attribute if len(a.graphs))
    for function in model.functions:
        for node in function.node:
            node.doc_string = ""
            del node.metadata_props[:]
    model.doc_string = ""


def _onnx_bytes(generator: torch.nn.Module, *, conditional: bool, z_dim: int, opset: int,
                metadata: dict[str, str]) -> bytes:
    """Trace `generator` with the dynamo exporter and return the serialized, self-contained model."""
    # A batch of 2 keeps the exporter from specialising the batch dimension to 1.
    batch = torch.export.Dim("batch", min=1)
    z = torch.zeros(2, z_dim)
    args = (z, torch.zeros(2, dtype=torch.int64)) if conditional else (z,)
    with warnings.catch_warnings():
        # Both inputs share the batch Dim on purpose; the exporter says so once per export.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
        program = torch.onnx.export(
            generator,
            args,
            dynamo=True,
            external_data=False,  # one file: weights inside, not in a .data beside it
            opset_version=opset,
            dynamic_shapes=({0: batch}, {0: batch}) if conditional else ({0: batch},),
            input_names=[INPUT_Z, INPUT_LABEL] if conditional else [INPUT_Z],
            output_names=[OUTPUT_IMAGE],
            verbose=False,
        )
    model = program.model_proto
    _strip_debug_info(model)
    del model.metadata_props[:]
    for key in sorted(metadata):
        model.metadata_props.add(key=key, value=metadata[key])
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def _metadata(meta: dict, lineage: dict) -> dict[str, str]:
    """generator.json + caller's lineage -> the string-only metadata_props that inference reads."""
    cfg = meta["config"]
    classes = meta.get("classes") or [str(i) for i in range(cfg["num_classes"])]
    saved = meta.get("lineage", {})
    out = {k: str(saved[k]) for k in LINEAGE_KEYS if saved.get(k) is not None}
    out.update({k: str(v) for k, v in lineage.items() if v is not None})
    out.update(
        arch=cfg["arch"],
        z_dim=str(cfg["z_dim"]),
        conditional="true" if cfg["conditional"] else "false",
        resolution=str(cfg.get("resolution", 28)),  # generator.json files before these keys: 28x28 grayscale
        channels=str(cfg.get("channels", 1)),
        classes=json.dumps(list(classes)),  # the dataset's class names, for display
        ganops_version=ganops.__version__,
    )
    if cfg["conditional"]:  # the label input's range; loaders read num_classes as "has a label input"
        out["num_classes"] = str(cfg["num_classes"])
    return out


def parity_max_abs_diff(*, generator: torch.nn.Module, model_bytes: bytes, seeds: int,
                        z_dim: int, num_classes: int | None) -> float:
    """Max |ONNX Runtime (CPU) - PyTorch| over seeds 0..seeds-1 (labels seed % num_classes)."""
    z = latents(range(seeds), z_dim)
    labels = None if num_classes is None else (np.arange(seeds) % num_classes).astype(np.int64)
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    feeds = {INPUT_Z: z} if labels is None else {INPUT_Z: z, INPUT_LABEL: labels}
    onnx_out = session.run([OUTPUT_IMAGE], feeds)[0]
    with torch.no_grad():
        torch_out = generator(torch.from_numpy(z), None if labels is None else torch.from_numpy(labels))
    return float(np.abs(onnx_out - torch_out.numpy()).max())


def export_onnx(*, model_dir: str | Path, onnx_path: str | Path, opset: int, lineage: dict,
                parity_seeds: int = 256, parity_atol: float = 1e-4) -> dict:
    """models/gan -> one ONNX file plus `<onnx_path>.sha256`, written only if parity holds.

    `lineage` (e.g. {"dataset": ...}) overrides generator.json's lineage in the metadata.
    Returns the facts for reports/export.json. Raises ParityError when ONNX Runtime and PyTorch
    differ by more than `parity_atol` on `parity_seeds` seeds; nothing is written then.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"export.opset is {opset}; the exporter needs at least {MIN_OPSET}: "
                         f"set export.opset >= {MIN_OPSET} in params.yaml")
    if parity_seeds < 2:
        raise ValueError(f"export.parity_seeds must be at least 2, got {parity_seeds}")
    onnx_path = Path(onnx_path)
    generator, meta = load_generator(model_dir)
    cfg = meta["config"]
    metadata = _metadata(meta, lineage)
    blob = _onnx_bytes(generator, conditional=cfg["conditional"], z_dim=cfg["z_dim"],
                       opset=opset, metadata=metadata)
    diff = parity_max_abs_diff(generator=generator, model_bytes=blob, seeds=parity_seeds,
                               z_dim=cfg["z_dim"],
                               num_classes=cfg["num_classes"] if cfg["conditional"] else None)
    if not diff <= parity_atol:  # also catches NaN
        raise ParityError(
            f"ONNX Runtime and PyTorch differ by {diff:.3g} (max abs) on {parity_seeds} seeds, "
            f"over export.parity_atol={parity_atol:g}: {onnx_path} not written. Check the model "
            f"for ops that export differently, or raise export.parity_atol if that is intended"
        )
    write_bytes(onnx_path, blob)
    digest = sha256_file(onnx_path)
    write_bytes(Path(f"{onnx_path}.sha256"), f"{digest}  {onnx_path.name}\n".encode())
    return {
        "onnx_path": str(onnx_path),
        "sha256": digest,
        "size_bytes": len(blob),
        "opset": opset,
        "parity_seeds": parity_seeds,
        "parity_atol": parity_atol,
        "parity_max_abs_diff": diff,
        "conditional": cfg["conditional"],
        "z_dim": cfg["z_dim"],
        "metadata": metadata,
    }


def register_onnx(*, tracker, onnx_path: str | Path, sha256: str, register: bool) -> int | None:
    """Log the ONNX model to the tracker's run; with `register`, as a version of ganops-generator
    (re-exporting the same bytes for the same run reuses its version). Returns the version or None."""
    model = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in model.metadata_props}
    z_dim, conditional = int(props["z_dim"]), props["conditional"] == "true"
    inputs = {INPUT_Z: np.zeros((1, z_dim), dtype=np.float32)}
    if conditional:
        inputs[INPUT_LABEL] = np.zeros(1, dtype=np.int64)
    side, channels = int(props.get("resolution", "28")), int(props.get("channels", "1"))
    outputs = {OUTPUT_IMAGE: np.zeros((1, channels, side, side), dtype=np.float32)}
    return tracker.log_onnx_model(model, name="onnx-generator", inputs=inputs, outputs=outputs, metadata=props,
                                  registered_name=REGISTERED_MODEL if register else None, sha256=sha256)


def run_export(*, model_dir: str | Path, run_file: str | Path, onnx_path: str | Path,
               report_path: str | Path, params: ExportParams) -> dict:
    """The export stage: export with parity gate, log/register in MLflow, write reports/export.json
    and `<onnx_path>.run.json` (the run and version; kept out of the ONNX file so that the same
    weights give the same bytes and sha256). A registered version is tagged with its lineage and
    the training run, and given the alias `challenger` (the promote stage decides on `champion`).

    When the store lacks the training run, the model is logged and registered in a new run tagged
    with its id (Tracker.for_stage) rather than the export lost.
    """
    from ganops.lineage import model_lineage_tags
    from ganops.tracking import Tracker, find_run, read_run_id

    run_id = read_run_id(run_file)
    find_run(run_id)  # raises when the store is unusable, before the export rather than after it
    _, meta = load_generator(model_dir)
    report = export_onnx(model_dir=model_dir, onnx_path=onnx_path, opset=params.opset, lineage={},
                         parity_seeds=params.parity_seeds, parity_atol=params.parity_atol)
    tracker = Tracker.for_stage(run_id, stage="export", tags=model_lineage_tags(meta))
    try:
        version = register_onnx(tracker=tracker, onnx_path=onnx_path, sha256=report["sha256"],
                                register=params.register)
        if version is not None:
            # What anyone comparing versions needs without opening the file; promote adds the metrics.
            registry = Registry(REGISTERED_MODEL, uri=tracker.tracking_uri)
            registry.set_tags(version, {**model_lineage_tags(meta), "train_run_id": run_id,
                                        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "")})
            registry.set_alias(CHALLENGER, version)
        tracker.log_metrics({"export.parity_max_abs_diff": report["parity_max_abs_diff"],
                             "export.size_bytes": float(report["size_bytes"])}, step=0)
    finally:
        # The training run itself finished; an export failure is reported by the stage, not here.
        tracker.close()
    # mlflow_run_id names the training run (the model's lineage header); model_run_id the run holding
    # the logged model, which is another one when the store had lost the training run.
    run = {"mlflow_run_id": run_id, "model_run_id": tracker.run_id,
           "registered_model": REGISTERED_MODEL if version is not None else None, "registered_version": version}
    report.update(run)
    write_json(Path(f"{onnx_path}{RUN_SIDECAR}"), run)
    write_json(report_path, report)
    return report
