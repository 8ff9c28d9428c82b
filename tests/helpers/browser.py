"""Serving an app on a free loopback port, and headless Debian Chromium through Playwright.

Browser tests fail (never skip) when `chromium` is missing: CI installs it
(`modules.app.bootstrap.ensure_chromium`). `playwright install` is never used.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-gpu", "--no-sandbox"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(app, *, start_timeout: float = 30.0) -> Iterator[str]:
    """Run `app` with uvicorn in a thread; yield its base URL; stop it afterwards."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def chromium_path() -> str:
    path = shutil.which("chromium")
    assert path, "Debian's chromium is required for browser tests (apt-get install chromium)"
    return path


@contextlib.contextmanager
def browser_page(*, width: int = 1400, height: int = 1000):
    """A fresh page in headless Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def screenshot(page, name: str, *, full_page: bool = True) -> Path:
    """Save a screenshot under test-artifacts/ (toasts need `full_page=False`)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


PAGE_TIMEOUT_MS = 120_000


@contextlib.contextmanager
def opened_ui(runtime) -> Iterator[object]:
    """The Gradio app of `runtime` served and opened in headless Chromium, txt2img ready."""
    from webui.app import create_app

    with serve(create_app(runtime)) as url, browser_page() as page:
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.goto(url)
        page.locator("#txt2img_prompt textarea").wait_for()
        yield page


def set_number(page, elem_id: str, value) -> None:
    """Type into a slider's or number box's number field and commit it."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


@contextlib.contextmanager
def served_tiny_ui(data_dir: Path) -> Iterator[tuple]:
    """(runtime, page): the tiny random model's UI (`make_runtime`) opened in Chromium."""
    from tests.helpers.webui_runtime import make_runtime

    runtime = make_runtime(data_dir)
    try:
        with opened_ui(runtime) as page:
            yield runtime, page
    finally:
        runtime.jobs.stop()


def open_tab(page, label: str) -> None:
    page.get_by_role("tab", name=label).click()
