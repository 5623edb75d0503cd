"""The pages, health, readiness and metrics endpoints."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import urllib.error
import urllib.request

from tests.integration.client import connect, recv, sample, scrape
from tests.integration.conftest import http_base, ws_base


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_tutorial_pages_served(stack) -> None:
    """As the tutorial wrote them, their socket pointed at where they were asked for."""
    here = http_base(stack).removeprefix("http://")
    status, chat = get(http_base(stack) + "/")
    assert status == 200 and "<title>FastAPI Chat</title>" in chat
    assert f"ws://{here}/ws/chat?username=" in chat
    status, echo = get(http_base(stack) + "/echo")
    assert status == 200 and f'new WebSocket("ws://{here}/ws")' in echo


def test_healthz_and_readyz(stack) -> None:
    assert get(http_base(stack) + "/healthz") == (200, '{"status":"ok"}')
    status, body = get(http_base(stack) + "/readyz")
    assert status == 200
    assert json.loads(body) == {
        "status": "ready",
        "nats": "connected",
        "instances": {"chat": 1, "binary": 1, "codec": 1},
    }


async def test_metrics_count_frames(stack) -> None:
    port = stack.gateways[0].port
    before = scrape(port)
    async with connect(ws_base(stack) + "/ws/mixed") as ws:
        for _ in range(3):
            await ws.send("abc")
            await recv(ws)
        await ws.send(b"12345")
        await recv(ws)
    after = scrape(port)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    labels = {"endpoint": "/ws/mixed"}
    assert (
        delta("switchboard_gateway_frames_total", direction="in", frame_type="text", **labels) == 3
    )
    assert (
        delta("switchboard_gateway_frames_total", direction="in", frame_type="binary", **labels)
        == 1
    )
    assert (
        delta("switchboard_gateway_bytes_total", direction="in", frame_type="binary", **labels) == 5
    )
    assert (
        delta("switchboard_gateway_frames_total", direction="out", frame_type="text", **labels) == 4
    )
    assert delta("switchboard_gateway_connections_accepted_total", **labels) == 1
    assert (
        delta("switchboard_gateway_request_duration_seconds_count", service="binary", status="ok")
        == 4
    )

    service = stack.replicas("binary")[0]
    text = scrape(service.metrics_port)
    assert sample(text, "switchboard_service_requests_total", operation="mixed", status="ok") >= 4
    assert (
        sample(text, "switchboard_service_transit_duration_seconds_count", operation="mixed") >= 4
    )


async def test_text_bytes_are_utf8_bytes_not_characters(stack) -> None:
    """An "é" is 2 bytes on the wire: bytes_total counts those, in and out, everywhere."""
    port = stack.gateways[0].port
    before = scrape(port)
    async with connect(ws_base(stack) + "/ws") as ws:
        await ws.send("é" * 10)  # 20 bytes
        assert await recv(ws) == "Echo: " + "é" * 10  # 26 bytes
    ping = '{"type":"ping","id":"ü"}'  # 25 bytes, 24 characters
    async with connect(ws_base(stack) + "/ws/v2?username=bytes") as ws:
        await ws.send(ping)
        await recv(ws)
    after = scrape(port)

    def delta(endpoint: str, direction: str) -> float:
        labels = {"endpoint": endpoint, "direction": direction, "frame_type": "text"}
        name = "switchboard_gateway_bytes_total"
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert (delta("/ws", "in"), delta("/ws", "out")) == (20, 26)
    assert delta("/ws/v2", "in") == len(ping.encode()) == 25


def handshake_status(port: int, path: str, host: str, origin: str) -> int:
    """The HTTP status a raw WebSocket handshake with these Host and Origin gets."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        status_line = sock.makefile("rb").readline().decode()
    return int(status_line.split()[1])


def test_a_dns_rebinding_page_cannot_open_sockets(stack) -> None:
    """A page on an attacker's name, resolved to this gateway for the attack, sends an
    Origin and a Host that agree: the same-host rule must not take that name on trust
    (it did: the page could list and delete files, read rooms and the dashboard)."""
    port = stack.gateways[0].port
    for path in ("/ws", "/ws/files", "/ws/v2", "/ws/dashboard"):
        foreign = f"rebind.evil.example:{port}"
        assert handshake_status(port, path, foreign, f"http://{foreign}") == 403, path
        own = f"127.0.0.1:{port}"
        assert handshake_status(port, path, own, f"http://{own}") == 101, path


def test_pages_cannot_be_framed_and_run_only_their_own_script(stack) -> None:
    """Another site could frame /files (Download, Delete: clickjacking): no page may be
    framed. The gateway's own pages run only their own inline script; the tutorial's
    keep their bytes and inline handlers, so only the framing rules apply to them."""
    own = {"/rooms": "rooms.html", "/files": "files.html", "/dashboard": "dashboard.html"}
    for path in ("/", "/echo", *own):
        with urllib.request.urlopen(http_base(stack) + path, timeout=5) as r:
            headers, body = r.headers, r.read().decode()
        assert headers["X-Frame-Options"] == "DENY", path
        assert headers["X-Content-Type-Options"] == "nosniff", path
        parts = headers["Content-Security-Policy"].split("; ")
        csp = {name: value for name, _, value in (p.partition(" ") for p in parts)}
        assert csp["frame-ancestors"] == "'none'", path
        if path in own:
            script = body.split("<script>", 1)[1].split("</script>", 1)[0]
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            assert csp["script-src"] == f"'sha256-{digest}'", path
            assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'", path
