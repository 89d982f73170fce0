"""The web page end to end in headless Chromium, driven over WebDriver (chromedriver, plain HTTP)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _serving import CLASSES, export_model, running
from webdriver import CHROMEDRIVER, CHROMIUM, MISSING, WebDriver, chromium

from ganops.inference import Generator
from ganops.serve_app import create_app
from ganops.serve_config import ServeParams

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason=MISSING)


def wait_for(browser: WebDriver, expression: str, timeout: float = 30.0):
    """Poll a JS expression until it is truthy; on timeout, report the page's two status lines."""
    def status() -> str:
        return "page status: " + str(browser.js("return [document.getElementById('status').textContent, "
                                                "document.getElementById('interp-status').textContent];"))

    return browser.wait_for(f"return {expression};", timeout_s=timeout, describe=status)


# Draw a loaded <img> onto a canvas and return its gray values (the blob URL is same-origin).
PIXELS = """
const img = document.getElementById(arguments[0]);
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const ctx = canvas.getContext('2d');
ctx.drawImage(img, 0, 0);
const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
const gray = [];
for (let i = 0; i < rgba.length; i += 4) gray.push(rgba[i]);
return [canvas.width, canvas.height, gray];
"""


def pixels(browser: WebDriver, element: str) -> np.ndarray:
    width, height, gray = browser.js(PIXELS, element)
    return np.asarray(gray, dtype=np.uint8).reshape(height, width)


def test_page_shows_images_and_interpolates(tmp_path):
    model = export_model(tmp_path, conditional=True)
    generator = Generator.from_onnx(model, providers="cpu")
    app = create_app(generator=generator, config=ServeParams(providers="cpu"), api_key=None)
    ARTIFACTS.mkdir(exist_ok=True)
    with running(app) as url, chromium() as browser:
        # Seed, class and interpolation from the URL: the page renders all of it on load.
        browser.get(f"{url}/#seed=7&label=3&a=1&b=2&steps=6")
        assert wait_for(browser, "document.getElementById('status').dataset.state === 'loaded' && "
                                "document.getElementById('status').textContent")  == \
            f"loaded seed 7, class {CLASSES[3]}"
        options = browser.js("return [...document.getElementById('label').options].map(o => o.text);")
        assert options == [f"{i}: {name}" for i, name in enumerate(CLASSES)]
        assert browser.js("return document.getElementById('label-field').hidden;") is False
        np.testing.assert_array_equal(pixels(browser, "image"), generator.generate([7], labels=3)[0])
        assert generator.sha256[:12] in browser.js("return document.getElementById('model-info').textContent;")

        wait_for(browser, "document.getElementById('interp-status').dataset.state === 'loaded'")
        strip = pixels(browser, "strip")
        assert strip.shape == (32, 6 * 30 + 2)
        ends = generator.generate([1, 2], labels=3)
        np.testing.assert_array_equal(strip[2:30, 2:30], ends[0])
        np.testing.assert_array_equal(strip[2:30, 152:180], ends[1])

        # Then as a user would: type a seed, pick a class, press Show.
        browser.js("document.getElementById('seed').value = '11';"
                   "document.getElementById('label').value = '5';"
                   "document.querySelector('#single-form button[type=submit]').click();")
        wait_for(browser, f"document.getElementById('status').textContent === 'loaded seed 11, class {CLASSES[5]}'")
        np.testing.assert_array_equal(pixels(browser, "image"), generator.generate([11], labels=5)[0])
        assert "seed=11" in browser.js("return location.hash;")
        (ARTIFACTS / "browser-page.png").write_bytes(browser.screenshot())

        # A bad seed shows an error on the page rather than breaking it.
        browser.js("document.getElementById('seed').value = '99999999999999999999';"
                   "document.querySelector('#single-form button[type=submit]').click();")
        text = wait_for(browser, "document.getElementById('status').dataset.state === 'error' && "
                                "document.getElementById('status').textContent")
        assert text.startswith("HTTP 422")
    assert (ARTIFACTS / "browser-page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_asks_for_the_api_key(tmp_path):
    model = export_model(tmp_path, conditional=False, width=4)
    generator = Generator.from_onnx(model, providers="cpu")
    app = create_app(generator=generator, config=ServeParams(providers="cpu"), api_key="k3y")
    with running(app) as url, chromium() as browser:
        browser.get(f"{url}/#seed=4")
        wait_for(browser, "document.getElementById('status').dataset.state === 'error'")
        assert browser.js("return document.getElementById('auth').hidden;") is False
        browser.js("document.getElementById('api-key').value = 'k3y';"
                   "document.getElementById('api-key-save').click();")
        assert wait_for(browser, "document.getElementById('status').dataset.state === 'loaded' && "
                                "document.getElementById('status').textContent") == "loaded seed 4"
        np.testing.assert_array_equal(pixels(browser, "image"), generator.generate([4])[0])
