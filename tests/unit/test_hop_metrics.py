"""Per-hop latency and per-frame trace logs, asserted on a fresh registry after known
traffic: the gateway's hub and relay (with a NATS stand-in) and the worker wrapper."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from gateway.connection import Connection
from gateway.endpoints import COMPRESSED, ECHO, V2
from gateway.hops import HOP_KEY
from gateway.hub import Hub, _status
from gateway.relay import RelayEndpoint
from gateway.settings import GatewaySettings
from services.runner import wrap, wrap_batch
from wire import batch, logs
from wire import headers as h
from wire.errors import GATEWAY_BUSY, SERVICE_BUSY, SERVICE_STOPPING, ErrorCode, WireError
from wire.frames import Request, encode_text
from wire.metrics import GatewayMetrics, ServiceMetrics, Status
from wire.subjects import Op, Service


class FakeNats:
    is_connected = True
    is_closed = False

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, str, dict[str, str]]] = []

    async def publish(self, subject, data=b"", reply="", headers=None) -> None:
        self.published.append((subject, data, reply, headers or {}))


@dataclass
class Msg:
    subject: str
    data: bytes
    headers: dict[str, str] | None = None


@pytest.fixture
def gateway():
    registry = CollectorRegistry()
    settings = GatewaySettings(id="gwtest", request_timeout=2.0, batch=False)
    metrics = GatewayMetrics(registry)
    hub = Hub(settings, metrics)
    hub.nc = FakeNats()  # type: ignore[assignment]
    relay = RelayEndpoint(ECHO, hub, settings, metrics)
    return registry, hub, relay


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def feed(relay: RelayEndpoint, conn: Connection, frames: list[dict]) -> None:
    queue = [*frames, {"type": "websocket.disconnect"}]

    async def receive() -> dict:
        return queue.pop(0)

    await relay._receive(conn, receive)


async def drain(relay: RelayEndpoint, conn: Connection) -> list[dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    conn.close(1000, "done")
    await asyncio.wait_for(relay._send(conn, send), 2)
    return sent


# What the socket gets for four frames: two answered, one refused by the worker, one
# timed out, then the close.
EXPECTED = ["Echo: m0", "Echo: m1", "Error: internal error", "Error: service unavailable", None]


async def test_gateway_hops_after_known_traffic(gateway, caplog) -> None:
    registry, hub, relay = gateway
    conn = Connection(hub.new_id(), ECHO, 16)
    hub.register(conn)
    caplog.set_level(logging.DEBUG, logger="gateway.frames")

    await feed(relay, conn, [{"type": "websocket.receive", "text": f"m{i}"} for i in range(4)])
    published = hub.nc.published
    assert len(published) == 4
    # three answered by the worker (two ok, one error), the fourth times out
    for i, (_, _, reply, headers) in enumerate(published[:3]):
        stamp = {h.HANDLED_AT: h.now_ns(), h.TRACEPARENT: headers[h.TRACEPARENT]}
        if i == 2:
            stamp |= {h.ERROR_CODE: "500", h.ERROR: "internal error"}
            await hub._on_reply(Msg(reply, b"", stamp))
        else:
            await hub._on_reply(Msg(reply, encode_text(f"Echo: m{i}"), stamp))
    hub._fail(conn, 3, WireError(ErrorCode.TIMEOUT, "service timed out"))  # as the sweeper
    sent = await drain(relay, conn)

    assert [m.get("text") for m in sent] == EXPECTED
    assert all(HOP_KEY not in m for m in sent), "the hop marker must not reach the socket"

    hop = "switchboard_gateway_hop_duration_seconds_count"
    total = "switchboard_gateway_frame_duration_seconds_count"
    assert value(registry, hop, endpoint="/ws", hop="receive", status="ok") == 4
    assert value(registry, hop, endpoint="/ws", hop="return", status="ok") == 2
    assert value(registry, hop, endpoint="/ws", hop="return", status="error") == 1
    assert value(registry, hop, endpoint="/ws", hop="send", status="ok") == 2
    assert value(registry, hop, endpoint="/ws", hop="send", status="error") == 1
    assert value(registry, hop, endpoint="/ws", hop="send", status="timeout") == 1
    assert value(registry, total, endpoint="/ws", status="ok") == 2
    assert value(registry, total, endpoint="/ws", status="error") == 1
    assert value(registry, total, endpoint="/ws", status="timeout") == 1
    assert value(registry, "switchboard_gateway_errors_total", code="408") == 1
    assert value(registry, "switchboard_gateway_errors_total", code="500") == 1
    assert (
        value(
            registry,
            "switchboard_gateway_request_duration_seconds_count",
            service="codec",
            status="ok",
        )
        == 2
    )
    # bounded label sets exist before they happen
    assert registry.get_sample_value("switchboard_gateway_errors_total", {"code": "503"}) == 0
    assert (
        registry.get_sample_value(
            "switchboard_gateway_dropped_messages_total", {"reason": "slow_consumer"}
        )
        == 0
    )

    # one trace id per frame, on every gateway line about it
    first = h.trace_id(published[0][3][h.TRACEPARENT])
    lines = [r for r in caplog.records if getattr(r, "trace_id", None) == first]
    assert [r.getMessage() for r in lines] == ["frame published", "reply received", "reply sent"]
    timed_out = h.trace_id(published[3][3][h.TRACEPARENT])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [getattr(r, "trace_id", None) for r in warnings] == [timed_out]


async def test_gateway_hops_of_batched_frames(gateway, caplog) -> None:
    """The same traffic as above, batched: one NATS message out, one back; every frame
    still gets its own hops, outcome, trace lines, and the timed-out one a late reply."""
    registry, hub, relay = gateway
    hub.settings.batch = True
    conn = Connection(hub.new_id(), ECHO, 16)
    hub.register(conn)
    caplog.set_level(logging.DEBUG, logger="gateway.frames")

    await feed(relay, conn, [{"type": "websocket.receive", "text": f"m{i}"} for i in range(4)])
    assert hub.nc.published == []  # held until the end of the loop pass
    await hub._flushing
    [(subject, payload, reply, headers)] = hub.nc.published
    assert subject == "sb.svc.codec.batch" and reply == "sb.gw.gwtest.b.1"
    op, items = batch.decode_request(payload, headers)
    assert op == Op.ECHO and [i.data for i in items] == [b"m0", b"m1", b"m2", b"m3"]
    assert headers[batch.KEYS] == " ".join(f"{conn.id}.{seq}" for seq in range(4))
    hub._fail(conn, 3, WireError(ErrorCode.TIMEOUT, "service timed out"))  # as the sweeper
    results = [encode_text("Echo: m0"), encode_text("Echo: m1")]
    results += [WireError(ErrorCode.INTERNAL, "internal error"), encode_text("Echo: m3")]
    data, reply_headers = batch.encode_reply(results)
    await hub._on_reply(Msg(reply, data, reply_headers))
    sent = await drain(relay, conn)

    assert [m.get("text") for m in sent] == EXPECTED
    hop = "switchboard_gateway_hop_duration_seconds_count"
    assert value(registry, hop, endpoint="/ws", hop="receive", status="ok") == 4
    assert value(registry, hop, endpoint="/ws", hop="return", status="ok") == 2
    assert value(registry, hop, endpoint="/ws", hop="return", status="error") == 1
    assert value(registry, hop, endpoint="/ws", hop="send", status="timeout") == 1
    assert value(registry, "switchboard_gateway_errors_total", code="500") == 1
    assert value(registry, "switchboard_gateway_late_replies_total") == 1
    assert hub.in_flight == 0 and not hub._batches
    traces = [t for t in headers[batch.TRACES].split()]
    first = h.trace_id(traces[0])
    lines = [r for r in caplog.records if getattr(r, "trace_id", None) == first]
    assert [r.getMessage() for r in lines] == ["frame published", "reply received", "reply sent"]


async def test_a_batch_refused_whole_fails_each_frame(gateway) -> None:
    """No worker (the server's 503 carries no payload) or a worker refusing the batch:
    every frame in it gets the error frame, in order."""
    registry, hub, relay = gateway
    hub.settings.batch = True
    conn = Connection(hub.new_id(), ECHO, 16)
    hub.register(conn)
    for status in ({h.STATUS: "503"}, {h.ERROR_CODE: "400", h.ERROR: "bad batch: x"}):
        await feed(relay, conn, [{"type": "websocket.receive", "text": "a"}] * 2)
        await hub._flushing
        await hub._on_reply(Msg(hub.nc.published[-1][2], b"", status))
    sent = await drain(relay, conn)
    assert [m.get("text") for m in sent] == ["Error: service unavailable"] * 2 + [
        "Error: bad batch: x"
    ] * 2 + [None]
    assert value(registry, "switchboard_gateway_errors_total", code="503") == 2
    assert hub.in_flight == 0


async def test_a_lone_frame_goes_unbatched(gateway) -> None:
    _, hub, relay = gateway
    hub.settings.batch = True
    conn = Connection(hub.new_id(), ECHO, 16)
    hub.register(conn)
    await feed(relay, conn, [{"type": "websocket.receive", "text": "x"}])
    await hub._flushing
    [(subject, payload, reply, _)] = hub.nc.published
    assert (subject, payload, reply) == ("sb.svc.codec.echo", b"x", f"sb.gw.gwtest.{conn.id}.0")


async def test_batches_are_bounded_by_frames_and_bytes(gateway) -> None:
    _, hub, relay = gateway
    hub.settings.batch = True
    hub.settings.batch_max_frames = 3
    hub.settings.batch_max_bytes = 10
    conn = Connection(hub.new_id(), ECHO, 64)
    hub.register(conn)
    texts = ["a", "b", "c", "d", "e", "fffff", "gggggg", "hhhhhhhhhhhh"]
    await feed(relay, conn, [{"type": "websocket.receive", "text": t} for t in texts])
    await hub._flushing
    sizes = []
    for subject, payload, _, headers in hub.nc.published:
        if subject.endswith(".batch"):
            sizes.append([i.data.decode() for i in batch.decode_request(payload, headers)[1]])
        else:
            sizes.append([payload.decode()])
    # 3 frames at most, 10 bytes at most; a frame over 10 bytes goes alone, at once
    assert sizes == [["hhhhhhhhhhhh"], ["a", "b", "c"], ["d", "e", "fffff"], ["gggggg"]]


async def test_empty_reply_ends_the_frame_on_arrival(gateway) -> None:
    registry, hub, relay = gateway
    conn = Connection(hub.new_id(), ECHO, 16)
    hub.register(conn)
    await feed(relay, conn, [{"type": "websocket.receive", "text": "x"}])
    reply = hub.nc.published[0][2]
    await hub._on_reply(Msg(reply, b"", {h.HANDLED_AT: h.now_ns()}))
    assert (
        value(
            registry,
            "switchboard_gateway_frame_duration_seconds_count",
            endpoint="/ws",
            status="ok",
        )
        == 1
    )
    sent = await drain(relay, conn)
    assert sent == [{"type": "websocket.close", "code": 1000, "reason": "done"}]
    assert (
        value(
            registry,
            "switchboard_gateway_hop_duration_seconds_count",
            endpoint="/ws",
            hop="send",
            status="ok",
        )
        == 0
    )


@dataclass
class MicroRequest:
    data: bytes
    headers: dict[str, str]
    replies: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

    async def respond(self, data: bytes = b"", headers=None) -> None:
        self.replies.append((data, dict(headers or {})))

    async def respond_error(self, code, description, data=b"", headers=None) -> None:
        hdrs = dict(headers or {})
        hdrs.update({h.ERROR_CODE: code, h.ERROR: description})
        await self.respond(data, hdrs)


async def test_service_wrapper_hops_and_trace(caplog) -> None:
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry, Service.CODEC)
    seen: list[str | None] = []
    log = logging.getLogger("services.codec.test")

    async def handler(req: Request) -> bytes:
        seen.append(logs.TRACE_ID.get())
        log.info("inside the handler")
        if req.data == b"bad":
            raise WireError(ErrorCode.BAD_REQUEST, "bad")
        if req.data == b"boom":
            raise RuntimeError("boom")
        return encode_text("ok")

    endpoint = wrap(Service.CODEC, Op.ECHO, handler, metrics)
    trace_filter = logs.TraceFilter()
    caplog.handler.addFilter(trace_filter)
    caplog.set_level(logging.DEBUG)
    try:
        requests = []
        for data in (b"a", b"b", b"bad", b"boom"):
            hdrs = {h.SENT_AT: h.now_ns(), h.TRACEPARENT: h.new_traceparent(), h.FRAME: "t"}
            requests.append(MicroRequest(data, hdrs))
            await endpoint(requests[-1])
    finally:
        caplog.handler.removeFilter(trace_filter)

    def v(name: str, status: str) -> float:
        labels = {"service": "codec", "operation": "echo", "status": status}
        return registry.get_sample_value(name, labels) or 0.0

    assert v("switchboard_service_requests_total", "ok") == 2
    assert v("switchboard_service_requests_total", "error") == 2
    assert v("switchboard_service_handling_duration_seconds_count", "ok") == 2
    assert v("switchboard_service_handling_duration_seconds_count", "error") == 2
    assert v("switchboard_service_transit_duration_seconds_count", "ok") == 2
    assert v("switchboard_service_transit_duration_seconds_count", "error") == 2
    assert (
        registry.get_sample_value("switchboard_service_in_flight_requests", {"service": "codec"})
        == 0
    )

    traces = [h.trace_id(r.headers[h.TRACEPARENT]) for r in requests]
    assert seen == traces  # the context variable is the frame's trace id while handled
    assert logs.TRACE_ID.get() is None  # and reset afterwards
    for req in requests:
        (_, reply_headers), *_ = req.replies
        assert reply_headers[h.TRACEPARENT] == req.headers[h.TRACEPARENT]
        assert int(reply_headers[h.HANDLED_AT]) >= int(req.headers[h.SENT_AT])
    # every line about a frame, the handler's own included, carries its trace id
    for trace in traces:
        messages = [r.getMessage() for r in caplog.records if getattr(r, "trace_id", None) == trace]
        assert messages[0] == "request received" and messages[-1] == "request handled"
        assert "inside the handler" in messages
    crashed = [r for r in caplog.records if r.getMessage() == "handler failed"]
    assert len(crashed) == 1 and crashed[0].trace_id == traces[3]


async def test_service_batch_wrapper() -> None:
    """Each frame of a batch through the operation's handler, with the per-request
    metrics and trace of a lone request, answered together; a bad batch refused whole."""
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry, Service.CODEC)
    seen: list[str | None] = []

    async def handler(req: Request) -> bytes:
        seen.append(logs.TRACE_ID.get())
        if req.data == b"bad":
            raise WireError(ErrorCode.BAD_REQUEST, "bad input")
        if req.data == b"boom":
            raise RuntimeError("boom")
        return encode_text(f"{req.frame}:{req.data.decode()}")

    endpoint = wrap_batch(Service.CODEC, {Op.ECHO: handler, Op.TRANSFORM: handler}, metrics)
    traces = [h.new_traceparent() for _ in range(4)]
    items = [(f"1.{i}", d, i != 1, traces[i]) for i, d in enumerate([b"a", b"b", b"bad", b"boom"])]
    payload, hdrs = batch.encode_request(Op.ECHO, items)
    request = MicroRequest(payload, hdrs)
    await endpoint(request)
    [(data, reply_headers)] = request.replies
    assert batch.decode_reply(data, reply_headers, 4) == [
        encode_text("text:a"),
        encode_text("binary:b"),
        WireError(ErrorCode.BAD_REQUEST, "bad input"),
        WireError(ErrorCode.INTERNAL, "internal error"),
    ]
    assert int(reply_headers[h.HANDLED_AT]) >= int(hdrs[h.SENT_AT])
    assert seen == [h.trace_id(t) for t in traces]
    labels = {"service": "codec", "operation": "echo"}
    ok = registry.get_sample_value("switchboard_service_requests_total", labels | {"status": "ok"})
    failed = registry.get_sample_value(
        "switchboard_service_requests_total", labels | {"status": "error"}
    )
    transit = registry.get_sample_value(
        "switchboard_service_transit_duration_seconds_count", labels | {"status": "ok"}
    )
    assert (ok, failed, transit) == (2, 2, 2)

    # not a batched operation, an operation this service lacks, a broken payload
    for op, body in ((Op.TRANSFORM, payload), (Op.INSPECT, payload), (Op.ECHO, b"\x00")):
        bad = MicroRequest(body, {**hdrs, batch.OP: str(op)})
        await endpoint(bad)
        [(_, bad_headers)] = bad.replies
        assert bad_headers[h.ERROR_CODE] == "400" and "bad batch" in bad_headers[h.ERROR]


def test_loop_histogram_exposes_what_client_python_does() -> None:
    from prometheus_client import Histogram

    from wire.histogram import LoopHistogram
    from wire.metrics import LATENCY_BUCKETS

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    a = LoopHistogram("x_seconds", "x", ["k"], LATENCY_BUCKETS, ours)
    b = Histogram("x_seconds", "x", ["k"], buckets=LATENCY_BUCKETS, registry=theirs)
    for v in (0.0, 0.00005, 0.00006, 0.001, 0.3, 10.0, 99.0):  # bounds are inclusive
        a.labels("v").observe(v)
        b.labels("v").observe(v)

    def samples(registry: CollectorRegistry) -> list[tuple]:
        return sorted(
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        )

    assert samples(ours) == samples(theirs)


def test_a_workers_refusal_is_busy_not_unavailable() -> None:
    """Both are 503 on the wire; "no responders" means no worker, "service busy" or
    "service stopping" a worker that is there (the NoResponders alert fired for it)."""
    assert _status(SERVICE_BUSY) is Status.BUSY
    assert _status(SERVICE_STOPPING) is Status.BUSY
    assert _status(GATEWAY_BUSY) is Status.BUSY  # SB_GATEWAY_MAX_IN_FLIGHT_TOTAL
    missing = WireError(ErrorCode.UNAVAILABLE, "service unavailable")
    assert _status(missing) is Status.UNAVAILABLE


def test_a_refusal_for_load_tells_the_client_so() -> None:
    """A full queue or the gateway's in-flight cap: "service busy" / "gateway busy" in
    each endpoint's shape, so a client backs off; no worker, a timeout or a stopping
    worker: "service unavailable", as the tutorial's clients know it."""
    assert ECHO.error_message(SERVICE_BUSY)["text"] == "Error: service busy"
    assert ECHO.error_message(GATEWAY_BUSY)["text"] == "Error: gateway busy"
    assert COMPRESSED.error_message(SERVICE_BUSY)["text"] == (
        '{"status":"error","message":"service busy"}'
    )
    assert '"message":"service busy"' in V2.error_message(SERVICE_BUSY, "r1")["text"]
    for other in (
        SERVICE_STOPPING,
        WireError(ErrorCode.UNAVAILABLE, "no responders"),
        WireError(ErrorCode.TIMEOUT, "request expired before it was handled"),
    ):
        assert ECHO.error_message(other)["text"] == "Error: service unavailable"
