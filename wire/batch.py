"""Batches: the frames a gateway receives in one event-loop pass for the same stateless
operation, sent to a worker as one NATS message, and answered with one.

Per-frame NATS work (a publish, a parse, a callback, a reply) is most of a relayed
frame's CPU; under load a gateway receives many frames per loop pass, so it sends those
for one operation together. A pass with a single frame sends it as an ordinary request
(:mod:`wire.frames`), so a quiet gateway's latency is unchanged. Only the tutorial's
stateless, idempotent operations (:data:`BATCH_OPS`) are batched.

Request (gateway -> ``sb.svc.<service>.batch``, reply to ``sb.gw.<gateway>.b.<n>``, where
``n`` numbers the gateway's batches: it remembers whose frames batch ``n`` holds, so
even a reply without headers, such as the server's 503 "no responders", reaches them).
Frames stay raw bytes; per-frame metadata travels in headers, one entry per frame, in
payload order::

    Sb-Op          the operation of every frame in the batch, e.g. ``echo``
    Sb-Sent-At     wall clock at gateway publish, integer nanoseconds
    Sb-Keys        "<conn>.<seq> <conn>.<seq> ...": whose request each frame is
    Sb-Traces      "<traceparent> <traceparent> ...": each frame's own trace
    payload        frame*, the layout of wire.frames: kind:u8 length:u32 data
                   (kind ``t`` or ``b``: the WebSocket frame type received)

Reply (worker -> the request's reply subject)::

    Sb-Handled-At  wall clock when the last frame was handled
    Sb-Errors      only if some frames failed: "<index>:<code>:<description>" per failed
                   frame, space-separated, description percent-encoded
    payload        item*, one per frame, in order; item := length:u32 reply (a wire.frames reply
                   payload; empty for a failed frame)

A batch the worker cannot read at all is answered with the ordinary error headers
(``Nats-Service-Error``): every frame in it gets that error.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote

from wire import headers as h
from wire.errors import ErrorCode, WireError
from wire.frames import BINARY, TEXT, FrameDecodeError, encode_raw_frames, raw_frames
from wire.subjects import Op

OP = "Sb-Op"
KEYS = "Sb-Keys"
TRACES = "Sb-Traces"
ERRORS = "Sb-Errors"

BATCH_OPS = frozenset({Op.ECHO, Op.JSON, Op.INSPECT, Op.MIXED})

_LENGTH = struct.Struct(">I")
_KINDS: dict[bytes, Literal["text", "binary"]] = {TEXT: "text", BINARY: "binary"}


class BatchDecodeError(ValueError):
    """A batch whose headers and payload do not follow the layout above."""


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One frame of a batch, as the worker sees it."""

    data: bytes
    frame: Literal["text", "binary"]
    traceparent: str | None


def key(conn: int, seq: int) -> str:
    return f"{conn}.{seq}"


# -- request ---------------------------------------------------------------------------


def encode_request(
    op: Op, items: Sequence[tuple[str, bytes, bool, str]]
) -> tuple[bytes, dict[str, str]]:
    """Payload and headers of a batch of ``(key, data, is_text, traceparent)``."""
    payload = encode_raw_frames((TEXT if text else BINARY, data) for _, data, text, _ in items)
    headers = {
        OP: str(op),
        h.SENT_AT: h.now_ns(),
        KEYS: " ".join(item[0] for item in items),
        TRACES: " ".join(item[3] for item in items),
    }
    return payload, headers


def decode_request(payload: bytes, headers: Mapping[str, str]) -> tuple[Op, list[BatchItem]]:
    """The operation and the frames of a batch request."""
    try:
        op = Op(headers.get(OP, ""))
    except ValueError:
        raise BatchDecodeError(f"unknown operation {headers.get(OP)!r}") from None
    if op not in BATCH_OPS:
        raise BatchDecodeError(f"operation {op} is not batched")
    keys = headers.get(KEYS, "").split()
    if not keys:
        raise BatchDecodeError("empty batch")
    traces = headers.get(TRACES, "").split()
    if len(traces) != len(keys):
        traces = [None] * len(keys)  # type: ignore[list-item]
    items: list[BatchItem] = []
    try:
        for kind, data in raw_frames(payload):
            frame = _KINDS.get(kind)
            if frame is None or len(items) == len(keys):
                raise BatchDecodeError("unknown frame kind or more frames than keys")
            items.append(BatchItem(data, frame, traces[len(items)]))
    except FrameDecodeError as exc:
        raise BatchDecodeError(str(exc)) from None
    if len(items) != len(keys):
        raise BatchDecodeError(f"{len(keys)} keys, {len(items)} frames")
    return op, items


# -- reply -----------------------------------------------------------------------------


def encode_reply(results: Iterable[bytes | WireError]) -> tuple[bytes, dict[str, str]]:
    """Payload and headers of the reply to a batch: ``results`` in the batch's order,
    each frame's reply bytes or its error."""
    parts: list[bytes] = []
    failed: list[str] = []
    for index, result in enumerate(results):
        if isinstance(result, WireError):
            failed.append(f"{index}:{result.code}:{quote(result.description, safe='')}")
            result = b""
        parts.append(_LENGTH.pack(len(result)))
        parts.append(result)
    headers = {h.HANDLED_AT: h.now_ns()}
    if failed:
        headers[ERRORS] = " ".join(failed)
    return b"".join(parts), headers


def decode_reply(
    payload: bytes, headers: Mapping[str, str] | None, count: int
) -> list[bytes | WireError]:
    """Each of the ``count`` frames' reply bytes or error, in the batch's order. Raises
    FrameDecodeError."""
    errors: dict[int, WireError] = {}
    for entry in (headers or {}).get(ERRORS, "").split():
        try:
            index, code, description = entry.split(":", 2)
            position = int(index)
        except ValueError as exc:
            raise FrameDecodeError(f"bad {ERRORS} entry") from exc
        try:
            error_code = ErrorCode(code)
        except ValueError:
            error_code = ErrorCode.INTERNAL
        errors[position] = WireError(error_code, unquote(description, errors="replace"))
    out: list[bytes | WireError] = []
    view = memoryview(payload)
    pos, end = 0, len(payload)
    while pos < end:
        if end - pos < 4:
            raise FrameDecodeError(f"truncated batch item at byte {pos}")
        (length,) = _LENGTH.unpack_from(view, pos)
        pos += 4
        if end - pos < length:
            raise FrameDecodeError(f"batch item at byte {pos - 4} claims {length} bytes")
        index = len(out)
        out.append(errors.get(index) or bytes(view[pos : pos + length]))
        pos += length
    if len(out) != count:
        raise FrameDecodeError(f"{count} frames, {len(out)} replies")
    return out
