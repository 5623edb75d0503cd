"""Run one worker as a nats.micro service.

``run(service, settings, handlers)`` connects, adds one endpoint per operation (queue
group = service name, so replicas share work), serves Prometheus metrics, and on
SIGTERM/SIGINT drains: the endpoint subscriptions stop taking new requests, every
request already received is answered, then the connection closes.

Why ``nc.drain()`` and not ``Service.stop()`` first: nats-py's ``Service.stop()``
unsubscribes endpoints, which discards requests already queued in the client and cancels
the running handler; draining answers them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping

from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request as MicroRequest
from prometheus_client import CollectorRegistry, start_http_server

from services.settings import ServiceSettings
from wire import headers as h
from wire import logs, natsconn
from wire.errors import ErrorCode, WireError
from wire.frames import Request, decode_request
from wire.metrics import ServiceMetrics, Status
from wire.subjects import Op, Service, service_subject

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[bytes]]
HandlerFactory = Callable[[Client], Mapping[Op, Handler]]

VERSION = "0.1.0"


def wrap(service: Service, op: Op, handler: Handler, metrics: ServiceMetrics):
    """The one place a handler's result or WireError becomes a NATS reply."""
    ok = metrics.requests.labels(service, op, Status.OK)
    failed = metrics.requests.labels(service, op, Status.ERROR)
    handling = metrics.handling_seconds.labels(service, op)
    transit = metrics.transit_seconds.labels(service, op)
    in_flight = metrics.in_flight.labels(service)

    async def endpoint(msg: MicroRequest) -> None:
        received = time.time_ns()
        start = time.perf_counter()
        req = decode_request(msg.data, msg.headers)
        age = h.age_seconds(req.sent_at, received)
        if age is not None:
            transit.observe(age)
        in_flight.inc()
        try:
            payload = await handler(req)
        except WireError as exc:
            failed.inc()
            await msg.respond_error(str(exc.code), exc.description)
        except Exception:
            failed.inc()
            log.exception(
                "handler failed",
                extra={"service": str(service), "op": str(op), "traceparent": req.traceparent},
            )
            await msg.respond_error(str(ErrorCode.INTERNAL), "internal error")
        else:
            ok.inc()
            await msg.respond(payload, headers={h.HANDLED_AT: h.now_ns()})
        finally:
            in_flight.dec()
            handling.observe(time.perf_counter() - start)

    return endpoint


async def serve(
    service: Service,
    settings: ServiceSettings,
    factory: HandlerFactory,
    stop: asyncio.Event,
    registry: CollectorRegistry | None = None,
) -> None:
    registry = registry or CollectorRegistry()
    metrics = ServiceMetrics(registry, service)
    server, _ = start_http_server(settings.metrics_port, settings.metrics_host, registry=registry)
    log.info(
        "metrics listening",
        extra={"service": str(service), "port": server.server_port},
    )
    nc = await natsconn.connect(
        settings.nats_url,
        f"{service}",
        user=settings.nats_user,
        password=settings.nats_password,
    )
    try:
        handlers = factory(nc)
        svc = await add_service(
            nc,
            name=str(service),
            version=VERSION,
            description=f"Switchboard {service} worker",
            queue_group=str(service),
            metadata={"metrics_port": str(server.server_port)},
        )
        for op, handler in handlers.items():
            await svc.add_endpoint(
                name=str(op),
                subject=service_subject(service, op),
                handler=wrap(service, op, handler, metrics),
            )
        log.info("service ready", extra={"service": str(service), "id": svc.id})
        await stop.wait()
        log.info("draining", extra={"service": str(service)})
        try:
            await asyncio.wait_for(nc.drain(), settings.shutdown_timeout)
        except TimeoutError:
            log.warning("drain timed out", extra={"service": str(service)})
    finally:
        if not nc.is_closed:
            await nc.close()
        server.shutdown()


def run(service: Service, settings: ServiceSettings, factory: HandlerFactory) -> None:
    """Entry point of ``python -m services.<name>``."""
    logs.configure(settings.log_level, str(service))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(service, settings, factory, stop)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover
        asyncio.run(main())
