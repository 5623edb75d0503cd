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
import contextlib
import inspect
import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request as MicroRequest
from prometheus_client import CollectorRegistry, start_http_server

from services.scheduler import FairScheduler, Job
from services.settings import ServiceSettings
from wire import batch, errors, logs, natsconn
from wire import headers as h
from wire import stats as live
from wire.batch import BATCH_OPS
from wire.errors import ErrorCode, WireError
from wire.frames import Reply, Request, decode_request
from wire.gcpolicy import freeze_startup_heap
from wire.metrics import ServiceMetrics, Status
from wire.subjects import (
    EXPIRING_OPS,
    ORDERED_OPS,
    Op,
    Service,
    batch_subject,
    pinned_op,
    pinned_wildcard,
    reply_caller,
    service_subject,
    stats_subject,
)

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[bytes | Reply]]
HandlerFactory = Callable[[Client], Mapping[Op, Handler] | Awaitable[Mapping[Op, Handler]]]

VERSION = "0.1.0"


@dataclass(frozen=True, slots=True)
class SlowOps:
    """Operations whose requests go through a :class:`FairScheduler` (services/scheduler.py)
    instead of one at a time in arrival order: taking turns between callers, at most
    ``concurrency`` at once, refused past ``max_queued_bytes`` waiting, skipped once
    their caller stopped waiting."""

    ops: frozenset[Op]
    concurrency: int
    max_queued_bytes: int


NO_SLOW_OPS = SlowOps(frozenset(), 1, 0)


@dataclass(frozen=True, slots=True)
class OrderedOps:
    """How a worker handles its ordered operations (:data:`wire.subjects.ORDERED_OPS`,
    chat's): through one :class:`FairScheduler` whose callers are connections, one
    request of each at a time (so in the order they arrived, across operations),
    ``concurrency`` connections' at once, taking turns; past ``max_queued_bytes``
    waiting, :data:`wire.subjects.EXPIRING_OPS` are refused ``service busy``, the
    others (leaves, the tutorial join) never."""

    concurrency: int
    max_queued_bytes: int

    def scheduler(self, queued_gauge=None) -> FairScheduler:
        return FairScheduler(self.concurrency, self.max_queued_bytes, queued_gauge, per_caller=1)


ONE_AT_A_TIME = OrderedOps(1, 1 << 20)
ORDERED = "ordered"  # the operation label of the ordered ops' queue gauge
# bytes a waiting request counts for beyond its payload (headers, bookkeeping): requests
# with an empty payload (file_read, file_list) are bounded too
REQUEST_OVERHEAD = 512
EXPIRED = WireError(ErrorCode.TIMEOUT, "request expired before it was handled")
BUSY = errors.SERVICE_BUSY
STOPPING = errors.SERVICE_STOPPING
READY_LINE = "switchboard-service-ready"


def _stamp(req: Request) -> dict[str, str]:
    """Reply headers for the hop back: when the worker answered, and the frame's trace."""
    stamp = {h.HANDLED_AT: h.now_ns()}
    if req.traceparent:
        stamp[h.TRACEPARENT] = req.traceparent
    return stamp


