"""The Space demo in a real headless browser: push a student to the local Hub, serve the generated Space's app.py
(which downloads the student from that Hub), type a text in chromium, submit, and read the predicted label.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Without them the test is skipped on a
developer machine and fails under CI (CI=true), so a missing browser can never pass for a green run.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from transformers import pipeline

from nanonet_hf.hub import push_student, write_space

from .conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = os.environ.get("NANONET_TEST_ARTIFACTS", os.path.join(ROOT, "test-artifacts"))
TEXT = "we like pasta and bread today"


def require_browser():
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if path is None]
    if missing:
        message = f"{missing} not installed: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip("selenium")
    pytest.importorskip("gradio")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited with {process.returncode}:\n{process.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the app did not answer on {url} within {timeout:.0f} s")


@pytest.mark.slow
def test_space_demo_predicts_in_a_real_browser(tiny_run, hub, tmp_path):
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    push_student(tiny_run, "alice/tiny-student", endpoint=hub.endpoint)
    space = write_space(str(tmp_path / "space"), "alice/tiny-student", title="Tiny demo", examples=[TEXT])
    expected = pipeline("text-classification", model=os.path.join(tiny_run, "student"))(TEXT)[0]["label"]

    port = free_port()
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,  # the app downloads the student from the local Hub
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    env.pop("NANONET_MODEL", None)
    app = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver = None
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, app, timeout=120)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                     "--window-size=1200,900"):  # fmt: skip
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "textarea"))
        box.send_keys(TEXT)
        driver.find_element(By.XPATH, "//button[normalize-space()='Submit']").click()
        shown = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="label-output-value"]').text.strip() or None)
        os.makedirs(ARTIFACTS, exist_ok=True)
        screenshot = os.path.join(ARTIFACTS, "space_demo.png")
        driver.save_screenshot(screenshot)
        print(f"screenshot: {screenshot}")
        assert shown == expected, f"the page shows {shown!r}, the model predicts {expected!r}"
        assert ("GET", f"/alice/tiny-student/resolve/{hub.hub.repos[('model', 'alice/tiny-student')].refs['main']}/model.safetensors") in {
            (method, path) for method, path, _ in hub.hub.requests
        }, "the app did not load the student from the Hub"
    finally:
        if driver is not None:
            driver.quit()
        app.terminate()
        try:
            app.wait(timeout=20)
        except subprocess.TimeoutExpired:
            app.kill()
