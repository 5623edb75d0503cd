"""The tutorial's two pages in headless Chromium (Debian's chromium, driven by
Playwright), opened at http://127.0.0.1:<port> as the README says. The gateway serves
the tutorial's bytes at localhost:8000; at any other address, with that address in
place of the hard-coded ``ws://localhost:8000``, so they work there without help. The
first tests point the socket at ``localhost:<port>`` from the page at 127.0.0.1, as the
tutorial's page does at port 8000. The browser sends ``Origin:
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
    """The tutorial's page loaded at ``base + path``: the tutorial's bytes (what the
    gateway serves to ``localhost:8000``) but for the address its socket opens, which
    the gateway sets to where the page was asked for. A wrapper around the browser's
    ``WebSocket``, installed before the page's script runs, then points that socket at
    ``localhost``, as the tutorial's page does from 127.0.0.1:8000."""
    asked = urllib.request.Request(base + path, headers={"Host": "localhost:8000"})
    tutorial = urllib.request.urlopen(asked, timeout=5).read().decode()  # noqa: ASYNC210
    assert tutorial.count("ws://localhost:8000/") == 1
    here = f"ws://127.0.0.1:{port}/"
    served = urllib.request.urlopen(base + path, timeout=5).read().decode()  # noqa: ASYNC210
    assert served == tutorial.replace("ws://localhost:8000/", here)
    page = await browser.new_page()
    await page.add_init_script(
        "(() => { const Native = window.WebSocket;"
        " window.WebSocket = function (url, protocols) {"
        f" return new Native(url.replace('{here}', 'ws://localhost:{port}/'), protocols); }};"
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


async def test_the_pages_as_served_at_another_address_work_without_help(stack, browser) -> None:
    """At any address but localhost:8000 the gateway serves the pages with that address
    in place of the tutorial's hard-coded ws://localhost:8000 (make run PORT=9000)."""
    port = stack.gateways[0].port
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{port}/echo")
    await page.wait_for_function("ws.readyState === WebSocket.OPEN", timeout=10_000)
    assert await page.evaluate("ws.url") == f"ws://127.0.0.1:{port}/ws"
    await page.fill("#messageText", "hello")
    await page.click("button")
    assert await items(page, 10, lambda lines: len(lines) >= 1) == ["Echo: hello"]
    chat = await browser.new_page()
    await chat.goto(f"http://127.0.0.1:{port}/")
    await chat.fill("#username", "anywhere")
    await chat.click("text=Join Chat")
    await items(chat, 10, lambda lines: "anywhere has joined the chat" in lines)


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
