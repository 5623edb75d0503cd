"""Room membership on one gateway: live events merged with history, and presence.

Every room with local ``/ws/v2`` members has one subscription to ``sb.live.<room>``
(events republished by JetStream once stored, in order), whatever the number of local
sockets. Each member tracks the last sequence number it was sent:

- while it syncs (its join, or a gap fill, is in flight) live events are buffered;
- when the join's reply comes (in the connection's request order) the replayed events
  are sent, then the buffered live ones after them, skipping any seq already sent;
- a live event that skips a number (a lost core message) triggers a fill from history;
- at its leave's turn, the events below the leave event not sent yet, then the leave's
  ack: those that have not come live by then are read from history first.

So a member sees each room's seqs strictly increasing, with no gap and no duplicate.

If the room's history is reset (the stream ``ROOMS`` deleted and created again: seqs
start at 1 again), the new events' seqs are at or below what members were sent, and
would be dropped as duplicates for as long as that lasts. A member takes a live event
at or below its last seq for a reset if it is above what its last sync (join, fill)
brought, which live events, coming in stream order, never repeat, or if it comes
:data:`LATE_EVENTS` after that sync (the republish of an event a sync already brought
comes moments after it): the client is sent ``reconnect`` and the socket is closed
(1012), so that it rejoins with ``since`` and is given the new history
(``recovered: false``). Nothing of this is on the path of an event in order.

Presence: this gateway heartbeats its member list (tutorial chat sockets included) to
every chat replica: a full snapshot every ``presence_interval``, at once when a chat
replica starts or reconnects and asks (``sb.sync.presence``) and when this gateway
reconnects to NATS (deltas are dropped while it is down), and a delta on each join and
leave. If the gateway dies, its heartbeats stop and chat expires its members.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gateway.connection import Connection, Message
from wire import envelope
from wire import headers as h
from wire.errors import CloseCode
from wire.presence import Heartbeat
from wire.subjects import live_subject, presence_subject, presence_sync_subject, room_of

log = logging.getLogger(__name__)

LATE_EVENTS = 10.0  # seconds after a sync past which its events do not come live again
RESET_REASON = "room history reset: rejoin"


class Member:
    __slots__ = (
        "buffer", "conn", "deferred", "fill", "gone", "held", "key", "last", "leaving", "room",
        "synced_at", "synced_to", "syncing",
    )  # fmt: skip

    def __init__(
        self, conn: Connection, room: str, fill: Callable[[Member], None], key: int = 0
    ) -> None:
        self.conn = conn
        self.room = room
        # This membership's id (``Sb-Member``, and its presence entry's): one per join,
        # from the gateway's connection ids, so unique among its connections and members
        self.key = key or conn.id
        self.fill = fill  # asks history for everything after self.last
        self.last = 0
        self.syncing = True
        # what the last sync (join, fill) brought up to, and when (time.monotonic()):
        # a live event at or below ``last`` is one of those, coming live late, or else
        # the room's history was reset (on_event)
        self.synced_to = 0
        self.synced_at = 0.0
        self.buffer: list[tuple[int, Message]] = []
        # the join's ack and its seq (the room's head as the join read it), while a
        # replay too large for one reply is still being filled: it goes out right after
        # the event at that seq (_send), as when the replay fits in one reply
        self.held: tuple[int, Message] | None = None
        self.leaving = False  # its leave is on its way: live events wait for its seq
        # a fill waits for the client to read what is queued (v2._fill): live events
        # that come meanwhile are stored before it is asked, so it reads them; they are
        # not buffered (from a client that does not read, they would pile up here)
        self.deferred = False
        # left, or abandoned (its join, leave or a fill failed): until the room has
        # dropped it (a task), live events still come; they are not its client's any more
        self.gone = False

    def on_event(self, seq: int, message: Message) -> None:
        if self.gone or self.deferred:
            return
        if self.syncing or self.leaving:
            self.buffer.append((seq, message))
            return
        if seq <= self.last:
            if seq > self.synced_to or time.monotonic() - self.synced_at > LATE_EVENTS:
                self.reset()
            return
        if seq == self.last + 1:
            self.last = seq
            self.conn.push(message)
            return
        self.buffer.append((seq, message))
        self.syncing = True
        self.fill(self)

    def reset(self) -> None:
        """The room's seqs went back: its history was reset. The client is told to
        reconnect and rejoin (with ``since``: it is given the new history, ``recovered:
        false``); nothing more of the room is sent on this socket."""
        log.info("room history reset: member told to rejoin", extra={"room": self.room})
        self.abandon(None)
        after_ms = random.randint(100, 1000)  # the room's members do not all come at once
        frame = envelope.reconnect(RESET_REASON, after_ms)
        self.conn.push({"type": "websocket.send", "text": frame})
        self.conn.close(int(CloseCode.SERVICE_RESTART), RESET_REASON)

    def _send(self, seq: int, message: Message) -> None:
        """Queue a replayed or buffered event (in order), and the join's ack held for it."""
        self.conn.enqueue(message)
        self.last = seq
        if self.held is not None and seq >= self.held[0]:
            self.conn.enqueue(self.held[1])
            self.held = None

    def synced(
        self,
        replay: list[Message],
        first: int | None,
        head: int | None,
        after: list[Message],
        *,
        accept_gaps: bool,
    ) -> None:
        """Called at the reply's turn: send the replay (numbered from ``first``), then
        ``after`` (the join's ack), then the buffered live events.

        While its leave is out, only a join's replay goes out: it ends at the ``head``
        the join read, before the leave event. A fill's events (it may have read past
        the leave) and the buffered ones wait for :meth:`left`, which knows the leave's
        seq; sent now, those past it reached a client no longer in the room, and a join
        again on the same socket sent them a second time."""
        if self.gone:
            return
        enqueue = self.conn.enqueue
        if first is not None:
            if self.leaving and head is None:
                self.buffer.extend(enumerate(replay, first))
            else:
                for seq, message in enumerate(replay, first):
                    if seq > self.last:
                        self._send(seq, message)
        for message in after:
            enqueue(message)
        if head is not None and head > self.last:
            self.last = head
        self.syncing = False
        if self.leaving:
            self.conn.wake.set()
            return
        buffered, self.buffer = sorted(self.buffer, key=lambda e: e[0]), []
        for i, (seq, message) in enumerate(buffered):
            if seq <= self.last:
                continue
            if seq != self.last + 1 and not accept_gaps:
                self.buffer = buffered[i:]
                self.syncing = True
                self.fill(self)
                break
            self._send(seq, message)
        if accept_gaps and not self.syncing and self.held is not None:
            enqueue(self.held[1])  # history no longer holds its head: nothing to wait for
            self.held = None
        self.synced_to, self.synced_at = self.last, time.monotonic()
        self.conn.wake.set()

    def left(
        self,
        upto: int | None,
        after: list[Message],
        replay: Sequence[Message] = (),
        first: int | None = None,
        *,
        final: bool = False,
    ) -> bool:
        """Called at the leave's turn: send the events stored before the leave event
        (seq ``upto``) that had not been sent, in order, then ``after`` (the leave's
        ack), and nothing of the room after that.

        Some of those events may not have reached this gateway yet: JetStream
        republishes them to ``sb.live`` and chat sends the leave's reply, two
        publishers that nats-server does not order. Then it returns False, having sent
        what came: the caller reads the history after ``last`` and calls again with
        each page (``replay``, numbered from ``first``; ``final`` if it was not cut to
        the reply budget: history holds nothing more before the leave)."""
        enqueue = self.conn.enqueue
        if upto is not None and not self.gone:
            if first is not None:
                final = final or first + len(replay) >= upto  # the page reached the leave
                for seq, message in enumerate(replay, first):
                    if self.last < seq < upto:
                        self._send(seq, message)
            for seq, message in sorted(self.buffer, key=lambda e: e[0]):
                if seq <= self.last:
                    continue
                if seq >= upto or (seq != self.last + 1 and not final):
                    break
                self._send(seq, message)
            if self.last < upto - 1 and not final:
                self.conn.wake.set()
                return False
        if self.held is not None:
            # its join's replay was still being filled (cut to the reply budget) and
            # history no longer holds the join's head: the join is answered now
            enqueue(self.held[1])
            self.held = None
        self.buffer = []
        self.syncing = False
        self.gone = True  # a fill still out (a replay cut to the budget) sends nothing now
        for message in after:
            enqueue(message)
        self.conn.wake.set()
        return True

    def abandon(self, error_message: Message | None) -> None:
        """The join failed (or its leave, or a fill): nothing buffered is sent, and
        nothing that comes later. A join's ack still held (its leave failed while the
        replay was being filled) answers the join first."""
        self.gone = True
        self.syncing = False
        self.buffer = []
        held, self.held = self.held, None
        if error_message is not None:
            if held is not None:
                self.conn.enqueue(held[1])
            self.conn.enqueue(error_message)
            self.conn.wake.set()


