"""``/readyz`` follows what the gateway can reach: 503 while a service has no instance
answering discovery or NATS is gone, 200 again once they are back; ``/healthz`` stays 200
throughout (the process is up). The tests share one stack; each first brings it to the
state it needs (:func:`with_codecs`), so that each runs alone or in any order."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from asyncio.subprocess import Process
from collections.abc import Iterator
from typing import Any

import nats
import pytest
import websockets

from switchboard.localstack import ROOT, LocalStack, free_port, nats_server_binary, running
from tests.integration.client import sample, scrape
from tests.integration.conftest import http_base

WAIT = 20.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("readiness"), replicas={"codec": 2}) as s:
        yield s


def get(stack: LocalStack, path: str) -> tuple[int, Any]:
    return fetch(http_base(stack) + path)


async def readyz_until(stack: LocalStack, status: int, **instances: int) -> dict[str, Any]:
    """Poll ``/readyz`` until it answers ``status`` with these instance counts."""
    deadline = time.monotonic() + WAIT
    while True:
        code, body = await asyncio.to_thread(get, stack, "/readyz")
        counts = body.get("instances", {})
        if code == status and all(counts.get(k) == v for k, v in instances.items()):
            return body
        assert time.monotonic() < deadline, (code, body)
        await asyncio.sleep(0.2)


async def with_codecs(stack: LocalStack, count: int) -> None:
    """NATS up and ``count`` codec replicas (one chat, one binary), as ``/readyz`` sees it."""
    assert stack.nats is not None
    if not stack.nats.alive():  # stopped by an earlier test
        await asyncio.to_thread(stack.start_nats)
    while len(stack.replicas("codec")) > count:
        await asyncio.to_thread(stack.replicas("codec")[0].stop)
    while len(stack.replicas("codec")) < count:
        await asyncio.to_thread(stack.start_service, "codec")
    await readyz_until(stack, 200 if count else 503, chat=1, binary=1, codec=count)


async def test_ready_with_every_service(stack) -> None:
    await with_codecs(stack, 2)
    body = await readyz_until(stack, 200, chat=1, binary=1, codec=2)
    assert body == {
        "status": "ready",
        "nats": "connected",
        "instances": {"chat": 1, "binary": 1, "codec": 2},
    }


async def test_one_replica_gone_is_still_ready(stack) -> None:
    await with_codecs(stack, 2)
    first, _ = stack.replicas("codec")
    await asyncio.to_thread(first.stop)
    body = await readyz_until(stack, 200, codec=1)
    assert body["status"] == "ready"


async def test_the_last_replica_gone_is_not_ready(stack) -> None:
    await with_codecs(stack, 1)
    (last,) = stack.replicas("codec")
    await asyncio.to_thread(last.stop)
    body = await readyz_until(stack, 503, codec=0)
    assert body == {
        "status": "not ready",
        "nats": "connected",
        "instances": {"chat": 1, "binary": 1, "codec": 0},
    }
    assert await asyncio.to_thread(get, stack, "/healthz") == (200, {"status": "ok"})


async def test_ready_again_once_a_replica_is_back(stack) -> None:
    await with_codecs(stack, 0)
    await asyncio.to_thread(stack.start_service, "codec")
    body = await readyz_until(stack, 200, codec=1)
    assert body["status"] == "ready"


async def test_not_ready_without_nats_and_ready_after_it_returns(stack) -> None:
    await with_codecs(stack, 1)
    assert stack.nats is not None
    await asyncio.to_thread(stack.nats.stop)
    body = await readyz_until(stack, 503)
    assert body["status"] == "not ready" and body["nats"] == "disconnected", body
    assert await asyncio.to_thread(get, stack, "/healthz") == (200, {"status": "ok"})
    await asyncio.to_thread(stack.start_nats)
    body = await readyz_until(stack, 200, chat=1, binary=1, codec=1)
    assert body["nats"] == "connected"


async def spawn_worker(service: str, nats_port: int, metrics_port: int) -> Process:
    env = {
        **os.environ,
        "SB_NATS_URL": f"nats://127.0.0.1:{nats_port}",
        f"SB_{service.upper()}_METRICS_PORT": str(metrics_port),
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"services.{service}", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def stops_at_once(proc: Process) -> None:
    """SIGTERM: a clean exit within 5 s."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert time.monotonic() - started < 5


async def kill(*procs: Process | None) -> None:
    for proc in procs:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_worker_is_ready_only_once_serving_and_stops_while_connecting() -> None:
    """``switchboard_service_ready`` (what the compose healthcheck reads) is 0 while the
    worker cannot reach NATS (its /metrics answered all along, so the check passed), and
    SIGTERM stops it at once (it was ignored until NATS answered)."""
    metrics = free_port()
    proc = await spawn_worker("codec", free_port(), metrics)  # nobody listens there
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                text = await asyncio.to_thread(scrape, metrics)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.returncode is None
                await asyncio.sleep(0.1)
        ready = [line for line in text.splitlines() if line.startswith("switchboard_service_ready")]
        assert ready == ['switchboard_service_ready{service="codec"} 0.0'], ready
        await stops_at_once(proc)
    finally:
        await kill(proc)


