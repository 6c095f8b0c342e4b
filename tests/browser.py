"""Headless Debian chromium for page tests, driven by Playwright (never downloads a browser of its own)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from playwright.sync_api import Browser, Page, sync_playwright

from editq.producer.stack import free_port, wait_until

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def load_every_image(page: Page) -> list[dict[str, Any]]:
    """Scroll each <img> into view (they load lazily), wait until each has loaded; their sources and sizes."""
    count = page.locator("img").count()
    for i in range(count):
        img = page.locator("img").nth(i)
        img.scroll_into_view_if_needed()
        page.wait_for_function("(el) => el.complete", arg=img.element_handle(), timeout=15_000)
    return list(page.eval_on_selector_all(
        "img", "els => els.map(e => ({src: e.getAttribute('src'), w: e.naturalWidth, h: e.naturalHeight}))"))


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run an ASGI app on a free loopback port in a thread: its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "review app")
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(10)