class OpCall:
    """One operation's handler with its share of observability: the transit and handling
    hops of each frame, labelled by outcome (children resolved once, here); the frame's
    trace id in ``wire.logs.TRACE_ID`` while it is handled, so every log line about it
    carries it; DEBUG lines per frame. Used by :func:`wrap` (one request) and
    :func:`wrap_batch` (each frame of a batch)."""

    def __init__(self, service: Service, op: Op, handler: Handler, metrics: ServiceMetrics) -> None:
        self.handler = handler
        self.ok = metrics.requests.labels(service, op, Status.OK)
        self.failed = metrics.requests.labels(service, op, Status.ERROR)
        self.expired = metrics.requests.labels(service, op, Status.TIMEOUT)
        outcomes = (Status.OK, Status.ERROR)
        self.handling = {st: metrics.handling_seconds.labels(service, op, st) for st in outcomes}
        self.transit = {st: metrics.transit_seconds.labels(service, op, st) for st in outcomes}
        self.queue = {st: metrics.queue_seconds.labels(service, op, st) for st in outcomes}
        self.in_flight = metrics.in_flight.labels(service)
        self.fields = {"service": str(service), "op": str(op)}

    async def __call__(self, req: Request, received: int) -> bytes | Reply | WireError:
        """The handler's reply, or the WireError to send instead (an unexpected exception
        is logged and becomes an internal error)."""
        start = time.perf_counter()
        waited = max(0, time.time_ns() - received) / 1e9
        age = h.age_seconds(req.sent_at, received)
        token = logs.TRACE_ID.set(h.trace_id(req.traceparent))
        debug = log.isEnabledFor(logging.DEBUG)
        fields = self.fields
        if debug:
            log.debug("request received", extra={**fields, "hop": "transit", "seconds": age})
        self.in_flight.inc()
        status = Status.OK
        try:
            result: bytes | Reply | WireError = await self.handler(req)
        except WireError as exc:
            result = exc
            if debug:
                log.debug("request refused", extra={**fields, "code": str(exc.code)})
        except Exception:
            log.exception("handler failed", extra=fields)  # trace_id from TRACE_ID
            result = WireError(ErrorCode.INTERNAL, "internal error")
        finally:
            self.in_flight.dec()
        if isinstance(result, WireError):
            status = Status.ERROR
            # work given up at the request's deadline (Request.deadline) is a timeout
            (self.expired if result.code is ErrorCode.TIMEOUT else self.failed).inc()
        else:
            self.ok.inc()
        elapsed = time.perf_counter() - start
        self.handling[status].observe(elapsed)
        self.queue[status].observe(waited)
        if age is not None:
            self.transit[status].observe(age)
        if debug:
            log.debug(
                "request handled",
                extra={**fields, "hop": "handling", "status": str(status), "seconds": elapsed},
            )
        logs.TRACE_ID.reset(token)
        return result


def wrap(
    service: Service,
    op: Op,
    handler: Handler,
    metrics: ServiceMetrics,
    instance: str | None = None,
    scheduler: FairScheduler | None = None,
    handoff: Callable[[MicroRequest], Awaitable[None]] | None = None,
):
    """The one place a handler's result or WireError becomes a NATS reply. With
    ``instance``, every reply names it (``Sb-Instance``: ordered ops, see
    :data:`wire.subjects.ORDERED_OPS`). With ``scheduler``, requests are handled as it
    decides (:func:`scheduled`) instead of one at a time as they arrive."""
    call = OpCall(service, op, handler, metrics)
    own = {h.INSTANCE: instance} if instance is not None else {}

    async def endpoint(msg: MicroRequest, received: int | None = None) -> None:
        received = received or time.time_ns()
        req = decode_request(msg.data, msg.headers, received)
        result = await call(req, received)
        stamp = {**_stamp(req), **own}
        if isinstance(result, WireError):
            await msg.respond_error(str(result.code), result.description, headers=stamp)
        elif isinstance(result, Reply):
            await msg.respond(result.payload, headers={**stamp, **result.headers})
        else:
            await msg.respond(result, headers=stamp)

    if scheduler is None:
        return endpoint
    ordered = instance is not None
    return scheduled(service, op, endpoint, metrics, scheduler, ordered=ordered, handoff=handoff)


async def _answer(msg: MicroRequest, error: WireError, counter) -> None:
    """Answer ``msg`` with ``error`` without handling it, counted in ``counter``."""
    counter.inc()
    stamp = {h.HANDLED_AT: h.now_ns()}
    await msg.respond_error(str(error.code), error.description, headers=stamp)


def _deadline(hdrs: Mapping[str, str]) -> float:
    """Event-loop time after which the request's caller no longer waits for it
    (``Sb-Timeout`` from now; never without one)."""
    timeout = h.timeout_seconds(hdrs.get(h.TIMEOUT))
    return math.inf if timeout is None else asyncio.get_running_loop().time() + timeout