async def test_a_gateway_without_nats_serves_health_refuses_sockets_and_stops_on_sigterm(
    tmp_path,
) -> None:
    """Started while NATS is unreachable, the gateway waited for it before serving: no
    /healthz, and SIGTERM and Ctrl-C ignored until SIGKILL. Now it serves at once:
    /healthz 200, /readyz 503, sockets closed 1013 (try again later); it becomes ready
    when NATS comes up, and stops on SIGTERM either way."""
    nats_port, port = free_port(), free_port()
    env = {
        **os.environ,
        "SB_NATS_URL": f"nats://127.0.0.1:{nats_port}",
        "SB_GATEWAY_PORT": str(port),
        "SB_GATEWAY_ID": "lonely",
    }
    gateway = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    server = None
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                health = await asyncio.to_thread(fetch, base + "/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline and gateway.returncode is None
                await asyncio.sleep(0.1)
        assert health == (200, {"status": "ok"})
        code, body = await asyncio.to_thread(fetch, base + "/readyz")
        assert (code, body["nats"]) == (503, "disconnected")
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1013, (ws.close_code, ws.close_reason)
        # NATS comes up: the gateway connects and serves
        server = await asyncio.create_subprocess_exec(
            nats_server_binary(), "-a", "127.0.0.1", "-p", str(nats_port),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + WAIT
        while (await asyncio.to_thread(fetch, base + "/readyz"))[1]["nats"] != "connected":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        await stops_at_once(gateway)
        # and one that never reached NATS stops on SIGTERM too
        await kill(server)
        gateway = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", cwd=ROOT, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + WAIT
        while True:
            try:
                await asyncio.to_thread(fetch, base + "/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline and gateway.returncode is None
                await asyncio.sleep(0.1)
        await stops_at_once(gateway)
    finally:
        await kill(gateway, server)


def fetch(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("service", ["binary", "chat"])
async def test_a_worker_waiting_for_jetstream_stops_on_sigterm(service: str) -> None:
    """Connected to NATS but JetStream does not answer (a cluster without a meta
    leader; here a nats-server without JetStream and a subscriber on its API that never
    replies): binary and chat wait for their stores, up to 50 x SB_*_STORE_TIMEOUT,
    and ignored SIGTERM meanwhile (then compose's SIGKILL)."""
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        nats_server_binary(), "-a", "127.0.0.1", "-p", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    worker = None
    try:
        nc = await connect_retrying(f"nats://127.0.0.1:{port}")
        asked = asyncio.Event()

        async def silent(msg: nats.aio.msg.Msg) -> None:  # never answers
            asked.set()

        await nc.subscribe("$JS.API.>", cb=silent)
        worker = await spawn_worker(service, port, free_port())
        # connected, asking JetStream (a fixed sleep was too short on a loaded machine:
        # the SIGTERM came while it was still importing, before its handler was set)
        await asyncio.wait_for(asked.wait(), WAIT)
        assert worker.returncode is None
        await stops_at_once(worker)
        await nc.close()
    finally:
        await kill(worker, server)


async def connect_retrying(url: str) -> nats.aio.client.Client:
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return await nats.connect(url, connect_timeout=1, allow_reconnect=False)
        except Exception:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)


async def test_serving_workers_say_they_are_ready(stack) -> None:
    await with_codecs(stack, 1)
    for name in ("codec", "binary", "chat"):
        for worker in stack.replicas(name):
            assert worker.metrics_port is not None
            text = await asyncio.to_thread(scrape, worker.metrics_port)
            assert sample(text, "switchboard_service_ready", service=name) == 1.0, name


async def test_workers_stopped_while_nats_is_down_exit_cleanly(tmp_path) -> None:
    """SIGTERM to each worker while NATS is unreachable: nothing to drain, but a clean
    exit (0, no traceback), not a crash (exit 1: the drain raised while reconnecting).
    A stack of its own: this one ends with no workers."""
    with running(tmp_path) as stack:
        assert stack.nats is not None
        await asyncio.to_thread(stack.nats.stop)
        await asyncio.sleep(1)  # the workers notice and start reconnecting
        for name in ("codec", "binary", "chat"):
            (worker,) = stack.replicas(name)
            worker.signal(signal.SIGTERM)
            code = await asyncio.to_thread(worker.wait, 15)
            assert code == 0, f"{name} exited {code}:\n{worker.log()[-2000:]}"
            assert "Traceback" not in worker.log(), worker.log()[-2000:]
