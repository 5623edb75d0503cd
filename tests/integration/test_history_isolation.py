"""A few connections pipelining history pages do not starve everyone else's history
requests on a chat replica (services/scheduler.py: chat's history and presence go
through it; joins, leaves and publishes keep their order, one at a time)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import nats
import pytest
import websockets

from services.chat.rooms import RoomStore
from switchboard.localstack import LocalStack, running

HEAVY = 6  # connections, each with 64 history pages of 500 events in flight


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("history-isolation")) as s:
        yield s


async def fill(url: str, room: str, count: int) -> None:
    nc = await nats.connect(url)
    try:
        store = RoomStore(nc, nc.jetstream(), max_msgs=1000, max_age=7 * 86400, dedupe_window=120)
        for i in range(count):
            await store.append(room, "message", {"text": f"archived {i}", "sender": "x"}, None)
    finally:
        await nc.close()


def history(rid: str, limit: int) -> str:
    return json.dumps(
        {"type": "history", "id": rid, "room": "archive", "payload": {"limit": limit}}
    )


async def replies(ws, count: int) -> list[tuple[str, float]]:
    got = []
    while len(got) < count:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if "id" in frame:
            got.append((frame["type"], time.monotonic()))
    return got


async def test_pipelined_history_pages_do_not_starve_others(stack) -> None:
    await fill(stack.nats_url, "archive", 1000)
    base = f"ws://127.0.0.1:{stack.gateways[0].port}/ws/v2"
    heavy = [
        await websockets.connect(f"{base}?username=h{i}", max_size=None, max_queue=None)
        for i in range(HEAVY)
    ]
    try:
        async with websockets.connect(f"{base}?username=light") as light:
            for i, ws in enumerate(heavy):
                for j in range(64):
                    await ws.send(history(f"h{i}-{j}", 500))
            readers = [asyncio.create_task(replies(ws, 64)) for ws in heavy]
            await asyncio.sleep(0.2)  # the pages are queued at the chat replica
            await light.send(history("mine", 5))
            ((kind, light_at),) = await replies(light, 1)
            heavy_done = max(t for done in await asyncio.gather(*readers) for _, t in done)
        # one at a time, ~380 pages of ~12 ms stood before it: "service unavailable"
        assert kind == "history"
        assert light_at < heavy_done
    finally:
        for ws in heavy:
            await ws.close()