def seq_header(headers: object, name: str) -> int | None:
    raw = headers.get(name) if isinstance(headers, dict) else None
    # isascii: str.isdigit() is also true for digits int() refuses, such as "²";
    # at most 20 digits (a u64): int() refuses over 4300
    ok = isinstance(raw, str) and len(raw) <= 20 and raw.isascii() and raw.isdigit()
    return int(raw) if ok else None


class Rooms:
    def __init__(self, gateway: str, interval: float) -> None:
        self.gateway = gateway
        self.interval = interval
        self.nc: Client | None = None
        self.members: dict[str, dict[int, Member]] = {}  # room -> Member.key -> member
        self._subs: dict[str, Subscription] = {}
        self._tutorial: dict[int, tuple[str, str]] = {}  # conn id -> (room, user)
        self._task: asyncio.Task[None] | None = None
        self._resync = asyncio.Event()  # send the full list now, not at the next tick

    def start(self, nc: Client) -> None:
        self.nc = nc
        self._task = asyncio.create_task(self._heartbeat())

    def reconnected(self) -> None:
        """NATS is back: the full list goes out now (the deltas of the outage were
        dropped, and chat replicas give this gateway one TTL from their own reconnect)."""
        self._resync.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- membership ----------------------------------------------------------------
    async def add(self, member: Member) -> None:
        members = self.members.get(member.room)
        if members is None:
            members = self.members[member.room] = {}
            assert self.nc is not None
            self._subs[member.room] = await self.nc.subscribe(
                live_subject(member.room), cb=self._on_event
            )
        members[member.key] = member  # a socket that left may be back before that is done
        await self._delta(Heartbeat(self.gateway, False, joined=[self._entry(member)]))

    async def remove(self, member: Member) -> None:
        members = self.members.get(member.room)
        if members is None or members.pop(member.key, None) is None:
            return  # gone already
        if not members:
            del self.members[member.room]
            sub = self._subs.pop(member.room, None)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        await self._delta(Heartbeat(self.gateway, False, left=[(member.key, member.room)]))

    async def track(self, conn: Connection, room: str, user: str) -> None:
        """A tutorial /ws/chat socket, for presence only."""
        self._tutorial[conn.id] = (room, user)
        await self._delta(Heartbeat(self.gateway, False, joined=[(conn.id, room, user)]))

    async def untrack(self, conn: Connection) -> None:
        entry = self._tutorial.pop(conn.id, None)
        if entry is not None:
            await self._delta(Heartbeat(self.gateway, False, left=[(conn.id, entry[0])]))

    def _entry(self, member: Member) -> tuple[int, str, str]:
        return (member.key, member.room, member.conn.user or "")

    # -- NATS ----------------------------------------------------------------------
    async def _on_event(self, msg: Msg) -> None:
        members = self.members.get(room_of(msg.subject))
        seq = seq_header(msg.headers, h.SEQ)
        if not members or seq is None:
            return
        try:
            message = {"type": "websocket.send", "text": msg.data.decode()}
        except UnicodeDecodeError:
            log.error("malformed room event", extra={"subject": msg.subject})
            return
        for member in list(members.values()):
            member.on_event(seq, message)

    def snapshot(self) -> Heartbeat:
        joined = [self._entry(m) for ms in self.members.values() for m in ms.values()]
        joined += [(cid, room, user) for cid, (room, user) in self._tutorial.items()]
        return Heartbeat(self.gateway, True, joined=joined)

    async def _delta(self, beat: Heartbeat) -> None:
        nc = self.nc
        if nc is not None and nc.is_connected:
            with contextlib.suppress(Exception):
                await nc.publish(presence_subject(self.gateway), beat.encode())

    async def _on_sync(self, msg: Msg) -> None:
        await self._delta(self.snapshot())  # a chat replica just started: tell it now

    async def _heartbeat(self) -> None:
        assert self.nc is not None
        await self.nc.subscribe(presence_sync_subject(), cb=self._on_sync)
        while True:
            self._resync.clear()
            await self._delta(self.snapshot())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resync.wait(), self.interval)
