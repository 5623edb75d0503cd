"""The rooms page in headless Chromium (Debian's chromium, driven by Playwright): join,
send, see presence and history, drop the connection, and see the missed messages
recovered exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from switchboard.localstack import LocalStack, running
from tests.integration.browser import chromium, wait_until
from tests.integration.v2client import V2

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("page")) as s:
        yield s


@pytest.fixture
async def page(tmp_path) -> AsyncIterator[object]:
    async with chromium() as browser:
        yield await browser.new_page()


async def connect_page(page, base: str, user: str) -> None:
    """Open the rooms page and connect as ``user``."""
    await page.goto(base + "/rooms")
    await page.fill("#username", user)
    await page.click("#connect")
    await page.wait_for_selector("#status.open")


async def ask_to_join(page, room: str) -> None:
    """Type ``room`` and press Join (the room's panel may take a while: not waited for)."""
    await page.fill("#room", room)
    await page.click("#join")


async def texts(page, room: str) -> list[str]:
    return await page.locator(f'.room[data-room="{room}"] .log li').all_inner_texts()


async def wait_for_text(page, room: str, text: str, timeout: float = 10) -> list[str]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        lines = await texts(page, room)
        if any(text in line for line in lines):
            return lines
        assert asyncio.get_running_loop().time() < deadline, lines
        await asyncio.sleep(0.1)


async def test_rooms_page_join_send_presence_and_recover(stack, page) -> None:
    base = f"http://127.0.0.1:{stack.gateways[0].port}"
    ws_url = f"ws://127.0.0.1:{stack.gateways[0].port}/ws/v2?username=bot"
    bot = await V2.open(ws_url)
    try:
        for name in ("lobby", "annex"):
            await bot.request("join", name)
            await bot.request("publish", name, text=f"before the page came to {name}")

        await connect_page(page, base, "pageuser")
        await ask_to_join(page, "lobby")
        await page.wait_for_selector('.room[data-room="lobby"]')
        await wait_for_text(page, "lobby", "bot: before the page came to lobby")  # history
        await ask_to_join(page, "annex")  # a second room on the same socket
        await page.wait_for_selector('.room[data-room="annex"]')
        await wait_for_text(page, "annex", "bot: before the page came to annex")

        room = page.locator('.room[data-room="lobby"]')
        await room.locator(".text").fill("hello from the page")
        await room.locator("button", has_text="Send").click()
        await wait_for_text(page, "lobby", "pageuser: hello from the page")
        assert await bot.until_seq("lobby", max(bot.seqs("lobby") or [0]) + 1)
        await wait_until(
            page,
            "document.querySelector('.room[data-room=\"lobby\"] .presence').textContent.includes('bot')",
        )

        # Drop the connection for 2 s; meanwhile the bot publishes.
        await page.fill("#dropSeconds", "2")
        await page.click("#drop")
        await page.wait_for_selector("#status.closed")
        for i in range(3):
            await bot.request("publish", "lobby", text=f"while away {i}")
            await bot.request("publish", "annex", text=f"annex while away {i}")
        lines = await wait_for_text(page, "lobby", "bot: while away 2", timeout=15)
        annex = await wait_for_text(page, "annex", "bot: annex while away 2", timeout=15)
        await page.wait_for_selector("#status.open")
        assert "recovered=true" in await page.inner_text("#recovery")
        away = [line for line in lines if "while away" in line]
        assert away == [f"bot: while away {i}" for i in range(3)]  # once each, in order
        # each room's own messages only, each once, in order
        assert [line for line in annex if "while away" in line] == [
            f"bot: annex while away {i}" for i in range(3)
        ]
        assert not any("annex" in line for line in lines)
        assert not any("came to lobby" in line or "hello from" in line for line in annex)
        recovered = await page.locator('.room[data-room="lobby"] li.recovered').all_inner_texts()
        assert [f"bot: while away {i}" for i in range(3)] == [
            t for t in recovered if "while away" in t
        ]
        # The same user in a second tab: its requests must not repeat the first tab's ids,
        # which would make its publish a duplicate of the first tab's (silently dropped).
        second = await page.context.browser.new_page()
        await connect_page(second, base, "pageuser")
        for name in ("lobby", "annex"):
            await ask_to_join(second, name)
            await second.wait_for_selector(f'.room[data-room="{name}"]')
        tab = second.locator('.room[data-room="lobby"]')
        await tab.locator(".text").fill("hello from the second tab")
        await tab.locator("button", has_text="Send").click()
        await wait_for_text(page, "lobby", "pageuser: hello from the second tab")
        await second.close()

        for name in ("lobby", "annex"):
            seqs = await page.eval_on_selector_all(
                f'.room[data-room="{name}"] .log li', "els => els.map(e => +e.dataset.seq)"
            )
            assert seqs == sorted(set(seqs)), f"duplicate or out-of-order events in {name}"
    finally:
        await bot.close()


async def test_rooms_page_joins_again_after_a_passing_refusal(tmp_path, page) -> None:
    """No chat replica when the page joins: the join is refused (503) and the page tries
    again with backoff until a replica is back, then shows the room as joined."""
    with running(tmp_path) as stack:
        for replica in stack.replicas("chat"):
            replica.stop()
        base = f"http://127.0.0.1:{stack.gateways[0].port}"
        await connect_page(page, base, "patient")
        await ask_to_join(page, "later")
        await wait_for_text(page, "later", "joining again in")
        await asyncio.to_thread(stack.start_service, "chat")
        await wait_until(
            page,
            "document.querySelector('.room[data-room=\"later\"] .presence')"
            ".textContent.includes('patient')",
            30,
        )
        lines = await texts(page, "later")
        assert any("service unavailable" in line for line in lines), lines


async def test_a_room_name_is_shown_as_text_not_markup(stack, page) -> None:
    """The room's panel is built before the server refuses a bad name: a name holding
    markup must be shown as it was typed, never run (it was: self-XSS via innerHTML)."""
    base = f"http://127.0.0.1:{stack.gateways[0].port}"
    await connect_page(page, base, "xssuser")
    name = "<img src=x onerror=\"window.__xss='room'\">"
    await ask_to_join(page, name)
    panel = page.locator(".room h2 span").first
    await panel.wait_for()
    assert await panel.inner_text() == "#" + name
    await asyncio.sleep(0.3)  # an image that fails to load fires its onerror at once
    assert await page.evaluate("window.__xss") is None
    assert await page.locator(".room h2 img").count() == 0
