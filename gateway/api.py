"""Server-side publish: ``POST /api/rooms/{room}/messages`` puts a message into a room as
the configured system sender, so a backend can push to rooms without a socket.

Auth: ``Authorization: Bearer <SB_GATEWAY_API_KEY>``. Body: a JSON object (the message
payload, as a ``/ws/v2`` ``publish`` would send). ``Idempotency-Key`` (optional, 1-64
printable characters) makes a retried request return the first one's seq.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

import orjson
from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from gateway.endpoints import PUBLISH
from gateway.hub import Hub
from gateway.settings import GatewaySettings
from wire import envelope, errors
from wire import headers as h
from wire.frames import FrameDecodeError, decode_frames, quoted, request_headers
from wire.subjects import is_token

# A worker's error code (wire.errors.ErrorCode) as the HTTP status of the API's answer:
# what the caller did wrong stays 4xx, the server's trouble 5xx (retry 503 and 504)
_HTTP_STATUS: dict[errors.ErrorCode, int] = {
    errors.ErrorCode.BAD_REQUEST: 400,
    errors.ErrorCode.UNAUTHORIZED: 401,
    errors.ErrorCode.FORBIDDEN: 403,
    errors.ErrorCode.NOT_FOUND: 404,
    errors.ErrorCode.TIMEOUT: 504,
    errors.ErrorCode.GONE: 410,
    errors.ErrorCode.TOO_LARGE: 413,
    errors.ErrorCode.RATE_LIMITED: 429,
    errors.ErrorCode.INTERNAL: 502,
    errors.ErrorCode.UNAVAILABLE: 503,
    errors.ErrorCode.STORAGE_FULL: 507,
}


def http_status(code: str) -> int:
    """The status for a worker's error ``code``; 502 for one this gateway does not know."""
    try:
        return _HTTP_STATUS.get(errors.ErrorCode(code), 502)
    except ValueError:
        return 502


# The body as sent may carry whitespace the payload limit does not count; past this it
# is refused while it arrives, not once held whole.
MAX_BODY_BYTES = 4 * envelope.MAX_PAYLOAD_BYTES


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body over {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"body over {MAX_BODY_BYTES} bytes")
    return bytes(body)


def _authorized(authorization: str | None, key: str) -> bool:
    """``Authorization: Bearer <key>``, the scheme in any case (RFC 7235), compared in
    constant time as bytes: HTTP headers arrive decoded as latin-1, the key is UTF-8."""
    if authorization is None:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("latin-1"), key.encode())


def router(hub: Hub, settings: GatewaySettings) -> APIRouter:
    api = APIRouter(prefix="/api")

    @api.post("/rooms/{room}/messages")
    async def publish(
        room: str,
        request: Request,
        authorization: str | None = Header(None),
        idempotency_key: str | None = Header(None),
    ) -> JSONResponse:
        if settings.api_key is None:
            raise HTTPException(404, "server-side publish is not enabled (SB_GATEWAY_API_KEY)")
        if not _authorized(authorization, settings.api_key.get_secret_value()):
            raise HTTPException(401, "missing or wrong API key")
        if not is_token(room):
            raise HTTPException(422, "room must be 1-64 characters of [A-Za-z0-9_-]")
        # an empty Idempotency-Key is a bad one, not none
        rid = f"api-{secrets.token_hex(8)}" if idempotency_key is None else idempotency_key
        if envelope.request_id({"id": rid}) is None:
            raise HTTPException(422, "Idempotency-Key must be 1-64 printable characters")
        try:
            payload: Any = orjson.loads(await _read_body(request))
        except orjson.JSONDecodeError:
            raise HTTPException(422, "body must be a JSON object") from None
        if not isinstance(payload, dict):
            raise HTTPException(422, "body must be a JSON object")
        try:
            body = envelope.publish_body(payload)
        except errors.WireError as exc:
            status = 413 if exc.code == errors.ErrorCode.TOO_LARGE else 422
            raise HTTPException(status, exc.description) from None
        headers = request_headers(
            "text", user=settings.system_sender, room=room, extra={h.REQUEST_ID: quoted(rid)}
        )
        if hub.nc is None or not hub.nc.is_connected:
            raise HTTPException(503, "not connected to NATS")
        try:
            reply = await hub.nc.request(
                PUBLISH.subject, body, timeout=settings.request_timeout, headers=headers
            )
        except (NoRespondersError, NatsTimeout):
            raise HTTPException(503, "chat service unavailable") from None
        error = errors.from_headers(reply.headers)
        if error is not None:
            raise HTTPException(http_status(error.code), error.description)
        try:
            (frame,) = decode_frames(reply.data)
            ack = orjson.loads(frame.data)
        except (FrameDecodeError, ValueError):
            raise HTTPException(502, "bad reply from chat") from None
        return JSONResponse({"room": room, **ack["payload"]}, status_code=201)

    return api
