"""The live dashboard page: ``GET /dashboard`` (HTML, canvas charts, no external assets)
and ``/ws/dashboard``, a WebSocket that sends the system's live figures (JSON, see
:meth:`gateway.stats.Aggregator.figures`) once a second — the newest only: a client that
reads slowly skips figures instead of queueing them. Whatever the client sends is
ignored."""

from __future__ import annotations

from pathlib import Path

import anyio
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.routing import WebSocketRoute

from gateway.stats import LiveStats

PAGE = Path(__file__).parent / "static" / "dashboard.html"
PATH = "/dashboard"
WS_PATH = "/ws/dashboard"


class DashboardSocket:
    """ASGI app for ``/ws/dashboard``."""

    def __init__(self, live: LiveStats) -> None:
        self.live = live

    async def __call__(self, scope, receive, send) -> None:  # ASGI
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
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

    @app.get(PATH, response_class=HTMLResponse, include_in_schema=False)
    async def dashboard_page() -> HTMLResponse:
        return HTMLResponse(page)

    app.router.routes.append(WebSocketRoute(WS_PATH, DashboardSocket(live)))
