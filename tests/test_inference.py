"""ganops.OnnxGenerator over real ONNX Runtime sessions of freshly exported tiny generators."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import ganops
from ganops.export import export_onnx
from ganops.serving.inference import OnnxGenerator, read_sidecar_sha256
from ganops.networks import Generator as TorchGenerator
from ganops.networks import NetConfig, load_generator, save_generator
from ganops.sampling import MAX_SEED, latents, to_uint8

LINEAGE = {"git_commit": "0123abc", "data_manifest_sha256": "d" * 64, "params_sha256": "p" * 64,
           "dataset": "synthetic", "mlflow_run_id": "from-generator-json"}
CLASSES = [f"class {i}" for i in range(10)]


def export_tiny(directory: Path, *, conditional: bool, arch: str = "dcgan") -> Path:
    """A freshly initialised tiny generator, saved like models/gan and exported: returns the .onnx."""
    torch.manual_seed(0)
    g = TorchGenerator(NetConfig(arch=arch, z_dim=16, width=8, conditional=conditional))
    save_generator(directory / "gan", g, {"lineage": LINEAGE, "classes": CLASSES})
    onnx_path = directory / "generator.onnx"
    export_onnx(model_dir=directory / "gan", onnx_path=onnx_path, opset=18,
                lineage={"mlflow_run_id": "run-123"}, parity_seeds=32)
    return onnx_path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    (root / "u").mkdir()
    (root / "c").mkdir()
    return {"uncond": export_tiny(root / "u", conditional=False),
            "cond": export_tiny(root / "c", conditional=True)}


def test_metadata_round_trip(models):
    g = OnnxGenerator.from_onnx(models["cond"])
    assert g.z_dim == 16 and g.conditional is True and g.num_classes == 10
    assert g.metadata["classes"] == CLASSES
    assert g.metadata["mlflow_run_id"] == "run-123"  # the caller's lineage wins over generator.json
    for key in ("git_commit", "data_manifest_sha256", "params_sha256", "dataset"):
        assert g.metadata[key] == LINEAGE[key]
    assert g.metadata["ganops_version"] == ganops.__version__
    assert g.metadata["arch"] == "dcgan"
    assert g.path == models["cond"]
    assert g.sha256 == hashlib.sha256(models["cond"].read_bytes()).hexdigest()
    assert read_sidecar_sha256(models["cond"]) == g.sha256
    u = OnnxGenerator.from_onnx(models["uncond"])
    assert u.conditional is False and u.metadata["conditional"] is False


def test_metadata_names_num_classes_only_where_labels_are_an_input(models, tmp_path):
    import onnx

    props = {k: {p.key: p.value for p in onnx.load(str(models[k])).metadata_props} for k in models}
    assert props["cond"]["conditional"] == "true" and props["cond"]["num_classes"] == "10"
    # A loader that reads num_classes as "takes a label" must not see it on an unconditional model.
    assert props["uncond"]["conditional"] == "false" and "num_classes" not in props["uncond"]
    assert OnnxGenerator.from_onnx(models["uncond"]).num_classes is None
    # An older export wrote num_classes on every model: it still loads, as what it is.
    old = onnx.load(str(models["uncond"]))
    old.metadata_props.add(key="num_classes", value="10")
    onnx.save(old, str(tmp_path / "old.onnx"))
    g = OnnxGenerator.from_onnx(tmp_path / "old.onnx")
    assert (g.conditional, g.num_classes) == (False, None)
    assert g.generate([1]).shape == (1, 28, 28)
    missing = onnx.load(str(models["cond"]))
    kept = [p for p in missing.metadata_props if p.key != "num_classes"]
    del missing.metadata_props[:]
    missing.metadata_props.extend(kept)
    onnx.save(missing, str(tmp_path / "no-classes.onnx"))
    with pytest.raises(ValueError, match="lacks ganops metadata.*num_classes"):
        OnnxGenerator.from_onnx(tmp_path / "no-classes.onnx")


def test_generate_matches_pytorch(models):
    for kind, labels in (("uncond", None), ("cond", np.arange(40) % 10)):
        torch_g, _ = load_generator(models[kind].parent / "gan")
        g = OnnxGenerator.from_onnx(models[kind])
        seeds = list(range(100, 140))
        z = latents(seeds, 16)
        with torch.no_grad():
            ref = torch_g(torch.from_numpy(z), None if labels is None else torch.from_numpy(labels))
        out = g.run(z, labels)
        assert out.shape == (40, 1, 28, 28) and out.dtype == np.float32
        assert np.abs(out - ref.numpy()).max() <= 1e-4
        images = g.generate(seeds, None if labels is None else labels.tolist())
        assert images.dtype == np.uint8 and images.shape == (40, 28, 28)
        # Pixels may differ by one level where a value sits on a rounding edge.
        assert np.abs(images.astype(int) - to_uint8(ref.numpy()).astype(int)).max() <= 1


def test_generate_batches_and_one_label_for_all(models):
    g = OnnxGenerator.from_onnx(models["cond"])
    seeds = list(range(10))
    whole = g.generate(seeds, labels=3)
    assert np.array_equal(whole, g.generate(seeds, labels=[3] * 10, batch_size=3))
    assert np.array_equal(whole[4:5], g.generate([4], labels=3))
    assert not np.array_equal(whole, g.generate(seeds, labels=4))  # the label changes the images


def test_providers_auto_is_cpu_here_and_cuda_without_cuda_fails(models):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the CPU-only behaviour is not testable here")
    assert OnnxGenerator.from_onnx(models["uncond"]).provider == "CPUExecutionProvider"
    assert OnnxGenerator.from_onnx(models["uncond"], providers="cpu").provider == "CPUExecutionProvider"
    with pytest.raises(ValueError, match="no CUDAExecutionProvider.*serve-gpu"):
        OnnxGenerator.from_onnx(models["uncond"], providers="cuda")
    with pytest.raises(ValueError, match="providers must be one of auto, cpu, cuda"):
        OnnxGenerator.from_onnx(models["uncond"], providers="gpu")


def test_cuda_provider_is_used_when_present(models):
    if "CUDAExecutionProvider" not in ort.get_available_providers() or not torch.cuda.is_available():
        pytest.skip("needs onnxruntime-gpu and a CUDA device")
    g = OnnxGenerator.from_onnx(models["uncond"], providers="cuda")
    assert g.provider == "CUDAExecutionProvider"
    cpu = OnnxGenerator.from_onnx(models["uncond"], providers="cpu")
    assert np.abs(g.run(latents(range(8), 16)) - cpu.run(latents(range(8), 16))).max() <= 1e-4


@pytest.mark.parametrize(
    ("kind", "seeds", "labels", "message"),
    [
        ("cond", [0, 1], None, "is conditional: pass labels in \\[0, 9\\]"),
        ("uncond", [0, 1], 3, "is unconditional: do not pass labels"),
        ("cond", [0, 1], 10, "label 10 out of range \\[0, 9\\]"),
        ("cond", [0, 1], [1, -1], "label -1 out of range"),
        ("cond", [0, 1], [1, 2, 3], "one integer or 2 integers"),
        ("cond", [0, 1], [1.5, 2.0], "one integer or 2 integers"),
        ("uncond", [-1], None, "seeds must be integers in \\[0, "),
        ("uncond", [MAX_SEED + 1], None, "seeds must be integers in \\[0, "),
        ("uncond", [1.0], None, "seeds must be integers"),
        ("uncond", [True], None, "seeds must be integers"),
        ("uncond", ["7"], None, "seeds must be integers"),
        ("uncond", [], None, "at least one seed"),
    ],
)
def test_generate_validation(models, kind, seeds, labels, message):
    g = OnnxGenerator.from_onnx(models[kind])
    with pytest.raises(ValueError, match=message):
        g.generate(seeds, labels)


def test_largest_seed_and_numpy_ints_are_accepted(models):
    g = OnnxGenerator.from_onnx(models["uncond"])
    assert g.generate([MAX_SEED, np.int64(5)]).shape == (2, 28, 28)


def test_run_validation(models):
    g = OnnxGenerator.from_onnx(models["uncond"])
    with pytest.raises(ValueError, match=r"z must have shape \[N >= 1, 16\], got \[2, 15\]"):
        g.run(np.zeros((2, 15), dtype=np.float32))
    with pytest.raises(ValueError, match="z must have shape"):
        g.run(np.zeros(16, dtype=np.float32))
    with pytest.raises(ValueError, match="z must be floating point"):
        g.run(np.zeros((2, 16), dtype=np.int64))
    # float64 latents are accepted and cast, not rejected
    assert g.run(np.zeros((1, 16))).shape == (1, 1, 28, 28)


def test_dynamic_batch(models):
    g = OnnxGenerator.from_onnx(models["cond"])
    for n in (1, 3, 17):
        assert g.run(latents(range(n), 16), np.zeros(n, dtype=np.int64)).shape == (n, 1, 28, 28)


def test_bad_files(tmp_path, models):
    with pytest.raises(FileNotFoundError, match="dvc repro export"):
        OnnxGenerator.from_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx is not a loadable ONNX model"):
        OnnxGenerator.from_onnx(junk)


def test_read_sidecar_sha256(tmp_path):
    model = tmp_path / "generator.onnx"
    assert read_sidecar_sha256(model) is None
    Path(f"{model}.sha256").write_text("AB" * 32 + "  generator.onnx\n")
    assert read_sidecar_sha256(model) == "ab" * 32
    Path(f"{model}.sha256").write_text("not-a-hash  generator.onnx\n")
    with pytest.raises(ValueError, match="not in sha256sum format"):
        read_sidecar_sha256(model)
    Path(f"{model}.sha256").write_text("")
    with pytest.raises(ValueError, match="not in sha256sum format"):
        read_sidecar_sha256(model)


_CHILD = """
import hashlib, sys
import ganops
from ganops.sampling import latent
g = ganops.OnnxGenerator.from_onnx(sys.argv[1])
print(hashlib.sha256(latent(7, 16).tobytes()).hexdigest(), hashlib.sha256(g.generate([7]).tobytes()).hexdigest())
"""


def test_same_seed_same_bytes_in_two_processes(models):
    # Different hash seeds too, so nothing depends on Python's per-process randomisation.
    outputs = []
    for hashseed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        done = subprocess.run([sys.executable, "-c", _CHILD, str(models["uncond"])],
                              capture_output=True, text=True, env=env, timeout=120, check=True)
        outputs.append(done.stdout.split())
    g = OnnxGenerator.from_onnx(models["uncond"])
    here = [hashlib.sha256(latents([7], 16)[0].tobytes()).hexdigest(),
            hashlib.sha256(g.generate([7]).tobytes()).hexdigest()]
    assert outputs[0] == outputs[1] == here


def test_inference_module_imports_no_torch():
    done = subprocess.run(
        [sys.executable, "-c", "import sys, ganops.serving.inference; "
         "print(' '.join(m for m in ('torch', 'mlflow', 'dvc', 'onnx') if m in sys.modules))"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert done.stdout.strip() == ""  # the names of any such modules imported
