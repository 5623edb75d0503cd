"""A few connections pipelining history pages do not starve everyone else's history
requests on a chat replica (services/scheduler.py: chat's history and presence go
through it; joins, leaves and publishes keep their order, one at a time)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator

import nats
import pytest
import websockets

from services.chat.rooms import RoomStore
from switchboard.localstack import LocalStack, running
from wire.subjects import Op, Service, service_subject

HEAVY = 6  # connections, each with 64 history pages of 500 events in flight
PAGES = 64  # the gateway's max_in_flight


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # one at a time per replica, so that the order in which requests run is visible: with
    # 8 at once (4 per connection), one queue in arrival order also left the light
    # client a slot, and the test passed with turn-taking gone
    env = {"SB_CHAT_CONCURRENCY": "1"}
    with running(tmp_path_factory.mktemp("history-isolation"), env=env) as s:
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
    chat = stack.replicas("chat")[0]
    heavy = [
        await websockets.connect(f"{base}?username=h{i}", max_size=None, max_queue=None)
        for i in range(HEAVY)
    ]
    # a copy of every history request: once it has seen one, nats-server has passed it on
    nc = await nats.connect(stack.nats_url)
    seen = 0
    arrived = asyncio.Event()

    async def watch(msg) -> None:
        nonlocal seen
        seen += 1
        if seen == HEAVY * PAGES + 1:
            arrived.set()

    await nc.subscribe(service_subject(Service.CHAT, Op.HISTORY), cb=watch)
    await nc.flush()
    try:
        async with websockets.connect(f"{base}?username=light") as light:
            # every page reaches the replica before the light request, and none is
            # handled before it is there: in arrival order, it comes after all of them
            chat.signal(signal.SIGSTOP)
            try:
                for i, ws in enumerate(heavy):
                    for j in range(PAGES):
                        await ws.send(history(f"h{i}-{j}", 500))
                await light.send(history("mine", 5))
                await asyncio.wait_for(arrived.wait(), 10)
            finally:
                chat.signal(signal.SIGCONT)
            readers = [asyncio.create_task(replies(ws, PAGES)) for ws in heavy]
            ((kind, light_at),) = await replies(light, 1)
            pages = [
                t for done in await asyncio.gather(*readers) for k, t in done if k == "history"
            ]
        assert kind == "history"
        # it waited for one page of each heavy connection, not for all of theirs (one at a
        # time in arrival order: every page that was read before the gateway's timeout,
        # then "service unavailable" for it or, at best, an answer after all of them)
        ahead = sum(t < light_at for t in pages)
        behind = sum(t > light_at for t in pages)
        # (one running and one of each connection: 7; up to twice that for the order in
        # which replies on different sockets are read here)
        assert ahead <= 2 * HEAVY, (ahead, behind)
        assert behind > ahead, (ahead, behind)
    finally:
        await nc.close()
        for ws in heavy:
            await ws.close()
