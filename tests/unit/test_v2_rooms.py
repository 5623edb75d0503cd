"""/ws/v2 room membership through the hub (gateway/v2.py, gateway/rooms.py): replies and
live room events are fed in by hand, in orders nats-server may deliver them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.auth import Authenticator, Identity
from gateway.connection import Connection
from gateway.endpoints import HISTORY, V2
from gateway.hub import Hub
from gateway.settings import GatewaySettings
from gateway.v2 import V2Endpoint
from wire import envelope
from wire import headers as h
from wire.frames import TextFrame, encode_frames
from wire.metrics import GatewayMetrics
from wire.subjects import live_subject, reply_subject

ROOM = "r"


class Msg:
    def __init__(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        self.subject, self.data, self.headers = subject, data, headers


class Subscription:
    async def unsubscribe(self) -> None:
        pass


class FakeNats:
    """Records what the gateway publishes; ``request`` (a read outside the reply order)
    answers from ``history``."""

    is_connected = True
    is_closed = False

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []  # (subject, reply)
        self.history: dict[int, str] = {}  # seq -> event frame
        self.reads: list[dict[str, str]] = []  # the headers of each history request
        self.readable = asyncio.Event()  # cleared: history requests wait
        self.readable.set()

    async def publish(self, subject, data=b"", reply="", headers=None) -> None:
        self.sent.append((subject, reply))

    async def subscribe(self, subject, cb=None, **kwargs) -> Subscription:
        return Subscription()

    async def request(self, subject, data=b"", timeout=None, headers=None) -> Msg:
        self.reads.append(headers)
        await self.readable.wait()
        since = int(headers[h.SINCE])
        seqs = sorted(s for s in self.history if s > since)
        frames = [TextFrame(self.history[s]) for s in seqs]
        return Msg("", encode_frames(frames), {h.FIRST_SEQ: str(seqs[0])} if seqs else {})


def event(seq: int) -> str:
    return envelope.event("message", ROOM, seq, {"text": f"m{seq}"})


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)  # what the hooks started


class Harness:
    """A V2 endpoint, its hub and one connection, with a fake NATS client."""

    def __init__(self) -> None:
        settings = GatewaySettings()
        self.hub = Hub(settings, GatewayMetrics(CollectorRegistry()))
        self.nc = self.hub.nc = self.hub.live.nc = FakeNats()  # type: ignore[assignment]
        self.v2 = V2Endpoint(
            self.hub, self.hub.live, Authenticator(settings), settings, self.hub.metrics
        )
        self.conn = Connection(self.hub.new_id(), V2, 1000, user="alice")
        self.hub.register(self.conn)
        self.identity = Identity("alice", anonymous=True)

    async def send(self, frame: dict[str, Any]) -> int:
        """The client's frame; returns its request seq."""
        seq = self.conn.next_seq
        await self.v2._dispatch(self.conn, self.identity, envelope.decode_client(json.dumps(frame)))
        return seq

    async def answer(self, seq: int, *texts: str, **hdrs: str) -> None:
        subject = reply_subject(self.hub._prefix, self.conn.id, seq)
        data = encode_frames([TextFrame(text) for text in texts])
        await self.hub._on_reply(Msg(subject, data, {h.INSTANCE: "A", **hdrs}))  # type: ignore[arg-type]
        await settle()

    async def live(self, seq: int) -> None:
        self.nc.history[seq] = event(seq)
        msg = Msg(live_subject(ROOM), event(seq).encode(), {h.SEQ: str(seq)})
        await self.hub.live._on_event(msg)  # type: ignore[arg-type]

    def store(self, seq: int) -> None:
        """Stored (in history), its live copy not come yet."""
        self.nc.history[seq] = event(seq)

    def received(self) -> list[str]:
        """What the client got: events as their seq, replies as type:id."""
        out = []
        for message in self.conn.out:
            frame = json.loads(message["text"])
            out.append(str(frame["seq"]) if "seq" in frame else f"{frame['type']}:{frame['id']}")
        return out


async def test_a_leaves_reply_before_the_events_below_it_waits_for_them() -> None:
    # The leave's reply comes from chat, the room's events from JetStream: nats-server
    # does not order two publishers, so a publish acked just before the leave can reach
    # the gateway after the leave's reply. It was dropped: the leave's turn ended the
    # membership. (pipeline.py: 7 of 700 sessions)
    t = Harness()
    join = await t.send({"type": "join", "id": "j", "room": ROOM})
    await t.answer(join, envelope.ack("j", ROOM, seq=10), **{h.SEQ: "10"})
    publish = await t.send({"type": "publish", "id": "p", "room": ROOM, "payload": {}})
    leave = await t.send({"type": "leave", "id": "l", "room": ROOM})
    await t.send({"type": "ping", "id": "x"})  # answered by the gateway at once
    await t.answer(publish, envelope.ack("p", ROOM, seq=11, duplicate=False))
    t.store(11)
    t.store(12)  # the leave event
    await t.answer(leave, envelope.ack("l", ROOM, seq=12), **{h.SEQ: "12"})
    await t.live(11)  # late: the gateway read 11 from history meanwhile
    await t.live(12)
    assert t.received() == ["ack:j", "ack:p", "11", "ack:l", "pong:x"]
    assert [r[h.SINCE] for r in t.nc.reads] == ["10"]


