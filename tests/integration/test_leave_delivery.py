"""A member's leave is not lost when no chat replica hears it (gateway/leaves.py,
services/chat/presence.py): the remaining members are told once, and the room's history
holds one leave event, whether chat was stopped when the socket closed or the gateway
was cut off from NATS (its full snapshot then drops the member, and chat writes the
leave itself; the gateway's own leave, sent again, is the same event)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections.abc import Iterator

import pytest

from switchboard.localstack import LocalStack, running
from tests.integration.client import connect, recv_json
from tests.integration.v2client import V2

ROOM = "general"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {"SB_GATEWAY_PRESENCE_INTERVAL": "1"}
    with running(tmp_path_factory.mktemp("leaves"), gateways=2, replicas={"chat": 2}, env=env) as s:
        yield s


def ws(port: int, path: str, user: str) -> str:
    return f"ws://127.0.0.1:{port}{path}?username={user}"


async def notices(chat, seconds: float) -> list[str]:
    """The tutorial frames a /ws/chat socket gets for ``seconds``."""
    got: list[str] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        with contextlib.suppress(TimeoutError):
            got.append((await recv_json(chat, left))["message"])
    return got


async def leaves_in_history(client: V2, users: set[str]) -> list[str]:
    deadline = time.monotonic() + 15
    while (reply := await client.request("history", ROOM, limit=200))["type"] != "history":
        assert time.monotonic() < deadline, reply  # chat still coming back
        await asyncio.sleep(0.2)
    events = reply["payload"]["events"]
    return sorted(
        e["payload"]["user"]
        for e in events
        if e["type"] == "leave" and e["payload"]["user"] in users
    )


async def live_leaves(watcher: V2, users: set[str], seconds: float) -> list[str]:
    """The leave events the /ws/v2 watcher gets for ``seconds``, then after a message of
    its own (a live event lost to the outage is filled from history before it)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        with contextlib.suppress(TimeoutError):
            await watcher.pump(left)
    ack = await watcher.request("publish", ROOM, text="after")
    assert ack["type"] == "ack", ack
    await watcher.until_seq(ROOM, ack["payload"]["seq"])
    events = watcher.events.get(ROOM, [])
    return sorted(e["payload"]["user"] for e in events if e["type"] == "leave" and
                  e["payload"]["user"] in users)  # fmt: skip


async def test_leaves_while_every_chat_replica_is_stopped_are_told_once(stack) -> None:
    tag = uuid.uuid4().hex[:6]
    alice, bob = f"alice{tag}", f"bob{tag}"
    gw0, gw1 = stack.gateways[0].port, stack.gateways[1].port
    async with connect(ws(gw0, "/ws/chat", f"watch{tag}")) as chat_watcher:
        watcher = await V2.open(ws(gw1, "/ws/v2", f"eye{tag}"))
        assert (await watcher.request("join", ROOM))["type"] == "ack"
        chat_alice = await connect(ws(gw0, "/ws/chat", alice))
        bob_v2 = await V2.open(ws(gw1, "/ws/v2", bob))
        assert (await bob_v2.request("join", ROOM))["type"] == "ack"
        await notices(chat_watcher, 0.5)  # the joins

        for replica in stack.replicas("chat"):
            await asyncio.to_thread(replica.stop)
        await chat_alice.close()
        await bob_v2.close()
        await asyncio.sleep(1.0)  # their leaves find no chat replica, again and again
        await asyncio.to_thread(stack.start_service, "chat")

        told = await notices(chat_watcher, 4.0)
        assert told.count(f"{alice} has left the chat") == 1, told
        assert told.count(f"{bob} has left the chat") == 1, told
        assert await live_leaves(watcher, {alice, bob}, 0.1) == [alice, bob]
        assert await leaves_in_history(watcher, {alice, bob}) == [alice, bob]
        await watcher.close()


