"""The export stage: one deterministic ONNX file, lineage metadata, the parity gate, MLflow registry."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch

from ganops.export import REGISTERED_MODEL, ParityError, export_onnx, run_export
from ganops.fileio import sha256_file
from ganops.serving.inference import OnnxGenerator
from ganops.networks import Generator as TorchGenerator
from ganops.networks import NetConfig, save_generator
from ganops.params import ExportParams
from ganops.sampling import latents

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LINEAGE = {"git_commit": "0123abc", "data_manifest_sha256": "d" * 64, "params_sha256": "p" * 64,
           "dataset": "synthetic", "mlflow_run_id": "old"}


def save_tiny(directory: Path, *, conditional: bool, arch: str = "dcgan") -> Path:
    torch.manual_seed(0)
    g = TorchGenerator(NetConfig(arch=arch, z_dim=16, width=8, conditional=conditional))
    save_generator(directory, g, {"lineage": LINEAGE, "classes": [f"c{i}" for i in range(10)]})
    return directory


def test_one_file_opset_names_and_metadata(tmp_path):
    gan = save_tiny(tmp_path / "gan", conditional=True)
    out = tmp_path / "models" / "generator.onnx"
    report = export_onnx(model_dir=gan, onnx_path=out, opset=18, lineage={"mlflow_run_id": "r1"},
                         parity_seeds=64)
    # One file and its sidecar: no external .data, no temp files left behind.
    assert sorted(p.name for p in out.parent.iterdir()) == ["generator.onnx", "generator.onnx.sha256"]
    assert out.with_name("generator.onnx.sha256").read_text() == f"{sha256_file(out)}  generator.onnx\n"
    model = onnx.load(str(out))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]

    def sig(values):
        return [(v.name, v.type.tensor_type.elem_type,
                 [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

    assert sig(model.graph.input) == [("z", onnx.TensorProto.FLOAT, ["batch", 16]),
                                      ("label", onnx.TensorProto.INT64, ["batch"])]
    assert sig(model.graph.output) == [("image", onnx.TensorProto.FLOAT, ["batch", 1, 28, 28])]
    props = {p.key: p.value for p in model.metadata_props}
    assert props == {
        "git_commit": "0123abc", "data_manifest_sha256": "d" * 64, "params_sha256": "p" * 64,
        "dataset": "synthetic", "mlflow_run_id": "r1", "arch": "dcgan", "z_dim": "16",
        "num_classes": "10", "conditional": "true", "ganops_version": "0.1.0", "resolution": "28", "channels": "1",
        "classes": json.dumps([f"c{i}" for i in range(10)]),
    }
    # Source paths and stack traces would tie the bytes to the checkout's location.
    assert not any(n.metadata_props or n.doc_string for n in model.graph.node)
    assert report["sha256"] == sha256_file(out) and report["size_bytes"] == out.stat().st_size
    assert report["opset"] == 18 and report["parity_seeds"] == 64
    assert 0 <= report["parity_max_abs_diff"] <= 1e-4


def test_unconditional_has_only_z(tmp_path):
    gan = save_tiny(tmp_path / "gan", conditional=False, arch="mlp")
    out = tmp_path / "g.onnx"
    export_onnx(model_dir=gan, onnx_path=out, opset=18, lineage={}, parity_seeds=16)
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["z"]
    assert {p.key: p.value for p in model.metadata_props}["conditional"] == "false"
    assert OnnxGenerator.from_onnx(out).run(latents(range(5), 16)).shape == (5, 1, 28, 28)


def test_deeper_resize_conv_generator_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    cfg = NetConfig(arch="dcgan", z_dim=16, width=8, conditional=True, g_upsample="resize", depth=1)
    g = TorchGenerator(cfg).eval()
    save_generator(tmp_path / "gan", g, {"lineage": LINEAGE, "classes": None})
    out = tmp_path / "g.onnx"
    report = export_onnx(model_dir=tmp_path / "gan", onnx_path=out, opset=18, lineage={}, parity_seeds=32)
    assert report["parity_max_abs_diff"] <= 1e-4
    z, y = latents(range(4), 16), np.array([0, 1, 2, 3])
    with torch.no_grad():
        want = g(torch.from_numpy(z), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(OnnxGenerator.from_onnx(out).run(z, y), want, atol=1e-5)


def test_same_weights_same_bytes_from_another_directory(tmp_path):
    gan = save_tiny(tmp_path / "a" / "gan", conditional=True)
    shutil.copytree(gan, tmp_path / "b" / "elsewhere")
    first = export_onnx(model_dir=gan, onnx_path=tmp_path / "1.onnx", opset=18, lineage={},
                        parity_seeds=8)
    second = export_onnx(model_dir=tmp_path / "b" / "elsewhere", onnx_path=tmp_path / "2.onnx",
                         opset=18, lineage={}, parity_seeds=8)
    assert (tmp_path / "1.onnx").read_bytes() == (tmp_path / "2.onnx").read_bytes()
    assert first["sha256"] == second["sha256"]


def test_parity_gate_fails_and_writes_nothing(tmp_path):
    gan = save_tiny(tmp_path / "gan", conditional=False)
    ok = export_onnx(model_dir=gan, onnx_path=tmp_path / "ok.onnx", opset=18, lineage={},
                     parity_seeds=64)
    diff = ok["parity_max_abs_diff"]
    assert diff > 0  # float reassociation differs between the two runtimes, if only slightly
    out = tmp_path / "strict" / "generator.onnx"
    with pytest.raises(ParityError, match=r"differ by .* on 64 seeds, over export.parity_atol"):
        export_onnx(model_dir=gan, onnx_path=out, opset=18, lineage={}, parity_seeds=64,
                    parity_atol=diff / 2)
    assert not out.exists() and not Path(f"{out}.sha256").exists()


def test_parity_gate_catches_nan_weights(tmp_path):
    gan = save_tiny(tmp_path / "gan", conditional=False)
    state = torch.load(gan / "generator.pt", weights_only=True)
    state["body.0.weight"][0, 0] = float("nan")  # a diverged training run
    torch.save(state, gan / "generator.pt")
    with pytest.raises(ParityError, match="differ by nan"):
        export_onnx(model_dir=gan, onnx_path=tmp_path / "g.onnx", opset=18, lineage={},
                    parity_seeds=8)
    assert not (tmp_path / "g.onnx").exists()


def test_bad_opset_and_missing_model(tmp_path):
    gan = save_tiny(tmp_path / "gan", conditional=False)
    with pytest.raises(ValueError, match="export.opset is 17; .* at least 18"):
        export_onnx(model_dir=gan, onnx_path=tmp_path / "g.onnx", opset=17, lineage={})
    with pytest.raises(FileNotFoundError, match="dvc repro train"):
        export_onnx(model_dir=tmp_path / "nothing", onnx_path=tmp_path / "g.onnx", opset=18, lineage={})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_stage_registers_in_mlflow_and_mlflow_serves_it(tmp_path, monkeypatch):
    """The stage script end to end: export, log to the training run, register, `mlflow models serve`."""
    from mlflow import MlflowClient

    from ganops.tracking import Tracker, write_run_id

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    save_tiny(tmp_path / "models" / "gan", conditional=False)
    training = Tracker.start(run_name="train", tags={})
    training.close()
    write_run_id(tmp_path / "reports" / "train" / "mlflow_run.json", training.run_id)

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        [sys.executable, str(REPO / "stages" / "export.py"), "models/gan",
         "reports/train/mlflow_run.json", "models/generator.onnx", "reports/export.json"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "export: wrote models/generator.onnx" in done.stdout
    assert "registered ganops-generator v1" in done.stdout
    report = json.loads((tmp_path / "reports" / "export.json").read_text())
    onnx_path = tmp_path / "models" / "generator.onnx"
    assert report["sha256"] == sha256_file(onnx_path)
    assert report["registered_model"] == REGISTERED_MODEL and report["registered_version"] == 1
    assert report["parity_seeds"] == 256 and report["parity_max_abs_diff"] <= 1e-4
    assert OnnxGenerator.from_onnx(onnx_path).metadata["mlflow_run_id"] == training.run_id

    client = MlflowClient(uri)
    run = client.get_run(training.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["export.parity_max_abs_diff"] == report["parity_max_abs_diff"]
    assert run.data.tags["onnx_sha256"] == report["sha256"]
    (version,) = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    assert version.run_id == training.run_id and version.tags["model_sha256"] == report["sha256"]

    # Re-running the stage on the same weights for the same run reuses the version.
    again = run_export(model_dir="models/gan", run_file="reports/train/mlflow_run.json",
                       onnx_path="models/generator.onnx", report_path="reports/export.json",
                       params=ExportParams(parity_seeds=16))
    assert again["registered_version"] == 1
    assert len(client.search_model_versions(f"name='{REGISTERED_MODEL}'")) == 1

    port = _free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{REGISTERED_MODEL}/1",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 120 s"
            time.sleep(0.5)
        z = latents([0, 1, 2], 16)
        response = httpx.post(f"http://127.0.0.1:{port}/invocations",
                              json={"inputs": {"z": z.tolist()}}, timeout=30)
        assert response.status_code == 200, response.text
        served = np.asarray(response.json()["predictions"]["image"], dtype=np.float32)
        assert served.shape == (3, 1, 28, 28)
        assert np.abs(served - OnnxGenerator.from_onnx(onnx_path).run(z)).max() <= 1e-6
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # mlflow runs uvicorn as a child: stop the group
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
