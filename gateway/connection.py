"""One WebSocket connection's outgoing side: replies put back in request order.

Requests of a connection are numbered (``seq``). Replies may come back out of order
(several worker replicas); :meth:`Connection.complete` parks early ones and releases
them in order into ``out``, which the connection's sender task writes to the socket.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.endpoints import EndpointSpec

Message = dict[str, Any]
Release = Callable[[], None]


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


class Connection:
    __slots__ = (
        "capacity",
        "closing",
        "id",
        "max_in_flight",
        "next_out",
        "next_seq",
        "out",
        "parked",
        "pending",
        "room",
        "rooms",
        "spec",
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
    ) -> None:
        self.id = cid
        self.spec = spec
        self.user = user
        self.room = room
        self.max_in_flight = max_in_flight
        self.out: deque[Message] = deque()
        self.wake = asyncio.Event()
        self.capacity = asyncio.Event()
        self.capacity.set()
        self.pending: dict[int, Pending] = {}
        self.parked: dict[int, list[Message] | Release] = {}
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
            if len(self.pending) >= self.max_in_flight:
                self.capacity.clear()
        return seq

    def complete(self, seq: int, messages: list[Message] | Release) -> None:
        """Deliver the reply to request ``seq`` once every earlier reply is out.

        ``messages`` is either the frames to send or a callable that, when the reply's
        turn comes, puts into ``out`` whatever it decides (room joins use it to merge
        replayed history with live events at exactly that point)."""
        if seq != self.next_out:
            self.parked[seq] = messages
            return
        out = self.out
        if isinstance(messages, list):
            out.extend(messages)
        else:
            messages()
        nxt = seq + 1
        parked = self.parked
        while parked:
            later = parked.pop(nxt, None)
            if later is None:
                break
            if isinstance(later, list):
                out.extend(later)
            else:
                later()
            nxt += 1
        self.next_out = nxt
        if not self.capacity.is_set() and len(self.pending) < self.max_in_flight:
            self.capacity.set()
        self.wake.set()

    def push(self, message: Message) -> None:
        """Send outside the request order (room events, close)."""
        self.out.append(message)
        self.wake.set()

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.push({"type": "websocket.close", "code": code, "reason": reason[:120]})
