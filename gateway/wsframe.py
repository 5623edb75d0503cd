"""Server-to-client WebSocket data frames, encoded by the gateway itself so that one
encoding serves every socket a room event goes to, and written straight to the socket
when nothing is queued ahead of it (:meth:`gateway.connection.Connection.write_now`).

Byte layout (RFC 6455 section 5.2; frames a server sends are never masked, and these are
never fragmented)::

    byte 0      0x80 (FIN) | opcode: 0x1 text, 0x2 binary
    byte 1      payload length L, if L < 126
                126, then L as a big-endian u16, if L < 65,536
                127, then L as a big-endian u64, otherwise
    ...         the payload: UTF-8 text or the bytes, as they are

Only for connections without extensions: with permessage-deflate agreed, uvicorn's
``send`` compresses each message and this path is not taken.
"""

from __future__ import annotations

import struct
from typing import Any

DIRECT_WRITE = "switchboard.direct_write"  # ASGI scope extension: write(frame) -> bool
FRAME_KEY = "sb.frame"  # cached on an ASGI message: its encoded frame

_U16 = struct.Struct("!BBH")
_U64 = struct.Struct("!BBQ")


def header(opcode: int, length: int) -> bytes:
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _U16.pack(first, 126, length)
    return _U64.pack(first, 127, length)


def encode(message: dict[str, Any]) -> bytes | None:
    """The frame for an ASGI ``websocket.send`` message (cached on it: a room event's
    message is shared by all its recipients), or None for any other message."""
    frame = message.get(FRAME_KEY)
    if frame is not None:
        return frame
    if message["type"] != "websocket.send":
        return None
    text = message.get("text")
    if text is not None:
        data = text.encode()
        frame = header(0x1, len(data)) + data
    else:
        data = message.get("bytes") or b""
        frame = header(0x2, len(data)) + data
    message[FRAME_KEY] = frame
    return frame
