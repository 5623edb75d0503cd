"""Smoke test of the running compose stack, from the outside: every tutorial endpoint
through the edge, chat and rooms, a file uploaded into the object store and downloaded
back (the chunks come from nats-server to the gateway under the compose NATS users),
then Prometheus' view (every target up, every codec replica and every gateway served
traffic).

Run by scripts/compose-test.sh (``make compose-test``) once the stack is up; not a pytest
module (the stack takes minutes to build). By hand::

    .venv/bin/python tests/infra/compose_smoke.py --edge http://127.0.0.1:8000 \\
        --prometheus http://127.0.0.1:9090 --expect gateway=2 codec=3 binary=1 chat=1
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

RECV_TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parents[2]


def log(message: str) -> None:
    print(f"compose-smoke: {message}", flush=True)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def expect(actual: Any, wanted: Any, what: str) -> None:
    if actual != wanted:
        raise AssertionError(f"{what}: expected {wanted!r}, got {actual!r}")


async def recv(ws: ClientConnection) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)


# -- the tutorial's endpoints, through the edge ------------------------------------------
async def echo_load(ws_base: str, connections: int, frames: int) -> None:
    """Many connections, so that nginx spreads them over every gateway and the codec
    queue group over every codec replica."""

    async def one(n: int) -> None:
        async with connect(f"{ws_base}/ws") as ws:
            for i in range(frames):
                await ws.send(f"hi {n}.{i}")
                expect(await recv(ws), f"Echo: hi {n}.{i}", "/ws")

    await asyncio.gather(*(one(n) for n in range(connections)))


async def tutorial_endpoints(ws_base: str) -> None:
    async with connect(f"{ws_base}/ws") as ws:
        await ws.send("hi")
        expect(await recv(ws), "Echo: hi", "/ws")

    # as the pages served by the gateway do: the Origin must match the Host the edge
    # passes on (with its port)
    page = "http" + ws_base.removeprefix("ws")
    async with connect(f"{ws_base}/ws", origin=page) as ws:
        await ws.send("from the page")
        expect(await recv(ws), "Echo: from the page", "/ws from a same-origin page")

    async with connect(f"{ws_base}/ws/json") as ws:
        await ws.send('{"a":1}')
        expect(
            await recv(ws),
            '{"original_message":{"a":1},"response":"Server received your JSON with 1 fields"}',
            "/ws/json",
        )

    async with connect(f"{ws_base}/ws/binary") as ws:
        data = bytes(range(256)) * 4
        await ws.send(data)
        preview = base64.b64encode(data[:15]).decode()[:20]
        expect(
            await recv(ws),
            f"Received binary data of size {len(data)} bytes. "
            f"First 20 bytes in base64: {preview}...",
            "/ws/binary text",
        )
        expect(await recv(ws), data, "/ws/binary echo")

    async with connect(f"{ws_base}/ws/mixed") as ws:
        await ws.send("hello")
        expect(await recv(ws), "You sent a text message: hello", "/ws/mixed text")
        await ws.send(b"\x00\x01\x02")
        expect(await recv(ws), "You sent a binary message of size 3 bytes", "/ws/mixed binary")

    async with connect(f"{ws_base}/ws/compressed") as ws:
        raw = b"Switchboard " * 100
        packed = zlib.compress(raw)
        await ws.send(packed)
        reply = json.loads(await recv(ws))
        expect(
            reply,
            {
                "status": "success",
                "message": f"Received and decompressed {len(packed)} bytes into {len(raw)} bytes",
                "compression_ratio": f"{len(packed) / len(raw):.2f}",
            },
            "/ws/compressed",
        )


async def until(ws: ClientConnection, wanted: str, what: str, limit: int = 20) -> None:
    seen = []
    for _ in range(limit):
        message = await recv(ws)
        if message == wanted:
            return
        seen.append(message)
    raise AssertionError(f"{what}: {wanted!r} not among {seen!r}")


async def chat(ws_base: str) -> None:
    """Two users, likely on different gateways: fan-out goes through chat and NATS."""
    async with connect(f"{ws_base}/ws/chat?username=alice") as alice:
        expect(
            await recv(alice),
            '{"message":"alice has joined the chat","sender":"Server","type":"system"}',
            "/ws/chat join",
        )
        async with connect(f"{ws_base}/ws/chat?username=bob") as bob:
            joined = '{"message":"bob has joined the chat","sender":"Server","type":"system"}'
            await until(bob, joined, "bob's join")
            await until(alice, joined, "alice sees bob join")
            await alice.send('{"message":"hi bob"}')
            said = '{"message":"alice: hi bob","sender":"alice","type":"message"}'
            await until(alice, said, "alice's own message")
            await until(bob, said, "bob receives alice's message")


async def rooms_v2(ws_base: str) -> None:
    """/ws/v2 rooms: history in JetStream (chat's stream), live events republished to
    every gateway; exercises chat's and the gateways' NATS permissions for rooms."""

    async def wait_for(ws: ClientConnection, match: Callable[[dict], bool], what: str) -> dict:
        seen = []
        for _ in range(20):
            event = json.loads(await recv(ws))
            if match(event):
                return event
            seen.append(event)
        raise AssertionError(f"/ws/v2 {what}: not among {seen!r}")

    # fresh names: chat dedupes publishes by sender and id for minutes
    tag = secrets.token_hex(4)
    room, publish_id = f"smoke-{tag}", f"p-{tag}"
    async with (
        connect(f"{ws_base}/ws/v2?username=carol") as carol,
        connect(f"{ws_base}/ws/v2?username=dave") as dave,
    ):
        for ws, user in ((carol, "carol"), (dave, "dave")):
            await ws.send(json.dumps({"type": "join", "id": f"j-{user}", "room": room}))
            ack = await wait_for(ws, lambda e, u=user: e.get("id") == f"j-{u}", f"{user} joins")
            expect(ack.get("type"), "ack", f"/ws/v2 join ack {ack!r}")
        await carol.send(
            json.dumps(
                {"type": "publish", "id": publish_id, "room": room, "payload": {"text": "hi"}}
            )
        )
        ack = await wait_for(carol, lambda e: e.get("id") == publish_id, "publish ack")
        expect(ack.get("type"), "ack", f"/ws/v2 publish ack {ack!r}")
        expect(ack["payload"].get("duplicate"), False, f"/ws/v2 publish ack {ack!r}")
        event = await wait_for(
            dave, lambda e: e.get("type") == "message", "dave receives carol's message"
        )
        expect(
            (event["room"], event["payload"].get("text"), event["payload"].get("sender")),
            (room, "hi", "carol"),
            "/ws/v2 message",
        )


def http_endpoints(http_base: str, services: dict[str, int]) -> None:
    status, body = http_get(f"{http_base}/healthz")
    expect(status, 200, "/healthz")
    status, body = http_get(f"{http_base}/readyz")
    expect(status, 200, f"/readyz ({body!r})")
    instances = json.loads(body)["instances"]
    for name, count in services.items():
        expect(instances.get(name), count, f"/readyz instances of {name}")
    status, body = http_get(f"{http_base}/")
    expect((status, b"<html" in body.lower()), (200, True), "GET / (chat page)")
    status, _ = http_get(f"{http_base}/metrics")
    expect(status, 404, "/metrics must not be reachable through the edge")


# -- Prometheus ---------------------------------------------------------------------------
def prom(prom_base: str, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    status, body = http_get(f"{prom_base}{path}?{query}" if query else f"{prom_base}{path}")
    expect(status, 200, f"Prometheus {path}")
    return json.loads(body)["data"]


def targets_up(prom_base: str, expected: dict[str, int]) -> str | None:
    """None when every active target is up and each job has its expected count."""
    active = prom(prom_base, "/api/v1/targets", state="active")["activeTargets"]
    by_job: dict[str, list[dict[str, Any]]] = {}
    for target in active:
        by_job.setdefault(target["labels"]["job"], []).append(target)
    down = [
        f"{t['labels']['job']}/{t['labels']['instance']}: {t['health']} {t.get('lastError', '')}"
        for t in active
        if t["health"] != "up"
    ]
    if down:
        return f"targets not up: {down}"
    for job, count in expected.items():
        got = len(by_job.get(job, []))
        if got != count:
            return f"job {job}: {got} targets, expected {count}"
    return None


def instances_with_traffic(prom_base: str, query: str) -> dict[str, float]:
    result = prom(prom_base, "/api/v1/query", query=query)["result"]
    return {r["metric"].get("instance", "?"): float(r["value"][1]) for r in result}


def traffic_seen(prom_base: str, expected: dict[str, int]) -> str | None:
    checks = {
        "codec": 'sum by (instance) (switchboard_service_requests_total{service="codec"})',
        "gateway": "sum by (instance) (switchboard_gateway_frames_total)",
    }
    for job, query in checks.items():
        values = instances_with_traffic(prom_base, query)
        busy = {i: v for i, v in values.items() if v > 0}
        if len(busy) != expected.get(job, 1):
            return f"{job}: traffic on {len(busy)} of {expected.get(job, 1)} replicas: {values}"
    return None


async def poll(check: Callable[[], str | None], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    problem = check()
    while problem is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} after {timeout:.0f}s: {problem}")
        await asyncio.sleep(2)
        problem = check()
    log(f"ok: {what}")


async def files(ws_base: str) -> None:
    """Upload 3 MiB + 1 byte (13 chunks) through the edge, download it back, delete it."""
    sys.path.insert(0, str(ROOT))  # run as a script: the repository's client
    from switchboard.filesclient import FilesClient, files_url

    data = os.urandom(3 * 1024 * 1024 + 1)
    digest = hashlib.sha256(data).hexdigest()
    url = files_url(ws_base, user=f"smoke{secrets.token_hex(3)}")
    async with await FilesClient.open(url) as client:
        info = await client.upload(io.BytesIO(data), "smoke.bin", len(data), digest)
        expect(info["sha256"], digest, "stored file's SHA-256")
        sink = io.BytesIO()
        await client.download(info["file"], sink)
        expect(sink.getvalue() == data, True, "downloaded bytes equal the uploaded ones")
        await client.delete(info["file"])


async def step(name: str, action: Awaitable[None]) -> None:
    start = time.monotonic()
    await action
    log(f"ok: {name} ({time.monotonic() - start:.1f}s)")


async def run(args: argparse.Namespace) -> None:
    expected = dict(item.split("=", 1) for item in args.expect)
    counts = {job: int(n) for job, n in expected.items()}
    http_base = args.edge.rstrip("/")
    ws_base = "ws" + http_base.removeprefix("http")
    services = {name: counts.get(name, 1) for name in ("codec", "binary", "chat")}

    # Prometheus first: every replica is discovered and scraped before traffic starts.
    await poll(
        lambda: targets_up(args.prometheus, {"prometheus": 1, **counts}),
        "Prometheus: every target up",
        args.timeout,
    )
    await poll(lambda: _ready(http_base, services), "edge -> gateway /readyz", args.timeout)
    http_endpoints(http_base, services)
    log("ok: /healthz, /readyz, /, /metrics blocked")
    await step("tutorial endpoints", tutorial_endpoints(ws_base))
    await step("chat between two users", chat(ws_base))
    await step("/ws/v2 rooms between two users", rooms_v2(ws_base))
    await step("/ws/files: upload, download, delete", files(ws_base))
    for wave in range(1, args.waves + 1):
        if wave > 1:  # past the edge's DNS cache (valid=5s): it must re-resolve
            await asyncio.sleep(6)
        await step(
            f"wave {wave}: {args.connections} connections x {args.frames} echo frames",
            echo_load(ws_base, args.connections, args.frames),
        )
    await poll(
        lambda: traffic_seen(args.prometheus, counts),
        "every codec replica and every gateway served traffic",
        args.timeout,
    )
    await poll(
        lambda: targets_up(args.prometheus, {"prometheus": 1, **counts}),
        "Prometheus: every target still up",
        args.timeout,
    )


def _ready(http_base: str, services: dict[str, int]) -> str | None:
    try:
        status, body = http_get(f"{http_base}/readyz")
    except OSError as exc:
        return str(exc)
    if status != 200:
        return f"{status} {body[:200]!r}"
    instances = json.loads(body).get("instances", {})
    if any(instances.get(name) != n for name, n in services.items()):
        return f"instances {instances}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edge", default=os.environ.get("EDGE_URL", "http://127.0.0.1:8000"))
    parser.add_argument(
        "--prometheus", default=os.environ.get("PROMETHEUS_URL", "http://127.0.0.1:9090")
    )
    parser.add_argument(
        "--expect",
        nargs="*",
        default=["gateway=1", "codec=1", "binary=1", "chat=1"],
        help="job=targets, e.g. gateway=2 codec=3",
    )
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--waves", type=int, default=2, help="load waves, 6 s apart")
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args()
    try:
        asyncio.run(run(args))
    except (AssertionError, OSError, TimeoutError, WebSocketException) as exc:
        log(f"FAILED: {type(exc).__name__}: {exc}")
        return 1
    log("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
