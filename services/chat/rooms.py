"""Room history in JetStream: one stream, one subject per room, a gap-free sequence per
room.

- Stream ``ROOMS`` stores ``sb.hist.<room>``; each message is the exact ``/ws/v2`` event
  frame, with its room sequence number in the ``Sb-Seq`` header.
- Room sequence numbers are assigned with optimistic concurrency: the next event of a
  room is published with ``Nats-Expected-Last-Subject-Sequence`` set to the stream
  sequence of the room's last event, so two chat replicas can never give out the same
  number; the loser re-reads the head and retries.
- ``Nats-Msg-Id`` (the sender and the client's request id) makes a re-sent publish a
  duplicate within the stream's dedupe window: it returns the original's sequence.
- The stream republishes each committed event to ``sb.live.<room>``, in stream order:
  that is the live fan-out the gateways subscribe to.
- Retention: at most ``max_msgs`` events per room (oldest dropped). ``max_age`` is
  applied when reading (older events are never returned) and by :meth:`RoomStore.trim`,
  run every ``SB_CHAT_HISTORY_TRIM_INTERVAL``, which deletes them from the stream except
  each room's last event: that one keeps the room's sequence, so it never restarts. (The
  stream's own ``max_age`` cannot be used: it would remove a quiet room's last event.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError

from wire import envelope
from wire import headers as h
from wire.errors import ErrorCode, WireError
from wire.subjects import (
    ROOMS_STREAM,
    direct_get_subject,
    history_subject,
    history_wildcard,
    live_wildcard,
    stream_info_subject,
)

WRONG_LAST_SEQUENCE = 10071


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class Appended:
    seq: int
    frame: bytes
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Recovery:
    events: list[StoredEvent]
    recovered: bool
    head: int


class RoomStore:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        *,
        max_msgs: int,
        max_age: float,
        dedupe_window: float,
        replicas: int = 1,
    ) -> None:
        self.nc = nc
        self.js = js
        self.max_msgs = max_msgs
        self.max_age = max_age
        self.dedupe_window = dedupe_window
        self.replicas = replicas
        self._heads: dict[str, tuple[int, int]] = {}  # room -> (room seq, stream seq)
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self) -> None:
        config = api.StreamConfig(
            name=ROOMS_STREAM,
            subjects=[history_wildcard()],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            max_msgs_per_subject=self.max_msgs,
            duplicate_window=self.dedupe_window,
            num_replicas=self.replicas,
            allow_direct=True,
            republish=api.RePublish(src=history_wildcard(), dest=live_wildcard()),
        )
        try:
            await self.js.add_stream(config)
        except APIError as exc:
            if exc.err_code != 10058:  # stream name already in use: update it
                raise
            await self.js.update_stream(config)

    async def _head(self, room: str) -> tuple[int, int]:
        cached = self._heads.get(room)
        if cached is not None:
            return cached
        try:
            msg = await self.js.get_last_msg(ROOMS_STREAM, history_subject(room))
        except NotFoundError:
            return (0, 0)
        head = (int((msg.headers or {}).get(h.SEQ, 0)), msg.seq or 0)
        self._heads[room] = head
        return head

    async def head(self, room: str) -> int:
        self._heads.pop(room, None)  # always fresh: other replicas append too
        return (await self._head(room))[0]

    async def append(
        self, room: str, kind: envelope.EventType, payload: dict[str, Any], msg_id: str | None
    ) -> Appended:
        lock = self._locks.setdefault(room, asyncio.Lock())
        async with lock:
            for _ in range(16):
                room_seq, stream_seq = await self._head(room)
                seq = room_seq + 1
                frame = envelope.event(kind, room, seq, payload).encode()
                hdrs = {h.SEQ: str(seq), "Nats-Expected-Last-Subject-Sequence": str(stream_seq)}
                if msg_id is not None:
                    hdrs["Nats-Msg-Id"] = msg_id
                try:
                    ack = await self.js.publish(history_subject(room), frame, headers=hdrs)
                except APIError as exc:
                    if exc.err_code == WRONG_LAST_SEQUENCE:
                        self._heads.pop(room, None)  # another replica appended: re-read
                        continue
                    raise
                except NatsTimeout:
                    raise WireError(ErrorCode.UNAVAILABLE, "history store unavailable") from None
                if ack.duplicate:
                    original = await self.js.get_msg(ROOMS_STREAM, ack.seq)
                    return Appended(int((original.headers or {})[h.SEQ]), original.data, True)
                self._heads[room] = (seq, ack.seq)
                return Appended(seq, frame, False)
        raise WireError(ErrorCode.UNAVAILABLE, "room too contended, try again")

    async def read(
        self,
        room: str,
        *,
        after: int = 0,
        before: int | None = None,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[StoredEvent]:
        """Events with ``after < seq < before`` not older than max_age: the oldest first
        when ``limit`` is None, else the newest ``limit`` of them. With ``max_bytes``, the
        result is cut to fit (keeping the oldest when reading forward, the newest when
        reading the last ``limit``), so that one NATS reply can carry it."""
        head = await self.head(room)
        if head <= after:
            return []
        keep: deque[StoredEvent] = deque(maxlen=limit)
        oldest_allowed = time.time() - self.max_age
        sub = await self.js.subscribe(
            history_subject(room),
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.ALL,
            stream=ROOMS_STREAM,
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=2.0)
                seq = int((msg.headers or {}).get(h.SEQ, 0))
                meta = msg.metadata
                if (
                    seq > after
                    and (before is None or seq < before)
                    and meta.timestamp.timestamp() >= oldest_allowed
                ):
                    keep.append(StoredEvent(seq, msg.data))
                if meta.num_pending == 0 or seq >= head:
                    break
        except NatsTimeout:
            raise WireError(ErrorCode.UNAVAILABLE, "history store unavailable") from None
        finally:
            await sub.unsubscribe()
        events = list(keep)
        if max_bytes is not None:
            events = fit(events, max_bytes, newest=limit is not None)
        return events

    async def recover(
        self, room: str, since: int, newest: int, max_bytes: int | None = None
    ) -> Recovery:
        """What a client that last saw ``since`` missed: everything after it if still
        retained (``recovered``), else the newest ``newest`` events."""
        head = await self.head(room)
        if since == head:
            return Recovery([], True, head)
        if since < head:
            events = await self.read(room, after=since, max_bytes=max_bytes)
            if events and events[0].seq == since + 1:
                return Recovery(events, True, head)
        # Gap older than retention (or a since from the future): newest events instead.
        return Recovery(await self.read(room, limit=newest, max_bytes=max_bytes), False, head)

    async def _rooms(self) -> AsyncIterator[tuple[str, int]]:
        """Each room's history subject and its number of stored events, a page of
        nats-server's stream info at a time (it lists at most 100,000 per answer)."""
        offset = 0
        while True:
            request = {"subjects_filter": history_wildcard(), "offset": offset}
            reply = await self.nc.request(
                stream_info_subject(ROOMS_STREAM), orjson.dumps(request), timeout=2
            )
            info = orjson.loads(reply.data)
            if "error" in info:
                raise WireError(ErrorCode.UNAVAILABLE, f"history store: {info['error']}")
            subjects: dict[str, int] = info.get("state", {}).get("subjects") or {}
            for item in subjects.items():
                yield item
            offset += len(subjects)
            if not subjects or offset >= info.get("total", 0):
                return

    async def trim(self) -> int:
        """Delete the events older than ``max_age`` from the stream, except each room's
        last event. Returns the number of rooms trimmed. Every replica may run it: purging
        is idempotent, and events appended meanwhile are newer than the cut."""
        cutoff = dt.datetime.fromtimestamp(time.time() - self.max_age, dt.UTC)
        start = cutoff.isoformat().replace("+00:00", "Z")
        trimmed = 0
        async for subject, count in self._rooms():
            if count <= 1:  # nothing to delete: the last event always stays
                continue
            # the room's first event at or after the cut (JetStream's direct get by time)
            request = orjson.dumps({"start_time": start, "next_by_subj": subject})
            reply = await self.nc.request(direct_get_subject(ROOMS_STREAM), request, timeout=2)
            status = (reply.headers or {}).get("Status") if not reply.data else None
            if status == "404":  # all of it is older: keep only the last event
                await self.js.purge_stream(ROOMS_STREAM, subject=subject, keep=1)
            elif status is None:
                first_kept = int((reply.headers or {})["Nats-Sequence"])
                await self.js.purge_stream(ROOMS_STREAM, subject=subject, seq=first_kept)
            else:
                raise WireError(ErrorCode.UNAVAILABLE, f"history store answered {status}")
            trimmed += 1
        return trimmed


def fit(events: list[StoredEvent], max_bytes: int, *, newest: bool) -> list[StoredEvent]:
    """As many events as fit in ``max_bytes`` (at least one), from the oldest or newest."""
    total = 0
    ordered = reversed(events) if newest else iter(events)
    kept: list[StoredEvent] = []
    for event in ordered:
        total += len(event.frame)
        if kept and total > max_bytes:
            break
        kept.append(event)
    return kept[::-1] if newest else kept
