"""Per-hop latency and per-frame trace logs, asserted on a fresh registry after known
traffic: the gateway's hub and relay (with a NATS stand-in) and the worker wrapper."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from gateway.connection import Connection
from gateway.endpoints import ECHO
from gateway.hops import HOP_KEY
from gateway.hub import Hub
from gateway.relay import RelayEndpoint
from gateway.settings import GatewaySettings
from services.runner import wrap
from wire import headers as h
from wire import logs
from wire.errors import ErrorCode, WireError
from wire.frames import Request, encode_text
from wire.metrics import GatewayMetrics, ServiceMetrics
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
    settings = GatewaySettings(id="gwtest", request_timeout=2.0)
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

    assert [m.get("text") for m in sent] == [
        "Echo: m0",
        "Echo: m1",
        "Error: internal error",
        "Error: service unavailable",
        None,  # the close
    ]
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
