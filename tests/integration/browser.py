"""Headless Chromium for the browser tests: Debian's ``chromium``, driven by Playwright
with ``executable_path`` (no browser is ever downloaded)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A launched browser, closed on the way out."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def wait_until(page: Any, expression: str, timeout: float = 10.0) -> None:
    """Wait until ``expression`` is truthy in ``page``, polled from here: Playwright's
    ``wait_for_function`` evaluates it in the page with ``eval``, which the gateway's
    pages forbid (their Content-Security-Policy runs only their own script)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await page.evaluate(expression):
        if loop.time() > deadline:
            raise TimeoutError(f"still false after {timeout} s: {expression}")
        await asyncio.sleep(0.05)