async def test_a_join_again_after_such_a_leave_is_answered_after_it() -> None:
    # The events below the leave are read from history outside the connection's reply
    # order, while the replies after the leave wait: read in that order, they came
    # after the join again's ack, and a client took them for the new membership's.
    t = Harness()
    join = await t.send({"type": "join", "id": "j", "room": ROOM})
    await t.answer(join, envelope.ack("j", ROOM, seq=10), **{h.SEQ: "10"})
    publish = await t.send({"type": "publish", "id": "p", "room": ROOM, "payload": {}})
    leave = await t.send({"type": "leave", "id": "l", "room": ROOM})
    again = await t.send({"type": "join", "id": "j2", "room": ROOM})
    await t.answer(publish, envelope.ack("p", ROOM, seq=11, duplicate=False))
    t.store(11)
    t.store(12)
    t.nc.readable.clear()  # a slow history read
    await t.answer(leave, envelope.ack("l", ROOM, seq=12), **{h.SEQ: "12"})
    t.store(13)  # the join again
    await t.answer(again, envelope.ack("j2", ROOM, seq=13), **{h.SEQ: "13"})
    assert t.received() == ["ack:j", "ack:p"]
    t.nc.readable.set()
    await settle()
    for seq in (11, 12, 13, 14):
        await t.live(seq)
    assert t.received() == ["ack:j", "ack:p", "11", "ack:l", "ack:j2", "14"]


async def test_a_replay_larger_than_one_reply_is_read_on_as_the_client_reads() -> None:
    # Each fill was asked as soon as the previous page was queued: a join with since
    # loaded the whole replay into the send queue of a client that did not read
    # (v2_replay.py: 13 MiB queued for a 1 MiB bound).
    t = Harness()
    t.conn.max_out_bytes = 150  # about two events
    join = await t.send({"type": "join", "id": "j", "room": ROOM, "payload": {"since": 0}})
    ack = envelope.ack("j", ROOM, seq=20, recovered=True)
    more = {h.FIRST_SEQ: "1", h.SEQ: "20", h.MORE: "1"}
    await t.answer(join, event(1), event(2), event(3), ack, **more)  # cut to the budget
    await t.live(21)  # stored before the fill is asked: it will read it
    reads = [seq for subject, seq in t.nc.sent if subject == HISTORY.subject]
    assert t.received() == ["1", "2", "3"] and reads == []
    assert t.conn.rooms[ROOM].buffer == []
    while t.conn.out:  # the client reads
        t.conn.sent(t.conn.out.popleft())
    t.v2._emptied(t.conn)  # the sender found the queue empty
    await settle()
    reads = [seq for subject, seq in t.nc.sent if subject == HISTORY.subject]
    assert len(reads) == 1
    await t.live(22)  # after the fill was asked: kept for after it
    fill = t.conn.next_seq - 1
    await t.answer(fill, *(event(seq) for seq in range(4, 22)), **{h.FIRST_SEQ: "4"})
    assert t.received() == [str(seq) for seq in range(4, 21)] + ["ack:j", "21", "22"]


async def test_a_failed_leave_parked_when_the_socket_closes_is_queued_once() -> None:
    # The reply to a leave that failed waits behind an earlier leave's history read
    # (HOLD); the socket closes meanwhile and queues that leave (gateway/leaves.py).
    # When the read ends, the failed leave's turn came and queued it a second time.
    t = Harness()
    join = await t.send({"type": "join", "id": "j", "room": ROOM})
    await t.answer(join, envelope.ack("j", ROOM, seq=10), **{h.SEQ: "10"})
    leave = await t.send({"type": "leave", "id": "l", "room": ROOM})
    again = await t.send({"type": "join", "id": "j2", "room": ROOM})
    failed = await t.send({"type": "leave", "id": "l2", "room": ROOM})
    t.store(11)  # stored, not live yet
    t.store(12)  # the leave event
    t.nc.readable.clear()  # a slow history read: the leave's turn holds
    await t.answer(leave, envelope.ack("l", ROOM, seq=12), **{h.SEQ: "12"})
    t.store(13)
    await t.answer(again, envelope.ack("j2", ROOM, seq=13), **{h.SEQ: "13"})
    await t.answer(failed, **{h.ERROR: "unavailable", h.ERROR_CODE: "503"})
    assert t.received() == ["ack:j"]  # the rest wait behind the read
    await t.v2._closed(t.conn)
    queued = [leave.headers[h.MEMBER] for leave in t.hub.leaves.queued()]
    t.nc.readable.set()
    await settle()
    assert queued and [leave.headers[h.MEMBER] for leave in t.hub.leaves.queued()] == queued
