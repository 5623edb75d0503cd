"""The JSON log setup (wire/logs.py): one JSON object per line, with the component, and
no secret from a query string."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from wire import logs
from wire.logs import redact

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"


@pytest.fixture
def configured() -> Iterator[io.StringIO]:
    """``logs.configure`` as a process calls it, writing to a buffer instead of stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("info", "gateway")
    out = io.StringIO()
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)
    try:
        yield out
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_query_string_secrets_are_redacted(configured) -> None:
    # as uvicorn logs an accepted WebSocket
    logging.getLogger("uvicorn.error").info(
        '%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", f"/ws/v2?username=al&token={TOKEN}"
    )
    logging.getLogger("x").warning(f"GET /ws/files?access_token={TOKEN}&x=1")
    logging.getLogger("x").info("%(path)s", {"path": f"/p;password={TOKEN}"})
    out = lines(configured)
    assert [o["message"] for o in out] == [
        '127.0.0.1:5000 - "WebSocket /ws/v2?username=al&token=[redacted]" [accepted]',
        "GET /ws/files?access_token=[redacted]&x=1",
        "/p;password=[redacted]",
    ]
    assert all(o["component"] == "gateway" and "time" in o and "level" in o for o in out)


def test_percent_encoded_secret_names_are_redacted(configured) -> None:
    """The gateway reads the query with parse_qsl, which decodes names: ?%74oken=<jwt>
    authenticates as ?token= does, so it must not reach the logs either."""
    queries = (
        f"?%74oken={TOKEN}",
        f"?a=1&t%6Fken={TOKEN}",
        f"?%61ccess%5Ftoken={TOKEN}",
        f"?username=a?token={TOKEN}",  # a client's broken URL: still no token in the log
    )
    for query in queries:
        logging.getLogger("uvicorn.error").info('"WebSocket /ws/v2%s" [accepted]', query)
    out = [o["message"] for o in lines(configured)]
    assert out == [
        '"WebSocket /ws/v2?%74oken=[redacted]" [accepted]',
        '"WebSocket /ws/v2?a=1&t%6Fken=[redacted]" [accepted]',
        '"WebSocket /ws/v2?%61ccess%5Ftoken=[redacted]" [accepted]',
        '"WebSocket /ws/v2?username=a?token=[redacted]" [accepted]',
    ]
    assert not any(TOKEN in o for o in out)


def test_url_credentials_are_redacted() -> None:
    """A NATS URL may carry a user and password, or a token, as its userinfo."""
    assert redact("nats://sb:s3cret@nats:4222,nats://tok3n@n2:4222") == (
        "nats://[redacted]@nats:4222,nats://[redacted]@n2:4222"
    )
    assert redact("mail alice@example.com at nats://nats:4222") == (
        "mail alice@example.com at nats://nats:4222"
    )


def test_other_text_is_left_alone(configured) -> None:
    logging.getLogger("x").info("tokens=3 a=b ?name=token=x")
    assert lines(configured)[0]["message"] == "tokens=3 a=b ?name=token=x"
