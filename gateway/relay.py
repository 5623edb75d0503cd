"""One WebSocket, relayed: a receiver (socket -> NATS) and a sender (replies -> socket),
two tasks in one task group, cancelled together when either side ends.

Each endpoint is a raw ASGI app (no per-frame wrapper objects): the receiver reads ASGI
``websocket.receive`` messages and publishes the frame bytes as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import parse_qsl

import anyio
from starlette.routing import WebSocketRoute

from gateway.auth import BEARER_PREFIX, Authenticator, Identity, token_from
from gateway.connection import Connection, text_bytes
from gateway.endpoints import CHAT_JOIN, CHAT_LEAVE, EndpointSpec, Route
from gateway.hops import HOP_KEY
from gateway.hub import Hub
from gateway.limits import RATE_LIMITED, RateLimiter, client_ip, origin_allowed
from gateway.settings import GatewaySettings
from gateway.wsframe import DIRECT_WRITE, FRAME_HOOK, HANG_UP
from wire import headers as h
from wire.errors import CloseCode, ErrorCode, WireError, close_reason
from wire.frames import request_headers
from wire.metrics import DropReason, GatewayMetrics
from wire.names import check_username

log = logging.getLogger(__name__)

CHAT_ROOM = "general"


async def both(receiving: Coroutine[Any, Any, None], sending: Coroutine[Any, Any, None]) -> None:
    """Run ``receiving`` in this task and ``sending`` in a new one until either ends, then
    stop the other; an exception in either propagates. (An anyio task group did this for
    ~9 KiB per connection, two tasks with their cancel scopes; this costs one task.)"""
    me = asyncio.current_task()
    assert me is not None
    sender = asyncio.get_running_loop().create_task(sending)
    finished = by_sender = False

    def sender_done(_: asyncio.Task[None]) -> None:
        nonlocal by_sender
        if not finished:
            by_sender = True
            me.cancel()

    sender.add_done_callback(sender_done)
    try:
        await receiving
    except asyncio.CancelledError:
        if not by_sender:
            raise
        me.uncancel()  # our own stop, not the server's
    finally:
        finished = True
        if not sender.done():
            sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender


def direct_websockets(app: Any) -> Any:
    """``app``, with WebSocket connections to a fixed path handed straight to their ASGI
    endpoint, past FastAPI's middleware stack and router, whose coroutine frames would
    stay suspended for each connection's lifetime (~5 KiB per idle connection). HTTP,
    lifespan and anything else go through ``app`` as before."""
    direct = {
        route.path: route.app
        for route in app.router.routes
        if isinstance(route, WebSocketRoute)
        and not route.param_convertors
        and route.app is route.endpoint  # an ASGI app, not a wrapped function
    }

    async def asgi(scope, receive, send) -> None:
        if scope["type"] == "websocket":
            endpoint = direct.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await app(scope, receive, send)

    return asgi


class RelayEndpoint:
    """ASGI app for one endpoint path."""

    def __init__(
        self, spec: EndpointSpec, hub: Hub, settings: GatewaySettings, metrics: GatewayMetrics
    ) -> None:
        self.spec = spec
        self.hub = hub
        self.settings = settings
        self.auth = Authenticator(settings)  # /ws/chat's; /ws/v2 and /ws/files set theirs
        self.open = metrics.connections.labels(spec.path)
        self.accepted = metrics.connections_total.labels(spec.path)
        self.in_text = metrics.frames.labels(spec.path, "in", "text")
        self.in_binary = metrics.frames.labels(spec.path, "in", "binary")
        self.in_text_bytes = metrics.bytes.labels(spec.path, "in", "text")
        self.in_binary_bytes = metrics.bytes.labels(spec.path, "in", "binary")
        self.out_text = metrics.frames.labels(spec.path, "out", "text")
        self.out_binary = metrics.frames.labels(spec.path, "out", "binary")
        self.out_text_bytes = metrics.bytes.labels(spec.path, "out", "text")
        self.out_binary_bytes = metrics.bytes.labels(spec.path, "out", "binary")
        self.hops = hub.hops[spec.path]
        self.slow_drops = metrics.dropped.labels(DropReason.SLOW_CONSUMER)

    async def __call__(self, scope, receive, send) -> None:  # ASGI
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        hub = self.hub
        ip = await self.admit(scope, send)
        if ip is None:
            return
        user = None
        may_send = True
        if self.spec.chat:
            # Here, before the socket joins the room or chat hears of it: the tutorial's
            # ?username= (anonymous users, if allowed), or whoever ?token= says.
            identity = await self.identify(scope, send, ip, CHAT_ROOM, "Anonymous")
            if identity is None:
                return
            user, may_send = identity.user, identity.may_publish(CHAT_ROOM)
        else:
            await send({"type": "websocket.accept"})
        conn = self.connection(ip, user, CHAT_ROOM if self.spec.chat else None, scope)
        try:
            if self.spec.chat:
                # after the leaves of this user's earlier sockets: else the room could be
                # told of this join before an old socket's leave (gateway/leaves.py)
                await hub.leaves.settled(user or "", CHAT_ROOM, self.settings.request_timeout)
                await hub.join_room(conn, CHAT_ROOM)
                await hub.request(conn, CHAT_JOIN, b"", self._member_headers(conn))
                await hub.live.track(conn, CHAT_ROOM, user or "")
            await both(self._receive(conn, receive, scope, may_send), self._send(conn, send))
        finally:
            # reserved before the first await: a join of this user waits for it from now
            whos = [(user or "", CHAT_ROOM)] if self.spec.chat else []
            with hub.leaves.expect(whos) as expected:
                await hub.settle(conn, self.settings.request_timeout)  # chat: before the leave
                hub.unregister(conn)
                self.open.dec()
                if self.spec.chat:
                    await hub.leave_room(conn, CHAT_ROOM)
                    await hub.live.untrack(conn)
                    headers = self._member_headers(conn)
                    expected.add(CHAT_LEAVE, headers, user or "", CHAT_ROOM)

    async def admit(self, scope, send) -> str | None:
        """Origin, rate-ban and connection-count checks before accepting. Returns the
        client's address, or None after refusing (bad Origin: HTTP 403 before the
        handshake; an address closed for rate abuse in the last ``rate_ban_seconds``:
        accept, then close 1008; full: accept, then close 1013 so the client sees why)."""
        hub = self.hub
        settings = self.settings
        if not origin_allowed(scope, settings.allowed_origins, settings.allowed_hosts):
            hub.metrics.errors.labels(ErrorCode.FORBIDDEN).inc()
            await send({"type": "websocket.close", "code": int(CloseCode.POLICY_VIOLATION)})
            return None
        ip = client_ip(scope)
        banned = hub.admission.banned(ip)
        if banned:
            hub.metrics.errors.labels(ErrorCode.RATE_LIMITED).inc()
            await send({"type": "websocket.accept"})
            reason = f"rate limit exceeded: retry in {math.ceil(banned)} s"
            code = int(CloseCode.POLICY_VIOLATION)
            await send({"type": "websocket.close", "code": code, "reason": reason})
            return None
        if not hub.accepting or hub.nc is None or not hub.admission.admit(ip):
            await send({"type": "websocket.accept"})
            reason = "server busy, try again later" if hub.accepting else "server shutting down"
            code = int(CloseCode.TRY_AGAIN_LATER)
            await send({"type": "websocket.close", "code": code, "reason": reason})
            return None
        return ip

    async def authenticate(
        self, scope, send, subprotocols: Sequence[str]
    ) -> tuple[str, Identity] | None:
        """:meth:`admit`, then who the client is (a JWT from ``?token=`` or the
        ``bearer.<jwt>`` subprotocol, or a ``?username=``), then accept, choosing the first
        of ``subprotocols`` the client offered. Returns the address and identity, or None
        after refusing: accepted and closed 1008 with the reason, so that a browser sees
        it (a refused handshake would only say 1006)."""
        ip = await self.admit(scope, send)
        if ip is None:
            return None
        identity = await self.identify(scope, send, ip, subprotocols=subprotocols)
        return None if identity is None else (ip, identity)

    async def identify(
        self,
        scope,
        send,
        ip: str,
        room: str | None = None,
        default_user: str | None = None,
        subprotocols: Sequence[str] = (),
    ) -> Identity | None:
        """Who the admitted client is, then accept (see :meth:`authenticate`); with
        ``room``, it must be allowed to join it. None after refusing."""
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), True))
        offered = scope.get("subprotocols") or []
        accept: dict[str, object] = {"type": "websocket.accept"}
        chosen = next((proto for proto in subprotocols if proto in offered), None)
        if chosen is None:
            # A browser fails a handshake that selects none of the protocols it offered:
            # a client that offered its token and nothing this endpoint speaks gets its
            # token's entry back (/ws/chat has no protocol name of its own).
            chosen = next((proto for proto in offered if proto.startswith(BEARER_PREFIX)), None)
        if chosen is not None:
            accept["subprotocol"] = chosen
        try:
            username = query.get("username", default_user)
            if username is not None:
                check_username(username)
            identity = self.auth.identify(token_from(query, offered), username)
            if room is not None and not identity.may_join(room):
                raise WireError(ErrorCode.FORBIDDEN, f"not permitted to join {room}")
        except WireError as exc:
            await self.refuse(send, accept, ip, exc)
            return None
        await send(accept)
        return identity

    async def refuse(self, send, accept: dict[str, object], ip: str, exc: WireError) -> None:
        """Accept, then close 1008 with the reason (a browser sees it; a refused
        handshake would only say 1006), and give the address's admission back."""
        try:
            await send(accept)
            code = int(CloseCode.POLICY_VIOLATION)
            reason = close_reason(exc.description)
            await send({"type": "websocket.close", "code": code, "reason": reason})
        finally:  # also when the client is gone already
            self.hub.admission.release(ip)

    def connection(
        self, ip: str, user: str | None, room: str | None, scope: dict | None = None
    ) -> Connection:
        """A new admitted connection, registered with the hub. With ``scope``, frames are
        written directly when they can be (``Connection.write_now``; the sender is then
        :meth:`_send`, which knows how to share the socket with it)."""
        settings = self.settings
        conn = Connection(
            self.hub.new_id(),
            self.spec,
            settings.max_in_flight,
            user=user,
            room=room,
            max_out_bytes=settings.send_queue_bytes,
            max_owed_bytes=settings.send_queue_max_bytes,
        )
        conn.ip = ip
        conn.limiter = self.hub.admission.limiter(
            ip,
            RateLimiter(
                settings.rate_frames,
                settings.rate_frames_burst,
                settings.rate_bytes,
                settings.rate_bytes_burst,
                settings.rate_close_after,
            ),
        )
        conn.active = time.monotonic()
        conn.on_slow = self.slow_drops.inc
        if scope is not None:
            extensions = scope.get("extensions", {})
            conn.direct = extensions.get(DIRECT_WRITE)
            if (hang_up := extensions.get(HANG_UP)) is not None:
                # a slow consumer gets as long to take its 1013 as a ping its pong
                conn.hang_up = functools.partial(hang_up, settings.ping_timeout)
            conn.on_written = self.wrote
        self.hub.register(conn)
        self.open.inc()
        self.accepted.inc()
        return conn

    async def refuse_rate(self, conn: Connection, tag: str | None = None) -> bool:
        """A frame over the rate limit: an error frame (with the frame's request id,
        ``tag``, where it has one), or after too many in a row, close 1008. True if the
        connection is closing (the receiver then waits for the sender to write the close
        frame)."""
        if self.refuse_now(conn, tag):
            await anyio.sleep_forever()
            return True
        return False

    def refuse_now(self, conn: Connection, tag: str | None = None) -> bool:
        """:meth:`refuse_rate` without the waiting: True if the connection is closing
        (then nothing more from the client is to be processed)."""
        limiter = conn.limiter
        if limiter.exhausted:
            if self.settings.rate_ban_seconds:
                self.hub.admission.ban(conn.ip, self.settings.rate_ban_seconds)
            # In request order: replies already owed to the client go out first.
            close = {"type": "websocket.close", "code": int(CloseCode.POLICY_VIOLATION)}
            close["reason"] = "rate limit exceeded"
            conn.closing = True
            conn.complete(conn.allocate(None), [close])
            return True
        self.hub.answer_locally(conn, RATE_LIMITED, tag)
        return False

    def _member_headers(self, conn: Connection) -> dict[str, str]:
        extra = {h.GATEWAY: self.settings.id, h.CONN: str(conn.id)}
        return request_headers("text", user=conn.user, room=CHAT_ROOM, extra=extra)

    async def _receive(
        self, conn: Connection, receive, scope: dict | None = None, may_send: bool = True
    ) -> None:
        """The receiver: each frame from the client, in order, to its worker. Frames for
        batched routes are taken as they are parsed while this task waits with none in
        hand (the frame hook, :meth:`BoundedReadProtocol.send_receive_event_to_app
        <gateway.protocols.BoundedReadProtocol.send_receive_event_to_app>`); the rest,
        and all of them without the hook, come through ``receive()``."""
        spec = self.spec
        hub = self.hub
        subscription = self.settings.reply_mode == "subscription"
        request = hub.request if subscription else hub.request_future
        user, room = conn.user, conn.room
        # ordered routes (the tutorial chat): the worker keeps a connection's requests
        # in order by these, as for its join and leave
        ordered = {h.GATEWAY: self.settings.id, h.CONN: str(conn.id)}
        capacity = conn.capacity
        limiter = conn.limiter
        waiting = stopped = False  # waiting: in receive() with no frame in hand
        forbidden = f"not permitted to publish to {room}"

        def admit(text: bool, data: bytes) -> Route | None:
            """Count a frame and apply the rate limit: the route to request, or None
            if it was answered here (refused, or a frame type the endpoint has no
            route for). A refusal that closes the connection sets ``stopped``."""
            nonlocal stopped
            if text:
                self.in_text.inc()
                self.in_text_bytes.inc(len(data))
            else:
                self.in_binary.inc()
                self.in_binary_bytes.inc(len(data))
            if not limiter.allow(len(data)):
                stopped = self.refuse_now(conn)
                return None
            conn.active = limiter.frames.stamp
            route = spec.text if text else spec.binary
            if route is None:
                hub.answer_locally(conn, spec.wrong_frame("text" if text else "binary"))
            return route

        def on_frame(text: bool, data: bytes) -> bool:
            if stopped:
                return True  # closing for the rate limit: nothing more is processed
            if not waiting or not capacity.is_set():
                return False
            route = spec.text if text else spec.binary
            if route is None or not hub.batches(route, len(data)):
                return False
            if text:
                try:
                    data.decode()  # invalid UTF-8: uvicorn's path closes 1007
                except UnicodeDecodeError:
                    return False
            if admit(text, data) is not None:
                headers = request_headers("text" if text else "binary", user=user, room=room)
                hub.submit(conn, route, data, headers, received=time.perf_counter())
            return True

        hooked = subscription and may_send
        set_hook = (scope or {}).get("extensions", {}).get(FRAME_HOOK) if hooked else None
        if set_hook is not None:
            set_hook(on_frame)
        try:
            while True:
                if not capacity.is_set():
                    await capacity.wait()
                waiting = True
                message = await receive()
                waiting = False
                if not stopped and not capacity.is_set():  # the hook filled it meanwhile
                    await capacity.wait()
                if stopped or message["type"] != "websocket.receive":
                    break  # closing for the rate limit, or websocket.disconnect
                received = time.perf_counter()
                text = message.get("text")
                data = text.encode() if text is not None else message.get("bytes") or b""
                route = admit(text is not None, data)
                if route is not None and not may_send:  # /ws/chat, a token without publish
                    hub.answer_locally(conn, WireError(ErrorCode.FORBIDDEN, forbidden))
                elif route is not None:
                    frame = "binary" if text is None else "text"
                    extra = ordered if route.ordered else None
                    headers = request_headers(frame, user=user, room=room, extra=extra)
                    await request(conn, route, data, headers, received=received)
                elif stopped:
                    break
        finally:
            if set_hook is not None:
                set_hook(None)
        if stopped:  # the sender writes the close frame, then both tasks end
            await anyio.sleep_forever()

    def wrote(self, message: dict[str, Any]) -> None:
        """Metrics of a message written to the socket, by the sender or directly."""
        pending = message.pop(HOP_KEY, None)  # on the last message of a reply
        text = message.get("text")
        if text is not None:
            self.out_text.inc()
            self.out_text_bytes.inc(text_bytes(text))
        elif message["type"] == "websocket.send":
            self.out_binary.inc()
            self.out_binary_bytes.inc(len(message["bytes"]))
        if pending is not None:
            self.hops.sent(pending)

    async def _send(
        self, conn: Connection, send, on_empty: Callable[[], None] | None = None
    ) -> None:
        """The sender: writes what ``conn.out`` holds, in order; ``on_empty`` is called
        each time the queue runs dry.

        If the peer is gone (a write fails: it closed, or the connection dropped), what
        is queued is discarded from then on, but the sender does not end: the receiver
        still hands on every frame the client sent before it went (uvicorn queues the
        disconnect after them), and ends the relay when it reaches the disconnect.

        A slow consumer (:meth:`Connection.slow`) cancels a write still waiting for the
        transport to drain: that message is dropped and the close frame comes next."""
        out = conn.out
        wake = conn.wake
        gone = False
        me = conn.sender = asyncio.current_task()
        try:
            while True:
                if not out:
                    if on_empty is not None:
                        on_empty()
                    wake.clear()
                    await wake.wait()
                    continue
                message = out.popleft()
                if not gone:
                    conn.busy = True  # until written: no direct write may overtake it
                    try:
                        await send(message)
                    except asyncio.CancelledError:
                        # Connection.slow() (it cleared conn.sender) gave up this write,
                        # which waited for a full transport to drain before it began:
                        # the message was dropped with the queue, the close frame is
                        # next. Any other cancellation stops the sender.
                        if conn.sender is not None or me is None or me.uncancel():
                            raise
                        conn.sender = me
                        continue
                    except Exception:
                        gone = True
                        conn.direct = None  # no direct writes either
                    else:
                        self.wrote(message)
                    finally:
                        conn.busy = False
                conn.sent(message)
                if message["type"] == "websocket.close":
                    return
        finally:
            conn.sender = None
