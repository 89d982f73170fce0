"""The README tour: every command in its ```bash blocks is run here (tiny pipeline) or mapped to a test.

Commands run as a reader's would: in the environment of a fresh login shell (`env -i` with only HOME
and a system PATH, then `bash -l`), not the Makefile's or this interpreter's. A `source` line of the
tour holds for the commands after it, as it does in the reader's shell.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from pipeline_repo import background, free_port, make_pipeline_repo, wait_http
from test_experiments import check_sweep

# MLflow 3.17 itself triggers this SQLAlchemy deprecation when it opens a store.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

VENV = Path(sys.executable).parent.parent  # the venv running this test (not resolved: it is a venv)
TABLE_PATH = REPO / "test-artifacts" / "readme-commands.txt"
QUEUE_TIMEOUT_S = 900
LOGIN_PATH = "/usr/local/bin:/usr/bin:/bin"  # what a new login shell starts from (before /etc/profile)
# Commands the tour runs itself: the venv's tools once activated, and make's targets.
RUNNABLE_PREFIXES = ("source .venv/bin/activate", "dvc ", "ganops ", ".venv/bin/", "make ")

# README commands that need something this machine lacks (a package registry, GPUs, another host),
# each mapped to the test that runs its local equivalent. Inline commands of the prose are listed
# too, so the README's promises stay covered; each key must appear in README.md.
COVERED_ELSEWHERE = {
    "python3 -m venv /tmp/ganops-serve && /tmp/ganops-serve/bin/pip install -r requirements-serve.lock"
    " && /tmp/ganops-serve/bin/pip install --no-deps .": "tests/test_slim_env.py",
    "torchrun --nproc_per_node=4 stages/train.py data/prepared models/classifier data/reference models/gan models/checkpoints reports/train":
        "tests/test_ddp.py",
    "export MLFLOW_TRACKING_URI=http://mlflow-host:5000": "tests/test_mlflow_postgres.py",
    "dvc remote add -d storage <url>": "tests/test_dvc_remote.py",
    "dvc exp diff <exp-a> <exp-b>": "tests/test_experiments.py",
    # The tour's tiny repo has no image folder; the test writes one and runs every stage on it.
    "dvc exp run -n my-images -S data.dataset=folder -S prepare.resolution=32 -S prepare.channels=3":
        "tests/test_folder_pipeline.py",
    "dvc plots diff <exp-a> <exp-b>": "tests/test_experiments.py",
    # The chosen 20-epoch configurations: hours of CPU with Inception scoring; the test runs the
    # evaluate.inception toggle through DVC on tiny data.
    "dvc exp run -n uncond-20ep -S model.depth=1 -S train.epochs=20 -S evaluate.inception=true":
        "tests/test_inception_reference.py",
    "dvc exp run -n cond-20ep -S model.conditional=true -S model.depth=1 -S train.epochs=20"
    " -S evaluate.inception=true": "tests/test_inception_reference.py",
    # No cluster here: the test validates the manifests against the Kubernetes schemas and the real app.
    "kubectl apply -k deploy/kubernetes": "tests/test_kubernetes.py",
}
# CI runs `make test` (.ci/run); running the suite from inside the suite would recurse.
RUN_BY_CI = {"make test"}

# Long-running servers: started in the background on a free port, probed, stopped.
SERVERS = {  # README command prefix -> (how to pass the port, path that answers 200 when up)
    "make ui": (" PORT={port}", "/"),
    ".venv/bin/ganops serve": (" --port {port}", "/readyz"),
    "ganops serve": (" --port {port}", "/readyz"),
}


def readme_commands(text: str) -> list[str]:
    """The lines of the ```bash blocks, in order, without trailing `# comments` and blank lines."""
    commands, in_bash = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_bash = not in_bash and stripped == "```bash"
            continue
        if in_bash:
            # A comment starts at a `#` after whitespace (none of these commands quote a `#`).
            command = re.sub(r"(^|\s)#.*$", "", line).strip()
            if command:
                commands.append(command)
    return commands


