"""Who is in which room, across all gateways, as every chat replica sees it.

Fed by the gateways' heartbeats (wire.presence); a gateway that stops sending them (it
was killed) is forgotten after the TTL, and its members are reported as expired so that
their leave events can be written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

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
