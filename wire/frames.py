"""Typed messages between gateway and workers, and their byte layout.

Request (gateway -> worker): the NATS payload is the WebSocket frame's bytes, unchanged
(UTF-8 for a text frame). Metadata is in headers (:mod:`wire.headers`) and becomes a
:class:`Request`.

Reply (worker -> gateway): zero or more WebSocket frames to send, in order, back to the
connection that asked. The payload is the frames concatenated::

    reply := frame*
    frame := kind:u8  length:u32 (big-endian)  data:length bytes
    kind  := 0x74 't' text frame, data is UTF-8
           | 0x62 'b' binary frame, data is raw bytes

An empty payload means "nothing to send". Binary data is never base64'd or wrapped.

Room events (chat -> every gateway, ``sb.room.<room>``) carry the same layout.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote

from wire import headers as h

_HEADER = struct.Struct(">cI")
TEXT = b"t"  # frame kinds
BINARY = b"b"


@dataclass(frozen=True, slots=True)
class TextFrame:
    data: str
    kind: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class BinaryFrame:
    data: bytes
    kind: Literal["binary"] = "binary"


Frame = TextFrame | BinaryFrame


class FrameDecodeError(ValueError):
    """A reply payload that does not follow the layout above."""


def encode_raw_frames(frames: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``(kind, data)`` pairs (:data:`TEXT`, :data:`BINARY`) in the layout above."""
    parts: list[bytes] = []
    for kind, data in frames:
        parts.append(_HEADER.pack(kind, len(data)))
        parts.append(data)
    return b"".join(parts)


def encode_frames(frames: Iterable[Frame]) -> bytes:
    return encode_raw_frames(
        (TEXT, f.data.encode()) if f.kind == "text" else (BINARY, f.data) for f in frames
    )


def encode_text(text: str) -> bytes:
    """One text frame: the common reply, without building a list."""
    data = text.encode()
    return _HEADER.pack(TEXT, len(data)) + data


def raw_frames(payload: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(kind, data)`` of each frame, text left as bytes; raises FrameDecodeError for a
    truncated payload (the kind is not checked)."""
    view = memoryview(payload)
    pos, end = 0, len(payload)
    while pos < end:
        if end - pos < 5:
            raise FrameDecodeError(f"truncated frame header at byte {pos}")
        kind, length = _HEADER.unpack_from(view, pos)
        pos += 5
        if end - pos < length:
            raise FrameDecodeError(f"frame at byte {pos - 5} claims {length} bytes")
        yield kind, bytes(view[pos : pos + length])
        pos += length


def decode_frames(payload: bytes) -> list[Frame]:
    frames: list[Frame] = []
    for kind, data in raw_frames(payload):
        if kind == TEXT:
            try:
                frames.append(TextFrame(data.decode()))
            except UnicodeDecodeError as exc:
                raise FrameDecodeError("text frame is not UTF-8") from exc
        elif kind == BINARY:
            frames.append(BinaryFrame(data))
        else:
            raise FrameDecodeError(f"unknown frame kind {kind!r}")
    return frames


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer when it needs headers besides the payload (room sequences)."""

    payload: bytes
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Request:
    """One frame as a worker sees it."""

    data: bytes
    frame: Literal["text", "binary"]
    user: str | None = None
    room: str | None = None
    traceparent: str | None = None
    sent_at: str | None = None
    headers: Mapping[str, str] | None = None
    received: int | None = None  # wall-clock ns when the worker took the request

    @property
    def deadline(self) -> float | None:
        """``time.monotonic()`` after which the gateway no longer waits for the reply
        (its ``Sb-Timeout``, counted from :attr:`received`): long work stops there.
        Worked out when a handler asks, not for every frame."""
        timeout = h.timeout_seconds((self.headers or {}).get(h.TIMEOUT))
        if timeout is None:
            return None
        received = self.received
        waited = 0.0 if received is None else max(0, time.time_ns() - received) / 1e9
        return time.monotonic() + timeout - waited

    def header(self, name: str) -> str | None:
        """A header the gateway percent-encoded (client-chosen values), decoded."""
        return _unquote((self.headers or {}).get(name))

    def int_header(self, name: str) -> int | None:
        raw = (self.headers or {}).get(name)
        # isascii: str.isdigit() is also true for digits int() refuses, such as "²";
        # at most 20 digits (a u64): int() refuses over 4300
        ok = raw is not None and len(raw) <= 20 and raw.isascii() and raw.isdigit()
        return int(raw) if ok else None

    @property
    def text(self) -> str:
        """The frame as text; raises UnicodeDecodeError for bytes that are not UTF-8."""
        return self.data.decode()


def request_headers(
    frame: Literal["text", "binary"],
    *,
    user: str | None = None,
    room: str | None = None,
    traceparent: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    hdrs = {
        h.SENT_AT: h.now_ns(),
        h.FRAME: h.FRAME_TEXT if frame == "text" else h.FRAME_BINARY,
        h.TRACEPARENT: traceparent or h.new_traceparent(),
    }
    # Client-chosen values are percent-encoded: a header value cannot then carry CR/LF
    # (header injection) or lose leading/trailing white space to header parsing.
    if user is not None:
        hdrs[h.USER] = quote(user, safe="")
    if room is not None:
        hdrs[h.ROOM] = quote(room, safe="")
    if extra:
        hdrs.update(extra)
    return hdrs


def quoted(value: str) -> str:
    """Percent-encode a client-chosen header value (see :func:`request_headers`)."""
    return quote(value, safe="")


def _unquote(value: str | None) -> str | None:
    return None if value is None else unquote(value, errors="strict")


def decode_request(
    data: bytes, headers: Mapping[str, str] | None, received: int | None = None
) -> Request:
    """The request in a NATS message; ``received`` (wall-clock ns when it arrived) dates
    its deadline (:attr:`Request.deadline`)."""
    hdrs = headers or {}
    return Request(
        data=data,
        frame="binary" if hdrs.get(h.FRAME) == h.FRAME_BINARY else "text",
        user=_unquote(hdrs.get(h.USER)),
        room=_unquote(hdrs.get(h.ROOM)),
        traceparent=hdrs.get(h.TRACEPARENT),
        sent_at=hdrs.get(h.SENT_AT),
        headers=hdrs,
        received=received,
    )
