"""One WebSocket connection's outgoing side: replies put back in request order, and a
send queue bounded in bytes.

Requests of a connection are numbered (``seq``). Replies may come back out of order
(several worker replicas); :meth:`Connection.complete` parks early ones and releases
them in order into ``out``, which the connection's sender task writes to the socket.

Slow readers: ``out`` is bounded by ``max_out_bytes``. Replies to the client's own
requests are never dropped for a client that reads them: the gateway stops reading the
socket (``capacity``) while what it owes the client (replies queued, or parked behind
an earlier one) plus what its requests still out are expected to bring (``expect``
each: the largest reply seen, halved by each smaller one; ``max_out_bytes /
max_in_flight`` before the first) reaches the bound, so the client cannot ask for much
more than it reads. That cannot take back requests already out, and a reply can be
a thousand times its request (a 4 KiB zlib bomb asks /ws/codec for 4 MiB): a client
whose replies suddenly grow while it has many requests out may be owed up to
``max_in_flight`` times the largest reply. Past ``max_owed_bytes``
(``SB_GATEWAY_SEND_QUEUE_MAX_BYTES``, 32 times the bound by default) it is a slow
consumer. Room events that would overflow the bound itself make it one too; a v2 client
rejoins with ``since`` and loses nothing, because the room's history holds what it
missed.

A slow consumer (:meth:`Connection.slow`) is disconnected with 1013: what it is owed is
dropped at once, replies that come later are dropped on arrival, it is read no more,
and a write the sender still waits to start (the transport is full) is given up, so
that only the close frame is left, waiting for the socket to take it. A peer that has
not taken it ``SB_GATEWAY_PING_TIMEOUT`` later is hung up on (:attr:`hang_up`, the
protocol's abort); the relay then ends and the connection is unregistered.

Direct writes: when nothing is queued and the sender is not in the middle of a write, a
data frame is written to the socket at once (:meth:`Connection.write_now`, through the
server protocol's ``write_frame``, :mod:`gateway.protocols`): no wake-up of the sender
task, and a room event is encoded once for all its recipients. The transport's own
high-water mark bounds it; past that, messages queue as before.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.endpoints import EndpointSpec
from gateway.limits import RateLimiter
from gateway.wsframe import encode
from wire.errors import close_reason

Message = dict[str, Any]
# A reply's release (see Connection.complete); returning HOLD keeps the replies after it
# waiting until it calls Connection.resume().
Release = Callable[[], object]
HOLD = object()


@dataclass(slots=True)
class Pending:
    deadline: float  # loop time
    started: float  # perf_counter
    service: str
    tag: str | None = None  # the client's request id (v2), for error frames
    hook: Callable[..., None] | None = None  # see Hub.request
    trace: str | None = None  # the frame's traceparent, for its log lines (gateway.hops)
    arrived: float = 0.0  # perf_counter when the reply reached the gateway
    status: str = "ok"  # the reply's outcome (wire.metrics.Status)
    # Idempotent requests: re-published once to another replica if no reply came by
    # retry_at (a replica killed with the request in flight never answers).
    retry_at: float = float("inf")
    retry: tuple[str, bytes, dict[str, str]] | None = None
    # Ordered requests (Route.ordered): route, bytes and headers, to send it when its turn
    # comes (Hub._send_held), or again through the queue group if the replica it was
    # pinned to is gone (no responders).
    resend: tuple[Any, bytes, dict[str, str]] | None = None
    at: str | None = None  # the replica it was pinned to when sent (None: queue group)


class Flag:
    """What ``asyncio.Event`` does here, for one waiter at a time, without the Event's
    deque of waiters (~0.4 KiB each; a connection has two: the sender waits on ``wake``,
    the receiver on ``capacity``)."""

    __slots__ = ("_value", "_waiter")

    def __init__(self) -> None:
        self._value = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        self._value = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if not self._value:
            waiter = self._waiter
            if waiter is None or waiter.done():
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter
        return True


def unlimited() -> RateLimiter:
    inf = float("inf")
    return RateLimiter(inf, inf, inf, inf, 1 << 30)


def text_bytes(text: str) -> int:
    """A text frame's payload size in bytes (UTF-8): ``len()`` for ASCII, which a str
    knows at no cost; encoded otherwise ("é" is 2 bytes, 1 character)."""
    return len(text) if text.isascii() else len(text.encode())


def size_of(message: Message) -> int:
    data = message.get("text")
    if data is None:
        data = message.get("bytes") or b""
    return len(data)


class Connection:
    __slots__ = (
        "active",
        "busy",
        "capacity",
        "closing",
        "direct",
        "expect",
        "gate",
        "hang_up",
        "held",
        "id",
        "ip",
        "limiter",
        "max_in_flight",
        "max_out_bytes",
        "max_owed_bytes",
        "next_out",
        "next_seq",
        "on_slow",
        "on_written",
        "out",
        "out_bytes",
        "parked",
        "parked_bytes",
        "parked_sizes",
        "pending",
        "pin",
        "room",
        "rooms",
        "sender",
        "shed",
        "spec",
        "unpinned",
        "user",
        "wake",
    )

    def __init__(
        self,
        cid: int,
        spec: EndpointSpec,
        max_in_flight: int,
        user: str | None = None,
        room: str | None = None,
        max_out_bytes: int = 1 << 20,
        max_owed_bytes: int = 32 << 20,
    ) -> None:
        self.id = cid
        self.spec = spec
        self.user = user
        self.room = room
        self.ip = ""
        self.limiter = unlimited()  # replaced by the relay with the configured limits
        self.active = 0.0  # loop time of the last frame from the client
        self.max_in_flight = max_in_flight
        self.max_out_bytes = max_out_bytes
        self.max_owed_bytes = max_owed_bytes  # replies owed beyond it: slow consumer
        self.expect = max_out_bytes // max(1, max_in_flight)  # a reply's bytes (see above)
        self.out: deque[Message] = deque()
        self.out_bytes = 0
        self.on_slow: Callable[[], None] | None = None  # counts a slow-consumer drop
        self.direct: Callable[[bytes], bool] | None = None  # the protocol's write_frame
        # the protocol's hang_up_later: drop the connection if the peer, closed as a
        # slow consumer, has not taken its close frame in a while (SB_GATEWAY_PING_TIMEOUT)
        self.hang_up: Callable[[], None] | None = None
        self.on_written: Callable[[Message], None] | None = None  # metrics of a sent message
        self.busy = False  # the sender holds a message it has not finished writing
        self.sender: asyncio.Task[None] | None = None  # the task writing ``out``
        self.shed = False  # disconnected as a slow consumer: nothing more is queued
        self.wake = Flag()
        self.capacity = Flag()
        self.capacity.set()
        self.pending: dict[int, Pending] = {}
        # Ordered routes (Route.ordered, Hub.submit): the replica their requests go to,
        # once known; until then the one request out, whose reply lets the next go (or
        # RELEASING), and those waiting as (seq, Pending), in seq order (the deque is made
        # when needed).
        self.pin: str | None = None
        self.unpinned: str | None = None  # the pinned replica that left: not again
        self.gate: int | None = None
        self.held: deque[Any] | None = None
        self.parked: dict[int, list[Message] | Release] = {}
        self.parked_bytes = 0  # of the replies parked (sizes by seq, made when needed)
        self.parked_sizes: dict[int, int] | None = None
        self.next_seq = 0
        self.next_out = 0
        self.closing = False
        self.rooms: dict[str, Any] = {}  # v2 room memberships (gateway.rooms.Member)

    def allocate(self, pending: Pending | None) -> int:
        """Number the next request; ``pending=None`` for one answered locally."""
        seq = self.next_seq
        self.next_seq = seq + 1
        if pending is not None:
            self.pending[seq] = pending
            if not self.may_read():
                self.capacity.clear()
        return seq

    def may_read(self) -> bool:
        """Whether the receiver may take another request: fewer than ``max_in_flight``
        out, and what the client is owed plus what those out are expected to bring under
        the bound (with nothing out, one request may always go)."""
        out = len(self.pending)
        owed = self.out_bytes + self.parked_bytes
        return (
            out < self.max_in_flight
            and owed + out * self.expect < self.max_out_bytes
            and not self.shed
        )

    def enqueue(self, message: Message) -> None:
        """Queue a message for the sender (no wake-up; callers wake once). Past
        ``max_owed_bytes`` owed, the client is a slow consumer (:meth:`slow`)."""
        if self.shed:
            return
        self.out.append(message)
        self.out_bytes += size_of(message)
        if self.out_bytes + self.parked_bytes > self.max_owed_bytes:
            self.slow()

    def write_now(self, message: Message) -> bool:
        """Write ``message`` to the socket now if nothing is ahead of it (see the module
        docstring). False: the caller queues it."""
        direct = self.direct
        if direct is None or self.out or self.busy:
            return False
        frame = encode(message)
        if frame is None or not direct(frame):
            return False
        if self.on_written is not None:
            self.on_written(message)
        return True

    def sent(self, message: Message) -> None:
        """The sender wrote ``message``: free its bytes, reopen reading if it can."""
        if self.shed:
            return  # its bytes were freed with the queue
        self.out_bytes -= size_of(message)
        if not self.capacity.is_set() and self.may_read():
            self.capacity.set()

    def complete(
        self, seq: int, messages: list[Message] | Release, size: int | None = None
    ) -> None:
        """Deliver the reply to request ``seq`` once every earlier reply is out.

        ``messages`` is either the frames to send or a callable that, when the reply's
        turn comes, queues whatever it decides (room joins use it to merge replayed
        history with live events at exactly that point). If it returns ``HOLD`` (a
        room leave whose events below it have not all come), its turn lasts until it
        calls :meth:`resume`: the replies after it wait. ``size``: the reply's bytes (by
        default those of ``messages``; give it for a callable). A reply that waits for
        an earlier one is parked, its bytes owed like queued ones."""
        if self.shed:
            return  # disconnected as a slow consumer: nothing more is sent
        if size is None:
            size = sum(map(size_of, messages)) if isinstance(messages, list) else 0
        expect = self.expect >> 1
        self.expect = size if size > expect else expect
        if seq != self.next_out:
            self.parked[seq] = messages
            if size:
                sizes = self.parked_sizes
                if sizes is None:
                    sizes = self.parked_sizes = {}
                sizes[seq] = size
                self.parked_bytes += size
                if self.out_bytes + self.parked_bytes > self.max_owed_bytes:
                    self.slow()
                elif self.capacity.is_set() and not self.may_read():
                    self.capacity.clear()
            return
        self._release(seq, messages)

    def resume(self) -> None:
        """The release that held its turn (``HOLD``) is done: the replies after it go."""
        if not self.shed:
            self._release(self.next_out, [])

    def _release(self, seq: int, messages: list[Message] | Release) -> None:
        """Queue the reply to ``seq`` (its turn has come), then those parked after it."""
        enqueue = self.enqueue
        write_now = self.write_now
        parked = self.parked
        while True:
            if isinstance(messages, list):
                for message in messages:
                    if not write_now(message):
                        enqueue(message)
            elif messages() is HOLD:
                break  # next_out stays at seq: resume() goes on from there
            seq += 1
            later = parked.pop(seq, None) if parked else None
            if later is None:
                break
            sizes = self.parked_sizes
            if sizes:
                self.parked_bytes -= sizes.pop(seq, 0)
            messages = later
        self.next_out = seq
        # replies are kept; reading stops until they drain (and stays stopped once shed)
        if self.may_read():
            if not self.capacity.is_set():
                self.capacity.set()
        elif self.capacity.is_set():
            self.capacity.clear()
        if self.out:
            self.wake.set()

    def push(self, message: Message) -> None:
        """A room event, outside the request order. If the client is not reading fast
        enough to keep the queue under its bound, it is disconnected (1013)."""
        if self.closing:
            return
        if self.write_now(message):
            return
        if self.out_bytes + size_of(message) > self.max_out_bytes:
            self.slow()
            return
        self.enqueue(message)
        self.wake.set()

    def slow(self) -> None:
        """Disconnect a client that does not read what it is sent (1013). Everything it
        is owed is dropped now, and whatever comes for it later; it is read no more; a
        write of a dropped message that the sender still waits to start (the transport
        is full) is given up, so that the close frame is next (see the module
        docstring)."""
        if self.shed:
            return
        self.shed = True
        if self.on_slow is not None:
            self.on_slow()
        self.out.clear()
        self.out_bytes = 0
        self.parked.clear()
        self.parked_bytes = 0
        self.parked_sizes = None
        self.capacity.clear()
        self.closing = False  # a close decided before was in what was just dropped
        self.close(1013, self.spec.slow_consumer)
        sender = self.sender
        if self.busy and sender is not None:
            self.sender = None  # tells the sender that this cancellation is ours
            sender.cancel()
        if self.hang_up is not None:  # else only the keepalive's 1011 would end it
            self.hang_up()

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.out.append(
                {"type": "websocket.close", "code": code, "reason": close_reason(reason)}
            )
            self.wake.set()