def test_readme_commands_are_extracted():
    text = (
        "intro\n```bash\nmake repro   # set up\n\n  echo a#b  # note\n```\n"
        "```python\nprint(1)  # not bash\n```\n```\nplain block\n```\n```bash\nls\n```\n"
    )
    assert readme_commands(text) == ["make repro", "echo a#b", "ls"]


def test_every_readme_command_is_covered():
    """Cheap guard: each bash-block command is run by the tour below, by CI, or mapped to a test."""
    text = (REPO / "README.md").read_text()
    for command, test_file in COVERED_ELSEWHERE.items():
        assert command in text, f"COVERED_ELSEWHERE lists {command!r}, which README.md no longer has"
        assert (REPO / test_file).is_file(), f"{command!r} is mapped to {test_file}, which does not exist"
    ci = (REPO / ".ci" / "run").read_text()
    steps = [line for line in ci.splitlines() if line.strip() and not line.startswith("#")
             and not line.startswith(("set ", "cd "))]
    assert steps == ["make test"], f".ci/run must be a plain call of the README's `make test`: {steps}"
    assert readme_commands(text), "README.md has no ```bash blocks"


def test_login_shell_starts_from_a_fresh_environment(tmp_path: Path, monkeypatch):
    """What the tour's commands see: none of this process's variables, the venv only once sourced."""
    monkeypatch.setenv("GANOPS_FROM_THE_TEST", "leaked")
    probe = 'echo "${GANOPS_FROM_THE_TEST:-unset} $HOME $(command -v dvc || echo no-dvc)"'
    fresh = subprocess.run(login_shell(probe, home=tmp_path, state=[]), capture_output=True, text=True)
    variable, home, dvc = fresh.stdout.split()
    assert (variable, home) == ("unset", str(tmp_path)) and not dvc.startswith(str(VENV)), fresh.stdout
    activated = subprocess.run(login_shell(probe, home=tmp_path, state=[f"source {VENV}/bin/activate"]),
                               capture_output=True, text=True)
    assert activated.stdout.split()[2] == str(VENV / "bin" / "dvc"), activated.stdout + activated.stderr


def _prepare_tour_repo(tmp_path: Path):
    """The tiny pipeline repo plus what the README's commands expect: README, Makefile, .venv."""
    repo = make_pipeline_repo(tmp_path, new_store=True)  # `make repro` creates mlflow.db, as for a new user
    for name in ("README.md", "Makefile", "requirements.lock", "requirements-serve.lock",
                 "pyproject.toml"):
        shutil.copy(REPO / name, repo.path / name)
    # .venv: the real venv's entries, linked, in a directory of its own so that the Makefile's stamp
    # (named by the lock files' hash, so `make` does not rebuild) is written here, not into the venv.
    venv_dir = repo.path / ".venv"
    venv_dir.mkdir()
    for entry in VENV.iterdir():
        if not entry.name.startswith(".installed-"):
            (venv_dir / entry.name).symlink_to(entry)
    lock_hash = subprocess.run("cat requirements.lock pyproject.toml | sha256sum | cut -c1-16", shell=True,
                               cwd=repo.path, capture_output=True, text=True, check=True).stdout.strip()
    (venv_dir / f".installed-{lock_hash}").touch()
    with open(repo.path / ".gitignore", "a") as f:
        f.write("/.venv/\n/grid.png\n/samples/\n/dvc_plots/\n")
    repo.run("git add -A && git commit -q -m 'README, Makefile'")
    return repo


def login_shell(command: str, *, home: Path, state: list[str]) -> list[str]:
    """argv running `command` in a fresh login shell, after the tour's `source` lines so far."""
    script = " && ".join([*state, command])
    return ["env", "-i", f"HOME={home}", f"PATH={LOGIN_PATH}", "bash", "-lc", script]


