"""Who is in which room, across all gateways, as every chat replica sees it.

Fed by the gateways' heartbeats (wire.presence); a gateway that stops sending them (it
was killed) is forgotten after the TTL, and its members are reported as expired so that
their leave events can be written. Silence counts only while the replica's own NATS
connection is up (:class:`Sweep`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from wire.presence import Heartbeat


@dataclass(frozen=True, slots=True)
class Member:
    gateway: str
    conn: int
    room: str
    user: str


class PresenceBook:
    def __init__(self) -> None:
        self._members: dict[tuple[str, int, str], str] = {}
        self._seen: dict[str, float] = {}

    def apply(self, beat: Heartbeat, now: float) -> None:
        gw = beat.gateway
        self._seen[gw] = now
        if beat.full:
            for key in [k for k in self._members if k[0] == gw]:
                del self._members[key]
        for conn, room, user in beat.joined:
            self._members[(gw, conn, room)] = user
        for conn, room in beat.left:
            self._members.pop((gw, conn, room), None)

    def users(self, room: str) -> list[dict[str, object]]:
        counts = Counter(user for (_, _, r), user in self._members.items() if r == room)
        return [{"user": user, "connections": n} for user, n in sorted(counts.items())]

    def heard_all(self, now: float) -> None:
        """Count every gateway as heard from at ``now`` (each gets one TTL from then)."""
        for gw in self._seen:
            self._seen[gw] = now

    def expire(self, now: float, ttl: float) -> list[Member]:
        """Forget gateways silent for longer than ``ttl``; return their members."""
        dead = {gw for gw, seen in self._seen.items() if now - seen > ttl}
        gone: list[Member] = []
        for key in [k for k in self._members if k[0] in dead]:
            gw, conn, room = key
            gone.append(Member(gw, conn, room, self._members.pop(key)))
        for gw in dead:
            del self._seen[gw]
        return gone


class Link(Protocol):
    """What the sweep looks at of the replica's NATS connection (a nats-py Client)."""

    @property
    def is_connected(self) -> bool: ...

    @property
    def stats(self) -> dict[str, int]: ...  # "reconnects": completed reconnections


class Sweep:
    """Each pass of the expiry sweep: whom to expire, if silence can be trusted.

    A gateway's silence is as this replica heard it. While the replica's own NATS
    connection is down (NATS restarting) it hears nobody, and when it is back the
    gateways may not be yet (their reconnect backoff), nor have sent a snapshot: the
    deltas of the outage were dropped. So nothing expires while it is down, and the first
    pass after it came back (even if it went down and came back between two passes)
    expires nobody and counts every gateway as heard from then: each has one TTL to be
    heard again, and the caller asks them for their full lists (``sb.sync.presence``). A
    gateway that died meanwhile is still expired, one TTL after the reconnect."""

    def __init__(self, book: PresenceBook, link: Link, ttl: float) -> None:
        self.book = book
        self.link = link
        self.ttl = ttl
        self._reconnects = link.stats["reconnects"]

    def run(self, now: float) -> list[Member] | None:
        """The members to expire at ``now``: none while the connection is down; None if
        it came back since the last pass (ask the gateways for their lists)."""
        if not self.link.is_connected:
            return []
        reconnects = self.link.stats["reconnects"]
        if reconnects != self._reconnects:
            self._reconnects = reconnects
            self.book.heard_all(now)
            return None
        return self.book.expire(now, self.ttl)
