"""Chat across two gateways: what the tutorial's single process shows, with fan-out of
one NATS message per gateway, not per socket."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest

from switchboard.localstack import LocalStack, running
from tests.integration.client import connect, recv_json, sample, scrape


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("cluster"), gateways=2) as s:
        yield s


def chat_url(stack: LocalStack, index: int, name: str) -> str:
    return f"ws://127.0.0.1:{stack.gateways[index].port}/ws/chat?username={name}"


async def recv_own(ws, suffix: str) -> dict:
    """The next frame about this test's users: the room `general` is shared, and another
    test's late leave notice may still arrive."""
    while True:
        frame = await recv_json(ws)
        if suffix in frame["message"] or suffix in frame.get("sender", ""):
            return frame


def system(text: str) -> dict:
    return {"message": text, "sender": "Server", "type": "system"}


async def test_alice_and_bob_on_different_gateways(cluster) -> None:
    suffix = uuid.uuid4().hex[:6]
    alice, bob = f"alice-{suffix}", f"bob-{suffix}"
    async with connect(chat_url(cluster, 0, alice)) as a:
        assert await recv_own(a, suffix) == system(f"{alice} has joined the chat")
        async with connect(chat_url(cluster, 1, bob)) as b:
            assert await recv_own(b, suffix) == system(f"{bob} has joined the chat")
            assert await recv_own(a, suffix) == system(f"{bob} has joined the chat")
            await a.send(json.dumps({"message": "hi bob"}))
            expected = {"message": f"{alice}: hi bob", "sender": alice, "type": "message"}
            assert await recv_own(a, suffix) == expected
            assert await recv_own(b, suffix) == expected
            await b.send(json.dumps({"message": "hi alice"}))
            expected = {"message": f"{bob}: hi alice", "sender": bob, "type": "message"}
            assert await recv_own(b, suffix) == expected
            assert await recv_own(a, suffix) == expected
        assert await recv_own(a, suffix) == system(f"{bob} has left the chat")


async def test_socket_dying_without_close_frame_still_announces_leave(cluster) -> None:
    suffix = uuid.uuid4().hex[:6]
    alice, bob = f"alice-{suffix}", f"bob-{suffix}"
    async with connect(chat_url(cluster, 0, alice)) as a:
        assert await recv_own(a, suffix) == system(f"{alice} has joined the chat")
        b = await connect(chat_url(cluster, 1, bob))
        assert await recv_own(a, suffix) == system(f"{bob} has joined the chat")
        b.transport.abort()  # TCP reset: no close frame
        assert await recv_own(a, suffix) == system(f"{bob} has left the chat")


async def test_fan_out_is_one_nats_message_per_gateway(cluster) -> None:
    port = cluster.gateways[0].port
    suffix = uuid.uuid4().hex[:6]
    names = [f"m{i}-{suffix}" for i in range(8)]
    sockets = []
    try:
        for name in names:
            sockets.append(await connect(chat_url(cluster, 0, name)))
            for ws in sockets:  # every member sees the newcomer, the newcomer itself too
                assert await recv_own(ws, suffix) == system(f"{name} has joined the chat")
        before = sample(scrape(port), "switchboard_gateway_room_events_total")
        await sockets[0].send(json.dumps({"message": "to everyone"}))
        expected = {"message": f"{names[0]}: to everyone", "sender": names[0], "type": "message"}
        for ws in sockets:
            assert await recv_own(ws, suffix) == expected
        after = sample(scrape(port), "switchboard_gateway_room_events_total")
        assert after - before == 1  # eight sockets, one NATS message
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