def _fresh_home(tmp_path: Path) -> Path:
    """A new user's HOME: nothing but a git identity (`dvc exp run` commits experiments)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = ganops-reader\n\temail = reader@example.invalid\n")
    return home


def _run_server(repo, command: str, tmp_path: Path, *, home: Path, state: list[str]) -> str:
    prefix = max((p for p in SERVERS if command.startswith(p)), key=len)
    port_arg, probe = SERVERS[prefix]
    port = free_port()
    full = command + port_arg.format(port=port)
    log = tmp_path / f"server-{port}.log"
    argv = login_shell(f"exec {full}", home=home, state=state)
    with background(argv, env=repo.env, log_path=log, cwd=repo.path) as proc:
        wait_http(f"http://127.0.0.1:{port}{probe}", proc=proc, log_path=log, timeout_s=120)
    return f"{full} (answered {probe})"


@pytest.mark.slow
def test_readme_tour(tmp_path: Path):
    commands = readme_commands((REPO / "README.md").read_text())
    unhandled = [c for c in commands if c not in COVERED_ELSEWHERE and c not in RUN_BY_CI
                 and not c.startswith(RUNNABLE_PREFIXES)]
    assert unhandled == [], f"README commands neither run by this test nor mapped to one: {unhandled}"

    repo = _prepare_tour_repo(tmp_path)
    home = _fresh_home(tmp_path)
    state: list[str] = []  # the tour's `source` lines so far: they hold in the reader's shell
    rows: list[tuple[str, str, float]] = []
    queued: list[str] = []  # the sweep's experiments, named by `dvc exp run --queue`
    try:
        for command in commands:
            start = time.perf_counter()
            if command in COVERED_ELSEWHERE:
                rows.append((command, f"covered by {COVERED_ELSEWHERE[command]}", 0.0))
                continue
            if command in RUN_BY_CI:
                rows.append((command, "run by CI (.ci/run)", 0.0))
                continue
            if any(command.startswith(p) for p in SERVERS):
                how = _run_server(repo, command, tmp_path, home=home, state=state)
            else:
                out = repo.run(login_shell(command, home=home, state=state), timeout=900)
                how = "ran in a fresh login shell"
                if command.startswith("source "):
                    state.append(command)
                if "dvc exp run --queue" in command:
                    queued += re.findall(r"Queued experiment '([^']+)'", out.stdout + out.stderr)
                if command.endswith("dvc queue start -j 2"):
                    status = repo.wait_for_queue(dvc=".venv/bin/dvc", timeout_s=QUEUE_TIMEOUT_S)
                    assert "Failed" not in status, status
                    # The sweep's own checks (test_experiments): one sweep for the README and them.
                    check_sweep(repo, queued, tmp_path / "plots")
                    how += ", queue finished, sweep checked"
                _check_output(repo, command, out.stdout)
            rows.append((command, how, time.perf_counter() - start))
    finally:
        repo.run(".venv/bin/dvc queue stop", check=False, timeout=60)
        _write_table(rows)


def _check_output(repo, command: str, stdout: str) -> None:
    """What a few README commands promise, checked on their real output."""
    command = command.removeprefix(".venv/bin/")
    if command.startswith("dvc dag"):
        for stage in ("download", "prepare", "classifier", "reference", "inception_reference", "train",
                      "evaluate", "export", "promote"):
            assert stage in stdout, (stage, stdout)
    elif command == "dvc repro":  # after `make repro`: nothing changed
        assert "Running stage" not in stdout, stdout
    elif command.startswith("dvc metrics show"):
        for key in ("fid", "parity_max_abs_diff"):
            assert key in stdout, (key, stdout)
    elif command.startswith("dvc exp show --md"):
        assert "hinge" in stdout and "non_saturating" in stdout, stdout
    elif command.startswith("ganops promote"):  # the tour's experiments registered versions to decide on
        assert "ganops-generator v" in stdout and "champion is v" in stdout, stdout
    elif "--out grid.png" in command:
        assert (repo.path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    elif "--out samples/" in command:
        names = sorted(p.name for p in (repo.path / "samples").iterdir())
        assert names == ["seed_0007.png", "seed_0008.png", "seed_0009.png"]


def _write_table(rows: list[tuple[str, str, float]]) -> None:
    width = max((len(c) for c, _, _ in rows), default=10)
    lines = [f"{'seconds':>8}  {'command':<{width}}  how"]
    lines += [f"{s:8.1f}  {c:<{width}}  {how}" for c, how, s in rows]
    lines.append(f"{sum(s for _, _, s in rows):8.1f}  total")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    TABLE_PATH.parent.mkdir(exist_ok=True)
    TABLE_PATH.write_text(table)
