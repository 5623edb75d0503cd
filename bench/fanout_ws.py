"""A lean WebSocket client for the fan-out benchmark's receivers and publisher.

An ``asyncio.Protocol`` (RFC 6455, client side, no extensions, so no
permessage-deflate): the handshake written by hand, server frames parsed straight
from the bytes received. Every text frame goes to ``on_text(payload, now_ns)``, where
``now_ns`` is ``time.time_ns()`` taken once when the chunk holding it was read: the
moment the frame reached this process. No task, future or queue per frame, so that
100 receivers cost their servers' side as little CPU as possible on a 2-core machine
(the same client serves all three systems of the benchmark).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import Callable
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

OnText = Callable[[bytes, int], None]


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One masked, final frame (clients must mask: RFC 6455 5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    if not n:
        return head + mask
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


class WsClient(asyncio.Protocol):
    def __init__(self, on_text: OnText) -> None:
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buf = bytearray()
        self._key = b""
        self._fragments: list[bytes] | None = None

    # -- opening -------------------------------------------------------------------
    @classmethod
    async def connect(cls, url: str, on_text: OnText, limit: float = 20.0) -> WsClient:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: cls(on_text), host, port), limit
        )
        proto._handshake(f"{host}:{port}", target)
        await asyncio.wait_for(proto.opened, limit)
        return proto

    def _handshake(self, host: str, target: str) -> None:
        self._key = base64.b64encode(os.urandom(16))
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert self.transport is not None
        self.transport.write(request.encode())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (uvloop's is not a subclass)

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionError(f"connection lost: {exc}")
        if not self.opened.done():
            self.opened.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(None)

    def _open(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        fields = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])
        }
        accept = base64.b64encode(hashlib.sha1(self._key + GUID).digest()).decode()
        if not head[0].startswith("HTTP/1.1 101") or fields.get("sec-websocket-accept") != accept:
            self.opened.set_exception(ConnectionError(f"handshake refused: {head[0]}"))
            assert self.transport is not None
            self.transport.close()
            return False
        self.opened.set_result(None)
        return True

    # -- frames --------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self._buf
        buf += data
        if not self.opened.done() and not self._open():
            return
        pos, size = 0, len(buf)
        on_text = self.on_text
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, at = b1 & 0x7F, pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length, at = int.from_bytes(buf[at : at + 2], "big"), at + 2
            elif length == 127:
                if size - pos < 10:
                    break
                length, at = int.from_bytes(buf[at : at + 8], "big"), at + 8
            if b1 & 0x80:
                raise ConnectionError("the server masked a frame")
            end = at + length
            if end > size:
                break
            payload = bytes(buf[at:end])
            pos = end
            opcode = b0 & 0x0F
            if opcode == OP_TEXT and b0 & 0x80:
                on_text(payload, now)
            else:
                self._control(b0, opcode, payload, now)
        del buf[:pos]

    def _control(self, b0: int, opcode: int, payload: bytes, now: int) -> None:
        if opcode == OP_PING:
            self.write(client_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(client_frame(payload[:2], OP_CLOSE))
                self.transport.close()
        elif opcode in (OP_TEXT, OP_BINARY):  # the first of several fragments
            self._fragments = [payload] if opcode == OP_TEXT else None
        elif opcode == OP_CONT and self._fragments is not None:
            self._fragments.append(payload)
            if b0 & 0x80:
                whole, self._fragments = b"".join(self._fragments), None
                self.on_text(whole, now)

    # -- sending -------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Raw bytes: one or more frames made with :func:`client_frame`."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_text(self, text: str | bytes) -> None:
        self.write(client_frame(text.encode() if isinstance(text, str) else text))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame((1000).to_bytes(2, "big"), OP_CLOSE))
            self.transport.close()
