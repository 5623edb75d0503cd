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

Frames a client sends have the same header with the mask bit (0x80 in byte 1) set and
four mask bytes after the length; :func:`cut` reads only their lengths, to tell the
gateway's reader where each frame ends (:mod:`gateway.protocols`).
"""

from __future__ import annotations

import struct
from typing import Any

DIRECT_WRITE = "switchboard.direct_write"  # ASGI scope extension: write(frame) -> bool
# ASGI scope extension: set(hook | None), hook(text: bool, data: bytes) -> handled (see
# gateway.protocols.BoundedReadProtocol.send_receive_event_to_app)
FRAME_HOOK = "switchboard.frame_hook"
# ASGI scope extension: hang_up() -> drop the connection in a while if the peer has not
# read what was written by then (gateway.protocols.BoundedReadProtocol.hang_up_later)
HANG_UP = "switchboard.hang_up"
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


def cut(buf: bytes | memoryview, left: int, limit: int) -> tuple[int, int]:
    """Where to cut a stream of client frames for the next parse, given ``left``, the
    bytes of a frame begun earlier that ``buf`` still owes (0 at a frame boundary).

    Returns ``(n, left)``: parse ``buf[:n]`` next, after which ``left`` bytes of the
    current frame are still to come. ``buf[:n]`` is the rest of a frame already begun,
    else whole frames totalling at most ``limit`` bytes, else one frame (however large,
    up to the end of ``buf``). ``n == 0``: ``buf`` starts with a header too short to give
    the frame's length, to be completed by the next read. No cut splits the bytes that
    give a length, so the caller always knows where the current frame ends."""
    size = len(buf)
    if left:
        n = left if left < size else size
        return n, left - n
    end = 0
    while end < size:
        if end + 2 > size:
            break
        second = buf[end + 1]
        length = second & 0x7F
        head = 6 if second & 0x80 else 2
        if length == 126:  # the layouts header() writes, read back
            if end + _U16.size > size:
                break
            length = _U16.unpack_from(buf, end)[2]
            head += 2
        elif length == 127:
            if end + _U64.size > size:
                break
            length = _U64.unpack_from(buf, end)[2]
            head += 8
        after = end + head + length
        if end and after > limit:
            break
        end = after
        if end >= limit:
            break
    if end > size:
        return size, end - size
    return end, 0


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
