"""``python -m gateway``: uvicorn with an ordered shutdown.

On SIGTERM: stop accepting, let in-flight requests finish (``shutdown_timeout``), close
every socket with 1001, then uvicorn's own shutdown and the lifespan's NATS drain.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn

from gateway.app import create_app
from gateway.hub import Hub
from gateway.protocols import BoundedReadProtocol, HandshakeDeadline
from gateway.relay import direct_websockets
from gateway.settings import GatewaySettings
from gateway.stats import LiveStats
from wire import logs
from wire.errors import CloseCode


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, hub: Hub, live: LiveStats, grace: float) -> None:
        super().__init__(config)
        self.hub = hub
        self.live = live
        self.grace = grace

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn raises the SIGTERM it caught again once it has shut down, so the
        process ends killed by it (status 143 in Docker) however clean the shutdown.
        The gateway exits 0 after a graceful shutdown, as the workers do."""
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def shutdown(self, sockets=None) -> None:
        for server in self.servers:
            server.close()
        await self.hub.close_all(int(CloseCode.GOING_AWAY), "server shutting down", self.grace)
        await self.live.close_watchers(min(self.grace, 1.0))  # dashboards: 1001 too
        await super().shutdown(sockets)


def main() -> None:
    settings = GatewaySettings()
    logs.configure(settings.log_level, "gateway")
    app = create_app(settings)
    HandshakeDeadline.timeout = settings.handshake_timeout
    BoundedReadProtocol.context_takeover = settings.deflate_context_takeover
    config = uvicorn.Config(
        direct_websockets(app),  # WebSockets past FastAPI's middleware (gateway/relay.py)
        host=settings.host,
        port=settings.port,
        ws=BoundedReadProtocol,  # uvicorn's websockets-sansio, parsing reads in slices
        loop="uvloop",
        http=HandshakeDeadline,  # uvicorn's httptools, closing who never sends a request
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=settings.per_message_deflate,
        ws_ping_interval=settings.ping_interval,
        ws_ping_timeout=settings.ping_timeout,
        timeout_graceful_shutdown=settings.shutdown_timeout,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    GatewayServer(config, app.state.hub, app.state.live, settings.shutdown_timeout).run()


if __name__ == "__main__":
    main()
