"""One client's chat messages keep their order with two replicas of chat, also while the
replica handling them stops.

A gateway sends a connection's requests of ordered operations (chat join and send, v2
room join, leave and publish: ``wire.subjects.ORDERED_OPS``) one at a time until a reply
names the replica that handled it, then pipelines them to that replica, which handles
them in order; if it is gone, they go again, one at a time, to the queue group. Without
this, requests pipelined to the queue group were handled side by side by both replicas:
these cases then fail (checked: dozens of inversions in 300 messages, and messages before
their sender's join)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid

import pytest

from switchboard.localstack import LocalStack
from tests.faults.test_faults import replace
from tests.faults.topology import REPLICAS, wait_instances
from tests.integration.client import connect, recv_json, sample, scrape
from tests.integration.v2client import V2

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]

N = 300


def chat_url(stack: LocalStack, gw: int, name: str) -> str:
    return f"ws://127.0.0.1:{stack.gateways[gw].port}/ws/chat?username={name}"


def sends(stack: LocalStack) -> list[float]:
    """``send`` requests each chat replica has handled."""
    return [
        sample(
            scrape(p.metrics_port),  # type: ignore[arg-type]
            "switchboard_service_requests_total",
            operation="send",
        )
        for p in stack.replicas("chat")
    ]


async def handled_since(stack: LocalStack, before: list[float], total: int) -> list[float]:
    """``send`` requests each replica handled since ``before``, once they add up to
    ``total``: a replica counts a request when its handler returns, just after the
    broadcast the test waited for, so a scrape at once may come a moment early."""
    deadline = time.monotonic() + 5
    while True:
        now = await asyncio.to_thread(sends, stack)
        handled = [x - y for x, y in zip(now, before, strict=True)]
        if sum(handled) >= total or time.monotonic() > deadline:
            return handled
        await asyncio.sleep(0.02)


async def alices_messages(
    observer, alice: str, until: str = " has left the chat", seen: list[str] | None = None
) -> list[str]:
    """What ``observer`` sees about ``alice`` (added to ``seen``), up to the message
    ``alice + until`` (the room is shared: other users' traffic is skipped)."""
    seen = [] if seen is None else seen
    while not seen or seen[-1] != alice + until:
        frame = await recv_json(observer, timeout=20)
        if frame["message"].startswith(alice):
            seen.append(frame["message"])
    return seen


def in_order(alice: str, texts: list[str]) -> list[str]:
    return [
        f"{alice} has joined the chat",
        *(f"{alice}: {text}" for text in texts),
        f"{alice} has left the chat",
    ]


async def test_tutorial_chat_keeps_one_senders_order(topology) -> None:
    stack = topology
    await asyncio.to_thread(wait_instances, stack, "chat", REPLICAS)
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    async with connect(chat_url(stack, 1, bob)) as b:
        a = await connect(chat_url(stack, 0, alice), max_queue=None)  # reads all: sees the close
        # Pipelined from the first moment: the join must still come first.
        for i in range(N):
            await a.send(json.dumps({"message": str(i)}))
        await a.close()  # at once: every message still goes out, the leave after them
        assert await alices_messages(b, alice) == in_order(alice, [str(i) for i in range(N)])


async def test_v2_publisher_keeps_its_order(topology) -> None:
    stack = topology
    await asyncio.to_thread(wait_instances, stack, "chat", REPLICAS)
    room = f"order-{uuid.uuid4().hex[:8]}"
    base = [f"ws://127.0.0.1:{gw.port}/ws/v2" for gw in stack.gateways]
    reader = await V2.open(f"{base[1]}?username=reader")
    writer = await V2.open(f"{base[0]}?username=writer")
    try:
        assert (await reader.request("join", room))["type"] == "ack"
        rids = [await writer.send("publish", room, text=str(i)) for i in range(N)]
        acks = [await writer.reply(rid, timeout=20) for rid in rids]
        assert [a["type"] for a in acks] == ["ack"] * N
        seqs = [ack["payload"]["seq"] for ack in acks]
        assert seqs == sorted(seqs) and len(set(seqs)) == N
        events = await reader.until_seq(room, seqs[-1], timeout=20)
        texts = [e["payload"]["text"] for e in events if e["type"] == "message"]
        assert texts == [str(i) for i in range(N)]
    finally:
        await asyncio.gather(reader.close(), writer.close())


async def test_pinned_replica_stopping_loses_and_reorders_nothing(topology) -> None:
    """SIGTERM to the replica handling alice's messages while she keeps sending: the
    ones it took are answered (it drains), the ones sent to it after it left go to the
    other replica, in order; not one error frame."""
    stack = topology
    await asyncio.to_thread(wait_instances, stack, "chat", REPLICAS)
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    async with connect(chat_url(stack, 1, bob)) as b:
        a = await connect(chat_url(stack, 0, alice), max_queue=None)
        errors = sample(scrape(stack.gateways[0].port), "switchboard_gateway_errors_total")  # type: ignore[arg-type]
        before = sends(stack)
        for i in range(20):
            await a.send(json.dumps({"message": str(i)}))
        seen = await alices_messages(b, alice, until=": 19")
        handled = await handled_since(stack, before, 20)
        assert sorted(handled) == [0, 20], handled  # pinned: one replica took them all
        victim = stack.replicas("chat")[handled.index(20)]
        victim.signal(signal.SIGTERM)
        sent = 20
        while victim.alive():  # sending all the while it drains and goes
            await a.send(json.dumps({"message": str(sent)}))
            sent += 1
            await asyncio.sleep(0.002)
        for i in range(sent, sent + 50):
            await a.send(json.dumps({"message": str(i)}))
        sent += 50
        await a.close()
        await alices_messages(b, alice, seen=seen)
        assert seen == in_order(alice, [str(i) for i in range(sent)])
        after = sample(scrape(stack.gateways[0].port), "switchboard_gateway_errors_total")  # type: ignore[arg-type]
        assert after == errors  # not one error frame (the room is only alice's and bob's)
    await replace(stack, "chat")


async def test_a_stopping_replicas_backlog_is_handled_before_what_goes_elsewhere(
    topology,
) -> None:
    """alice pipelines a burst, and the replica handling her messages is stopped while
    it still works through them. Sent to it after it left, her next messages found no
    responders and went straight to the other replica, which handled them before the
    stopping one had finished hers: out of order. They now wait for the last message
    the stopping replica took to be answered."""
    stack = topology
    await asyncio.to_thread(wait_instances, stack, "chat", REPLICAS)
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    async with connect(chat_url(stack, 1, bob)) as b:
        a = await connect(chat_url(stack, 0, alice), max_queue=None)
        before = sends(stack)
        await a.send(json.dumps({"message": "0"}))
        seen = await alices_messages(b, alice, until=": 0")  # pinned by now
        handled = await handled_since(stack, before, 1)
        victim = stack.replicas("chat")[handled.index(1)]
        sent = 1
        for _ in range(10):  # a backlog for the victim: 200 messages sent in one go
            for _ in range(20):
                await a.send(json.dumps({"message": str(sent)}))
                sent += 1
            await asyncio.sleep(0)
        victim.signal(signal.SIGTERM)
        while victim.alive():
            await a.send(json.dumps({"message": str(sent)}))
            sent += 1
            await asyncio.sleep(0.002)
        await a.close()
        await alices_messages(b, alice, seen=seen)
        assert seen == in_order(alice, [str(i) for i in range(sent)])
    await replace(stack, "chat")