def scheduled(
    service: Service,
    op: Op,
    endpoint: Callable[[MicroRequest, int], Awaitable[None]],
    metrics: ServiceMetrics,
    scheduler: FairScheduler,
    *,
    ordered: bool = False,
    handoff: Callable[[MicroRequest], Awaitable[None]] | None = None,
):
    """``endpoint`` behind ``scheduler``: each request is queued as it arrives, for its
    caller (connection, and user when there is one), with the deadline its
    ``Sb-Timeout`` gives (none without one). An expired
    request is answered 408, a refused one 503 ``service busy``; both are counted in
    ``switchboard_service_requests_total`` (status ``timeout``, ``busy``).

    ``ordered`` (:class:`OrderedOps`): the caller is the connection its ``Sb-Gateway``
    and ``Sb-Conn`` headers name (a socket's leave on close has no reply subject of its
    own); an operation outside :data:`wire.subjects.EXPIRING_OPS` (a leave) never
    expires and is never refused for a full queue: it must happen, so if the worker
    stops before its turn comes, it goes to ``handoff`` (another replica) instead."""
    expired = metrics.requests.labels(service, op, Status.TIMEOUT)
    refused = metrics.requests.labels(service, op, Status.BUSY)
    must_run = ordered and op not in EXPIRING_OPS
    hand_off = handoff if must_run else None

    async def take(msg: MicroRequest) -> None:
        received = time.time_ns()
        hdrs = msg.headers or {}
        # whose turn: the reply subject's connection (relayed frames); requests made
        # with nc.request() (files) share their gateway's inbox, so the user counts too
        caller = reply_caller(msg._msg.reply or "")  # micro's Request keeps it private
        gateway, conn = hdrs.get(h.GATEWAY), hdrs.get(h.CONN)
        if ordered and gateway and conn:
            caller = f"{gateway} {conn}"
        elif user := hdrs.get(h.USER):
            caller = f"{caller} {user}"
        job = Job(
            partial(endpoint, msg, received),
            partial(_answer, msg, EXPIRED, expired),
            math.inf if must_run else _deadline(hdrs),
            len(msg.data) + REQUEST_OVERHEAD,
            partial(hand_off, msg) if hand_off else partial(_answer, msg, STOPPING, refused),
            must_run,
        )
        if not scheduler.submit(caller, job):
            await _answer(msg, BUSY, refused)

    return take


def by_op(endpoints: Mapping[Op, Callable[[MicroRequest], Awaitable[None]]]):
    """One endpoint for the pinned subjects of several ops (:func:`pinned_wildcard`):
    each request to its op's endpoint, in the order they arrive."""

    async def endpoint(msg: MicroRequest) -> None:
        target = endpoints.get(pinned_op(msg.subject))  # type: ignore[arg-type]
        if target is None:
            await msg.respond_error(str(ErrorCode.BAD_REQUEST), f"no operation at {msg.subject}")
            return
        await target(msg)

    return endpoint


def wrap_batch(service: Service, handlers: Mapping[Op, Handler], metrics: ServiceMetrics):
    """The batch endpoint (:mod:`wire.batch`): each frame through its operation's
    :class:`OpCall`, in order, then one reply with every frame's result. A batch that
    cannot be read is refused whole, with the ordinary error headers."""
    calls = {op: OpCall(service, op, handlers[op], metrics) for op in BATCH_OPS & handlers.keys()}

    async def endpoint(msg: MicroRequest) -> None:
        received = time.time_ns()
        hdrs = msg.headers or {}
        try:
            op, items = batch.decode_request(msg.data, hdrs)
            call = calls.get(op)
            if call is None:
                raise batch.BatchDecodeError(f"{service} has no operation {op}")
        except batch.BatchDecodeError as exc:
            log.warning("bad batch: %s", exc, extra={"service": str(service)})
            await msg.respond_error(str(ErrorCode.BAD_REQUEST), f"bad batch: {exc}")
            return
        sent_at = hdrs.get(h.SENT_AT)
        results: list[bytes | WireError] = []
        for item in items:
            req = Request(item.data, item.frame, traceparent=item.traceparent, sent_at=sent_at)
            result = await call(req, received)
            results.append(result.payload if isinstance(result, Reply) else result)
        payload, reply_headers = batch.encode_reply(results)
        await msg.respond(payload, headers=reply_headers)

    return endpoint


