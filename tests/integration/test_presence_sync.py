"""A chat replica that starts learns who is in the rooms at once, not at the gateways'
next full presence snapshot (60 s here): its first presence answers are right."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from switchboard.localstack import LocalStack, running
from tests.integration.v2client import V2

INTERVAL = 60  # SB_GATEWAY_PRESENCE_INTERVAL: far longer than the test


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {"SB_GATEWAY_PRESENCE_INTERVAL": str(INTERVAL), "SB_CHAT_PRESENCE_TTL": "300"}
    with running(tmp_path_factory.mktemp("presence"), gateways=2, env=env) as s:
        yield s


def url(stack: LocalStack, gw: int, user: str) -> str:
    return f"ws://127.0.0.1:{stack.gateways[gw].port}/ws/v2?username={user}"


async def members(client: V2, room: str) -> list[str] | None:
    reply = await client.request("presence", room)
    if reply["type"] != "presence":
        return None  # chat not answering yet
    return sorted(m["user"] if isinstance(m, dict) else m for m in reply["payload"]["members"])


async def test_a_new_chat_replica_knows_the_members_at_once(stack) -> None:
    alice = await V2.open(url(stack, 0, "alice"))
    bob = await V2.open(url(stack, 1, "bob"))
    try:
        await alice.request("join", "lounge")
        await bob.request("join", "lounge")
        assert await members(alice, "lounge") == ["alice", "bob"]

        (old,) = stack.replicas("chat")
        await asyncio.to_thread(old.stop)
        await asyncio.to_thread(stack.start_service, "chat")
        deadline = time.monotonic() + 10
        while (now := await members(bob, "lounge")) != ["alice", "bob"]:
            assert time.monotonic() < deadline, f"presence after the restart: {now}"
            await asyncio.sleep(0.2)
    finally:
        await asyncio.gather(alice.close(), bob.close())
