"""One way to connect to NATS, shared by every process: named connection, endless
reconnect with jittered backoff, and callbacks that keep a ``connected`` flag honest."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client, Server
from nats.errors import NoServersError

log = logging.getLogger(__name__)


async def connect(
    url: str,
    name: str,
    *,
    user: str | None = None,
    password: str | None = None,
    on_state: Callable[[bool], None] | None = None,
    connect_timeout: float = 2.0,
) -> Client:
    """Connect (retrying until the server answers) and keep reconnecting forever."""

    def state(up: bool) -> None:
        if on_state is not None:
            on_state(up)

    async def disconnected() -> None:
        log.warning("nats disconnected", extra={"nats_name": name})
        state(False)

    async def reconnected() -> None:
        log.info("nats reconnected", extra={"nats_name": name})
        state(True)

    async def error(exc: Exception) -> None:
        log.warning("nats error: %s", exc, extra={"nats_name": name})

    attempt = 0
    while True:
        try:
            nc = await _connect(
                url, name, user, password, connect_timeout, disconnected, reconnected, error
            )
            break
        except (OSError, NoServersError, TimeoutError) as exc:
            attempt += 1
            delay = backoff(attempt)
            log.warning("nats connect failed (%s), retrying in %.2fs", exc, delay)
            await asyncio.sleep(delay)
    state(True)
    return nc


def _jittered(servers: list[Server], info: dict[str, Any]) -> tuple[Server | None, float]:
    """nats-py's reconnect hook: the server to try next and a full-jitter delay, so that
    many clients do not all reconnect in the same instant after a NATS restart."""
    server = min(servers, key=lambda s: s.reconnects)
    return server, backoff(server.reconnects + 1)


def backoff(attempt: int, base: float = 0.1, cap: float = 2.0) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))


async def _connect(url, name, user, password, connect_timeout, disconnected, reconnected, error):
    return await nats.connect(
        servers=[url],
        name=name,
        user=user,
        password=password,
        connect_timeout=connect_timeout,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        reconnect_to_server_handler=_jittered,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
        pending_size=64 * 1024 * 1024,
    )


class JetStreamUnavailable(RuntimeError):
    """JetStream never answered a worker's setup (its streams, buckets)."""


async def with_jetstream(
    setup: Callable[[], Awaitable[None]], attempts: int = 50, delay: float = 0.2
) -> None:
    """Run ``setup`` (making a worker's streams and buckets), again while JetStream is
    still starting up, for at most ``attempts`` tries ``delay`` s apart; then stop the
    worker with an error that says what to check (nats-py's own says only
    ``ServiceUnavailableError: code=None``)."""
    for attempt in range(attempts):
        try:
            await setup()
            return
        except Exception as exc:
            if attempt == attempts - 1:
                raise JetStreamUnavailable(
                    f"JetStream did not answer in {attempts * delay:.0f} s ({exc!r}): is "
                    "JetStream enabled on the NATS server (nats-server -js, or a jetstream "
                    "block in its config), and does this account have it?"
                ) from exc
            log.warning("waiting for JetStream: %s", exc)
            await asyncio.sleep(delay)
