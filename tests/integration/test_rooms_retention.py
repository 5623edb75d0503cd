"""Retention and paging of room history, on a stack that keeps few events per room.

With ``SB_CHAT_HISTORY_MAX_MESSAGES=5`` and ``SB_CHAT_RECOVER_NEWEST=3``, a client that was
away for more than five events cannot be given everything it missed: its ``join`` with
``since`` must say ``recovered: false`` and hand it the newest three, and live delivery
must go on after them without a gap. A second stack keeps events for two seconds only.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import nats
import pytest
from nats.js.errors import NotFoundError

from services.chat.rooms import RoomStore
from switchboard.localstack import LocalStack, running
from tests.integration.v2client import V2
from wire import headers as h
from wire.errors import ErrorCode, WireError
from wire.frames import quoted
from wire.subjects import ROOMS_STREAM, history_subject

KEEP = 5
NEWEST = 3
MAX_AGE = 2.0
TRIM_INTERVAL = 0.5


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {"SB_CHAT_HISTORY_MAX_MESSAGES": str(KEEP), "SB_CHAT_RECOVER_NEWEST": str(NEWEST)}
    with running(tmp_path_factory.mktemp("retention"), env=env) as s:
        yield s


@pytest.fixture(scope="module")
def aging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {
        "SB_CHAT_HISTORY_MAX_AGE": str(MAX_AGE),
        "SB_CHAT_HISTORY_TRIM_INTERVAL": str(TRIM_INTERVAL),
        "SB_CHAT_RECOVER_NEWEST": str(NEWEST),
    }
    with running(tmp_path_factory.mktemp("aging"), env=env) as s:
        yield s


def url(stack: LocalStack, user: str) -> str:
    return f"ws://127.0.0.1:{stack.gateways[0].port}/ws/v2?username={user}"


def room_name() -> str:
    return f"keep-{uuid.uuid4().hex[:8]}"


def texts(events: list[dict]) -> list[str]:
    return [e["payload"]["text"] for e in events if e["type"] == "message"]


async def publish(client: V2, room: str, *lines: str) -> list[int]:
    return [(await client.request("publish", room, text=t))["payload"]["seq"] for t in lines]


async def test_a_gap_older_than_retention_recovers_the_newest_then_goes_live(stack) -> None:
    room = room_name()
    writer = await V2.open(url(stack, "writer"))
    reader = await V2.open(url(stack, "reader"))
    try:
        await writer.request("join", room)
        await reader.request("join", room)
        (seen,) = await publish(writer, room, "seen")
        await reader.until_seq(room, seen)
        await reader.request("leave", room)
        await reader.close()
        away = await publish(writer, room, *(f"away-{i}" for i in range(KEEP + 3)))

        back = await V2.open(url(stack, "reader"))
        ack = await back.reply(await back.send("join", room, since=seen))
        assert ack["type"] == "ack", ack
        head = ack["payload"]["seq"]
        assert ack["payload"] == {"seq": head, "recovered": False}
        # the newest NEWEST events, in order, before the ack (the last is this join)
        assert back.seqs(room) == list(range(head - NEWEST + 1, head + 1))
        assert back.seqs(room)[:-1] == away[-(NEWEST - 1) :]
        assert texts(back.events[room]) == [f"away-{i}" for i in range(KEEP + 3)][-(NEWEST - 1) :]
        assert back.events[room][-1]["type"] == "join"
        # live delivery goes on right after them, without a gap
        (live,) = await publish(writer, room, "live")
        events = await back.until_seq(room, live)
        assert [e["seq"] for e in events] == list(range(head - NEWEST + 1, live + 1))
        await back.close()
    finally:
        await writer.close()


async def test_a_gap_inside_retention_is_still_recovered(stack) -> None:
    room = room_name()
    writer = await V2.open(url(stack, "writer2"))
    try:
        await writer.request("join", room)
        (seen,) = await publish(writer, room, "seen")
        away = await publish(writer, room, *(f"away-{i}" for i in range(KEEP - 2)))
        back = await V2.open(url(stack, "reader2"))
        try:
            ack = await back.reply(await back.send("join", room, since=seen))
            # seen and everything after it are still kept: all of it, then this join
            assert ack["payload"] == {"seq": away[-1] + 1, "recovered": True}
            assert back.seqs(room) == [*away, away[-1] + 1]
            assert texts(back.events[room]) == [f"away-{i}" for i in range(KEEP - 2)]
        finally:
            await back.close()
    finally:
        await writer.close()


async def test_a_publish_sent_again_after_its_event_left_history_is_answered(stack) -> None:
    """A retried publish whose first copy was pushed out of the room's history within
    the dedupe window (a busy room): JetStream still says duplicate, but the event to
    read its seq from is gone. The replica that stored it remembers the seq; another
    (here a RoomStore with no memory) answers 410. Both were a 500 'internal error'."""
    room = room_name()
    client = await V2.open(url(stack, "retrier"))
    try:
        first = await client.request("publish", room, rid="important-1", text="once")
        await publish(client, room, *(f"more-{i}" for i in range(KEEP + 1)))
        again = await client.request("publish", room, rid="important-1", text="once")
        assert again["type"] == "ack", again
        assert again["payload"] == {"seq": first["payload"]["seq"], "duplicate": True}
    finally:
        await client.close()
    nc = await nats.connect(stack.nats_url)
    try:
        store = RoomStore(nc, nc.jetstream(), max_msgs=KEEP, max_age=3600, dedupe_window=120)
        msg_id = f"msg:{room}:{quoted('retrier')}:important-1"
        with pytest.raises(WireError) as exc:
            await store.append(room, "message", {"text": "once"}, msg_id)
        assert exc.value.code is ErrorCode.GONE
    finally:
        await nc.close()


async def test_history_keeps_only_the_newest_per_room(stack) -> None:
    room = room_name()
    client = await V2.open(url(stack, "historian"))
    try:
        await client.request("join", room)
        seqs = await publish(client, room, *(f"m{i}" for i in range(KEEP + 4)))
        reply = await client.request("history", room, limit=50)
        events = reply["payload"]["events"]
        assert [e["seq"] for e in events] == seqs[-KEEP:]
        assert texts(events) == [f"m{i}" for i in range(4, KEEP + 4)]
    finally:
        await client.close()


async def test_history_pages_backwards_with_before(stack) -> None:
    room = room_name()
    client = await V2.open(url(stack, "pager"))
    try:
        await client.request("join", room)
        seqs = await publish(client, room, *(f"p{i}" for i in range(KEEP)))
        newest = (await client.request("history", room, limit=2))["payload"]["events"]
        assert [e["seq"] for e in newest] == seqs[-2:]
        older = await client.request("history", room, before=newest[0]["seq"], limit=2)
        assert [e["seq"] for e in older["payload"]["events"]] == seqs[-4:-2]
        last = await client.request("history", room, before=seqs[-4], limit=2)
        assert [e["seq"] for e in last["payload"]["events"]] == seqs[:1]
        empty = await client.request("history", room, before=seqs[0], limit=2)
        assert empty["type"] == "history" and empty["payload"]["events"] == []
    finally:
        await client.close()


async def test_events_older_than_max_age_are_not_recovered(aging) -> None:
    room = room_name()
    writer = await V2.open(url(aging, "writer"))
    try:
        await writer.request("join", room)
        (seen,) = await publish(writer, room, "seen")
        old = await publish(writer, room, "old-0", "old-1")
        await asyncio.sleep(MAX_AGE + 0.5)
        (fresh,) = await publish(writer, room, "fresh")
        back = await V2.open(url(aging, "reader"))
        try:
            ack = await back.reply(await back.send("join", room, since=seen))
            # old-0 and old-1 have aged out: what is kept cannot continue from seen, so the
            # newest are sent instead (fresh, then this join)
            assert ack["payload"] == {"seq": fresh + 1, "recovered": False}
            assert back.seqs(room) == [fresh, fresh + 1]
            history = await back.request("history", room, limit=50)
            assert texts(history["payload"]["events"]) == ["fresh"]
            # a since that the kept events do continue from is recovered
            await back.request("leave", room)
            ack = await back.reply(await back.send("join", room, since=old[-1]))
            assert ack["payload"] == {"seq": fresh + 3, "recovered": True}
            assert back.seqs(room)[-4:] == [fresh, fresh + 1, fresh + 2, fresh + 3]
        finally:
            await back.close()
    finally:
        await writer.close()


async def stored(stack: LocalStack, room: str) -> list[int]:
    """The room seqs of the events the stream holds for ``room``, oldest first. Walked
    one by one (the trim may purge meanwhile: what is gone is simply not listed)."""
    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()
        seqs, seq = [], 0
        while True:
            try:
                msg = await js.get_msg(
                    ROOMS_STREAM, seq=seq + 1, subject=history_subject(room), next=True
                )
            except NotFoundError:
                return seqs
            seq = msg.seq
            seqs.append(int(msg.headers[h.SEQ]))
    finally:
        await nc.close()


async def until_stored(stack: LocalStack, room: str, expected: list[int]) -> None:
    deadline = time.monotonic() + 15
    while (now := await stored(stack, room)) != expected:
        assert time.monotonic() < deadline, f"stream holds {now}, expected {expected}"
        await asyncio.sleep(0.2)


async def test_aged_events_are_deleted_but_each_rooms_last_stays(aging) -> None:
    room = room_name()
    client = await V2.open(url(aging, "trimmer"))
    try:
        joined = (await client.request("join", room))["payload"]["seq"]
        seqs = await publish(client, room, "a", "b", "c")
        assert await stored(aging, room) == [joined, *seqs]
        # once older than max age, all but the room's last event leave the stream
        await until_stored(aging, room, [seqs[-1]])
        # the room's sequence carries on from it, it does not restart
        (later,) = await publish(client, room, "later")
        assert later == seqs[-1] + 1
        history = await client.request("history", room, limit=50)
        assert [e["seq"] for e in history["payload"]["events"]] == [later]
        # and when that one ages too, the older one is deleted, the newest kept
        await until_stored(aging, room, [later])
    finally:
        await client.close()
