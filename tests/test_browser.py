"""The web page and /docs end to end in headless Chromium, driven over WebDriver (chromedriver, plain HTTP)."""
from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from _serving import CLASSES, decode_png, running, serve_process, shared_model
from webdriver import CHROMEDRIVER, CHROMIUM, MISSING, WebDriver, chromium

from ganops.serving.inference import OnnxGenerator
from ganops.serving.app import create_app
from ganops.params import ServeParams

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason=MISSING)


def wait_for(browser: WebDriver, expression: str, timeout: float = 30.0):
    """Poll a JS expression until it is truthy; on timeout, report the page's two status lines."""
    def status() -> str:
        return "page status: " + str(browser.js("return [document.getElementById('status')?.textContent, "
                                                "document.getElementById('interp-status')?.textContent];"))

    return browser.wait_for(f"return {expression};", timeout_s=timeout, describe=status)


# Draw a loaded <img> onto a canvas and return its gray values (the blob URL is same-origin).
PIXELS = """
const img = document.querySelector(arguments[0]);
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const ctx = canvas.getContext('2d');
ctx.drawImage(img, 0, 0);
const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
const gray = [];
for (let i = 0; i < rgba.length; i += 4) gray.push(rgba[i]);
return [canvas.width, canvas.height, gray];
"""
# Every resource the page loaded, so a test can tell that none came from another origin.
RESOURCES = "return performance.getEntriesByType('resource').map(e => e.name);"


# The same, all three channels (an RGB model's images).
RGB_PIXELS = PIXELS.replace("gray.push(rgba[i]);", "gray.push(rgba[i], rgba[i + 1], rgba[i + 2]);")


def rgb_pixels(browser: WebDriver, selector: str) -> np.ndarray:
    width, height, values = browser.js(RGB_PIXELS, selector)
    return np.asarray(values, dtype=np.uint8).reshape(height, width, 3)


def pixels(browser: WebDriver, selector: str) -> np.ndarray:
    width, height, gray = browser.js(PIXELS, selector)
    return np.asarray(gray, dtype=np.uint8).reshape(height, width)


def cell(i: int) -> str:
    return f"#grid .cell:nth-child({i + 1}) img"


def loaded(text: str) -> str:
    return ("document.getElementById('status').dataset.state === 'loaded' && "
            f"document.getElementById('status').textContent === {text!r}")


