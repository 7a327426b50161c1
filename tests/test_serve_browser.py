"""The service's web page in a real headless Chromium (Debian's chromium and
chromium-driver, which `make test` installs): uploading an image through the form shows
the class probabilities the API gives for it."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def server(tmp_path: Path):
    """The app on a real uvicorn server in a thread, on a free loopback port."""
    import uvicorn

    from conftest import tiny_classifier
    from napari_mitosis.serve.app import create_app, load_served

    path = tiny_classifier(tmp_path / "idc.safetensors")
    served = load_served([str(path)], device="cpu")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(create_app(served), host="127.0.0.1", port=port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    for _ in range(200):
        if running.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", served
    running.should_exit = True
    thread.join(timeout=10)


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")
def test_uploading_an_image_in_the_page_shows_its_probabilities(server, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from napari_mitosis.classification.run import classify_images

    url, served = server
    image = np.random.default_rng(3).integers(0, 255, (50, 50, 3), np.uint8)
    picture = tmp_path / "patch.png"
    Image.fromarray(image).save(picture)
    (expected,) = classify_images([np.asarray(Image.open(io.BytesIO(picture.read_bytes())))],
                                  served["idc"].predictor)  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
    try:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: "idc" in b.find_element(By.ID, "models").text)
        browser.find_element(By.ID, "classify-image").send_keys(str(picture))
        browser.find_element(By.ID, "classify-button").click()
        label = wait.until(lambda b: b.find_elements(By.ID, "label"))[0].text
        cells = browser.find_elements(By.CSS_SELECTOR, "#classify-result td.probability")
        shown = [float(c.text) for c in cells]
    finally:
        browser.quit()
    assert shown == pytest.approx([1 - float(expected), float(expected)], abs=1e-4)
    assert label.startswith("idc" if expected >= served["idc"].card.threshold else "benign")
