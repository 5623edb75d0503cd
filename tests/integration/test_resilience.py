"""Workers stopping, hanging, restarting and sharing load."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest

from switchboard.localstack import LocalStack, running
from tests.integration.client import connect, recv, recv_n, sample, scrape


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {"SB_GATEWAY_REQUEST_TIMEOUT": "0.5"}
    with running(tmp_path_factory.mktemp("resilience"), replicas={"codec": 2}, env=env) as s:
        yield s


def url(stack: LocalStack, path: str) -> str:
    return f"ws://127.0.0.1:{stack.gateways[0].port}{path}"


async def test_service_stopped_then_restarted(stack) -> None:
    async with connect(url(stack, "/ws/mixed")) as ws:
        await ws.send("before")
        assert await recv(ws) == "You sent a text message: before"
        for proc in stack.replicas("binary"):
            proc.stop()
        started = time.monotonic()
        await ws.send("during")
        assert await recv(ws) == "Error: service unavailable"
        assert time.monotonic() - started < 0.5  # no responders is immediate, not a timeout
        stack.start_service("binary")
        await ws.send("after")
        assert await recv(ws) == "You sent a text message: after"


async def test_hung_workers_time_out_and_the_socket_recovers(stack) -> None:
    codecs = stack.replicas("codec")
    port = stack.gateways[0].port
    late_before = sample(scrape(port), "switchboard_gateway_late_replies_total")
    async with connect(url(stack, "/ws")) as ws:
        for proc in codecs:
            proc.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            await ws.send("stuck")
            assert await recv(ws, timeout=3) == "Error: service unavailable"
            assert 0.4 < time.monotonic() - started < 2.0
        finally:
            for proc in codecs:
                proc.signal(signal.SIGCONT)
        await ws.send("unstuck")
        assert await recv(ws) == "Echo: unstuck"  # the late "Echo: stuck" was dropped
    deadline = time.monotonic() + 5
    while sample(scrape(port), "switchboard_gateway_late_replies_total") == late_before:
        assert time.monotonic() < deadline, "late reply was not counted"
        await asyncio.sleep(0.1)
    text = scrape(port)
    assert sample(text, "switchboard_gateway_errors_total", code="408") >= 1


async def test_two_codec_replicas_share_the_work(stack) -> None:
    codecs = stack.replicas("codec")
    assert len(codecs) == 2
    before = [
        sample(scrape(p.metrics_port), "switchboard_service_requests_total", operation="echo")
        for p in codecs
    ]
    async with connect(url(stack, "/ws")) as ws:
        for i in range(400):
            await ws.send(str(i))
            await asyncio.sleep(0.001)  # apart, not batched: each balanced on its own
        assert await recv_n(ws, 400) == [f"Echo: {i}" for i in range(400)]
    after = [
        sample(scrape(p.metrics_port), "switchboard_service_requests_total", operation="echo")
        for p in codecs
    ]
    served = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(served) == 400
    assert all(n > 0 for n in served), served


async def test_sigterm_with_requests_in_flight_loses_none(stack) -> None:
    """Pipeline frames on several sockets, SIGTERM one codec replica in the middle:
    every frame is answered correctly (the draining replica finishes what it has, the
    other takes the rest) and a replacement replica is started afterwards."""
    victim = stack.replicas("codec")[0]
    n, sockets = 400, 4

    async def client(k: int) -> list[str | bytes]:
        async with connect(url(stack, "/ws")) as ws:

            async def sender() -> None:
                for i in range(n):
                    await ws.send(f"{k}-{i}")
                    if i % 50 == 0:
                        await asyncio.sleep(0.01)

            task = asyncio.create_task(sender())
            replies = await recv_n(ws, n, timeout=10)
            await task
            return replies

    async def terminate() -> None:
        await asyncio.sleep(0.05)
        victim.signal(signal.SIGTERM)

    results = await asyncio.gather(*(client(k) for k in range(sockets)), terminate())
    for k in range(sockets):
        assert results[k] == [f"Echo: {k}-{i}" for i in range(n)]
    assert victim.wait(10) == 0, victim.log()[-2000:]
    assert "draining" in victim.log()
    stack.processes.remove(victim)
    stack.start_service("codec")


async def test_idempotent_requests_to_a_killed_replica_are_retried_on_another(stack) -> None:
    """Requests in flight to a replica that is SIGKILLed: echo is idempotent, so each is
    sent once more after half the timeout and reaches the surviving replica (NATS drops
    a dead client's subscriptions at once). No error frame, order kept, within the
    timeout. (SIGSTOP first makes sure requests are queued at the victim when it dies.)"""
    victim, _ = stack.replicas("codec")
    port = stack.gateways[0].port
    before = sample(scrape(port), "switchboard_gateway_retries_total", service="codec")
    victim.signal(signal.SIGSTOP)
    async with connect(url(stack, "/ws")) as ws:
        started = time.monotonic()
        for i in range(20):
            await ws.send(f"r{i}")
            # Frames read in one loop pass would travel as one batch, to one replica
            # (the survivor half the time): apart, each is balanced on its own. (A batch
            # lost with its replica: tests/integration/test_batching.py.)
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.05)
        victim.kill()
        assert await recv_n(ws, 20, timeout=3) == [f"Echo: r{i}" for i in range(20)]
        assert time.monotonic() - started < 0.5 + 0.3  # within the request timeout
    assert sample(scrape(port), "switchboard_gateway_retries_total", service="codec") > before
    stack.processes.remove(victim)
    stack.start_service("codec")