async def test_leaves_while_the_gateway_is_cut_off_are_stored_once(stack) -> None:
    """NATS stops while alice's and carol's sockets close. Carol's gateway gives her
    leave up before NATS is back: chat writes it when that gateway's snapshot no longer
    lists her. Alice's gateway sends hers again once back, and its snapshot drops her
    too: one event each, in history and live to a /ws/v2 member. The /ws/chat watcher
    is told at most once (never twice; it may miss a notice published while its own
    gateway, cut off too, is still reconnecting: the tutorial protocol has no history to
    fill it from)."""
    tag = uuid.uuid4().hex[:6]
    alice, carol = f"alice{tag}", f"carol{tag}"
    gw0 = stack.gateways[0].port
    quick = stack.start_gateway(env={"SB_GATEWAY_LEAVE_RETRY_TIMEOUT": "0.3"})
    try:
        async with connect(ws(gw0, "/ws/chat", f"watch{tag}")) as chat_watcher:
            watcher = await V2.open(ws(stack.gateways[1].port, "/ws/v2", f"eye{tag}"))
            assert (await watcher.request("join", ROOM))["type"] == "ack"
            chat_alice = await connect(ws(gw0, "/ws/chat", alice))
            chat_carol = await connect(ws(quick.port, "/ws/chat", carol))
            await notices(chat_watcher, 1.5)  # the joins, and a snapshot with both

            assert stack.nats is not None
            await asyncio.to_thread(stack.nats.stop)
            await chat_alice.close()
            await chat_carol.close()
            await asyncio.sleep(1.0)
            await asyncio.to_thread(stack.start_nats)
            for gateway in (*stack.gateways[:2], quick):
                await asyncio.to_thread(stack.wait_ready, gateway)

            told = await notices(chat_watcher, 4.0)
            assert told.count(f"{alice} has left the chat") <= 1, told
            assert told.count(f"{carol} has left the chat") <= 1, told
            assert await live_leaves(watcher, {alice, carol}, 0.1) == [alice, carol]
            assert await leaves_in_history(watcher, {alice, carol}) == [alice, carol]
            await watcher.close()
    finally:
        quick.stop()
        stack.processes.remove(quick)


@contextlib.asynccontextmanager
async def chat_paused(stack):
    """Every chat replica stopped (SIGSTOP): requests wait, unanswered, until resumed."""
    replicas = stack.replicas("chat")
    for replica in replicas:
        replica.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for replica in replicas:
            replica.signal(signal.SIGCONT)


async def test_a_reconnecting_users_join_is_told_after_the_old_sockets_leave(stack) -> None:
    """Alice's first socket closes with a message still out (chat paused): its teardown
    waits for that answer before it queues the leave, and her new socket's join went
    first (the room took her for gone). The leave is reserved from the close on."""
    tag = uuid.uuid4().hex[:6]
    alice = f"alice{tag}"
    gw0 = stack.gateways[0].port
    async with connect(ws(gw0, "/ws/chat", f"watch{tag}")) as watcher:
        first = await connect(ws(gw0, "/ws/chat", alice))
        await notices(watcher, 0.5)  # the joins
        async with chat_paused(stack):
            await first.send(json.dumps({"message": "hi"}))
            await asyncio.sleep(0.1)
            await first.close()
            await asyncio.sleep(0.2)
            second = await connect(ws(gw0, "/ws/chat", alice))
            await asyncio.sleep(0.3)
        told = await notices(watcher, 2.0)
        await second.close()
    ours = [m for m in told if alice in m]
    assert ours == [f"{alice}: hi", f"{alice} has left the chat", f"{alice} has joined the chat"]


async def test_a_reconnecting_v2_users_join_comes_after_the_old_sockets_leave(stack) -> None:
    """As above on /ws/v2: the room's events have the old membership's leave before the
    new one's join."""
    tag = uuid.uuid4().hex[:6]
    alice = f"alice{tag}"
    gw0 = stack.gateways[0].port
    watcher = await V2.open(ws(gw0, "/ws/v2", f"eye{tag}"))
    assert (await watcher.request("join", ROOM))["type"] == "ack"
    first = await V2.open(ws(gw0, "/ws/v2", alice))
    assert (await first.request("join", ROOM))["type"] == "ack"
    async with chat_paused(stack):
        await first.send("publish", ROOM, text="hi")
        await asyncio.sleep(0.1)
        await first.close()
        await asyncio.sleep(0.2)
        second = await V2.open(ws(gw0, "/ws/v2", alice))
        rejoin = await second.send("join", ROOM)
        await asyncio.sleep(0.3)
    assert (await second.reply(rejoin))["type"] == "ack"
    ack = await watcher.request("publish", ROOM, text="after")
    events = await watcher.until_seq(ROOM, ack["payload"]["seq"])
    ours = [
        e["type"] for e in events if alice in (e["payload"].get("user"), e["payload"].get("sender"))
    ]
    assert ours == ["join", "message", "leave", "join"], events
    await second.close()
    await watcher.close()
