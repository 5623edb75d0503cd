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
import inspect
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
from wire import stats as live
from wire.errors import ErrorCode, WireError
from wire.frames import Reply, Request, decode_request
from wire.gcpolicy import freeze_startup_heap
from wire.metrics import ServiceMetrics, Status
from wire.subjects import Op, Service, service_subject, stats_subject

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[bytes | Reply]]
HandlerFactory = Callable[[Client], Mapping[Op, Handler] | Awaitable[Mapping[Op, Handler]]]

VERSION = "0.1.0"
READY_LINE = "switchboard-service-ready"


def _stamp(req: Request) -> dict[str, str]:
    """Reply headers for the hop back: when the worker answered, and the frame's trace."""
    stamp = {h.HANDLED_AT: h.now_ns()}
    if req.traceparent:
        stamp[h.TRACEPARENT] = req.traceparent
    return stamp


def wrap(service: Service, op: Op, handler: Handler, metrics: ServiceMetrics):
    """The one place a handler's result or WireError becomes a NATS reply.

    Also the worker's share of observability: the transit and handling hops of each
    frame, labelled by outcome (children resolved once, here); the frame's trace id in
    ``wire.logs.TRACE_ID`` while it is handled, so every log line about it carries it;
    DEBUG lines per frame.
    """
    ok = metrics.requests.labels(service, op, Status.OK)
    failed = metrics.requests.labels(service, op, Status.ERROR)
    outcomes = (Status.OK, Status.ERROR)
    handling = {st: metrics.handling_seconds.labels(service, op, st) for st in outcomes}
    transit = {st: metrics.transit_seconds.labels(service, op, st) for st in outcomes}
    in_flight = metrics.in_flight.labels(service)
    fields = {"service": str(service), "op": str(op)}

    async def endpoint(msg: MicroRequest) -> None:
        received = time.time_ns()
        start = time.perf_counter()
        req = decode_request(msg.data, msg.headers)
        age = h.age_seconds(req.sent_at, received)
        token = logs.TRACE_ID.set(h.trace_id(req.traceparent))
        debug = log.isEnabledFor(logging.DEBUG)
        if debug:
            log.debug("request received", extra={**fields, "hop": "transit", "seconds": age})
        in_flight.inc()
        status = Status.OK
        try:
            payload = await handler(req)
        except WireError as exc:
            status = Status.ERROR
            failed.inc()
            if debug:
                log.debug("request refused", extra={**fields, "code": str(exc.code)})
            await msg.respond_error(str(exc.code), exc.description, headers=_stamp(req))
        except Exception:
            status = Status.ERROR
            failed.inc()
            log.exception("handler failed", extra=fields)  # trace_id from TRACE_ID
            await msg.respond_error(str(ErrorCode.INTERNAL), "internal error", headers=_stamp(req))
        else:
            ok.inc()
            if isinstance(payload, Reply):
                await msg.respond(payload.payload, headers={**_stamp(req), **payload.headers})
            else:
                await msg.respond(payload, headers=_stamp(req))
        finally:
            in_flight.dec()
            elapsed = time.perf_counter() - start
            handling[status].observe(elapsed)
            if age is not None:
                transit[status].observe(age)
            if debug:
                log.debug(
                    "request handled",
                    extra={**fields, "hop": "handling", "status": str(status), "seconds": elapsed},
                )
            logs.TRACE_ID.reset(token)

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
        if inspect.isawaitable(handlers):
            handlers = await handlers
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
        # Live figures for the gateways' dashboard page, once a second (wire.stats).
        publisher = asyncio.create_task(
            live.publish_forever(
                nc,
                stats_subject(service, svc.id),
                lambda: live.service_snapshot(metrics, str(service), svc.id),
            )
        )
        log.info("service ready", extra={"service": str(service), "id": svc.id})
        # For supervisors (switchboard.localstack), whatever the log level: one line.
        freeze_startup_heap()
        print(f"{READY_LINE} {service} {svc.id}", flush=True)
        await stop.wait()
        publisher.cancel()
        log.info("draining", extra={"service": str(service)})
        try:
            await asyncio.wait_for(_drain_endpoints(svc), settings.shutdown_timeout)
            await asyncio.wait_for(nc.drain(), settings.shutdown_timeout)
        except TimeoutError:
            log.warning("drain timed out", extra={"service": str(service)})
    finally:
        if not nc.is_closed:
            await nc.close()
        server.shutdown()


async def _drain_endpoints(svc) -> None:
    """Stop taking requests and finish those already received, first, while the rest of
    the connection still works: ``nc.drain()`` drains every subscription at once, the
    request-reply inbox too, so a handler that makes a request of its own while it
    finishes (chat's JetStream publish and reads) would never get that answer."""
    subs = [getattr(ep, "_subscription", None) for ep in getattr(svc, "_endpoints", ())]
    await asyncio.gather(*(sub.drain() for sub in subs if sub is not None))


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
