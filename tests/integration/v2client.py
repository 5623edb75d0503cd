"""A small /ws/v2 client for tests: requests with ids, and per-room event logs."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from websockets.asyncio.client import ClientConnection

from tests.integration.client import TIMEOUT, connect

_ids = itertools.count(1)


class V2:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: dict[str, list[dict[str, Any]]] = {}  # room -> message/join/leave events
        self.replies: dict[str, dict[str, Any]] = {}
        self.other: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> V2:
        return cls(await connect(url, **kwargs))

    async def close(self) -> None:
        await self.ws.close()

    async def send(
        self, kind: str, room: str | None = None, rid: str | None = None, **payload: Any
    ) -> str:
        rid = rid or f"r{next(_ids)}"
        frame: dict[str, Any] = {"type": kind, "id": rid, "payload": payload}
        if room is not None:
            frame["room"] = room
        await self.ws.send(json.dumps(frame))
        return rid

    def _file(self, frame: dict[str, Any]) -> None:
        if "seq" in frame and frame["type"] in ("message", "join", "leave"):
            self.events.setdefault(frame["room"], []).append(frame)
        elif "id" in frame:
            self.replies[frame["id"]] = frame
        else:
            self.other.append(frame)

    async def pump(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self._file(frame)
        return frame

    async def reply(self, rid: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while rid not in self.replies:
            await self.pump(max(0.01, deadline - asyncio.get_running_loop().time()))
        return self.replies.pop(rid)

    async def request(self, kind: str, room: str | None = None, **payload: Any) -> dict[str, Any]:
        return await self.reply(await self.send(kind, room, **payload))

    async def until_seq(
        self, room: str, seq: int, timeout: float = TIMEOUT
    ) -> list[dict[str, Any]]:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.events.get(room) or self.events[room][-1]["seq"] < seq:
            await self.pump(max(0.01, deadline - asyncio.get_running_loop().time()))
        return self.events[room]

    def seqs(self, room: str) -> list[int]:
        return [e["seq"] for e in self.events.get(room, [])]
