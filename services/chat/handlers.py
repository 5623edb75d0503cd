"""chat: the tutorial's chat room and ``/ws/v2`` rooms, one history for both.

Every room event (message, join, leave) is appended to the room's history in JetStream
(services/chat/rooms.py), which republishes it to the gateways. The tutorial's
``/ws/chat`` is the room ``general``: its frames (exactly what the tutorial's
``ConnectionManager.broadcast`` sends) are published once to ``sb.room.general``, and
events of ``general`` from ``/ws/v2`` users are also sent there in the tutorial's shape,
so users of both endpoints see each other.

While the history store refuses writes for want of room (``507``), ``/ws/v2`` publishes
are refused (a message is delivered by being stored), but joins and leaves are still
answered, without their event, so that members can enter a room, read its history and
leave; the tutorial chat goes on as ever, its messages delivered to ``/ws/chat`` users
only, each sender told its message was not saved. Every event let through unstored is
counted (``switchboard_service_history_unsaved_total``) and warned about once per burst.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from services.chat.presence import Member, PresenceBook
from services.chat.rooms import Appended, Burst, RoomStore, fit
from services.runner import Handler
from wire import envelope
from wire import headers as h
from wire.errors import ErrorCode, WireError
from wire.frames import Reply, Request, TextFrame, encode_frames, encode_text, quoted
from wire.metrics import HistoryMetrics
from wire.names import check_username
from wire.subjects import Op, is_token, room_subject

log = logging.getLogger(__name__)

DEFAULT_ROOM = "general"

Publish = Callable[[str, bytes], Awaitable[None]]


def tutorial_frame(message: str, sender: str, type_: str) -> bytes:
    # Key order and separators as Starlette's send_json writes the tutorial's payload.
    payload = {"message": message, "sender": sender, "type": type_}
    try:
        return encode_text(json.dumps(payload, separators=(",", ":"), ensure_ascii=False))
    except UnicodeEncodeError:
        raise WireError(ErrorCode.BAD_REQUEST, "message is not valid Unicode") from None


def _room(req: Request) -> str:
    room = req.room or DEFAULT_ROOM
    if not is_token(room):
        raise WireError(ErrorCode.BAD_REQUEST, "invalid room name")
    return room


def _request_id(req: Request) -> str:
    rid = req.header(h.REQUEST_ID)
    if rid is None:
        raise WireError(ErrorCode.BAD_REQUEST, "missing request id")
    return rid


def _member_key(kind: str, req: Request, room: str) -> str | None:
    """Dedupe id of a join/leave event: one per membership (``Sb-Member``, /ws/v2: one
    per join) or else per connection (/ws/chat) and room, whichever replica (or expiry
    sweep, :meth:`ChatHandlers.expire`, from the presence entry's id) writes it."""
    hdrs = req.headers or {}
    gw, member = hdrs.get(h.GATEWAY), hdrs.get(h.MEMBER) or hdrs.get(h.CONN)
    return f"{kind}:{gw}:{member}:{room}" if gw and member else None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _tutorial_text(payload: dict[str, Any]) -> str:
    text = payload.get("text")
    return text if isinstance(text, str) else orjson.dumps(payload).decode()


class ChatHandlers:
    def __init__(
        self,
        publish: Publish,
        store: RoomStore,
        book: PresenceBook,
        recover_newest: int,
        reply_budget: int = 1 << 20,
        metrics: HistoryMetrics | None = None,
    ) -> None:
        self.publish = publish
        self.store = store
        self.book = book
        self.recover_newest = recover_newest
        self.reply_budget = reply_budget  # bytes of events in one reply
        self.metrics = metrics
        self._unsaved = Burst()

    def _not_stored(self, room: str, kind: envelope.EventType, exc: Exception) -> WireError:
        """Count (and warn, once per burst) an event let through without being stored;
        the WireError to tell of it."""
        error = exc if isinstance(exc, WireError) else None
        full = error is not None and error.code is ErrorCode.STORAGE_FULL
        if self.metrics is not None:
            self.metrics.count(kind, full)
        self._unsaved.warn(
            "history append failed: events let through unstored", room=room, error=str(exc)
        )
        if error is None or error.code is ErrorCode.INTERNAL:
            return WireError(ErrorCode.UNAVAILABLE, "history store unavailable")
        return error

    async def _append_or_full(
        self, room: str, kind: envelope.EventType, payload: dict[str, Any], msg_id: str | None
    ) -> Appended | None:
        """A /ws/v2 join's or leave's event stored, or None if the store is full: the
        member still enters (reads history, gets what others manage to store) or leaves."""
        try:
            return await self.store.append(room, kind, payload, msg_id)
        except WireError as exc:
            if exc.code is not ErrorCode.STORAGE_FULL:
                raise
            self._not_stored(room, kind, exc)
            return None

    async def _tutorial(self, room: str, frame: bytes) -> None:
        if room == DEFAULT_ROOM:
            await self.publish(room_subject(room), frame)

    async def _append_quietly(
        self, room: str, kind: envelope.EventType, payload: dict[str, Any], msg_id: str | None
    ) -> Appended | WireError:
        """History for the tutorial endpoint, which has no acks: a store outage must not
        stop the chat itself (a WireError: not stored, why)."""
        try:
            return await self.store.append(room, kind, payload, msg_id)
        except Exception as exc:
            return self._not_stored(room, kind, exc)

    # -- the tutorial's /ws/chat ---------------------------------------------------
    async def join(self, req: Request) -> bytes:
        user = check_username(req.user)
        room = _room(req)
        await self.publish(
            room_subject(room), tutorial_frame(f"{user} has joined the chat", "Server", "system")
        )
        event = {"user": user, "ts": _now_ms()}
        await self._append_quietly(room, "join", event, _member_key("join", req, room))
        return b""

    async def leave(self, req: Request) -> bytes:
        """A /ws/chat socket's leave. The gateway sends it again until a replica answers
        (gateway/leaves.py), and chat writes it itself for a member its gateway no longer
        lists (:meth:`expire`): the notice goes out only with the event's first store
        (its dedupe id), or when the store failed (the chat goes on without history)."""
        user = check_username(req.user)
        room = _room(req)
        event = {"user": user, "ts": _now_ms()}
        left = await self._append_quietly(room, "leave", event, _member_key("leave", req, room))
        if isinstance(left, WireError) or not left.duplicate:
            await self.publish(
                room_subject(room), tutorial_frame(f"{user} has left the chat", "Server", "system")
            )
        return b""

    async def send(self, req: Request) -> bytes:
        user = check_username(req.user)
        room = _room(req)
        try:
            data: Any = json.loads(req.data.decode())  # from str, as the tutorial (codec)
        except (ValueError, RecursionError):  # also an int over 4300 digits (ValueError)
            raise WireError(ErrorCode.BAD_REQUEST, "Invalid JSON format") from None
        if not isinstance(data, dict) or "message" not in data:
            raise WireError(ErrorCode.BAD_REQUEST, 'Expected a JSON object with a "message" field')
        # f-string formatting of the parsed value, exactly as the tutorial does.
        text = f"{data['message']}"
        frame = tutorial_frame(f"{user}: {text}", user, "message")
        await self.publish(room_subject(room), frame)
        event = {"text": text, "sender": user, "ts": _now_ms()}
        stored = await self._append_quietly(room, "message", event, None)
        if isinstance(stored, WireError):  # /ws/v2 members and history do not have it
            return tutorial_frame(f"not saved to history: {stored.description}", "Server", "error")
        return b""

    # -- rooms (/ws/v2) ------------------------------------------------------------
    async def room_join(self, req: Request) -> Reply:
        user = check_username(req.user)
        room = _room(req)
        rid = _request_id(req)
        since = req.int_header(h.SINCE)
        joined = await self._append_or_full(
            room, "join", {"user": user, "ts": _now_ms()}, _member_key("join", req, room)
        )
        if joined is None or not joined.duplicate:
            await self._tutorial(
                room, tutorial_frame(f"{user} has joined the chat", "Server", "system")
            )
        if since is None:
            seq = joined.seq if joined is not None else await self.store.head(room)
            ack = envelope.ack(rid, room, seq=seq)
            return Reply(encode_text(ack), {h.SEQ: str(seq)})
        recovery = await self.store.recover(
            room, since, self.recover_newest, max_bytes=self.reply_budget
        )
        frames = [TextFrame(e.frame.decode()) for e in recovery.events]
        frames.append(
            TextFrame(envelope.ack(rid, room, seq=recovery.head, recovered=recovery.recovered))
        )
        hdrs = {h.SEQ: str(recovery.head)}
        if recovery.events:
            hdrs[h.FIRST_SEQ] = str(recovery.events[0].seq)
            if recovery.recovered and recovery.events[-1].seq < recovery.head:
                hdrs[h.MORE] = "1"  # cut to the reply budget: the gateway reads on
        return Reply(encode_frames(frames), hdrs)

    async def room_leave(self, req: Request) -> bytes | Reply:
        user = check_username(req.user)
        room = _room(req)
        rid = req.header(h.REQUEST_ID)
        left = await self._append_or_full(
            room, "leave", {"user": user, "ts": _now_ms()}, _member_key("leave", req, room)
        )
        if left is None or not left.duplicate:
            await self._tutorial(
                room, tutorial_frame(f"{user} has left the chat", "Server", "system")
            )
        if not rid:  # a socket's leave on close: nobody to answer
            return b""
        if left is None:  # not stored: delivery ends after the room's last event
            head = await self.store.head(room)
            ack = envelope.ack(rid, room, seq=head)
            return Reply(encode_text(ack), {h.SEQ: str(head + 1)})
        ack = envelope.ack(rid, room, seq=left.seq)
        return Reply(encode_text(ack), {h.SEQ: str(left.seq)})  # where delivery ends

    async def publish_message(self, req: Request) -> bytes:
        user = check_username(req.user)
        room = _room(req)
        rid = _request_id(req)
        try:
            payload = orjson.loads(req.data)
        except orjson.JSONDecodeError:
            raise WireError(ErrorCode.BAD_REQUEST, "payload must be a JSON object") from None
        if not isinstance(payload, dict):
            raise WireError(ErrorCode.BAD_REQUEST, "payload must be a JSON object")
        # The server stamps the sender: whatever the client wrote there is replaced.
        payload["sender"] = user
        payload["ts"] = _now_ms()
        msg_id = f"msg:{room}:{quoted(user)}:{rid}"  # a re-sent publish: same room, user, id
        try:
            appended = await self.store.append(room, "message", payload, msg_id)
        except orjson.JSONEncodeError:  # the gateway checks it (envelope.publish_body)
            raise WireError(ErrorCode.BAD_REQUEST, "payload nested too deeply") from None
        if not appended.duplicate:
            frame = tutorial_frame(f"{user}: {_tutorial_text(payload)}", user, "message")
            await self._tutorial(room, frame)
        ack = envelope.ack(rid, room, seq=appended.seq, duplicate=appended.duplicate)
        return encode_text(ack)

    async def history(self, req: Request) -> bytes | Reply:
        room = _room(req)
        since = req.int_header(h.SINCE)
        if since is not None:  # a gateway filling a gap: the events themselves, in order
            events = await self.store.read(room, after=since, max_bytes=self.reply_budget)
            hdrs = {}
            if events:
                hdrs[h.FIRST_SEQ] = str(events[0].seq)
                if events[-1].seq < await self.store.head(room):
                    hdrs[h.MORE] = "1"
            return Reply(encode_frames([TextFrame(e.frame.decode()) for e in events]), hdrs)
        rid = _request_id(req)
        limit = min(req.int_header(h.LIMIT) or 50, envelope.MAX_HISTORY)
        page = await self.store.read(room, before=req.int_header(h.BEFORE), limit=limit)
        events = fit(page, self.reply_budget, newest=True)
        body = b",".join(e.frame for e in events)
        # cut to the reply budget: the client asks again with before = the first seq
        more = b',"more":true' if len(events) < len(page) else b""
        frame = (
            b'{"type":"history","id":' + orjson.dumps(rid) + b',"room":' + orjson.dumps(room)
            + b',"payload":{"events":[' + body + b"]" + more + b"}}"
        )  # fmt: skip
        return encode_text(frame.decode())

    async def presence(self, req: Request) -> bytes:
        room = _room(req)
        rid = _request_id(req)
        return encode_text(
            envelope.reply("presence", rid, room, {"members": self.book.users(room)})
        )

    async def expire(self, gone: list[Member]) -> None:
        """Write leave events for members of gateways that stopped heartbeating, or whose
        gateway's full snapshot no longer lists them (PresenceBook.apply). Every replica
        may do this, and the gateway's own leave may come too (sent again until
        answered): the dedupe id, the one that leave has, makes it happen once."""
        for m in gone:
            msg_id = f"leave:{m.gateway}:{m.conn}:{m.room}"
            try:
                left = await self.store.append(
                    m.room, "leave", {"user": m.user, "ts": _now_ms(), "expired": True}, msg_id
                )
            except Exception as exc:
                self._not_stored(m.room, "leave", exc)
                continue
            if not left.duplicate:
                await self._tutorial(
                    m.room, tutorial_frame(f"{m.user} has left the chat", "Server", "system")
                )

    def ops(self) -> Mapping[Op, Handler]:
        return {
            Op.JOIN: self.join,
            Op.LEAVE: self.leave,
            Op.SEND: self.send,
            Op.ROOM_JOIN: self.room_join,
            Op.ROOM_LEAVE: self.room_leave,
            Op.PUBLISH: self.publish_message,
            Op.HISTORY: self.history,
            Op.PRESENCE: self.presence,
        }
