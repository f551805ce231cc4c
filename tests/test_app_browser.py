"""End to end: `digitml app` on a free loopback port, loaded in headless Chromium, an upload."""

import os
import shutil
import subprocess
import sys
import time

import pytest
from serving import free_port, stop_process, wait_for_http
from test_app import drawn_seven

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def app_url(registered_model, tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "digitml.cli", "app", "--port", str(port)],
        env={**os.environ, "MLFLOW_TRACKING_URI": registered_model},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "app.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/_stcore/health", process, tmp_path / "app.log", timeout=90)
    yield url
    stop_process(process)


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"
)
def test_upload_in_headless_chromium_shows_the_digit(app_url, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    try:
        driver.get(app_url)
        wait = WebDriverWait(driver, 120)
        upload = wait.until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]"))
        )
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
    finally:
        driver.quit()
