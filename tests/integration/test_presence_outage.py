"""A NATS outage shorter than the presence TTL expires nobody who is still connected,
and a gateway killed during it still expires (docs/protocol.md, Presence)."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from switchboard.localstack import LocalStack, running
from tests.integration.v2client import V2

TTL = 4.0  # SB_CHAT_PRESENCE_TTL; gateways snapshot every second
OUTAGE = 3.5  # nats-server stopped: with the reconnects, about a TTL of silence


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {"SB_CHAT_PRESENCE_TTL": str(TTL), "SB_GATEWAY_PRESENCE_INTERVAL": "1"}
    with running(tmp_path_factory.mktemp("outage"), gateways=2, replicas={"chat": 2}, env=env) as s:
        yield s


def url(port: int, user: str) -> str:
    return f"ws://127.0.0.1:{port}/ws/v2?username={user}"


async def answer(client: V2, kind: str, room: str, **payload: Any) -> dict[str, Any]:
    """A read's payload, asked again while chat is still coming back (503)."""
    deadline = time.monotonic() + 15
    while True:
        reply = await client.request(kind, room, **payload)
        if reply["type"] == kind:
            return reply["payload"]
        assert time.monotonic() < deadline, reply
        await asyncio.sleep(0.2)


async def present(client: V2, room: str) -> set[str]:
    return {m["user"] for m in (await answer(client, "presence", room))["members"]}


async def test_connected_members_outlive_a_nats_outage_and_the_dead_do_not(stack) -> None:
    room = f"room-{uuid.uuid4().hex[:8]}"
    doomed = stack.start_gateway(env={"SB_GATEWAY_ID": f"doomed{uuid.uuid4().hex[:6]}"})
    ports = [stack.gateways[0].port, stack.gateways[1].port, doomed.port]
    clients = [
        await V2.open(url(p, u)) for p, u in zip(ports, ("alice", "bob", "zombie"), strict=True)
    ]
    alice = clients[0]
    try:
        for client in clients:
            assert (await client.request("join", room))["type"] == "ack"
        deadline = time.monotonic() + 5
        while await present(alice, room) != {"alice", "bob", "zombie"}:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)

        assert stack.nats is not None
        await asyncio.to_thread(stack.nats.stop)
        doomed.signal(signal.SIGKILL)  # dies while NATS is down
        doomed.wait(5)
        await asyncio.sleep(OUTAGE)
        await asyncio.to_thread(stack.start_nats)
        back = time.monotonic()
        for gateway in stack.gateways[:2]:
            await asyncio.to_thread(stack.wait_ready, gateway)

        # Each chat replica expires the zombie a TTL after it is back (reconnects are
        # jittered up to 2 s); a spurious leave would have come by then too.
        await asyncio.sleep(max(0.0, back + TTL + 6 - time.monotonic()))
        events = (await answer(alice, "history", room))["events"]
        left = {
            e["payload"]["user"]: e["payload"].get("expired")
            for e in events
            if e["type"] == "leave"
        }
        assert left == {"zombie": True}, left
        for _ in range(4):  # presence goes to either replica
            assert await present(alice, room) == {"alice", "bob"}
    finally:
        await asyncio.gather(*(c.close() for c in clients[:2]))
        stack.processes.remove(doomed)
