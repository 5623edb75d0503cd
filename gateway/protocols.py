"""uvicorn's protocols, as the gateway runs them (``python -m gateway`` passes these classes
to uvicorn): reads parsed in bounded slices, a deadline for the HTTP request, and a direct
write path for frames encoded once (:mod:`gateway.wsframe`)."""

from __future__ import annotations

from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.protocol import State
from websockets.server import ServerProtocol

from gateway.wsframe import DIRECT_WRITE, FRAME_HOOK, HANG_UP, cut

# -- reading: bounded parsing per event-loop turn -------------------------------------

PARSE_SLICE = 512  # bytes of small frames parsed per loop turn (~85 frames of 6 bytes)
LINGER = 2.0  # seconds a connection we closed may still send to us (see _linger)
# Pings a peer may send per second. Clients ping every few seconds at most (browsers
# never: they cannot); a peer past this is closed 1008. Each ping costs a pong write,
# outside every data-frame limit: a flood of them, unread, grew the gateway by 20 MB/s.
MAX_PINGS_PER_SECOND = 50


class BoundedReadProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, with each read parsed in slices cut at
    frame boundaries (:func:`gateway.wsframe.cut`): small frames up to
    :data:`PARSE_SLICE` bytes at a time, the next slice only once the app has taken every
    message the previous one produced; the rest of a large frame in one go.

    uvicorn pauses reading once a message is queued, but parses a whole read at once: one
    256 KiB read of tiny frames from a flooding client is ~24,000 frames parsed and queued
    in one go (~0.3 s of this loop, for every connection). Sliced, the flooder costs at
    most one slice's worth of work per loop turn, and the rate limiter sees its frames one
    slice at a time. Cutting at frame boundaries (rather than every 512 bytes) keeps a
    large frame's bytes in as few parser calls as the reads bring them: a 256 KiB file
    chunk once cost 128 of them. Idle connections carry nothing extra (the state below
    is class defaults until a read needs it)."""

    _rest: memoryview | None = None  # read but not yet parsed; reading paused meanwhile
    _left = 0  # bytes of a frame begun (fed to the parser in part) still to come
    _head = b""  # an incomplete frame header at the end of a read, kept for the next
    _framing = False  # past the upgrade request (uvicorn's HTTP protocol hands it over)
    _lingering = False
    on_frame: Callable[[bool, bytes], bool] | None = None  # the app's hook (FRAME_HOOK)
    _pings = 0  # pings received in the second that began at _ping_second
    _ping_second = 0.0
    # permessage-deflate with context takeover (uvicorn's choice) keeps a zlib compressor
    # and decompressor per connection, ~34 KiB even while idle. Without it (the gateway's
    # default; SB_GATEWAY_DEFLATE_CONTEXT_TAKEOVER, set by ``python -m gateway``) both
    # sides compress each message on its own: nothing held between messages, a worse
    # ratio, and a zlib set-up per compressed message.
    context_takeover = True

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        if self.config.ws_per_message_deflate and not self.context_takeover:
            self.conn = ServerProtocol(
                extensions=[
                    ServerPerMessageDeflateFactory(
                        server_max_window_bits=12,
                        client_max_window_bits=12,
                        server_no_context_takeover=True,
                        client_no_context_takeover=True,
                        compress_settings={"memLevel": 5},
                    )
                ],
                max_size=self.config.ws_max_size,
                logger=self.conn.logger,
            )

    def data_received(self, data: bytes) -> None:
        if self.close_sent:  # after our close frame: dropped unparsed (see _linger)
            self._linger()
            return
        if not self._framing:  # the upgrade request, from uvicorn's HTTP protocol
            self._framing = True
            super().data_received(data)
            return
        if self._head:
            data = self._head + data
            self._head = b""
        pending = self._rest
        if pending is None:
            n, left = cut(data, self._left, PARSE_SLICE)
            if n == len(data):  # one slice: small frames, or more of a large one
                self._left = left
                super().data_received(data)
                return
        self._rest = memoryview(data if pending is None else bytes(pending) + data)
        self.transport.pause_reading()
        if pending is None:  # else a _feed is already due (scheduled, or by receive())
            self._feed()

    def _feed(self) -> None:
        while self._rest is not None:
            if self.close_sent or self.transport.is_closing():
                self._linger()
                return
            rest = self._rest
            n, self._left = cut(rest, self._left, PARSE_SLICE)
            if n == 0:  # an incomplete header: completed by the next read
                self._head = bytes(rest)
                self._rest = None
                break
            self._rest = rest[n:] if n < len(rest) else None
            super().data_received(rest[:n])  # type: ignore[arg-type]  # websockets takes views
            if self.conn.parser_exc is not None or self.close_sent:
                self._rest = None
                return
            if not self.queue.empty():
                break  # the app has work: the next slice once it has taken it
            if self._rest is not None:
                # the hook took the frames, or they were control frames (a read of pings
                # once ran to its end in one go: 130 ms of this loop per 256 KiB): the
                # rest next turn
                self.loop.call_soon(self._feed)
                return
        if self._rest is None:
            if self.queue.empty():
                self.read_paused = False
                self.transport.resume_reading()
            else:
                self.read_paused = True  # receive() resumes once the app has taken them

    def handle_events(self) -> None:
        super().handle_events()
        if self.handshake_initiated or self.conn.handshake_exc is None:
            return
        # websockets refused the upgrade request before it became a Request event (a
        # request line over 8 KiB: 414; header lines too long or too many: 431; not HTTP:
        # nothing). It queued its answer, but uvicorn only sends answers to Requests: the
        # connection would stay open forever, out of reach of the handshake deadline
        # (cancelled at the upgrade) and of the connection caps.
        self.handshake_initiated = self.handshake_complete = self.close_sent = True
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()

    def handle_connect(self, event) -> None:  # type: ignore[no-untyped-def]
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # none if the handshake was refused
        if scope is None:
            return
        scope["extensions"][FRAME_HOOK] = self.set_frame_hook
        scope["extensions"][HANG_UP] = self.hang_up_later
        if not self.conn.extensions:  # agreed by accept() above
            scope["extensions"][DIRECT_WRITE] = self.write_frame

    def set_frame_hook(self, hook: Callable[[bool, bytes], bool] | None) -> None:
        self.on_frame = hook

    def send_receive_event_to_app(self) -> None:
        """A whole message parsed: offered first to the app's frame hook, which handles
        it at once and returns True, or returns False and it is queued for the app's
        ``receive()`` as uvicorn does. The hook spares a relayed frame the ASGI queue, a
        wake-up of the receiving task and a pause and resume of reading. It is offered a
        frame only while nothing is queued, so frames stay in order. A read of many small
        frames still costs one slice per loop turn (:meth:`_feed` goes on with the next
        slice in a later turn once the hook has taken frames, reading paused meanwhile)."""
        hook = self.on_frame
        if hook is not None and not self.close_sent and self.queue.empty():
            frames = self.frames
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            if hook(self.curr_msg_data_type == "text", data):
                self.frames = []
                return
        super().send_receive_event_to_app()

    def handle_ping(self) -> None:
        """Pong, as uvicorn does, but not while the transport is above its high-water
        mark (the peer does not read; RFC 6455 5.5.3 lets us answer only the latest
        ping), and close 1008 past :data:`MAX_PINGS_PER_SECOND`."""
        pong = self.conn.data_to_send()
        now = self.loop.time()
        if now - self._ping_second >= 1.0:
            self._ping_second, self._pings = now, 0
        self._pings += 1
        if self._pings > MAX_PINGS_PER_SECOND:
            self._refuse(1008, "too many pings")
        elif self.writable.is_set():
            self.transport.write(b"".join(pong))

    def _refuse(self, code: int, reason: str) -> None:
        """Close with ``code`` now, as for a protocol error (the app hears of it)."""
        self.conn.fail(code, reason)
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self._linger()

    def write_frame(self, frame: bytes) -> bool:
        """Write an encoded data frame (:mod:`gateway.wsframe`) now, if the connection is
        open and its transport below its high-water mark. False means: send it the
        ordinary way, through the app's queue and ``send``, which waits for the transport
        to drain. (Offered only to connections without extensions: with
        permessage-deflate, ``send`` compresses.)"""
        if (
            self.close_sent
            or not self.writable.is_set()
            or self.conn.state is not State.OPEN
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(frame)
        return True

    def handle_parser_exception(self) -> None:
        """As uvicorn's (a frame over the size limit, bad UTF-8, a protocol error: the
        close frame with its code, 1009, 1007, 1002...), but closing with :meth:`_linger`."""
        assert self.conn.close_sent is not None
        close = self.conn.close_sent
        disconnect = {"type": "websocket.disconnect", "code": close.code, "reason": close.reason}
        self.queue.put_nowait(disconnect)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self._linger()

    def _linger(self) -> None:
        """Close a connection whose peer may still be sending, without losing our close
        frame. Closing a socket with unread data makes the kernel reset the connection,
        and a reset can destroy the close frame still in flight to the peer: the client of
        an oversize frame saw 1006 instead of 1009. So: our close frame, then FIN, then
        whatever the peer still sends is read and dropped unparsed, until it closes its
        side too or :data:`LINGER` seconds pass. (The timer is uvicorn's ``close_timer``:
        uvicorn then leaves the closing to it when the app returns.)"""
        self._rest = None
        transport = self.transport
        if self._lingering or transport.is_closing():
            return
        self._lingering = True
        self.stop_keepalive()
        if transport.can_write_eof():
            transport.write_eof()
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.close_timer = self.loop.call_later(LINGER, self._hang_up)
        self.read_paused = False
        transport.resume_reading()

    def _hang_up(self) -> None:
        """Close the transport; abort it if what we wrote is still unsent (the peer reads
        nothing: ``close()`` would wait for the buffer to drain, for good, holding it)."""
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    def hang_up_later(self, delay: float = LINGER) -> None:
        """The app is closing this socket: if the peer has not taken what was written
        within ``delay`` seconds (its close frame included), drop the connection. A
        send waiting for a peer that never reads would hold the socket, its queue and
        its room memberships for good."""
        self.loop.call_later(delay, self._hang_up_if_stuck)

    def _hang_up_if_stuck(self) -> None:
        if self.disconnected:
            return
        if self.transport.get_write_buffer_size() or not self.writable.is_set():
            self.transport.abort()  # connection_lost wakes the waiting send

    def keepalive_timeout(self) -> None:
        """As uvicorn's (close 1011 when a ping goes unanswered), then :meth:`_hang_up`
        after :data:`LINGER`: uvicorn's ``close()`` waits for a buffer the peer never
        drains."""
        super().keepalive_timeout()
        self.loop.call_later(LINGER, self._hang_up)

    async def receive(self):  # as uvicorn's, resuming reading only when no slice is left
        message = await self.queue.get()
        if self.queue.empty():
            if self._rest is not None:
                self.loop.call_soon(self._feed)
            elif self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
        return message

    def connection_lost(self, exc: Exception | None) -> None:
        self._rest = None
        self._head = b""
        self.on_frame = None
        super().connection_lost(exc)  # cancels close_timer


# -- handshake deadline ---------------------------------------------------------------


class HandshakeDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection that has not sent a complete
    request (the WebSocket upgrade, or any HTTP request) within :attr:`timeout` seconds.
    uvicorn itself waits forever: a client could hold sockets that never upgrade, out of
    reach of the connection caps, which count WebSockets. Set from
    ``SB_GATEWAY_HANDSHAKE_TIMEOUT`` by ``python -m gateway``."""

    timeout = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.timeout, self._expire)

    def handle_websocket_upgrade(self) -> None:
        self._deadline.cancel()  # the timer would keep this protocol object alive
        super().handle_websocket_upgrade()

    def _expire(self) -> None:
        transport = self.transport
        if self.cycle is None and transport.get_protocol() is self and not transport.is_closing():
            transport.close()  # no request yet (once upgraded, the transport has moved on)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        super().connection_lost(exc)
