"""End to end: `digitml app` on a free loopback port, loaded in headless Chromium, an upload;
then the same process stopped with SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from browser import CHROMEDRIVER, CHROMIUM, HOW_TO_GET, chromium
from serving import free_port, stop_process, wait_for_http
from test_app import drawn_seven

from conftest import missing


def start_app(folder: Path, tracking_uri: str) -> tuple[subprocess.Popen, int]:
    """`digitml app` on a free loopback port, once its page answers: the process and the port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "digitml.cli", "app", "--port", str(port)],
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=(folder / "app.log").open("w"),
    )
    wait_for_http(
        f"http://127.0.0.1:{port}/_stcore/health", process, folder / "app.log", timeout=90
    )
    return process, port


@pytest.fixture(scope="module")
def app(registered_model, tmp_path_factory):
    """One `digitml app` serving the registered model for the module: the upload test uses it,
    the SIGTERM test (the last in this file) stops it. Yields (process, port)."""
    process, port = start_app(tmp_path_factory.mktemp("app"), registered_model)
    yield process, port
    stop_process(process)


def streamlit_processes(port: int) -> list[int]:
    """The ids of the Streamlit processes serving on `port`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            arguments = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:  # the process ended meanwhile
            continue
        if "streamlit" in arguments and str(port) in arguments:
            found.append(int(cmdline.parent.name))
    return found


def test_upload_in_headless_chromium_shows_the_digit(app, tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        missing("chromium", HOW_TO_GET)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium(tmp_path / "profile") as driver:
        driver.get(f"http://127.0.0.1:{app[1]}")
        wait = WebDriverWait(driver, 120)
        upload = wait.until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]"))
        )
        assert "10MB per file" in driver.page_source  # the limit the model itself has
        image = tmp_path / "seven.png"
        image.write_bytes(drawn_seven())
        upload.send_keys(str(image))
        digit = wait.until(
            expected_conditions.presence_of_element_located(
                (By.XPATH, "//div[contains(@style, '96px')]")
            )
        )
        assert digit.text == "7"
        assert "confidence" in driver.page_source
        wait.until(
            expected_conditions.presence_of_element_located(
                (By.CSS_SELECTOR, ".vega-embed canvas, .vega-embed svg")
            )
        )
        time.sleep(1)  # let the chart finish drawing before the picture
        driver.save_screenshot(os.environ.get("DIGITML_APP_SCREENSHOT", str(tmp_path / "app.png")))


def test_sigterm_stops_the_page_and_leaves_no_process(app):
    process, port = app
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    finally:
        process.kill()
    left = streamlit_processes(port)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
