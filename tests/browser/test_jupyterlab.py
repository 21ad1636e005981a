"""The notebook experience as people see it: JupyterLab on loopback, a notebook run in headless Chromium.

JupyterLab starts on a free loopback port against the session's throwaway redis-server (the kernel gets its URL as
``COMPOZY_REDIS_URL``), Debian's ``chromium`` is driven by Selenium through ``chromedriver`` (no browser download),
the notebook runs with JupyterLab's own "run all cells" command, and the assertions are on the rendered page: the
transcript shows the messages with ``[REDACTED]`` highlighted, the inspector lists the instances and shows the
transcript of the one selected. Screenshots are saved under the test's tmp dir (the path is printed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compozy_nb.testing import RedisServer, free_port

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
REQUIRED = os.environ.get("CI") == "true" or os.environ.get("COMPOZY_REQUIRE_REDIS") == "1"

CELLS = [
    "%load_ext compozy_nb",
    """%%compozy
resource: memory
id: chat
key: "chat:{{.user}}"
type: token_based
max_tokens: 2000
privacy_policy: {redact_patterns: ['\\b[\\w.+-]+@[\\w-]+\\.\\w+\\b']}""",
    """%compozy memory append chat --var user=ada --payload '{"role": "user", "content": "I am ada@example.com"}'
%compozy memory append chat --var user=ada --payload '{"role": "assistant", "content": "Hello Ada, noted."}'
%compozy memory append chat --var user=bob --payload '{"role": "user", "content": "bob here, hi from bob"}'""",
    "%compozy memory read chat --var user=ada",
    "%compozy inspect --pattern 'chat:*'",
]


def _need_browser() -> None:
    if CHROMIUM is None or CHROMEDRIVER is None:
        message = "chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)"
        if REQUIRED:
            pytest.fail(message + " but CI=true or COMPOZY_REQUIRE_REDIS=1")
        pytest.skip(message)


def _notebook(path: Path) -> None:
    cells: list[dict[str, Any]] = [
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}
        for source in CELLS
    ]
    notebook = {
        "cells": cells,
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook), encoding="utf-8")


@pytest.fixture
def jupyterlab(tmp_path: Path, redis_server: RedisServer) -> Iterator[str]:
    """JupyterLab on a free loopback port, its own config/runtime/settings dirs, stopped by pid."""
    _need_browser()
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    root = tmp_path / "lab"
    root.mkdir()
    _notebook(root / "memories.ipynb")
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port, token = free_port(), uuid.uuid4().hex
    env = {
        **os.environ,
        "COMPOZY_REDIS_URL": redis_server.url,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
        "--ServerApp.port_retries=0", "--allow-root", "--LabApp.extension_manager=readonly",
        "--ServerApp.terminals_enabled=False",
    ]  # fmt: skip
    log = (tmp_path / "jupyterlab.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", process, tmp_path / "jupyterlab.log")
        yield f"http://127.0.0.1:{port}/lab/tree/memories.ipynb?token={token}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(240):
        if process.poll() is not None:
            pytest.fail(f"jupyter lab exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer: {log.read_text()[-2000:]}")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1600",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Any, what: str, timeout: float = 180) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)
    except TimeoutException:
        driver.save_screenshot(str(Path(os.environ.get("PYTEST_TMP", "/tmp")) / "timeout.png"))
        pytest.fail(f"timed out waiting for {what}; page text: {driver.find_element('tag name', 'body').text[-3000:]}")


def _screenshot(driver: Any, path: Path) -> None:
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def test_transcript_and_inspector_render_in_jupyterlab(jupyterlab: str, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    os.environ["PYTEST_TMP"] = str(tmp_path)
    browser.get(jupyterlab)
    _wait(browser, lambda d: d.execute_script("return !!(window.jupyterapp && window.jupyterapp.shell)"), "the app")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell"), "the notebook")
    _wait(
        browser,
        lambda d: d.execute_script(
            "const w = window.jupyterapp.shell.currentWidget;"
            "return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
            " && w.sessionContext.session.kernel.connectionStatus === 'connected');"
        ),
        "the kernel",
    )
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")

    bubbles = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea .cnb-m"), "the transcript")
    inspector = _wait(
        browser,
        lambda d: d.find_elements(
            By.XPATH, "//*[contains(@class,'widget')]//*[contains(text(),'compozy-nb inspector')]"
        ),
        "the inspector",
    )
    texts = [b.text for b in bubbles]
    assert any("I am [REDACTED]" in t for t in texts), texts
    assert any("Hello Ada, noted." in t for t in texts), texts
    redacted = browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea .cnb-red")
    assert redacted and redacted[0].text == "[REDACTED]"
    outputs = " ".join(o.text for o in browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea"))
    assert "ada@example.com" not in outputs  # only the input line has it
    browser.execute_script(
        "arguments[0].scrollIntoView({block: 'start'})", browser.find_element(By.CSS_SELECTOR, ".jp-Cell")
    )
    _screenshot(browser, tmp_path / "outputs.png")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", bubbles[0])
    _screenshot(browser, tmp_path / "transcript.png")

    widget = inspector[0].find_element(By.XPATH, "ancestor::div[contains(@class,'widget-vbox')][1]")
    _wait(browser, lambda d: "chat:bob" in widget.text and "chat:ada" in widget.text, "the instance table")
    _wait(browser, lambda d: "Hello Ada, noted." in widget.text, "the selected transcript")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", widget)
    _screenshot(browser, tmp_path / "inspector.png")

    Select(widget.find_element(By.XPATH, ".//select[option[text()='chat:bob']]")).select_by_visible_text("chat:bob")
    _wait(browser, lambda d: "hi from bob" in widget.text, "the transcript of the instance selected")
    assert "Hello Ada, noted." not in widget.find_element(By.CSS_SELECTOR, ".widget-tab").text
    _screenshot(browser, tmp_path / "inspector-selected.png")
