"""Inputs the tutorial's code would crash or hang on get a clear reply, and the socket
stays usable (or, where continuing makes no sense, a close code with a reason)."""

from __future__ import annotations

import asyncio
import json
import uuid
import zlib

import pytest
import websockets

from tests.integration.client import (
    TIMEOUT,
    closed_with,
    connect,
    recv,
    recv_for,
    recv_json,
    scrape,
)
from tests.integration.conftest import ws_base


@pytest.mark.parametrize("path", ["/ws", "/ws/json"])
async def test_binary_frame_on_text_endpoint(stack, path) -> None:
    async with connect(ws_base(stack) + path) as ws:
        await ws.send(b"\x00\x01")
        assert await recv(ws) == "Error: expected a text frame"
        await ws.send("[1]")
        assert (await recv(ws)).startswith(("Echo: [1]", '{"original_message":[1]'))


async def test_text_frame_on_binary_endpoint(stack) -> None:
    async with connect(ws_base(stack) + "/ws/binary") as ws:
        await ws.send("text")
        assert await recv(ws) == "Error: expected a binary frame"
        await ws.send(b"ok")
        assert (await recv(ws)).startswith("Received binary data of size 2 bytes")
        assert await recv(ws) == b"ok"


async def test_text_frame_on_compressed_endpoint(stack) -> None:
    async with connect(ws_base(stack) + "/ws/compressed") as ws:
        await ws.send("text")
        assert await recv_json(ws) == {"status": "error", "message": "expected a binary frame"}
        await ws.send(zlib.compress(b"abc"))
        assert (await recv_json(ws))["status"] == "success"


@pytest.mark.parametrize(
    ("raw", "reply"),
    [
        ("5", "Error: JSON must be an object, an array or a string"),
        ("NaN", "Error: JSON must be an object, an array or a string"),
        ("[" * 50_000 + "]" * 50_000, "Error: JSON nested too deeply"),
    ],
)
async def test_json_the_tutorial_would_crash_on(stack, raw, reply) -> None:
    async with connect(ws_base(stack) + "/ws/json") as ws:
        await ws.send(raw)
        assert await recv(ws) == reply
        await ws.send("{}")
        assert (
            await recv(ws)
            == '{"original_message":{},"response":"Server received your JSON with 0 fields"}'
        )


async def test_zlib_bomb_refused_without_inflating(stack) -> None:
    bomb = zlib.compress(b"\0" * (64 * 1024 * 1024), 9)  # ~64 KiB -> 64 MiB, cap is 16 MiB
    async with connect(ws_base(stack) + "/ws/compressed") as ws:
        await ws.send(bomb)
        reply = await recv_json(ws, timeout=10)
        assert reply == {"status": "error", "message": "Decompressed data exceeds 16777216 bytes"}
        await ws.send(zlib.compress(b""))
        assert await recv_json(ws) == {"status": "error", "message": "Decompressed data is empty"}


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("not json", "Invalid JSON format"),
        ('\ufeff{"message": "after a BOM"}', "Invalid JSON format"),  # as the tutorial's str
        ('{"text": "no message field"}', 'Expected a JSON object with a "message" field'),
        ('["message"]', 'Expected a JSON object with a "message" field'),
    ],
)
async def test_chat_bad_frames_get_error_frames(stack, frame, message) -> None:
    name = f"carol-{uuid.uuid4().hex[:6]}"
    async with connect(ws_base(stack) + f"/ws/chat?username={name}") as ws:
        assert await recv_for(ws, name) == {
            "message": f"{name} has joined the chat",
            "sender": "Server",
            "type": "system",
        }
        await ws.send(frame)
        assert await recv_for(ws, name) == {
            "message": message,
            "sender": "Server",
            "type": "error",
        }
        await ws.send(json.dumps({"message": "still here"}))
        assert await recv_for(ws, name) == {
            "message": f"{name}: still here",
            "sender": name,
            "type": "message",
        }


async def test_binary_frame_on_chat(stack) -> None:
    async with connect(ws_base(stack) + "/ws/chat?username=dave") as ws:
        await recv_for(ws, "dave")
        await ws.send(b"\x01")
        assert await recv_for(ws, "dave") == {
            "message": "expected a text frame",
            "sender": "Server",
            "type": "error",
        }


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("username=", "user name is empty"),
        ("username=" + "x" * 65, "user name is longer than 64 characters"),
        ("username=a%00b", "user name contains control characters"),
        ("username=tab%09", "user name contains control characters"),
    ],
)
async def test_bad_usernames_closed_with_1008(stack, query, reason) -> None:
    """Refused by the gateway itself: the first thing the socket gets is the close (no
    room message before it), and chat never hears of the name (no join request)."""
    before = chat_requests(stack)
    async with connect(f"{ws_base(stack)}/ws/chat?{query}") as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, reason)
    assert chat_requests(stack) == before


def chat_requests(stack) -> float:
    """Requests gateway 0 has sent to chat (its request-duration histogram's count)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in scrape(stack.gateways[0].port).splitlines()
        if line.startswith("switchboard_gateway_request_duration_seconds_count")
        and 'service="chat"' in line
    )


@pytest.mark.parametrize("path", ["/ws", "/ws/binary"])
async def test_oversize_frame_closes_1009(stack, path) -> None:
    async with connect(ws_base(stack) + path, max_size=None) as ws:
        await ws.send(b"x" * (1024 * 1024 + 1) if path == "/ws/binary" else "x" * (1024 * 1024 + 1))
        code, _ = await closed_with(ws)
        assert code == 1009


async def test_frame_at_the_limit_is_accepted(stack) -> None:
    async with connect(ws_base(stack) + "/ws/mixed", max_size=None) as ws:
        await ws.send(b"x" * (1024 * 1024))
        assert await recv(ws) == "You sent a binary message of size 1048576 bytes"
