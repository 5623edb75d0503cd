"""The live dashboard page: ``GET /dashboard`` (HTML, canvas charts, no external assets)
and ``/ws/dashboard``, a WebSocket that sends the system's live figures (JSON, see
:meth:`gateway.stats.Aggregator.figures`) once a second — the newest only: a client that
reads slowly skips figures instead of queueing them. What the client sends is ignored,
up to :data:`CLIENT_FRAMES_PER_SECOND` (more: close 1008; a text flood here cost the
gateway seven times what it costs on ``/ws``). Browsers from other origins are refused as
on the relay endpoints (``SB_GATEWAY_ALLOWED_ORIGINS``); the sockets count against the
connection caps like any other (``SB_GATEWAY_MAX_CONNECTIONS(_PER_IP)``: one address
held every dashboard slot), and at most :data:`MAX_WATCHERS` are served at once per
gateway (more: close 1013)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import anyio
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.routing import WebSocketRoute

from gateway.limits import Admission, TokenBucket, client_ip, origin_allowed
from gateway.pages import Page
from gateway.stats import LiveStats
from wire.errors import CloseCode

PAGE = Path(__file__).parent / "static" / "dashboard.html"
PATH = "/dashboard"
WS_PATH = "/ws/dashboard"
MAX_WATCHERS = 64
CLIENT_FRAMES_PER_SECOND = 10  # burst 20; the page itself sends nothing
RATE_CLOSE = {
    "type": "websocket.close",
    "code": int(CloseCode.POLICY_VIOLATION),
    "reason": "rate limit exceeded",
}


class DashboardSocket:
    """ASGI app for ``/ws/dashboard``."""

    def __init__(
        self,
        live: LiveStats,
        allowed_origins: list[str] | None = None,
        admission: Admission | None = None,
        allowed_hosts: list[str] | None = None,
    ) -> None:
        self.live = live
        self.allowed_origins = allowed_origins or []
        self.allowed_hosts = allowed_hosts or []
        self.admission = admission or Admission(MAX_WATCHERS, MAX_WATCHERS)

    async def __call__(self, scope, receive, send) -> None:  # ASGI
        if (await receive())["type"] != "websocket.connect":
            return
        if not origin_allowed(scope, self.allowed_origins, self.allowed_hosts):
            await send({"type": "websocket.close", "code": int(CloseCode.POLICY_VIOLATION)})
            return
        await send({"type": "websocket.accept"})
        ip = client_ip(scope)
        if len(self.live.watchers) >= MAX_WATCHERS or not self.admission.admit(ip):
            code = int(CloseCode.TRY_AGAIN_LATER)
            await send({"type": "websocket.close", "code": code, "reason": "too many dashboards"})
            return
        watcher = self.live.watch()
        bucket = TokenBucket(CLIENT_FRAMES_PER_SECOND, 2 * CLIENT_FRAMES_PER_SECOND)
        try:
            async with anyio.create_task_group() as tg:

                async def reader() -> None:
                    while (await receive())["type"] != "websocket.disconnect":
                        if not bucket.take():
                            code, reason = int(CloseCode.POLICY_VIOLATION), "rate limit exceeded"
                            with contextlib.suppress(Exception):
                                await send(
                                    {"type": "websocket.close", "code": code, "reason": reason}
                                )
                            break
                    tg.cancel_scope.cancel()

                async def writer() -> None:
                    while True:
                        figures = await watcher.next()
                        if figures is None:  # the gateway is shutting down
                            code = int(CloseCode.GOING_AWAY)
                            reason = "server shutting down"
                            with contextlib.suppress(Exception):
                                await send(
                                    {"type": "websocket.close", "code": code, "reason": reason}
                                )
                            tg.cancel_scope.cancel()
                            return
                        try:
                            await send({"type": "websocket.send", "text": figures.decode()})
                        except Exception:  # the peer is gone; the reader sees it
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(reader)
                tg.start_soon(writer)
        finally:
            self.live.unwatch(watcher)
            self.admission.release(ip)


def mount(app: FastAPI, live: LiveStats) -> None:
    page = Page(PAGE.read_text())
    settings = getattr(app.state, "settings", None)
    allowed = list(getattr(settings, "allowed_origins", None) or [])
    hosts = list(getattr(settings, "allowed_hosts", None) or [])
    hub = getattr(app.state, "hub", None)
    admission = hub.admission if hub is not None else None

    @app.get(PATH, response_class=HTMLResponse, include_in_schema=False)
    async def dashboard_page() -> HTMLResponse:
        return page.response()

    app.router.routes.append(
        WebSocketRoute(WS_PATH, DashboardSocket(live, allowed, admission, hosts))
    )
