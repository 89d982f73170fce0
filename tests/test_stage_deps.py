"""dvc.yaml lists, for each stage, exactly the ganops modules its script runs (DVC does not follow imports).

The modules are derived from the source: the script's `ganops` imports, followed transitively,
including imports inside functions (export imports tracking lazily, and that code runs too).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PACKAGE = "ganops"
SRC = REPO / "src"


def module_file(name: str, src: Path) -> Path:
    """src/ganops/x.py for ganops.x; a package's __init__.py."""
    path = src / name.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imported(tree: ast.Module, *, package: str, src: Path) -> set[str]:
    """Dotted ganops module names that `tree` imports anywhere; `package` resolves relative imports."""
    skip: set[int] = set()
    for node in tree.body:
        # PEP 562: a module-level __getattr__ runs only when its attribute is used (ganops.OnnxGenerator:
        # stages that need it import ganops.serving.inference themselves), so its imports are not followed.
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            skip.update(id(n) for n in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:  # from . import x / from .x import y
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            # `from ganops import metrics` imports the submodule ganops.metrics.distances when there is one.
            names = [target, *(f"{target}.{a.name}" for a in node.names
                               if module_file(f"{target}.{a.name}", src).is_file())]
        else:
            continue
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                parts = name.split(".")
                # Importing ganops.x runs ganops/__init__.py first.
                found.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return found


def ganops_modules(script: Path, src: Path = SRC) -> set[Path]:
    """The files of every ganops module `script` imports, directly or through other ganops modules."""
    todo, seen = [(script, "")], set()
    while todo:
        path, package = todo.pop()
        tree = ast.parse(path.read_text(), filename=str(path))
        for name in _imported(tree, package=package, src=src) - seen:
            seen.add(name)
            file = module_file(name, src)
            if not file.is_file():
                raise AssertionError(f"{path} imports {name}, but {file} does not exist")
            todo.append((file, name if file.name == "__init__.py" else name.rpartition(".")[0]))
    return {module_file(name, src) for name in seen}


def test_ganops_modules_follows_imports_transitively_and_inside_functions(tmp_path: Path):
    pkg = tmp_path / "src" / PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "def __getattr__(name):\n    from ganops.lazy import Thing\n    return Thing\n")
    (pkg / "a.py").write_text("import json\nfrom ganops import b\n")
    (pkg / "b.py").write_text("def f():\n    from ganops.c import g\n    return g()\n")
    (pkg / "c.py").write_text("from . import d\ng = d.g\n")
    (pkg / "d.py").write_text("def g():\n    return 1\n")
    for name in ("lazy", "unused"):
        (pkg / f"{name}.py").write_text("x = 1\n")
    script = tmp_path / "stage.py"
    script.write_text("import sys\nfrom ganops.a import b as _b\n")
    assert ganops_modules(script, tmp_path / "src") == {
        pkg / name for name in ("__init__.py", "a.py", "b.py", "c.py", "d.py")}

    (pkg / "d.py").write_text("import ganops.missing\n")
    with pytest.raises(AssertionError, match=r"imports ganops\.missing"):
        ganops_modules(script, tmp_path / "src")


PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_stage_deps_list_exactly_the_ganops_modules_it_runs(stage: str):
    spec = PIPELINE[stage]
    words = spec["cmd"].split()
    assert words[0] == "python" and words[1].startswith("stages/"), (
        f"stage {stage!r}: cmd {spec['cmd']!r} should be `python stages/<stage>.py ...`")
    script = words[1]
    deps = spec.get("deps", [])
    assert script in deps, f"stage {stage!r} runs {script} but does not list it in deps"
    derived = {p.relative_to(REPO).as_posix() for p in ganops_modules(REPO / script)}
    listed = {d for d in deps if d.startswith(f"src/{PACKAGE}/")}
    missing, extra = sorted(derived - listed), sorted(listed - derived)
    assert not missing and not extra, (
        f"dvc.yaml stage {stage!r}: deps should list the ganops modules {script} runs.\n"
        f"  add (imported, not listed): {missing}\n  remove (listed, not imported): {extra}")


# Modules a stage must not depend on even indirectly: each would rerun the stage for work it never
# does (an Inception change retraining the GAN, an MLflow change rebuilding the reference).
# No pipeline stage runs the server; export shares only serving/inference.py, the ONNX I/O names.
NOT_NEEDED = {
    "download": ("training/", "metrics/", "serving/", "networks.py", "tracking.py", "lineage.py"),
    "prepare": ("training/", "metrics/", "serving/", "networks.py", "tracking.py", "lineage.py"),
    "classifier": ("training/", "serving/", "networks.py", "tracking.py", "lineage.py",
                   "metrics/inception.py", "metrics/reference.py", "metrics/evaluate.py"),
    "reference": ("training/", "serving/", "networks.py", "tracking.py", "lineage.py", "plots.py",
                  "metrics/inception.py", "metrics/inception_reference.py", "metrics/evaluate.py"),
    "inception_reference": ("training/", "serving/", "networks.py", "tracking.py", "lineage.py",
                            "metrics/classifier.py", "metrics/reference.py", "metrics/evaluate.py"),
    "train": ("serving/", "export.py", "metrics/inception.py", "metrics/inception_reference.py",
              "metrics/evaluate.py"),
    "evaluate": ("training/", "serving/", "export.py"),
    "export": ("training/", "metrics/", "serving/app.py", "serving/server.py", "serving/batcher.py"),
    # Promote reads evaluate's JSON files and the registry: no model, no metric code, no torch.
    "promote": ("training/", "metrics/", "serving/", "networks.py", "export.py", "sampling.py"),
}


def test_every_stage_has_a_not_needed_list():
    assert set(NOT_NEEDED) == set(PIPELINE)


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_stage_does_not_depend_on_modules_it_does_not_need(stage: str):
    script = PIPELINE[stage]["cmd"].split()[1]
    used = {p.relative_to(SRC / PACKAGE).as_posix() for p in ganops_modules(REPO / script)}
    unneeded = sorted(u for u in used if u.startswith(NOT_NEEDED[stage]))
    assert not unneeded, (
        f"stage {stage!r} imports {unneeded} (through {script}'s imports), so DVC reruns it when they "
        "change: cut the module that links them along the stage seam")


BANNED_IN_SERVING = ("torch", "torchvision", "yaml", "dvc", "mlflow")


def _banned(nodes) -> list[str]:
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.append(node.module or "")
    return [n for n in names if n.split(".")[0] in BANNED_IN_SERVING]


def test_serving_imports_no_torch_yaml_dvc_or_mlflow():
    """serving/'s rule, read from the source: none of its modules imports those packages anywhere, and
    the ganops modules they use import none at module level (params.load imports PyYAML inside it)."""
    for path in sorted((SRC / PACKAGE / "serving").rglob("*.py")):
        tree = ast.parse(path.read_text())
        assert not _banned(ast.walk(tree)), f"{path.relative_to(REPO)} imports {_banned(ast.walk(tree))}"
        for module in ganops_modules(path):
            top = ast.parse(module.read_text()).body
            assert not _banned(top), (
                f"{path.relative_to(REPO)} uses {module.relative_to(REPO)}, which imports {_banned(top)}")
