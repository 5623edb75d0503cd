"""Small helpers over the ``websockets`` client for the integration tests."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

TIMEOUT = 5.0


def connect(url: str, **kwargs: Any):
    return websockets.connect(url, open_timeout=TIMEOUT, close_timeout=2, **kwargs)


async def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), timeout)


async def recv_json(ws: ClientConnection, timeout: float = TIMEOUT) -> Any:
    data = await recv(ws, timeout)
    assert isinstance(data, str), data
    return json.loads(data)


async def recv_n(ws: ClientConnection, n: int, timeout: float = TIMEOUT) -> list[str | bytes]:
    return [await recv(ws, timeout) for _ in range(n)]


async def closed_with(ws: ClientConnection, timeout: float = TIMEOUT) -> tuple[int, str]:
    """Wait for the server to close; return (code, reason)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None, "closed without a close frame"
        return exc.rcvd.code, exc.rcvd.reason


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """Value of one sample in a Prometheus text exposition (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def recv_for(ws: ClientConnection, name: str, timeout: float = TIMEOUT) -> Any:
    """Next chat frame about ``name`` (its own events, errors), skipping other users'
    traffic in the shared room."""
    while True:
        frame = await recv_json(ws, timeout)
        if frame["type"] == "error" or frame["message"].startswith(name):
            return frame
