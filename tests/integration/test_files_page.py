"""The files page in headless Chromium (Debian's chromium, driven by Playwright): pick a
file, upload it with a progress bar while the connection is cut mid-upload (the page
reconnects and resumes), list it, download it (same SHA-256), delete it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from switchboard.localstack import LocalStack, running
from tests.integration.browser import chromium, wait_until
from tests.unit.test_files_wire import png

pytestmark = pytest.mark.browser

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("filespage")) as s:
        yield s


@pytest.fixture
async def browser_page() -> AsyncIterator[object]:
    async with chromium() as browser:
        context = await browser.new_context(accept_downloads=True)
        yield await context.new_page()


async def test_files_page_resumed_upload_download_delete(stack, browser_page, tmp_path) -> None:
    page = browser_page
    data = png(320, 200) + os.urandom(3 * MIB)
    digest = hashlib.sha256(data).hexdigest()

    # The user's first /ws/files connection is cut after the page has sent 5 chunks.
    who = f"page{uuid.uuid4().hex[:8]}"
    state = {"connections": 0, "chunks": 0}
    cuts: list[asyncio.Future] = []

    def route(ws) -> None:
        server = ws.connect_to_server()
        if f"username={who}" not in ws.url:
            return  # the page's first connection, as "guest", before the test picks a user
        state["connections"] += 1
        if state["connections"] > 1:
            return  # later connections: passed through untouched

        def from_page(message) -> None:
            if isinstance(message, bytes):
                state["chunks"] += 1
                if state["chunks"] > 5:
                    if state["chunks"] == 6:
                        cuts.append(asyncio.ensure_future(ws.close(code=4001, reason="cut")))
                        cuts.append(asyncio.ensure_future(server.close()))
                    return
            server.send(message)

        ws.on_message(from_page)
        server.on_message(ws.send)

    await page.route_web_socket(re.compile(r".*/ws/files.*"), route)
    base = f"http://127.0.0.1:{stack.gateways[0].port}"
    await page.goto(base + "/files")
    await page.fill("#username", who)
    await page.click("#connect")
    await page.wait_for_selector("#status.open")
    await page.set_input_files(
        "#file", files=[{"name": "holiday.png", "mimeType": "image/png", "buffer": data}]
    )
    await page.click("#upload")
    await wait_until(
        page, "document.querySelector('#message').textContent.startsWith('stored')", 30
    )
    log = await page.locator("#log li").all_inner_texts()
    assert state["connections"] >= 2, log
    resumed = [line for line in log if "resumed at" in line]
    assert resumed and int(resumed[-1].rsplit(" ", 1)[1]) > 0, log
    assert digest in await page.inner_text("#message")
    assert await page.get_attribute("#progress", "value") == str(len(data))

    row = page.locator("#files tr", has_text="holiday.png")
    await row.wait_for()
    assert "image/png 320\u00d7200" in await row.inner_text()
    async with page.expect_download() as info:
        await row.locator("button.download").click()
    download = await info.value
    saved = tmp_path / "copy.png"
    await download.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == digest
    assert download.suggested_filename == "holiday.png"
    await wait_until(page, "document.querySelector('#dlCheck').textContent === 'matches'")
    assert await page.inner_text("#downloadSha") == digest

    await row.locator("button.delete").click()
    await wait_until(page, "!document.querySelector('#files').textContent.includes('holiday.png')")
    assert await page.locator("#uploads li").count() == 0
