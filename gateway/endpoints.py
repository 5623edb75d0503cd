"""The tutorial's endpoints: which worker operation serves each frame type, and the
shape an error takes on each endpoint (the gateway maps error codes; it never computes a
successful reply itself)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wire import envelope
from wire.batch import BATCH_OPS
from wire.errors import ErrorCode, WireError, overloaded
from wire.subjects import ORDERED_OPS, Op, Service, batch_subject, service_subject

Message = dict[str, Any]  # an ASGI "websocket.send" message


ErrorShape = Callable[[WireError, str, str | None], Message]


def _text_error(error: WireError, description: str, tag: str | None) -> Message:
    return {"type": "websocket.send", "text": f"Error: {description}"}


def _status_error(error: WireError, description: str, tag: str | None) -> Message:
    payload = {"status": "error", "message": description}
    return {"type": "websocket.send", "text": json.dumps(payload, separators=(",", ":"))}


def _chat_error(error: WireError, description: str, tag: str | None) -> Message:
    payload = {"message": description, "sender": "Server", "type": "error"}
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return {"type": "websocket.send", "text": text}


def _v2_error(error: WireError, description: str, tag: str | None) -> Message:
    return {"type": "websocket.send", "text": envelope.error(tag, str(error.code), description)}


_DESCRIPTIONS = {
    ErrorCode.UNAVAILABLE: "service unavailable",
    ErrorCode.TIMEOUT: "service unavailable",
    ErrorCode.INTERNAL: "internal error",
}


@dataclass(frozen=True, slots=True)
class Route:
    service: Service
    op: Op
    subject: str
    idempotent: bool = False  # safe to send twice: retried once if a replica dies
    batch: str | None = None  # where frames for it go batched (wire.batch), if they may
    # Its effects must happen in the client's order (wire.subjects.ORDERED_OPS): a
    # connection's requests of it go to one replica of the worker (Hub.submit).
    ordered: bool = False


_IDEMPOTENT = {Op.ECHO, Op.JSON, Op.INFLATE, Op.INSPECT, Op.MIXED, Op.HISTORY, Op.PRESENCE}


def _route(service: Service, op: Op) -> Route:
    batch = batch_subject(service) if op in BATCH_OPS else None
    subject = service_subject(service, op)
    return Route(service, op, subject, op in _IDEMPOTENT, batch, op in ORDERED_OPS)


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    path: str
    text: Route | None
    binary: Route | None
    error_shape: ErrorShape
    chat: bool = False
    # the reason of the 1013 that disconnects a client not reading what it is sent
    # (Connection.slow): what it can do about it depends on the endpoint
    slow_consumer: str = "slow consumer: read what you are sent, then reconnect"

    def error_message(self, error: WireError, tag: str | None = None) -> Message:
        """The error frame in this endpoint's shape. No worker, a timeout: ``service
        unavailable``, as ever; a refusal for load: ``service busy`` or ``gateway busy``."""
        if overloaded(error):
            return self.error_shape(error, error.description, tag)
        return self.error_shape(error, _DESCRIPTIONS.get(error.code, error.description), tag)

    def wrong_frame(self, got: str) -> WireError:
        want = "binary" if got == "text" else "text"
        return WireError(ErrorCode.UNSUPPORTED, f"expected a {want} frame")


ECHO = EndpointSpec("/ws", _route(Service.CODEC, Op.ECHO), None, _text_error)
JSON = EndpointSpec("/ws/json", _route(Service.CODEC, Op.JSON), None, _text_error)
BINARY = EndpointSpec("/ws/binary", None, _route(Service.BINARY, Op.INSPECT), _text_error)
MIXED = EndpointSpec(
    "/ws/mixed", _route(Service.BINARY, Op.MIXED), _route(Service.BINARY, Op.MIXED), _text_error
)
CHAT = EndpointSpec(
    "/ws/chat",
    _route(Service.CHAT, Op.SEND),
    None,
    _chat_error,
    chat=True,
    slow_consumer="slow consumer: messages were dropped, reconnect",
)
COMPRESSED = EndpointSpec("/ws/compressed", None, _route(Service.CODEC, Op.INFLATE), _status_error)

TUTORIAL_ENDPOINTS = (ECHO, JSON, BINARY, MIXED, CHAT, COMPRESSED)

# /ws/v2 decodes its envelopes itself (gateway/v2.py) and picks a route per type.
V2 = EndpointSpec(
    "/ws/v2", None, None, _v2_error, slow_consumer="slow consumer: reconnect and rejoin with since"
)

CHAT_JOIN = _route(Service.CHAT, Op.JOIN)
CHAT_LEAVE = _route(Service.CHAT, Op.LEAVE)
ROOM_JOIN = _route(Service.CHAT, Op.ROOM_JOIN)
ROOM_LEAVE = _route(Service.CHAT, Op.ROOM_LEAVE)
PUBLISH = _route(Service.CHAT, Op.PUBLISH)
HISTORY = _route(Service.CHAT, Op.HISTORY)
PRESENCE = _route(Service.CHAT, Op.PRESENCE)
