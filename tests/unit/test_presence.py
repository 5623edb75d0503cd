"""Chat's presence expiry (services/chat/presence.py) with a fake clock and a fake NATS
connection: a gateway's silence counts only while the replica's own connection is up;
and a gateway's full list goes out as soon as its NATS connection is back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from gateway.connection import Connection
from gateway.endpoints import CHAT
from gateway.rooms import Rooms
from services.chat.presence import Member, PresenceBook, Sweep
from wire.presence import Heartbeat
from wire.subjects import presence_subject

TTL = 15.0  # SB_CHAT_PRESENCE_TTL's default; gateways snapshot every 5 s


@dataclass
class Link:
    is_connected: bool = True
    reconnects: int = 0

    @property
    def stats(self) -> dict[str, int]:
        return {"reconnects": self.reconnects}

    def outage(self) -> None:
        self.is_connected = False

    def back(self) -> None:
        self.is_connected = True
        self.reconnects += 1


def snapshot(book: PresenceBook, gateway: str, now: float) -> None:
    book.apply(Heartbeat(gateway, True, joined=[(1, "lounge", f"{gateway}-user")]), now)


def passes(sweep: Sweep, start: int, stop: int) -> dict[int, list[Member] | None]:
    """The sweep's passes, one a second (its interval at this TTL), at start..stop: those
    that did something (expired members, or found the connection back)."""
    ran = {t: sweep.run(float(t)) for t in range(start, stop + 1)}
    return {t: gone for t, gone in ran.items() if gone != []}


def users(book: PresenceBook) -> list[object]:
    return [m["user"] for m in book.users("lounge")]


def test_a_gateway_that_stops_heartbeating_expires_after_the_ttl() -> None:
    book, link = PresenceBook(), Link()
    sweep = Sweep(book, link, TTL)
    snapshot(book, "a", 0.0)
    snapshot(book, "b", 0.0)
    assert passes(sweep, 1, 14) == {}
    snapshot(book, "a", 14.5)  # b was SIGKILLed
    assert sweep.run(15.0) == []
    assert sweep.run(16.0) == [Member("b", 1, "lounge", "b-user")]
    assert users(book) == ["a-user"]


def test_a_nats_outage_expires_nobody() -> None:
    """The reviewer's case: NATS stopped for 13 s, gateways' last snapshot 2 s before
    it; their first after it (their tick) 5 s after chat is back: 20 s of silence as
    chat heard it. Every member used to get a `leave {expired: true}`."""
    book, link = PresenceBook(), Link()
    sweep = Sweep(book, link, TTL)
    snapshot(book, "a", 5.0)
    snapshot(book, "b", 5.0)
    link.outage()  # at 7 s; the gateways' snapshots of 10 and 15 s are lost
    assert passes(sweep, 8, 20) == {}
    link.back()  # at 20.5 s
    assert sweep.run(21.0) is None  # nobody expired; the caller asks for snapshots
    assert passes(sweep, 22, 25) == {}
    snapshot(book, "a", 25.0)
    snapshot(book, "b", 25.0)
    assert passes(sweep, 26, 40) == {}
    assert users(book) == ["a-user", "b-user"]


def test_an_outage_between_two_passes_is_seen_too() -> None:
    book, link = PresenceBook(), Link()
    sweep = Sweep(book, link, TTL)
    snapshot(book, "a", 0.0)
    assert sweep.run(10.0) == []
    link.outage()
    link.back()  # down and up again before the next pass
    assert sweep.run(11.0) is None
    assert sweep.run(16.0) == []  # 16 s of silence, but only 5 s since chat was back
    snapshot(book, "a", 16.5)
    assert sweep.run(17.0) == []
    assert users(book) == ["a-user"]


def test_a_gateway_killed_during_the_outage_expires_one_ttl_after_chat_is_back() -> None:
    book, link = PresenceBook(), Link()
    sweep = Sweep(book, link, TTL)
    snapshot(book, "a", 0.0)
    snapshot(book, "dead", 0.0)
    link.outage()  # at 1 s; "dead" is SIGKILLed during it
    assert passes(sweep, 2, 30) == {}
    link.back()
    assert sweep.run(31.0) is None
    for t in (31.5, 36.5, 41.5, 46.5):  # "a" answers the sync request, then its ticks
        snapshot(book, "a", t)
    assert passes(sweep, 32, 46) == {}
    assert sweep.run(47.0) == [Member("dead", 1, "lounge", "dead-user")]
    assert users(book) == ["a-user"]


class Nats:
    def __init__(self) -> None:
        self.is_connected = True
        self.sent: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def subscribe(self, subject: str, cb: Any) -> None:
        return None

    async def publish(self, subject: str, data: bytes) -> None:
        self.sent.put_nowait((subject, data))


async def test_a_gateway_sends_its_full_list_as_soon_as_nats_is_back() -> None:
    nc, conn = Nats(), Connection(7, CHAT, 8)
    rooms = Rooms("gw1", 60.0)  # its next tick is a minute away
    rooms.start(nc)  # type: ignore[arg-type]
    try:
        await rooms.track(conn, "lounge", "alice")
        for _ in range(2):  # its first snapshot, and the delta
            await asyncio.wait_for(nc.sent.get(), 1.0)
        nc.is_connected = False
        await rooms.untrack(conn)  # the delta is dropped: NATS is down
        nc.is_connected = True
        rooms.reconnected()
        subject, data = await asyncio.wait_for(nc.sent.get(), 1.0)
        assert subject == presence_subject("gw1")
        assert Heartbeat.decode(data) == Heartbeat("gw1", True)  # alice is gone
    finally:
        await rooms.stop()


def test_a_full_snapshot_reports_the_members_it_drops() -> None:
    """Members known here that their gateway's full snapshot no longer lists (their
    leave delta was lost: the gateway was cut off from NATS, or restarted under the same
    id) are returned, for chat to write their leave events; deltas' leaves are not."""
    book = PresenceBook()
    joined = [(1, "lounge", "alice"), (2, "lounge", "bob"), (3, "general", "carol")]
    assert book.apply(Heartbeat("a", True, joined=joined), 0.0) == []
    assert book.apply(Heartbeat("a", False, left=[(2, "lounge")]), 1.0) == []  # bob left
    still = [(1, "lounge", "alice"), (4, "lounge", "dave")]
    assert book.apply(Heartbeat("a", True, joined=still), 2.0) == [
        Member("a", 3, "general", "carol")
    ]
    assert users(book) == ["alice", "dave"]
    assert book.apply(Heartbeat("b", True), 3.0) == []  # another gateway's are its own


