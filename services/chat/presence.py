"""Who is in which room, across all gateways, as every chat replica sees it.

Fed by the gateways' heartbeats (wire.presence); a gateway that stops sending them (it
was killed) is forgotten after the TTL, and its members are reported as expired so that
their leave events can be written; so are the members a gateway's full snapshot no
longer lists. Silence counts only while the replica's own NATS
connection is up (:class:`Sweep`).
"""

from __future__ import annotations

import math
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
        # gateways whose next full snapshot replaces their members without dropping any
        # (this replica was cut off too long to trust what it knows: :meth:`distrust`)
        self._unsure: set[str] = set()

    def apply(self, beat: Heartbeat, now: float) -> list[Member]:
        """Take a heartbeat in. Returns the members a full snapshot drops: known here,
        no longer listed by their gateway, and no delta said they left (it was lost:
        the gateway or this replica was cut off from NATS, or the gateway restarted
        under the same id). Their leave events are the caller's to write (as for
        expired ones): the gateway's own leave may never have reached chat."""
        gw = beat.gateway
        self._seen[gw] = now
        dropped: list[Member] = []
        if beat.full:
            listed = {(gw, conn, room) for conn, room, _ in beat.joined}
            sure = gw not in self._unsure
            self._unsure.discard(gw)
            for key in [k for k in self._members if k[0] == gw]:
                user = self._members.pop(key)
                if sure and key not in listed:
                    dropped.append(Member(gw, key[1], key[2], user))
        for conn, room, user in beat.joined:
            self._members[(gw, conn, room)] = user
        for conn, room in beat.left:
            self._members.pop((gw, conn, room), None)
        return dropped

    def users(self, room: str) -> list[dict[str, object]]:
        counts = Counter(user for (_, _, r), user in self._members.items() if r == room)
        return [{"user": user, "connections": n} for user, n in sorted(counts.items())]

    def heard_all(self, now: float) -> None:
        """Count every gateway as heard from at ``now`` (each gets one TTL from then)."""
        for gw in self._seen:
            self._seen[gw] = now

    def distrust(self) -> None:
        """What this replica knows may be older than the store's dedupe window (it was
        cut off from NATS that long): members it missed the leave of may have left long
        ago, their leave events written and no longer deduped. Each gateway's next full
        snapshot replaces its members without reporting drops."""
        self._unsure = set(self._seen)

    def expire(self, now: float, ttl: float) -> list[Member]:
        """Forget gateways silent for longer than ``ttl``; return their members."""
        dead = {gw for gw, seen in self._seen.items() if now - seen > ttl}
        gone: list[Member] = []
        for key in [k for k in self._members if k[0] in dead]:
            gw, conn, room = key
            gone.append(Member(gw, conn, room, self._members.pop(key)))
        for gw in dead:
            del self._seen[gw]
            self._unsure.discard(gw)
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
    gateway that died meanwhile is still expired, one TTL after the reconnect.

    Down for longer than ``trusted_outage`` (half the store's dedupe window), the book
    is :meth:`PresenceBook.distrust`-ed: the gateways' snapshots then report no drops,
    whose leave events could be second ones (the first written by another replica
    meanwhile, past the dedupe window)."""

    def __init__(
        self, book: PresenceBook, link: Link, ttl: float, trusted_outage: float = math.inf
    ) -> None:
        self.book = book
        self.link = link
        self.ttl = ttl
        self.trusted_outage = trusted_outage
        self._reconnects = link.stats["reconnects"]
        self._down_at: float | None = None  # when a pass first found the connection down

    def run(self, now: float) -> list[Member] | None:
        """The members to expire at ``now``: none while the connection is down; None if
        it came back since the last pass (ask the gateways for their lists)."""
        if not self.link.is_connected:
            if self._down_at is None:
                self._down_at = now
            elif now - self._down_at > self.trusted_outage:
                self.book.distrust()  # before it is back: no heartbeat comes meanwhile
            return []
        self._down_at = None
        reconnects = self.link.stats["reconnects"]
        if reconnects != self._reconnects:
            self._reconnects = reconnects
            self.book.heard_all(now)
            return None
        return self.book.expire(now, self.ttl)
