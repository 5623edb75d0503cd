"""The gateway's ASGI app: the tutorial's endpoints relayed over NATS, its two pages,
and ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.routing import WebSocketRoute

from gateway import api, codec_endpoint, dashboard, files
from gateway.auth import Authenticator
from gateway.endpoints import TUTORIAL_ENDPOINTS, V2
from gateway.hub import Hub
from gateway.pages import Page
from gateway.relay import RelayEndpoint
from gateway.settings import GatewaySettings
from gateway.stats import LiveStats
from gateway.v2 import V2Endpoint
from wire.gcpolicy import freeze_startup_heap
from wire.metrics import GatewayMetrics

STATIC = Path(__file__).parent / "static"
TUTORIAL_WS = "ws://localhost:8000"  # where the tutorial's two pages open their socket
_HOST = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def tutorial_page(page: str, host: str | None, secure: bool = False) -> str:
    """A tutorial page as served: for ``localhost:8000`` the tutorial's bytes unchanged;
    asked for at another address (``make run PORT=9000``, the compose edge, another
    machine) its hard-coded ``ws://localhost:8000`` becomes that address, so the page
    works there too. A Host header that is not a plain host[:port] changes nothing."""
    if not host or host == "localhost:8000" or not _HOST.fullmatch(host):
        return page
    return page.replace(TUTORIAL_WS, f"{'wss' if secure else 'ws'}://{host}")


def create_app(settings: GatewaySettings, registry: CollectorRegistry | None = None) -> FastAPI:
    registry = registry or CollectorRegistry()
    metrics = GatewayMetrics(registry)
    hub = Hub(settings, metrics)
    live = LiveStats(  # live figures over NATS (gateway/stats.py)
        settings.id,
        registry,
        metrics,
        serving=lambda: hub.accepting and hub.nc is not None and hub.nc.is_connected,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start(on_connected=live.start)  # in the background: /healthz answers
        freeze_startup_heap()
        try:
            yield
        finally:
            await live.stop()
            await hub.stop()

    app = FastAPI(title="Switchboard gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.hub = hub
    app.state.settings = settings
    app.state.registry = registry
    app.state.live = live
    dashboard.mount(app, live)  # GET /dashboard, /ws/dashboard

    pages = {
        "/": Page((STATIC / "chat.html").read_text(), tutorial=True),
        "/echo": Page((STATIC / "echo.html").read_text(), tutorial=True),
        "/rooms": Page((STATIC / "rooms.html").read_text()),
    }

    def tutorial(path: str, request: Request) -> HTMLResponse:
        secure = request.url.scheme == "https"
        page = pages[path]
        return page.response(tutorial_page(page.html, request.headers.get("host"), secure))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page(request: Request) -> HTMLResponse:
        return tutorial("/", request)

    @app.get("/echo", response_class=HTMLResponse, include_in_schema=False)
    async def echo_page(request: Request) -> HTMLResponse:
        return tutorial("/echo", request)

    @app.get("/rooms", response_class=HTMLResponse, include_in_schema=False)
    async def rooms_page() -> HTMLResponse:
        return pages["/rooms"].response()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        connected = hub.nc is not None and hub.nc.is_connected
        instances = await hub.instances() if connected else {}
        ready = connected and hub.accepting and all(n > 0 for n in instances.values())
        body = {
            "status": "ready" if ready else "not ready",
            "nats": "connected" if connected else "disconnected",
            "instances": instances,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    for spec in TUTORIAL_ENDPOINTS:
        app.router.routes.append(
            WebSocketRoute(spec.path, RelayEndpoint(spec, hub, settings, metrics))
        )
    v2 = V2Endpoint(hub, hub.live, Authenticator(settings), settings, metrics)
    app.router.routes.append(WebSocketRoute(V2.path, v2))
    app.include_router(api.router(hub, settings))
    files.mount(app, hub, settings, metrics)  # /ws/files, GET /files
    codec_endpoint.mount(app, hub, settings, metrics)  # /ws/codec, /ws/inspect
    return app
