"""NATS header names. Frame bytes are the payload; everything else travels here.

Request (gateway -> worker):
    Sb-Sent-At     wall clock at gateway publish, integer nanoseconds since the epoch
    Sb-Frame       ``t`` (text) or ``b`` (binary): the WebSocket frame type received
    Sb-User        the connection's user name (chat), percent-encoded UTF-8
    Sb-Room        the room (chat), percent-encoded UTF-8
    traceparent    W3C trace context, one trace id per frame
    Sb-Timeout     milliseconds the gateway still waits for the reply when it publishes
                   (requests sent on their own, not batches): a worker that has not
                   started one by then answers 408 instead (services/scheduler.py)
    Sb-Gateway, Sb-Conn, Sb-Request-Id, Sb-Since, Sb-Before, Sb-Limit   rooms (see below)
    Sb-File, Sb-Offset, Sb-End, Sb-Cursor, Sb-Count, Sb-Deliver, Sb-Control   files
                   (wire/files.py)

Reply (worker -> gateway): payload as laid out in :mod:`wire.frames`;
errors as nats.micro sends them (``Nats-Service-Error``, ``Nats-Service-Error-Code``).
"""

from __future__ import annotations

import math
import random
import time

SENT_AT = "Sb-Sent-At"
FRAME = "Sb-Frame"
USER = "Sb-User"
ROOM = "Sb-Room"
HANDLED_AT = "Sb-Handled-At"
GATEWAY = "Sb-Gateway"  # the gateway id of the connection (rooms, presence)
CONN = "Sb-Conn"  # the connection id within its gateway
# a /ws/v2 room membership within its gateway: one per join, so that leaving and joining
# again on one connection are new join/leave events, not duplicates of the first ones
MEMBER = "Sb-Member"
INSTANCE = "Sb-Instance"  # on a reply to an ordered op: the replica that handled it
REQUEST_ID = "Sb-Request-Id"  # the client's request id (v2 "id"), percent-encoded
SEQ = "Sb-Seq"  # a room event's sequence number; on a join/history reply: the last one
FIRST_SEQ = "Sb-First-Seq"  # on a reply carrying room events: the seq of the first
SINCE = "Sb-Since"  # join: the last seq the client saw
BEFORE = "Sb-Before"  # history: only events before this seq
LIMIT = "Sb-Limit"  # history: at most this many events
MORE = "Sb-More"  # on a reply carrying room events: "1" if cut short, more follow
# files (wire/files.py, services/binary/files.py)
FILE = "Sb-File"  # a stored file's or an upload's id
OFFSET = "Sb-Offset"  # byte offset of a chunk's first byte in its file
END = "Sb-End"  # byte offset after a chunk (stored chunks); durable upload offset (acks)
CURSOR = "Sb-Cursor"  # download: stream sequence where the next batch starts
COUNT = "Sb-Count"  # download: at most this many chunks in one batch
DELIVER = "Sb-Deliver"  # download: the gateway's inbox that nats-server sends the chunks to
CONTROL = "Sb-Control"  # on an upload subject: "sync" instead of a chunk
TRACEPARENT = "traceparent"
TIMEOUT = "Sb-Timeout"  # ms the caller still waits for the reply, as it publishes

ERROR = "Nats-Service-Error"
ERROR_CODE = "Nats-Service-Error-Code"
STATUS = "Status"  # set by the NATS server itself, e.g. 503 no responders, 204 end of batch
STREAM_SEQUENCE = "Nats-Sequence"  # set by nats-server on a stored message it sends (direct get)

_bits = random.getrandbits

FRAME_TEXT = "t"
FRAME_BINARY = "b"


def new_traceparent() -> str:
    """A fresh W3C ``traceparent``: version 00, random trace and span ids, sampled.

    From ``random`` (as OpenTelemetry's SDK does), not ``os.urandom``: ids must be unique,
    not secret, and this runs for every frame (no system call per frame). A zero id,
    which W3C forbids, is replaced."""
    trace, span = _bits(128) or 1, _bits(64) or 1
    return f"00-{trace:032x}-{span:016x}-01"


def trace_id(traceparent: str | None) -> str | None:
    """The 32-hex-digit trace id inside a ``traceparent``, or None if malformed."""
    if not traceparent or len(traceparent) != 55 or traceparent[2] != "-":
        return None
    return traceparent[3:35]


def now_ns() -> str:
    return str(time.time_ns())


def timeout_ms(seconds: float) -> str:
    """An ``Sb-Timeout`` value: ``seconds`` in whole milliseconds, rounded up, at least 1
    (a worker should give up no earlier than its caller)."""
    return str(max(1, math.ceil(seconds * 1000)))


def timeout_seconds(value: str | None) -> float | None:
    """Seconds of an ``Sb-Timeout`` value; None when absent or malformed."""
    if not value:
        return None
    try:
        seconds = int(value) / 1000
    except (ValueError, OverflowError):  # not a number, or over a float's range
        return None
    return seconds if seconds > 0 else None


def age_seconds(stamp: str | None, now: int | None = None) -> float | None:
    """Seconds since a ``Sb-Sent-At`` stamp, or None when absent or malformed."""
    if not stamp:
        return None
    try:
        sent = int(stamp)
        return max(0.0, ((now or time.time_ns()) - sent) / 1e9)
    except (ValueError, OverflowError):  # not a number; a number too large for a float
        return None
