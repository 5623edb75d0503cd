"""POST /api/rooms/{room}/messages passes a worker's error on with the HTTP status its
code means: a backend must be able to tell "retry later" (503) from "your request is
wrong" (4xx). The route runs in-process (httpx's ASGI transport); chat is a stand-in that answers
with nats.micro error headers."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from gateway.api import _authorized, http_status, router
from gateway.settings import GatewaySettings
from wire import headers as h
from wire.errors import ErrorCode

KEY = "an-api-key-of-some-length"


def app_answered_with(code: str, description: str) -> FastAPI:
    async def request(subject, body, timeout, headers):
        return SimpleNamespace(data=b"", headers={h.ERROR_CODE: code, h.ERROR: description})

    hub = SimpleNamespace(nc=SimpleNamespace(is_connected=True, request=request))
    app = FastAPI()
    app.include_router(router(hub, GatewaySettings(api_key=KEY)))  # type: ignore[arg-type]
    return app


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCode.UNAVAILABLE, 503),  # history store down, room too contended: retry
        (ErrorCode.TIMEOUT, 504),
        (ErrorCode.INTERNAL, 502),
        (ErrorCode.BAD_REQUEST, 400),
        (ErrorCode.FORBIDDEN, 403),
        (ErrorCode.TOO_LARGE, 413),
        (ErrorCode.RATE_LIMITED, 429),
        ("599", 502),  # a code this gateway does not know
    ],
)
async def test_a_worker_error_keeps_its_meaning(code: str, status: int) -> None:
    app = app_answered_with(str(code), "what the worker said")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        reply = await client.post(
            "/api/rooms/news/messages",
            json={"text": "hi"},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert (reply.status_code, reply.json()) == (status, {"detail": "what the worker said"})


def test_every_error_code_has_a_status() -> None:
    assert all(400 <= http_status(code) < 600 for code in ErrorCode)
    assert http_status("not a code") == 502


def test_the_api_key_is_compared_as_bytes_with_the_scheme_in_any_case() -> None:
    key = "clé-de-l-api-assez-longue"
    as_sent = f"Bearer {key}".encode().decode("latin-1")  # how HTTP headers arrive
    assert _authorized(as_sent, key)
    assert _authorized(as_sent.replace("Bearer", "bEARER"), key)
    for wrong in (None, "", key, f"Basic {key}", f"Bearer {key}x", "Bearer"):
        assert not _authorized(wrong, key), wrong
