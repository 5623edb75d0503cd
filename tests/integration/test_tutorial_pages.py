"""The tutorial's two pages, as served, in headless Chromium (Debian's chromium, driven by
Playwright): opened at http://127.0.0.1:<port> as the README says, they connect to
``ws://localhost:<port>`` as their code is written. The tutorial hard-codes port 8000;
the test rewrites only that port, in the browser, so that the gateway can sit on a free
port; the page's own bytes load unchanged. The browser sends ``Origin:
http://127.0.0.1:<port>`` to ``Host: localhost:<port>``: the gateway's default origin
check must take both names of the loopback for one."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from switchboard.localstack import LocalStack, running
from tests.integration.browser import chromium
from tests.integration.client import connect, recv_json

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("tutorial-pages")) as s:
        yield s


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    async with chromium() as launched:
        yield launched


async def open_page(browser, base: str, path: str, port: int):
    """The page the gateway serves at ``path``, loaded as it is; only the port of the
    ``ws://localhost:8000/`` it opens is pointed at ``port``, by a wrapper around the
    browser's ``WebSocket`` installed before the page's script runs."""
    served = urllib.request.urlopen(base + path, timeout=5).read().decode()  # noqa: ASYNC210
    assert served.count("ws://localhost:8000/") == 1
    page = await browser.new_page()
    await page.add_init_script(
        "(() => { const Native = window.WebSocket;"
        " window.WebSocket = function (url, protocols) {"
        f" return new Native(url.replace('ws://localhost:8000/', 'ws://localhost:{port}/'),"
        " protocols); };"
        " window.WebSocket.prototype = Native.prototype;"
        " Object.assign(window.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});"
        " })();"
    )
    await page.goto(base + path)
    return page


async def items(page, timeout: float, until) -> list[str]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        lines = await page.locator("#messages li").all_inner_texts()
        if until(lines):
            return lines
        assert asyncio.get_running_loop().time() < deadline, lines
        await asyncio.sleep(0.1)


async def test_the_tutorial_echo_page(stack, browser) -> None:
    port = stack.gateways[0].port
    page = await open_page(browser, f"http://127.0.0.1:{port}", "/echo", port)
    await page.wait_for_function("ws.readyState === WebSocket.OPEN", timeout=10_000)
    for text in ("hello", "grüße ✓"):
        await page.fill("#messageText", text)
        await page.click("button")
    lines = await items(page, 10, lambda lines: len(lines) >= 2)
    assert lines == ["Echo: hello", "Echo: grüße ✓"]


async def test_the_tutorial_chat_page_with_another_client(stack, browser) -> None:
    port = stack.gateways[0].port
    name = f"page{uuid.uuid4().hex[:6]}"
    page = await open_page(browser, f"http://127.0.0.1:{port}", "/", port)
    await page.fill("#username", name)
    await page.click("text=Join Chat")
    await items(page, 10, lambda lines: f"{name} has joined the chat" in lines)
    async with connect(f"ws://127.0.0.1:{port}/ws/chat?username=bob") as bob:
        await items(page, 10, lambda lines: "bob has joined the chat" in lines)
        await page.fill("#messageText", "hi bob")
        await page.click("#messageForm button")
        while (await recv_json(bob)).get("message") != f"{name}: hi bob":
            pass
        await bob.send('{"message": "hi page"}')
        await items(page, 10, lambda lines: "bob: hi page" in lines)
    await items(page, 10, lambda lines: "bob has left the chat" in lines)
    # the page's own message in its own colour, bob's in another, notices in grey
    assert await page.locator("#messages li.me").all_inner_texts() == [f"{name}: hi bob"]
    assert await page.locator("#messages li.user").all_inner_texts() == ["bob: hi page"]
