"""The live dashboard page: ``GET /dashboard`` (HTML, canvas charts, no external assets)
and ``/ws/dashboard``, a WebSocket that sends the system's live figures (JSON, see
:meth:`gateway.stats.Aggregator.figures`) once a second — the newest only: a client that
reads slowly skips figures instead of queueing them. Whatever the client sends is
ignored. Browsers from other origins are refused as on the relay endpoints
(``SB_GATEWAY_ALLOWED_ORIGINS``), and at most :data:`MAX_WATCHERS` sockets are served at
once per gateway (more: close 1013)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import anyio
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.routing import WebSocketRoute

from gateway.limits import origin_allowed
from gateway.stats import LiveStats
from wire.errors import CloseCode

PAGE = Path(__file__).parent / "static" / "dashboard.html"
PATH = "/dashboard"
WS_PATH = "/ws/dashboard"
MAX_WATCHERS = 64


class DashboardSocket:
    """ASGI app for ``/ws/dashboard``."""

    def __init__(self, live: LiveStats, allowed_origins: list[str] | None = None) -> None:
        self.live = live
        self.allowed_origins = allowed_origins or []

    async def __call__(self, scope, receive, send) -> None:  # ASGI
        if (await receive())["type"] != "websocket.connect":
            return
        if not origin_allowed(scope, self.allowed_origins):
            await send({"type": "websocket.close", "code": int(CloseCode.POLICY_VIOLATION)})
            return
        await send({"type": "websocket.accept"})
        if len(self.live.watchers) >= MAX_WATCHERS:
            code = int(CloseCode.TRY_AGAIN_LATER)
            await send({"type": "websocket.close", "code": code, "reason": "too many dashboards"})
            return
        watcher = self.live.watch()
        try:
            async with anyio.create_task_group() as tg:

                async def reader() -> None:
                    while (await receive())["type"] != "websocket.disconnect":
                        pass
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


def mount(app: FastAPI, live: LiveStats) -> None:
    page = PAGE.read_text()
    settings = getattr(app.state, "settings", None)
    allowed = list(getattr(settings, "allowed_origins", None) or [])

    @app.get(PATH, response_class=HTMLResponse, include_in_schema=False)
    async def dashboard_page() -> HTMLResponse:
        return HTMLResponse(page)

    app.router.routes.append(WebSocketRoute(WS_PATH, DashboardSocket(live, allowed)))
