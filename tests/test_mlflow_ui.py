"""`make ui` in a real browser: headless Chromium lists a training run and shows its sample images.

The run comes from the real train stage (`dvc repro` of the tiny pipeline repo); the UI is started
with the Makefile's own `ui` command line; Chromium is driven by chromedriver over the plain
WebDriver HTTP protocol. Screenshots are kept under test-artifacts/ for a human to look at.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO
from pipeline_repo import background, free_port, make_pipeline_repo, wait_http
from webdriver import CHROMEDRIVER, CHROMIUM, MISSING, WebDriver, chromium

pytestmark = [
    pytest.mark.slow,
    # MLflow 3.17 itself triggers this SQLAlchemy deprecation when it opens a store.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]

SCREENSHOTS = REPO / "test-artifacts"
PAGE_TIMEOUT_S = 60  # a cold React app on a busy 2-core machine


def makefile_ui_command(*, curdir: Path, port: int) -> list[str]:
    """The recipe of the Makefile's `ui` target, with $(BIN), $(CURDIR), $(PORT) filled in."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ui:"))
    recipe = [line.strip() for line in lines[start + 1:] if line.startswith("\t")][:1]
    assert recipe, "the Makefile's ui target has no recipe line"
    command = (recipe[0].replace("$(BIN)", str(Path(sys.executable).parent))
               .replace("$(CURDIR)", str(curdir)).replace("$(PORT)", str(port)))
    assert "$(" not in command, f"unexpected Makefile variable in the ui recipe: {recipe[0]}"
    return shlex.split(command)


def save_screenshot(browser: WebDriver, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"mlflow-ui-{name}"
    path.write_bytes(browser.screenshot())
    return path


def wait_for(browser: WebDriver, source: str, what: str):
    """Poll a script until it returns something truthy; fail with a screenshot and the page's text."""
    try:
        return browser.wait_for(source, timeout_s=PAGE_TIMEOUT_S, poll_s=0.5)
    except TimeoutError:
        save_screenshot(browser, "timeout.png")
        text = browser.js("return document.body ? document.body.innerText : ''")
        raise AssertionError(f"{what}: not on the page after {PAGE_TIMEOUT_S}s. Page text:\n{text[:3000]}") from None


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A trained tiny pipeline, `make ui`'s server over its mlflow.db, and a browser."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(MISSING)
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("mlflow_ui")
    repo = make_pipeline_repo(tmp, stages=["train"])
    # Create the store's tables first, so the UI and the train stage can then start concurrently
    # without both running the schema migrations.
    client = MlflowClient(tracking_uri=repo.tracking_uri)
    client.search_experiments()
    port = free_port()
    command = makefile_ui_command(curdir=repo.path, port=port)
    # The GenAI job runners (8 processes) are irrelevant to this page and slow on 2 cores.
    env = {**repo.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    ui_log = tmp / "mlflow-ui.log"
    with background(command, env=env, log_path=ui_log, cwd=repo.path) as server:
        repo.run("dvc repro")
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", proc=server, log_path=ui_log)
        # Tall, so the image chart is inside the viewport (the UI loads images lazily).
        with chromium(window_size="1400,2400") as browser:
            run_id = json.loads((repo.path / "reports/train/mlflow_run.json").read_text())["run_id"]
            run = client.get_run(run_id)
            yield {"repo": repo, "command": command, "port": port, "base": base,
                   "browser": browser, "client": client, "run": run}


def test_ui_is_started_by_the_makefile_command(ui):
    repo = ui["repo"]
    assert ui["command"] == [
        str(Path(sys.executable).parent / "mlflow"), "ui",
        "--backend-store-uri", f"sqlite:///{repo.path}/mlflow.db",
        "--host", "127.0.0.1", "--port", str(ui["port"]), "--workers", "1",
    ]
    # ...and it is the store the pipeline logs into.
    assert repo.tracking_uri == f"sqlite:///{repo.path}/mlflow.db"


def test_runs_page_lists_the_training_run(ui):
    browser, run = ui["browser"], ui["run"]
    name = run.info.run_name
    assert name and run.info.status == "FINISHED"
    browser.get(f"{ui['base']}/#/experiments/{run.info.experiment_id}/runs")
    wait_for(
        browser,
        f"return document.body.innerText.includes({json.dumps(name)})"
        " && document.body.innerText.includes('1 matching run')",
        f"run {name!r} in the runs table",
    )
    assert save_screenshot(browser, "runs.png").stat().st_size > 0


def test_run_page_shows_the_sample_images(ui):
    browser, run, client = ui["browser"], ui["run"], ui["client"]
    run_id = run.info.run_id
    logged = {a.path for a in client.list_artifacts(run_id, "images")}
    # One grid per epoch (one here, at the last step, 4); MLflow stores a PNG and a WebP preview.
    grids = sorted(p for p in logged if p.startswith("images/samples+step+4+"))
    assert len(grids) == 2 and grids[0].endswith("+compressed.webp") and grids[1].endswith(".png")

    browser.get(f"{ui['base']}/#/experiments/{run.info.experiment_id}/runs/{run_id}/model-metrics")
    images = wait_for(
        browser,
        "return [...document.images]"
        f".filter(i => i.src.includes('get-artifact') && i.src.includes('run_uuid={run_id}')"
        "  && i.complete && i.naturalWidth > 0)"
        ".map(i => new URL(i.src).searchParams.get('path'))",
        "a loaded <img> of the run's sample grid",
    )
    assert set(images) == {grids[0]}  # the chart shows the preview of the step-4 grid
    assert save_screenshot(browser, "run-model-metrics.png").stat().st_size > 0

    # The full-size grid in the run's artifact browser: exactly the PNG the stage wrote.
    with Image.open(ui["repo"].path / "reports/train/samples/epoch_001.png") as grid:
        width, height = grid.size
    browser.get(f"{ui['base']}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
                f"/artifacts/{grids[1]}")
    sizes = wait_for(
        browser,
        f"return document.body.innerText.includes({json.dumps(grids[1])})"
        " && [...document.images].filter(i => i.src.startsWith('blob:') && i.complete"
        "  && i.naturalWidth > 0).map(i => [i.naturalWidth, i.naturalHeight])",
        f"the artifact preview of {grids[1]}",
    )
    assert sizes and all(size == [width, height] for size in sizes), (sizes, (width, height))
    assert save_screenshot(browser, "run-artifact-samples.png").stat().st_size > 0