def test_page_grid_paging_enlarge_classes_and_interpolation(tmp_path):
    generator = OnnxGenerator.from_onnx(shared_model(conditional=True), providers="cpu")
    app = create_app(generator=generator, config=ServeParams(providers="cpu"), api_key=None)
    sha = generator.sha256
    ARTIFACTS.mkdir(exist_ok=True)
    with running(app) as url, chromium(window_size="1000,1400") as browser:
        # Start seed, class and interpolation from the URL: the page renders all of it on load.
        browser.get(f"{url}/#start=7&label=3&a=1&b=2&steps=6")
        wait_for(browser, loaded(f"loaded seeds 7–38, class {CLASSES[3]}"))
        seeds = browser.js("return [...document.querySelectorAll('#grid .cell')].map(c => c.dataset.seed);")
        assert seeds == [str(s) for s in range(7, 39)]
        expected = generator.generate(range(7, 39), labels=3)
        for i in (0, 13, 31):
            np.testing.assert_array_equal(pixels(browser, cell(i)), expected[i])
        options = browser.js("return [...document.getElementById('label').options].map(o => o.text);")
        assert options == [f"{i}: {name}" for i, name in enumerate(CLASSES)]
        assert browser.js("return document.getElementById('label-field').hidden;") is False
        assert sha[:12] in browser.js("return document.getElementById('model-info').textContent;")
        # Each cell shows the model-versioned URL, which the browser may keep forever.
        assert f"/v1/models/{sha}/images/7.png?label=3" in "\n".join(browser.js(RESOURCES))

        wait_for(browser, "document.getElementById('interp-status').dataset.state === 'loaded'")
        strip = pixels(browser, "#strip")
        assert strip.shape == (32, 6 * 30 + 2)
        ends = generator.generate([1, 2], labels=3)
        np.testing.assert_array_equal(strip[2:30, 2:30], ends[0])
        np.testing.assert_array_equal(strip[2:30, 152:180], ends[1])

        # Paging: next, next, previous.
        browser.js("document.getElementById('next').click();")
        wait_for(browser, loaded(f"loaded seeds 39–70, class {CLASSES[3]}"))
        np.testing.assert_array_equal(pixels(browser, cell(0)), generator.generate([39], labels=3)[0])
        browser.js("document.getElementById('next').click();")
        wait_for(browser, loaded(f"loaded seeds 71–102, class {CLASSES[3]}"))
        browser.js("document.getElementById('prev').click();")
        wait_for(browser, loaded(f"loaded seeds 39–70, class {CLASSES[3]}"))
        assert "start=39" in browser.js("return location.hash;")

        # Another class redraws the page in it.
        browser.js("const s = document.getElementById('label'); s.value = '5';"
                   "s.dispatchEvent(new Event('change'));")
        wait_for(browser, loaded(f"loaded seeds 39–70, class {CLASSES[5]}"))
        np.testing.assert_array_equal(pixels(browser, cell(4)), generator.generate([43], labels=5)[0])

        # A click enlarges a sample and shows its seed and permanent URL.
        browser.js("document.querySelector('#grid .cell:nth-child(5)').click();")
        wait_for(browser, "document.getElementById('detail').open && "
                          "document.getElementById('detail').dataset.state === 'loaded'")
        assert browser.js("return document.getElementById('detail-seed').textContent;") == \
            f"seed 43, class {CLASSES[5]}"
        permanent = browser.js("return document.getElementById('detail-url').textContent;")
        assert permanent == f"{url}/v1/models/{sha}/images/43.png?label=5"
        np.testing.assert_array_equal(pixels(browser, "#detail-image"), generator.generate([43], labels=5)[0])
        np.testing.assert_array_equal(decode_png(httpx.get(permanent).content),
                                      generator.generate([43], labels=5)[0])
        assert "seed=43" in browser.js("return location.hash;")
        (ARTIFACTS / "browser-page.png").write_bytes(browser.screenshot())
        # ... and starts an interpolation from it.
        browser.js("document.getElementById('detail-a').click();")
        wait_for(browser, "!document.getElementById('detail').open && "
                          "document.getElementById('interp-status').textContent === "
                          "'loaded 6 steps from seed 43 to seed 2'")
        np.testing.assert_array_equal(pixels(browser, "#strip")[2:30, 2:30], generator.generate([43], labels=5)[0])

        # A bad start seed shows an error on the page rather than breaking it.
        browser.js("document.getElementById('start').value = '99999999999999999999';"
                   "document.querySelector('#grid-form button[type=submit]').click();")
        text = wait_for(browser, "document.getElementById('status').dataset.state === 'error' && "
                                 "document.getElementById('status').textContent")
        assert text.startswith("HTTP 422")
        # Nothing came from anywhere else: no CDN, no fonts, no analytics.
        assert all(name.startswith(url) for name in browser.js(RESOURCES))
    assert (ARTIFACTS / "browser-page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_of_a_conditional_32px_colour_model():
    """The page at another size and in colour: grid cells, the class picker and the interpolation strip."""
    generator = OnnxGenerator.from_onnx(shared_model(conditional=True, resolution=32, channels=3), providers="cpu")
    assert generator.image_shape == (32, 32, 3)
    app = create_app(generator=generator, config=ServeParams(providers="cpu"), api_key=None)
    with running(app) as url, chromium(window_size="1000,1400") as browser:
        browser.get(f"{url}/#start=5&label=2&a=1&b=2&steps=4")
        wait_for(browser, loaded(f"loaded seeds 5–36, class {CLASSES[2]}"))
        expected = generator.generate(range(5, 37), labels=2)
        for i in (0, 31):
            np.testing.assert_array_equal(rgb_pixels(browser, cell(i)), expected[i])
        wait_for(browser, "document.getElementById('interp-status').dataset.state === 'loaded'")
        strip = rgb_pixels(browser, "#strip")
        assert strip.shape[0] == 32 + 4  # a 2 px border around 32 px images
        np.testing.assert_array_equal(strip[2:34, 2:34], generator.generate([1], labels=2)[0])
        options = browser.js("return [...document.getElementById('label').options].map(o => o.text);")
        assert options == [f"{i}: {name}" for i, name in enumerate(CLASSES)]
        browser.js("const s = document.getElementById('label'); s.value = '7';"
                   "s.dispatchEvent(new Event('change'));")
        wait_for(browser, loaded(f"loaded seeds 5–36, class {CLASSES[7]}"))
        np.testing.assert_array_equal(rgb_pixels(browser, cell(3)), generator.generate([8], labels=7)[0])
        (ARTIFACTS / "browser-page-rgb.png").write_bytes(browser.screenshot())


def test_page_asks_for_the_api_key():
    generator = OnnxGenerator.from_onnx(shared_model(conditional=False), providers="cpu")
    app = create_app(generator=generator, config=ServeParams(providers="cpu"), api_key="k3y")
    with running(app) as url, chromium() as browser:
        browser.get(f"{url}/#start=4")
        wait_for(browser, "document.getElementById('status').dataset.state === 'error'")
        assert browser.js("return document.getElementById('auth').hidden;") is False
        browser.js("document.getElementById('api-key').value = 'k3y';"
                   "document.getElementById('api-key-save').click();")
        wait_for(browser, loaded("loaded seeds 4–35"))
        np.testing.assert_array_equal(pixels(browser, cell(0)), generator.generate([4])[0])
        assert browser.js("return document.getElementById('label-field').hidden;") is True


def test_page_follows_a_model_switch(tmp_path):
    """After the server switches models, the old model's permanent URLs answer 404: the page reads the
    model again and draws the next page with the new one."""
    import os
    import shutil

    a, b = shared_model(conditional=False), shared_model(conditional=False, width=12)
    served = tmp_path / "generator.onnx"

    def place(model) -> None:  # each file replaced whole, as a deployment would
        for suffix in ("", ".sha256"):
            shutil.copyfile(f"{model}{suffix}", tmp_path / "part")
            os.replace(tmp_path / "part", f"{served}{suffix}")

    place(a)
    new = OnnxGenerator.from_onnx(b, providers="cpu")
    with serve_process(served, env={"GANOPS_API_KEY": "k3y"}) as url, chromium() as browser:
        browser.get(f"{url}/#start=4")
        wait_for(browser, "document.getElementById('status').dataset.state === 'error'")
        browser.js("document.getElementById('api-key').value = 'k3y';"
                   "document.getElementById('api-key-save').click();")
        wait_for(browser, loaded("loaded seeds 4–35"))
        place(b)
        reload = httpx.post(f"{url}/admin/reload", headers={"Authorization": "Bearer k3y"}, timeout=60)
        assert reload.status_code == 200 and reload.json()["outcome"] == "switched", reload.text
        browser.js("document.getElementById('next').click();")
        wait_for(browser, loaded("loaded seeds 36–67"))
        np.testing.assert_array_equal(pixels(browser, cell(0)), new.generate([36])[0])
        assert new.sha256[:12] in browser.js("return document.getElementById('model-info').textContent;")


def test_docs_render_offline():
    generator = OnnxGenerator.from_onnx(shared_model(conditional=True), providers="cpu")
    app = create_app(generator=generator, config=ServeParams(providers="cpu"), api_key=None)
    with running(app) as url, chromium() as browser:
        operations = sum(len(ops) for ops in httpx.get(f"{url}/openapi.json").json()["paths"].values())
        browser.get(f"{url}/docs")
        # Swagger UI drew one block per operation from its own files, served by this server.
        wait_for(browser, f"document.querySelectorAll('.swagger-ui .opblock').length === {operations}")
        assert "ganops" in browser.js("return document.querySelector('.swagger-ui .info .title').textContent;")
        resources = browser.js(RESOURCES)
        assert f"{url}/docs/assets/swagger-ui-bundle.js" in resources and f"{url}/openapi.json" in resources
        assert all(name.startswith(url) for name in resources), resources
        (ARTIFACTS / "browser-docs.png").write_bytes(browser.screenshot())
