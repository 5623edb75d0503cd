"""``/ws/codec`` (client-chosen compression, wire/codec.py) and ``/ws/inspect`` (what a
binary frame is: size, SHA-256, media type, image dimensions). Both are plain relays:
the gateway forwards each frame's bytes unchanged to the codec / binary service and
writes back what it answers; errors the gateway itself reports have the
``/ws/compressed`` shape ``{"status": "error", "message": ...}``."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from starlette.routing import WebSocketRoute

from gateway.endpoints import EndpointSpec, Route
from gateway.hub import Hub
from gateway.relay import RelayEndpoint
from gateway.settings import GatewaySettings
from wire.errors import WireError
from wire.metrics import GatewayMetrics
from wire.subjects import Op, Service, service_subject


def _status_error(error: WireError, description: str, tag: str | None) -> dict[str, Any]:
    payload = {"status": "error", "message": description}
    return {"type": "websocket.send", "text": json.dumps(payload, separators=(",", ":"))}


def _route(service: Service, op: Op, idempotent: bool) -> Route:
    return Route(service, op, service_subject(service, op), idempotent)


# Compressing a 1 MiB frame at a high level takes long: sent again after half the
# timeout (the relay's retry for a dead replica), it would only double the work.
CODEC = EndpointSpec("/ws/codec", None, _route(Service.CODEC, Op.TRANSFORM, False), _status_error)
INSPECT = EndpointSpec(
    "/ws/inspect", None, _route(Service.BINARY, Op.DESCRIBE, True), _status_error
)


def mount(app: FastAPI, hub: Hub, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
    for spec in (CODEC, INSPECT):
        app.router.routes.append(
            WebSocketRoute(spec.path, RelayEndpoint(spec, hub, settings, metrics))
        )
