"""Live figures: snapshots read from a registry, aggregated into rates and percentiles,
handed to dashboard sockets newest-only; the local NATS exporter's translation."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.dashboard import DashboardSocket
from gateway.limits import Admission
from gateway.stats import Aggregator, LiveStats, Watcher
from switchboard.natsexporter import VarzCollector
from wire import stats as live
from wire.metrics import GatewayMetrics, ServiceMetrics, Status


def test_quantile_matches_promql_histogram_quantile() -> None:
    # 30 observations in (0.5 ms, 1 ms], 30 in (5 ms, 10 ms]
    counts = [0.0 if b < 0.001 else (30.0 if b < 0.01 else 60.0) for b in live.BOUNDS]
    # p99: rank 59.4 in (5 ms, 10 ms]: 5 ms + 5 ms * (59.4 - 30) / 30
    assert live.quantile(0.99, counts) == pytest.approx(0.0099)
    # p50: rank 30 reached at 1 ms exactly: 0.5 ms + 0.5 ms * 30 / 30
    assert live.quantile(0.5, counts) == pytest.approx(0.001)
    assert live.quantile(0.25, counts) == pytest.approx(0.00075)
    assert live.quantile(0.99, [0.0] * len(live.BOUNDS)) is None
    everything_slow = [0.0] * (len(live.BOUNDS) - 1) + [5.0]
    assert live.quantile(0.99, everything_slow) == live.BOUNDS[-2]


def test_snapshots_read_the_metrics() -> None:
    registry = CollectorRegistry()
    gw = GatewayMetrics(registry)
    gw.frames.labels("/ws", "in", "text").inc(7)
    gw.frames.labels("/ws", "out", "text").inc(3)
    gw.connections.labels("/ws").set(2)
    gw.hop_seconds.labels("/ws", "send", Status.OK).observe(0.0002)
    gw.frame_seconds.labels("/ws", Status.TIMEOUT).observe(2.0)
    snap = live.gateway_snapshot(gw, "gw1")
    assert snap["component"] == "gateway" and snap["id"] == "gw1"
    assert snap["counters"]["frames_in"] == {"/ws": 7}
    assert snap["counters"]["frames"]["timeout"] == 1
    assert snap["gauges"]["connections"] == {"/ws": 2}
    send = snap["hops"]["send"]
    assert len(send) == len(live.BOUNDS) and send[-1] == 1
    assert send[live.BOUNDS.index(0.00025)] == 1 and send[live.BOUNDS.index(0.0001)] == 0
    assert snap["hops"]["total"][-1] == 1
    json.dumps(snap)  # JSON all the way

    registry = CollectorRegistry()
    svc = ServiceMetrics(registry, "codec")
    svc.requests.labels("codec", "echo", Status.OK).inc(5)
    svc.handling_seconds.labels("codec", "echo", Status.OK).observe(0.001)
    svc.transit_seconds.labels("codec", "echo", Status.OK).observe(0.0004)
    svc.queue_seconds.labels("codec", "echo", Status.OK).observe(0.02)
    snap = live.service_snapshot(svc, "codec", "abc")
    assert snap["counters"]["requests"] == {"ok": 5}
    assert snap["hops"]["handling"][-1] == 1 and snap["hops"]["transit"][-1] == 1
    assert snap["hops"]["queue"][-1] == 1 and snap["hops"]["queue"][7] == 0  # > 10 ms


def _snap(component: str, iid: str, at: float, **parts) -> dict:
    return {"v": 1, "component": component, "id": iid, "at": at, **parts}


def _hist(n_fast: float, n_slow: float) -> list[float]:
    # n_fast observations <= 0.1 ms, n_slow more <= 10 ms
    return [0.0 if b < 0.0001 else (n_fast if b < 0.01 else n_fast + n_slow) for b in live.BOUNDS]


def test_aggregator_rates_percentiles_instances() -> None:
    agg = Aggregator(stale_after=3.0)
    for iid, frames in (("g1", 10), ("g2", 30)):
        agg.ingest(
            _snap(
                "gateway",
                iid,
                100.0,
                counters={"frames_in": {"/ws": 0}},
                gauges={"connections": {"/ws": 1}},
                hops={"total": _hist(0, 0)},
            ),
            now=0.0,
        )
        agg.ingest(
            _snap(
                "gateway",
                iid,
                102.0,
                counters={"frames_in": {"/ws": frames}},
                gauges={"connections": {"/ws": 2}},
                hops={"total": _hist(frames, 0)},
            ),
            now=2.0,
        )
    agg.ingest(_snap("codec", "c1", 100.0, counters={"requests": {"ok": 0}}), now=0.0)
    agg.ingest(_snap("codec", "c1", 101.0, counters={"requests": {"ok": 8}}), now=1.0)
    agg.ingest(_snap("chat", "old", 90.0), now=-5.0)  # silent since: gone

    figures = agg.figures(now=2.5)
    assert figures["instances"] == {"chat": 0, "binary": 0, "codec": 1, "gateway": 2}
    assert figures["frames_per_second"] == {"/ws": 20.0}  # (10 + 30) frames over 2 s
    assert figures["connections"] == {"/ws": 4}
    assert figures["requests_per_second"]["codec"] == 8.0
    assert figures["p99_seconds"]["total"] == pytest.approx(0.0001 * 0.99, rel=0.02)
    assert figures["p99_seconds"]["transit"] is None
    json.dumps(figures)

    agg.ingest(_snap("gateway", "g1", 101.0), now=3.0)  # out of order: ignored
    assert agg.instances[("gateway", "g1")][1]["at"] == 102.0
    assert agg.figures(now=10.0)["instances"]["gateway"] == 0  # all stale


async def test_watcher_keeps_only_the_newest() -> None:
    watcher = Watcher()
    for i in range(5):
        watcher.offer(f"{i}".encode())
    assert await watcher.next() == b"4"
    waiting = asyncio.create_task(watcher.next())
    await asyncio.sleep(0)
    assert not waiting.done()
    watcher.offer(b"5")
    assert await asyncio.wait_for(waiting, 1) == b"5"


async def test_dashboard_socket_skips_figures_a_slow_client_missed() -> None:
    stats = LiveStats("gw1", CollectorRegistry(), GatewayMetrics(CollectorRegistry()))
    incoming: asyncio.Queue[dict] = asyncio.Queue()
    sent: list[str] = []
    first_send, second_send, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def receive() -> dict:
        return await incoming.get()

    async def send(message: dict) -> None:
        if message["type"] == "websocket.send":
            sent.append(message["text"])
            (second_send if first_send.is_set() else first_send).set()
            await release.wait()  # a slow client: the first write blocks

    stats.latest = b'{"n":1}'  # a new socket gets the current figures at once
    await incoming.put({"type": "websocket.connect"})
    task = asyncio.create_task(DashboardSocket(stats)({}, receive, send))
    await asyncio.wait_for(first_send.wait(), 1)
    (watcher,) = stats.watchers
    for n in range(2, 6):  # produced while the client is stuck on the first one
        watcher.offer(f'{{"n":{n}}}'.encode())
    release.set()
    await asyncio.wait_for(second_send.wait(), 1)
    await incoming.put({"type": "websocket.disconnect"})
    await asyncio.wait_for(task, 1)
    assert sent == ['{"n":1}', '{"n":5}']
    assert not stats.watchers


async def _dashboard(socket: DashboardSocket, ip: str, frames: list[dict]) -> list[dict]:
    """What ``socket`` sends to a client at ``ip`` that sends ``frames`` then leaves."""
    incoming: asyncio.Queue[dict] = asyncio.Queue()
    for frame in [{"type": "websocket.connect"}, *frames, {"type": "websocket.disconnect"}]:
        incoming.put_nowait(frame)
    out: list[dict] = []

    async def send(message: dict) -> None:
        out.append(message)

    scope = {"client": (ip, 50000), "headers": []}
    await asyncio.wait_for(socket(scope, incoming.get, send), 2)
    return out


async def test_dashboards_count_against_the_connection_caps_and_floods_are_closed() -> None:
    stats = LiveStats("gw1", CollectorRegistry(), GatewayMetrics(CollectorRegistry()))
    admission = Admission(total=100, per_ip=2)
    socket = DashboardSocket(stats, [], admission)
    admission.admit("10.0.0.1")
    admission.admit("10.0.0.1")  # the address's two connections are in use
    refused = await _dashboard(socket, "10.0.0.1", [])
    assert refused[-1]["code"] == 1013 and refused[-1]["reason"] == "too many dashboards"
    assert admission.by_ip["10.0.0.1"] == 2  # nothing taken for the refused one
    served = await _dashboard(socket, "10.0.0.2", [{"type": "websocket.receive", "text": "x"}])
    assert not any(m["type"] == "websocket.close" for m in served)
    assert "10.0.0.2" not in admission.by_ip  # given back when it left
    flood = [{"type": "websocket.receive", "text": "x"}] * 100
    closed = await _dashboard(socket, "10.0.0.3", flood)
    assert closed[-1] == {"type": "websocket.close", "code": 1008, "reason": "rate limit exceeded"}
    assert not stats.watchers and "10.0.0.3" not in admission.by_ip


def test_local_nats_exporter_speaks_like_the_official_one() -> None:
    varz = {
        "server_id": "NABC",
        "server_name": "local",
        "version": "2.11.0",
        "connections": 4,
        "in_msgs": 120,
        "slow_consumers": 0,
        "mem": 1048576,
        "cpu": 1.5,
        "jetstream": {"config": {}},
        "auth_required": False,
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(varz).encode()
            self.send_response(200 if self.path == "/varz" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        registry = CollectorRegistry()
        registry.register(VarzCollector(url))
        text = generate_latest(registry).decode()
        assert registry.get_sample_value("gnatsd_varz_connections", {"server_id": url}) == 4
        assert registry.get_sample_value("gnatsd_varz_in_msgs", {"server_id": url}) == 120
        assert registry.get_sample_value("gnatsd_varz_cpu", {"server_id": url}) == 1.5
        assert (
            registry.get_sample_value("gnatsd_varz_version", {"server_id": url, "value": "2.11.0"})
            == 1
        )
        assert "auth_required" not in text and "jetstream" not in text
    finally:
        server.shutdown()
    registry = CollectorRegistry()
    registry.register(VarzCollector(url, timeout=0.5))
    assert generate_latest(registry) == b""  # server gone: an empty scrape


async def test_dashboard_socket_refuses_foreign_origins_and_too_many_watchers() -> None:
    from gateway import dashboard

    stats = LiveStats("gw1", CollectorRegistry(), GatewayMetrics(CollectorRegistry()))
    app = DashboardSocket(stats, allowed_hosts=["gw.example"])

    async def run(headers: list[tuple[bytes, bytes]]) -> list[dict]:
        sent: list[dict] = []
        incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect"}]

        async def receive() -> dict:
            return incoming.pop(0)

        async def send(message: dict) -> None:
            sent.append(message)

        await asyncio.wait_for(app({"headers": headers}, receive, send), 1)
        return sent

    foreign = [(b"host", b"gw.example:8000"), (b"origin", b"http://evil.example")]
    assert await run(foreign) == [{"type": "websocket.close", "code": 1008}]
    rebound = [(b"host", b"rebind.example:8000"), (b"origin", b"http://rebind.example:8000")]
    assert await run(rebound) == [{"type": "websocket.close", "code": 1008}]  # not listed
    same = [(b"host", b"gw.example:8000"), (b"origin", b"http://gw.example:8000")]
    assert (await run(same))[0] == {"type": "websocket.accept"}
    stats.watchers.update(Watcher() for _ in range(dashboard.MAX_WATCHERS))
    sent = await run(same)
    assert sent[-1]["code"] == 1013
