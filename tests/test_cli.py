"""`ganops generate`: seed syntax, grid and per-seed outputs, and errors without tracebacks."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganops.cli import UsageError, main, parse_seeds
from ganops.export import export_onnx
from ganops.serving.inference import OnnxGenerator
from ganops.networks import Generator as TorchGenerator
from ganops.networks import NetConfig, save_generator
from ganops.sampling import MAX_SEED, grid

GANOPS = Path(sys.executable).parent / "ganops"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-models")
    out = {}
    for kind, conditional in (("uncond", False), ("cond", True)):
        torch.manual_seed(0)
        g = TorchGenerator(NetConfig(arch="dcgan", z_dim=16, width=8, conditional=conditional))
        save_generator(root / kind / "gan", g, {"classes": [str(i) for i in range(10)]})
        out[kind] = root / kind / "generator.onnx"
        export_onnx(model_dir=root / kind / "gan", onnx_path=out[kind], opset=18, lineage={},
                    parity_seeds=8)
    return out


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("7", [7]), ("0-3", [0, 1, 2, 3]), ("1,5,9", [1, 5, 9]), ("0-2,10,20-21", [0, 1, 2, 10, 20, 21]),
     (" 3 , 4-4", [3, 4]), (str(MAX_SEED), [MAX_SEED])],
)
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "bad seed ''"), ("a", "bad seed 'a'"), ("1-", "bad seed '1-'"), ("1,,2", "bad seed ''"),
     ("-1", "bad seed '-1'"), ("5-3", "bad seed range '5-3'"), (str(MAX_SEED + 1), "bad seed range"),
     ("0-100000", "has 100001 seeds; at most 100000")],
)
def test_parse_seeds_errors(text, message):
    with pytest.raises(UsageError, match=message):
        parse_seeds(text)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def test_grid(models, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["generate", "--model", str(models["uncond"]), "--seeds", "0-9", "--ncol", "4",
                 "--out", str(out)]) == 0
    expected = grid(OnnxGenerator.from_onnx(models["uncond"]).generate(range(10)), ncol=4)
    assert expected.shape == (3 * 30 + 2, 4 * 30 + 2)  # 3 rows of 28 + 2 px gaps
    assert np.array_equal(_png(out), expected)
    printed = capsys.readouterr().out
    assert f"wrote a grid of 10 images to {out}" in printed and "CPUExecutionProvider" in printed


def test_one_png_per_seed_into_new_and_existing_directories(models, tmp_path):
    g = OnnxGenerator.from_onnx(models["cond"])
    new = tmp_path / "new"
    assert main(["generate", "--model", str(models["cond"]), "--seeds", "3,12", "--label", "5",
                 "--out", f"{new}/"]) == 0
    assert sorted(p.name for p in new.iterdir()) == ["seed_0003.png", "seed_0012.png"]
    images = g.generate([3, 12], labels=5)
    assert np.array_equal(_png(new / "seed_0003.png"), images[0])
    assert np.array_equal(_png(new / "seed_0012.png"), images[1])
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main(["generate", "--model", str(models["cond"]), "--seeds", "12345", "--label", "0",
                 "--out", str(existing)]) == 0
    assert np.array_equal(_png(existing / "seed_12345.png"), g.generate([12345], labels=0)[0])


@pytest.mark.parametrize(
    ("kind", "args", "message"),
    [
        ("uncond", ["--label", "3"], "is unconditional: do not pass labels"),
        ("cond", [], "is conditional: pass labels in [0, 9]"),
        ("cond", ["--label", "10"], "label 10 out of range [0, 9]"),
        ("uncond", ["--seeds", "9-1"], "bad seed range '9-1'"),
        ("uncond", ["--ncol", "0"], "--ncol must be at least 1"),
        ("uncond", ["--out", "grid.jpg"], "give a .png file for a grid or a directory/"),
        (None, [], "not found: export a model first"),
    ],
)
def test_errors_exit_2_with_a_message(models, tmp_path, capsys, kind, args, message):
    model = models[kind] if kind else tmp_path / "missing.onnx"
    argv = ["generate", "--model", str(model), "--out", str(tmp_path / "g.png"), *args]
    if "--out" in args:
        argv = ["generate", "--model", str(model), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ganops generate: error: ") and message in err
    assert not (tmp_path / "g.png").exists()


def test_cuda_without_cuda_is_an_error(models, tmp_path, capsys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    assert main(["generate", "--model", str(models["uncond"]), "--providers", "cuda",
                 "--out", str(tmp_path / "g.png")]) == 2
    assert "no CUDAExecutionProvider" in capsys.readouterr().err


def test_console_script_exit_codes_and_help(models, tmp_path):
    bad = subprocess.run([str(GANOPS), "generate", "--model", str(models["uncond"]), "--label", "1",
                          "--out", str(tmp_path / "g.png")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "is unconditional" in bad.stderr and "Traceback" not in bad.stderr
    usage = subprocess.run([str(GANOPS), "generate", "--seeds", "0-3"], capture_output=True,
                           text=True, timeout=60)
    assert usage.returncode == 2 and "the following arguments are required: --out" in usage.stderr
    helped = subprocess.run([str(GANOPS), "generate", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert helped.returncode == 0
    for text in ("--seeds", "0-63", "seed_0007.png", "--label", "--providers", "examples:"):
        assert text in helped.stdout
    ok = subprocess.run([str(GANOPS), "generate", "--model", str(models["uncond"]), "--seeds", "0-3",
                         "--out", str(tmp_path / "g.png")], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and (tmp_path / "g.png").exists(), ok.stderr
    assert io.BytesIO((tmp_path / "g.png").read_bytes()).read(8) == b"\x89PNG\r\n\x1a\n"
