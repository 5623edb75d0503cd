"""The ``/ws/v2`` protocol: JSON text frames, each one envelope.

Layout (client -> server)::

    {"type": <ClientType>, "id": "<client request id>", "room": "<room>", "payload": {...}}

Layout (server -> client)::

    {"type": <ServerType>, "id": "<request id, on replies>", "room": "<room>",
     "seq": <room sequence number, on room events>, "payload": {...}}

One dataclass per client frame kind, told apart by its ``type`` Literal;
:func:`decode_client` turns a frame into one of them or raises ``WireError(400)``. The
server's frames are built by the functions at the bottom. ``docs/asyncapi.yaml``
documents both directions and a test keeps it in step with the Literals here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson

from wire.errors import ErrorCode, WireError
from wire.subjects import is_token

ClientType = Literal["join", "leave", "publish", "history", "presence", "ping"]
ServerType = Literal[
    "ack", "error", "message", "join", "leave", "presence", "history", "pong", "reconnect"
]
EventType = Literal["message", "join", "leave"]  # stored, sequenced room events

CLIENT_TYPES: tuple[str, ...] = get_args(ClientType)
SERVER_TYPES: tuple[str, ...] = get_args(ServerType)

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_HISTORY = 500
_REQUEST_ID = re.compile(r"[!-~]{1,64}")  # printable ASCII, no spaces


@dataclass(frozen=True, slots=True)
class Join:
    id: str
    room: str
    since: int | None = None
    type: Literal["join"] = "join"


@dataclass(frozen=True, slots=True)
class Leave:
    id: str
    room: str
    type: Literal["leave"] = "leave"


@dataclass(frozen=True, slots=True)
class Publish:
    id: str
    room: str
    payload: bytes  # a JSON object, re-encoded compactly
    type: Literal["publish"] = "publish"


@dataclass(frozen=True, slots=True)
class History:
    id: str
    room: str
    before: int | None = None
    limit: int = 50
    type: Literal["history"] = "history"


@dataclass(frozen=True, slots=True)
class Presence:
    id: str
    room: str
    type: Literal["presence"] = "presence"


@dataclass(frozen=True, slots=True)
class Ping:
    id: str
    type: Literal["ping"] = "ping"


ClientMessage = Join | Leave | Publish | History | Presence | Ping


def publish_body(payload: dict[str, Any]) -> bytes:
    """A publish's payload as the bytes chat gets (``/ws/v2`` and the HTTP API alike):
    ``BAD_REQUEST`` if too deeply nested to encode, ``TOO_LARGE`` over
    :data:`MAX_PAYLOAD_BYTES`."""
    try:
        # Encoded one level down, as chat stores it inside the event frame: parsed (1024
        # levels) is not enough, orjson encodes 254 at most, the event included.
        body = orjson.dumps([payload])[1:-1]
    except orjson.JSONEncodeError:
        raise _bad("payload nested too deeply") from None
    if len(body) > MAX_PAYLOAD_BYTES:
        raise WireError(ErrorCode.TOO_LARGE, f"payload over {MAX_PAYLOAD_BYTES} bytes")
    return body


def _bad(message: str) -> WireError:
    return WireError(ErrorCode.BAD_REQUEST, message)


def _seq(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 2**53:
        raise _bad(f"{name} must be a non-negative integer")
    return value


def request_id(frame: Any) -> str | None:
    """The ``id`` of a frame if it is a usable request id (for error replies)."""
    if isinstance(frame, dict):
        rid = frame.get("id")
        if isinstance(rid, str) and _REQUEST_ID.fullmatch(rid):
            return rid
    return None


def request_id_of(text: str | bytes) -> str | None:
    """The usable request id of a raw frame, if it has one (for an error reply to a frame
    refused before or while decoding it)."""
    try:
        return request_id(orjson.loads(text))
    except orjson.JSONDecodeError:
        return None


def decode_client(data: str | bytes) -> ClientMessage:
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise _bad("invalid JSON") from None
    if not isinstance(frame, dict):
        raise _bad("a frame must be a JSON object")
    kind = frame.get("type")
    if kind not in CLIENT_TYPES:
        raise _bad(f"unknown type {kind!r}" if isinstance(kind, str) else "missing type")
    rid = request_id(frame)
    if rid is None:
        raise _bad("id must be 1-64 printable ASCII characters")
    if kind == "ping":
        return Ping(rid)
    room = frame.get("room")
    if not isinstance(room, str) or not is_token(room):
        raise _bad("room must be 1-64 characters of [A-Za-z0-9_-]")
    payload = frame.get("payload", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise _bad("payload must be a JSON object")
    match kind:
        case "join":
            return Join(rid, room, _seq(payload.get("since"), "since"))
        case "leave":
            return Leave(rid, room)
        case "publish":
            return Publish(rid, room, publish_body(payload))
        case "history":
            limit = _seq(payload.get("limit", 50), "limit")
            if not limit or limit > MAX_HISTORY:
                raise _bad(f"limit must be 1-{MAX_HISTORY}")
            return History(rid, room, _seq(payload.get("before"), "before"), limit)
        case _:
            return Presence(rid, room)


# -- server frames -------------------------------------------------------------------


def _dump(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def ack(rid: str, room: str | None = None, **payload: Any) -> str:
    frame: dict[str, Any] = {"type": "ack", "id": rid}
    if room is not None:
        frame["room"] = room
    frame["payload"] = payload
    return _dump(frame)


def error(rid: str | None, code: str, message: str) -> str:
    frame: dict[str, Any] = {"type": "error"}
    if rid is not None:
        frame["id"] = rid
    frame["payload"] = {"code": code, "message": message}
    return _dump(frame)


def event(kind: EventType, room: str, seq: int, payload: dict[str, Any]) -> str:
    return _dump({"type": kind, "room": room, "seq": seq, "payload": payload})


def reply(kind: ServerType, rid: str, room: str, payload: dict[str, Any]) -> str:
    return _dump({"type": kind, "id": rid, "room": room, "payload": payload})


def pong(rid: str) -> str:
    return _dump({"type": "pong", "id": rid, "payload": {}})


def reconnect(reason: str, after_ms: int) -> str:
    return _dump({"type": "reconnect", "payload": {"reason": reason, "after_ms": after_ms}})