def test_after_an_outage_longer_than_trusted_snapshots_drop_nobody() -> None:
    """Cut off past half the dedupe window, this replica may have missed leaves written
    long ago: the next snapshot of each gateway replaces its members silently."""
    book, link = PresenceBook(), Link()
    sweep = Sweep(book, link, TTL, trusted_outage=60.0)
    book.apply(Heartbeat("a", True, joined=[(1, "lounge", "alice")]), 0.0)
    book.apply(Heartbeat("b", True, joined=[(1, "lounge", "bob")]), 0.0)
    link.outage()
    assert passes(sweep, 1, 80) == {}
    link.back()
    assert sweep.run(81.0) is None
    assert book.apply(Heartbeat("a", True), 81.5) == []  # alice left long ago
    book.apply(Heartbeat("b", True), 81.5)
    book.apply(Heartbeat("a", True, joined=[(2, "lounge", "alice")]), 82.0)
    assert book.apply(Heartbeat("a", True), 83.0) == [Member("a", 2, "lounge", "alice")]
    # a short outage keeps them trusted
    link.outage()
    assert sweep.run(84.0) == []
    link.back()
    book.apply(Heartbeat("a", True, joined=[(3, "lounge", "alice")]), 85.0)
    assert sweep.run(85.5) is None
    assert book.apply(Heartbeat("a", True), 86.0) == [Member("a", 3, "lounge", "alice")]