async def serve(
    service: Service,
    settings: ServiceSettings,
    factory: HandlerFactory,
    stop: asyncio.Event,
    registry: CollectorRegistry | None = None,
    slow: SlowOps = NO_SLOW_OPS,
    ordered: OrderedOps = ONE_AT_A_TIME,
) -> None:
    registry = registry or CollectorRegistry()
    metrics = ServiceMetrics(registry, service)
    server, _ = start_http_server(settings.metrics_port, settings.metrics_host, registry=registry)
    log.info(
        "metrics listening",
        extra={"service": str(service), "port": server.server_port},
    )
    serving = False

    def on_state(up: bool) -> None:  # NATS connection up or down
        metrics.ready.set(1 if up and serving else 0)

    connecting = natsconn.connect(
        settings.nats_url,
        f"{service}",
        user=settings.nats_user,
        password=settings.nats_password,
        on_state=on_state,
    )
    nc = await _unless_stopped(connecting, stop)
    if nc is None:  # SIGTERM while NATS is unreachable: nothing to finish
        log.warning("stopped before NATS answered", extra={"service": str(service)})
        server.shutdown()
        return
    try:
        handlers = factory(nc)
        if inspect.isawaitable(handlers):  # its stores: JetStream may not answer yet
            handlers = await _unless_stopped(handlers, stop)
            if handlers is None:
                log.warning("stopped before JetStream answered", extra={"service": str(service)})
                return
        svc = await add_service(
            nc,
            name=str(service),
            version=VERSION,
            description=f"Switchboard {service} worker",
            queue_group=str(service),
            metadata={"metrics_port": str(server.server_port)},
        )
        # Ordered ops share one scheduler, one turn per connection (OrderedOps).
        in_order = ordered.scheduler(metrics.queued.labels(service, ORDERED))
        schedulers: list[FairScheduler] = [in_order]
        pinned: dict[Op, Callable[[MicroRequest], Awaitable[None]]] = {}
        for op, handler in handlers.items():
            is_ordered = op in ORDERED_OPS  # its replies name this replica (Sb-Instance)
            scheduler = in_order if is_ordered else None
            if op in slow.ops and not is_ordered:
                queued = metrics.queued.labels(service, op)
                scheduler = FairScheduler(slow.concurrency, slow.max_queued_bytes, queued)
                schedulers.append(scheduler)
            instance = svc.id if is_ordered else None
            subject = service_subject(service, op)
            handoff = partial(_hand_off, nc, subject) if is_ordered else None
            endpoint = wrap(service, op, handler, metrics, instance, scheduler, handoff)
            await svc.add_endpoint(name=str(op), subject=subject, handler=endpoint)
            if is_ordered:  # and gateways pin a connection's requests of it here
                pinned[op] = endpoint
        if pinned:  # one subscription for all of them: taken in the order they came
            subject = pinned_wildcard(service, svc.id)
            await svc.add_endpoint(name="pinned", subject=subject, handler=by_op(pinned))
        if BATCH_OPS & handlers.keys():
            await svc.add_endpoint(
                name="batch",
                subject=batch_subject(service),
                handler=wrap_batch(service, handlers, metrics),
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
        serving = True
        metrics.ready.set(1 if nc.is_connected else 0)
        # For supervisors (switchboard.localstack), whatever the log level: one line.
        freeze_startup_heap()
        print(f"{READY_LINE} {service} {svc.id}", flush=True)
        await stop.wait()
        serving = False
        metrics.ready.set(0)
        publisher.cancel()
        log.info("draining", extra={"service": str(service)})
        try:
            drained = _drain_endpoints(svc, nc, schedulers)
            await asyncio.wait_for(drained, settings.shutdown_timeout)
            await asyncio.wait_for(nc.drain(), settings.shutdown_timeout)
        except TimeoutError:
            log.warning("drain timed out", extra={"service": str(service)})
            await _abandon(schedulers, nc, settings.shutdown_timeout)
        except Exception as exc:  # NATS unreachable (reconnecting): nothing can be drained
            log.warning("drain failed: %r", exc, extra={"service": str(service)})
    finally:
        if not nc.is_closed:
            with contextlib.suppress(Exception):  # its transport may be gone already
                await nc.close()
        server.shutdown()


_T = TypeVar("_T")


async def _unless_stopped(work: Awaitable[_T], stop: asyncio.Event) -> _T | None:
    """``work``'s result, or None (``work`` cancelled) if ``stop`` is set first: a
    worker that cannot reach NATS or JetStream yet still stops on SIGTERM at once."""
    doing = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((doing, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not doing.done():
        doing.cancel()
        return None
    return doing.result()


# How long requests routed to us before our UNSUB may still arrive after its round trip.
LATE_GRACE = 0.1


async def _drain_endpoints(svc, nc, schedulers: list[FairScheduler]) -> None:
    """Stop taking requests and finish those already received, first, while the rest of
    the connection still works: ``nc.drain()`` drains every subscription at once, the
    request-reply inbox too, so a handler that makes a request of its own while it
    finishes (chat's JetStream publish and reads) would never get that answer.

    nats-py's ``Subscription.drain()`` unsubscribes, waits for one PING/PONG and then
    forgets the subscription once its queue is empty. But nats-server routes another
    client's request on that client's own goroutine: one routed just before our UNSUB
    can be written to us just after our PONG, reach a subscription already forgotten and
    be dropped, neither answered nor refused with 503 (seen in CI: a chat message sent
    to a stopping replica timed out, lost). So: UNSUB all, one round trip, a grace
    period while the subscriptions still take what arrives, then drain as before; and
    last, wait for what the schedulers (:class:`SlowOps`, :class:`OrderedOps`) took to
    be answered."""
    subs = [getattr(ep, "_subscription", None) for ep in getattr(svc, "_endpoints", ())]
    subs = [sub for sub in subs if sub is not None]
    for sub in subs:
        await nc._send_unsubscribe(sub._id)  # nats-py has no public UNSUB-but-keep
    await nc.flush()
    await asyncio.sleep(LATE_GRACE)
    await asyncio.gather(*(sub.drain() for sub in subs))
    await asyncio.gather(*(scheduler.join() for scheduler in schedulers))


async def _hand_off(nc: Client, subject: str, msg: MicroRequest) -> None:
    """A request that must happen (a leave), taken but not handled before this worker
    stopped: to the queue group again, with its reply subject, for another replica (its
    dedupe id makes a repeat harmless; with no other replica, nats-server answers 503)."""
    await nc.publish(subject, msg.data, reply=msg._msg.reply or "", headers=msg.headers)


async def _abandon(schedulers: list[FairScheduler], nc, grace: float) -> None:
    """Out of time on shutdown: what the schedulers still hold waiting is answered 503
    "service stopping" (the client sends it again; a leave is handed to another
    replica) rather than dropped, what runs gets ``grace`` more to finish and be
    answered, then the connection drains."""
    for scheduler in schedulers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(scheduler.abandon(), 1.0)
    with contextlib.suppress(Exception):
        joined = asyncio.gather(*(scheduler.join() for scheduler in schedulers))
        await asyncio.wait_for(joined, grace)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.drain(), grace)


def run(
    service: Service,
    settings: ServiceSettings,
    factory: HandlerFactory,
    slow: SlowOps = NO_SLOW_OPS,
    ordered: OrderedOps = ONE_AT_A_TIME,
    registry: CollectorRegistry | None = None,
) -> None:
    """Entry point of ``python -m services.<name>``. ``registry``: the one /metrics
    serves, for a worker with metrics of its own (chat's)."""
    logs.configure(settings.log_level, str(service))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(service, settings, factory, stop, registry, slow=slow, ordered=ordered)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover
        asyncio.run(main())
