"""Presence heartbeats, gateway -> every chat replica on ``sb.presence.<gateway>``.

JSON: ``{"gateway": id, "full": bool, "joined": [[conn, room, user], ...],
"left": [[conn, room], ...]}``; ``conn`` is the membership's id (``Sb-Member``) for a
``/ws/v2`` member, the connection's for a tutorial ``/ws/chat`` socket (one id space).
A full snapshot (sent every ``presence_interval``) replaces everything known about that
gateway; a delta (sent on every join and leave) applies on top. A gateway whose
heartbeats stop is forgotten after the TTL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson


@dataclass(slots=True)
class Heartbeat:
    gateway: str
    full: bool
    joined: list[tuple[int, str, str]] = field(default_factory=list)
    left: list[tuple[int, str]] = field(default_factory=list)

    def encode(self) -> bytes:
        return orjson.dumps(
            {"gateway": self.gateway, "full": self.full, "joined": self.joined, "left": self.left}
        )

    @classmethod
    def decode(cls, data: bytes) -> Heartbeat:
        raw = orjson.loads(data)
        return cls(
            gateway=str(raw["gateway"]),
            full=bool(raw["full"]),
            joined=[(int(c), str(r), str(u)) for c, r, u in raw.get("joined", [])],
            left=[(int(c), str(r)) for c, r in raw.get("left", [])],
        )
