"""``/ws/v2``: the rooms protocol (wire/envelope.py), relayed to the chat service.

The gateway decodes each envelope to route it and to enforce the connection's identity
and permissions; replies and events are the chat service's frames. ``ping`` is answered
here (it is transport keepalive, not data).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping

from gateway.auth import SUBPROTOCOL, Authenticator, Identity
from gateway.connection import HOLD, Connection, Message, text_bytes
from gateway.endpoints import HISTORY, PRESENCE, PUBLISH, ROOM_JOIN, ROOM_LEAVE, V2, Route
from gateway.hub import Hub
from gateway.leaves import Expected
from gateway.relay import RelayEndpoint, both
from gateway.rooms import Member, Rooms, seq_header
from gateway.settings import GatewaySettings
from wire import envelope
from wire import headers as h
from wire.errors import CloseCode, ErrorCode, WireError
from wire.frames import quoted, request_headers
from wire.metrics import GatewayMetrics

log = logging.getLogger(__name__)

_background: set[asyncio.Task[None]] = set()


def _spawn(coro) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


class V2Endpoint(RelayEndpoint):
    def __init__(
        self,
        hub: Hub,
        rooms: Rooms,
        auth: Authenticator,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
    ) -> None:
        super().__init__(V2, hub, settings, metrics)
        self.rooms = rooms
        self.auth = auth
        self._leaving: dict[int, set[Member]] = {}  # conn id -> members whose leave is out
        self._read: dict[int, asyncio.Future[None]] = {}  # conn id -> its queue ran dry

    async def __call__(self, scope, receive, send) -> None:  # ASGI
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        admitted = await self.authenticate(scope, send, (SUBPROTOCOL,))
        if admitted is None:
            return
        ip, identity = admitted
        conn = self.connection(ip, identity.user, None, scope)
        try:
            sending = self._send(conn, send, on_empty=functools.partial(self._emptied, conn))
            await both(self._receive_v2(conn, identity, receive), sending)
        finally:
            await self._closed(conn)

    async def _closed(self, conn: Connection) -> None:
        """The socket closed: its last requests, then its leaves."""
        hub = self.hub
        # Reserved before the first await: a join of this user to one of these rooms
        # waits for the leave from now (gateway/leaves.py). Those whose leave is
        # answered meanwhile are released when the block ends.
        members = [*self._leaving.get(conn.id, ()), *conn.rooms.values()]
        with hub.leaves.expect((conn.user or "", m.room) for m in members) as expected:
            await hub.settle(conn, self.settings.request_timeout)  # before the leaves
            hub.unregister(conn)
            self._emptied(conn)  # fills waiting for it to read: it will not
            self.open.dec()
            # Leaves sent that never came back (maybe handled: chat dedupes them), then
            # the rooms still joined: sent until chat answers.
            for member in [*self._leaving.pop(conn.id, ()), *conn.rooms.values()]:
                await self.rooms.remove(member)
                self._leave_later(member, expected)

    def _leave_later(self, member: Member, expected: Expected | None = None) -> None:
        """Its leave, to be sent until a chat replica answers (gateway/leaves.py)."""
        conn = member.conn
        headers = self._headers(conn, member.room, member=member)
        (expected or self.hub.leaves).add(ROOM_LEAVE, headers, conn.user or "", member.room)

    def _headers(
        self,
        conn: Connection,
        room: str,
        rid: str | None = None,
        member: Member | None = None,
        **extra: str,
    ) -> dict[str, str]:
        hdrs = {h.GATEWAY: self.settings.id, h.CONN: str(conn.id), **extra}
        if rid is not None:
            hdrs[h.REQUEST_ID] = quoted(rid)
        if member is not None:  # join and leave: which membership (dedupe, presence)
            hdrs[h.MEMBER] = str(member.key)
        return request_headers("text", user=conn.user, room=room, extra=hdrs)

    async def _receive_v2(self, conn: Connection, identity: Identity, receive) -> None:
        hub = self.hub
        while True:
            if not conn.capacity.is_set():
                await conn.capacity.wait()
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            text = message.get("text")
            # in bytes (UTF-8), as everywhere: characters gave 4x the allowance
            size = text_bytes(text) if text is not None else len(message.get("bytes") or b"")
            if not conn.limiter.allow(size):
                await self.refuse_rate(conn, envelope.request_id_of(text) if text else None)
                continue
            conn.active = conn.limiter.frames.stamp
            if text is None:
                self.in_binary.inc()
                hub.answer_locally(conn, WireError(ErrorCode.UNSUPPORTED, "expected a text frame"))
                continue
            self.in_text.inc()
            self.in_text_bytes.inc(size)
            try:
                req = envelope.decode_client(text)
                await self._dispatch(conn, identity, req)
            except WireError as exc:
                hub.answer_locally(conn, exc, envelope.request_id_of(text))

    async def _dispatch(self, conn: Connection, identity: Identity, req: envelope.ClientMessage):
        hub = self.hub
        match req:
            case envelope.Ping(id=rid):
                hub.answer_locally(conn, None, text=envelope.pong(rid))
            case envelope.Join(id=rid, room=room, since=since):
                if not identity.may_join(room):
                    raise WireError(ErrorCode.FORBIDDEN, f"not permitted to join {room}")
                if room in conn.rooms:
                    raise WireError(ErrorCode.BAD_REQUEST, f"already joined {room}")
                if len(conn.rooms) >= self.settings.max_rooms:
                    raise WireError(
                        ErrorCode.FORBIDDEN,
                        f"at most {self.settings.max_rooms} rooms per connection",
                    )
                # after this user's queued leaves of the room (gateway/leaves.py)
                await hub.leaves.settled(conn.user or "", room, self.settings.request_timeout)
                member = Member(conn, room, self._fill, hub.new_id())
                conn.rooms[room] = member
                await self.rooms.add(member)
                extra = {} if since is None else {h.SINCE: str(since)}
                await hub.request(
                    conn,
                    ROOM_JOIN,
                    b"",
                    self._headers(conn, room, rid, member, **extra),
                    tag=rid,
                    hook=functools.partial(self._joined, member, rid),
                )
            case envelope.Leave(id=rid, room=room):
                member = conn.rooms.pop(room, None)
                if member is None:
                    raise WireError(ErrorCode.BAD_REQUEST, f"not in {room}")
                # Still a member until its leave event is stored: the events stored
                # before it are sent, at the leave's turn (_left), then the ack.
                member.leaving = True
                self._leaving.setdefault(conn.id, set()).add(member)
                leave = self._headers(conn, room, rid, member)
                hook = functools.partial(self._left, member, rid)
                await self.hub.request(conn, ROOM_LEAVE, b"", leave, tag=rid, hook=hook)
            case envelope.Publish(id=rid, room=room, payload=payload):
                if not identity.may_publish(room):
                    raise WireError(ErrorCode.FORBIDDEN, f"not permitted to publish to {room}")
                await self._forward(conn, PUBLISH, payload, room, rid)
            case envelope.History(id=rid, room=room, before=before, limit=limit):
                if not identity.may_join(room):
                    raise WireError(ErrorCode.FORBIDDEN, f"not permitted to read {room}")
                extra = {h.LIMIT: str(limit)}
                if before is not None:
                    extra[h.BEFORE] = str(before)
                await self._forward(conn, HISTORY, b"", room, rid, extra)
            case envelope.Presence(id=rid, room=room):
                if not identity.may_join(room):
                    raise WireError(ErrorCode.FORBIDDEN, f"not permitted to see {room}")
                await self._forward(conn, PRESENCE, b"", room, rid)

    async def _forward(
        self,
        conn: Connection,
        route: Route,
        payload: bytes,
        room: str,
        rid: str,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        await self.hub.request(
            conn, route, payload, self._headers(conn, room, rid, **(extra or {})), tag=rid
        )

    def _left(
        self,
        member: Member,
        rid: str,
        messages: list[Message],
        headers: Mapping[str, str] | None,
        error: WireError | None,
    ) -> object:
        leaving = self._leaving.get(member.conn.id)
        ours = False  # its leave is still ours to send; else the socket's close took it
        if leaving is not None and member in leaving:
            ours = True
            leaving.discard(member)
            if not leaving:
                del self._leaving[member.conn.id]
        _spawn(self.rooms.remove(member))
        if error is not None:
            # The membership is dropped: the client cannot leave again ("not in"), so
            # its leave is sent until chat answers (a retry of one handled is deduped).
            # Not if the socket closed while this reply waited its turn (behind a HOLD):
            # its close queued the leave already.
            if ours:
                self._leave_later(member)
            member.abandon(member.conn.spec.error_message(error, rid))
            return None
        upto = seq_header(headers, h.SEQ)
        if member.left(upto, messages):
            return None
        assert upto is not None
        _spawn(self._read_before_leave(member, upto, messages))
        return HOLD

    async def _read_before_leave(self, member: Member, upto: int, ack: list[Message]) -> None:
        """Some events stored before the leave event had not come live at the leave's
        turn (Member.left): read them from history, page by page, while the connection's
        later replies wait (``HOLD``), so that they come before the leave's ack, and the
        ack before the answer to anything sent after the leave (a join again)."""
        conn = member.conn
        try:
            while await self._until_read(conn):
                headers = self._headers(conn, member.room, None, **{h.SINCE: str(member.last)})
                replay, reply = await self.hub.ask(HISTORY, b"", headers)
                first = seq_header(reply, h.FIRST_SEQ)
                if member.left(upto, ack, replay, first, final=not reply.get(h.MORE)):
                    return
        except WireError as exc:
            # as a failed fill (_filled): closing lets it recover the events with since
            log.warning("history read for a leave failed: %s", exc, extra={"room": member.room})
            member.abandon(None)
            conn.close(int(CloseCode.TRY_AGAIN_LATER), "room history unavailable")
        finally:
            conn.resume()

    # -- history merging -----------------------------------------------------------
    def _joined(
        self,
        member: Member,
        rid: str,
        messages: list[Message],
        headers: Mapping[str, str] | None,
        error: WireError | None,
    ) -> None:
        conn = member.conn
        if error is not None:
            if conn.rooms.get(member.room) is member:
                del conn.rooms[member.room]
                _spawn(self.rooms.remove(member))
            member.abandon(conn.spec.error_message(error, rid))
            return
        first = seq_header(headers, h.FIRST_SEQ)
        head = seq_header(headers, h.SEQ)
        if headers and headers.get(h.MORE):
            # The replay was cut to the reply budget: do not jump to the head, let the
            # gap after the replayed part be filled from history; the ack waits until
            # the fills reach the head, so that it still comes right after the replay.
            member.held = (head or 0, messages[-1]) if messages else None
            member.synced(messages[:-1], first, None, [], accept_gaps=False)
            if not member.syncing:
                member.syncing = True
                self._fill(member)
            return
        member.synced(messages[:-1], first, head, messages[-1:], accept_gaps=False)

    def _fill(self, member: Member) -> None:
        member.deferred = True
        _spawn(self._fill_when_read(member))

    async def _fill_when_read(self, member: Member) -> None:
        """Ask history for the events after ``member.last`` once the client has read
        what is queued for it: a replay larger than one reply is fetched as the client
        reads, a page at a time beyond the send queue's bound, instead of all of it into
        the queue of a client that may never read (docs/security.md)."""
        conn = member.conn
        if not await self._until_read(conn) or member.gone or member.leaving:
            return  # a leave reads what it needs itself (_read_before_leave)
        member.deferred = False  # from now on, live events may be newer than the read
        headers = self._headers(conn, member.room, None, **{h.SINCE: str(member.last)})
        hook = functools.partial(self._filled, member)
        await self.hub.request(conn, HISTORY, b"", headers, hook=hook)

    async def _until_read(self, conn: Connection) -> bool:
        """Wait until the connection's send queue is under its bound
        (``SB_GATEWAY_SEND_QUEUE_BYTES``), as FilesSocket.until_drained does for chunks.
        False if the connection closes or ends meanwhile."""
        while conn.out_bytes >= conn.max_out_bytes and not conn.closing:
            if self.hub.connections.get(conn.id) is not conn:
                return False
            read = self._read.get(conn.id)
            if read is None:
                read = self._read[conn.id] = asyncio.get_running_loop().create_future()
            await read
        return not conn.closing and self.hub.connections.get(conn.id) is conn

    def _emptied(self, conn: Connection) -> None:
        """The sender found the connection's queue empty (or the connection ended)."""
        read = self._read.pop(conn.id, None)
        if read is not None and not read.done():
            read.set_result(None)

    def _filled(
        self,
        member: Member,
        messages: list[Message],
        headers: Mapping[str, str] | None,
        error: WireError | None,
    ) -> None:
        if member.gone:  # left or abandoned meanwhile: neither this nor more fills
            return
        if error is not None:
            # Sending what follows the gap would lose the missing events for this
            # client; closing lets it reconnect and recover them with since.
            log.warning("history fill failed: %s", error, extra={"room": member.room})
            member.abandon(None)
            member.conn.close(int(CloseCode.TRY_AGAIN_LATER), "room history unavailable")
            return
        first = seq_header(headers, h.FIRST_SEQ)
        more = bool(headers and headers.get(h.MORE))
        member.synced(messages, first, None, [], accept_gaps=not more)
        if more and not member.syncing:
            member.syncing = True
            self._fill(member)
