"""Gateway limits against a real stack, configured tight so they trip quickly."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import Iterator

import pytest
import websockets
from websockets.frames import Close, Frame, Opcode

from switchboard.localstack import LocalStack, running
from tests.integration.client import closed_with, connect, recv, sample, scrape
from tests.integration.v2client import V2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {
        "SB_GATEWAY_ALLOWED_ORIGINS": '["https://app.example"]',
        "SB_GATEWAY_MAX_CONNECTIONS_PER_IP": "40",
        "SB_GATEWAY_RATE_FRAMES": "50",
        "SB_GATEWAY_RATE_FRAMES_BURST": "20",
        "SB_GATEWAY_RATE_CLOSE_AFTER": "30",
        "SB_GATEWAY_RATE_BAN_SECONDS": "2",
        "SB_GATEWAY_IDLE_TIMEOUT": "3",
    }
    with running(tmp_path_factory.mktemp("limits"), env=env) as s:
        yield s


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {"SB_GATEWAY_SEND_QUEUE_BYTES": "65536"}
    with running(tmp_path_factory.mktemp("slow"), env=env) as s:
        yield s


def base(stack: LocalStack) -> str:
    return f"ws://127.0.0.1:{stack.gateways[0].port}"


async def test_disallowed_origin_refused_before_accept(stack) -> None:
    with pytest.raises(websockets.InvalidStatus) as exc:
        async with connect(base(stack) + "/ws", origin="http://evil.example"):
            pass
    assert exc.value.response.status_code == 403
    async with connect(base(stack) + "/ws", origin="https://app.example") as ws:
        await ws.send("ok")
        assert await recv(ws) == "Echo: ok"


async def test_per_ip_connection_limit_closes_1013(stack) -> None:
    sockets = []
    try:
        for _ in range(40):
            sockets.append(await connect(base(stack) + "/ws"))
        async with connect(base(stack) + "/ws") as extra:
            code, reason = await closed_with(extra)
        assert (code, reason) == (1013, "server busy, try again later")
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
    await asyncio.sleep(0.2)
    async with connect(base(stack) + "/ws") as ws:  # room again once they closed
        await ws.send("back")
        assert await recv(ws) == "Echo: back"


async def test_flooding_gets_error_frames_then_close_1008(stack) -> None:
    async with connect(base(stack) + "/ws") as ws:
        for i in range(200):
            await ws.send(f"f{i}")
        replies = []
        with pytest.raises(websockets.ConnectionClosed) as exc:
            while True:
                replies.append(await recv(ws))
        assert exc.value.rcvd.code == 1008 and exc.value.rcvd.reason == "rate limit exceeded"
    assert "Error: rate limit exceeded" in replies
    assert replies[0] == "Echo: f0"  # the burst went through
    assert (
        sample(scrape(stack.gateways[0].port), "switchboard_gateway_errors_total", code="429") > 0
    )
    # Reconnecting at once: closed 1008 before any frame, for the ban's 2 s ...
    closed_at = time.monotonic()
    async with connect(base(stack) + "/ws") as again:
        code, reason = await closed_with(again)
    assert (code, reason) == (1008, "rate limit exceeded: retry in 2 s")
    # ... after which the address may connect, and send, again.
    await asyncio.sleep(max(0.0, closed_at + 2.2 - time.monotonic()))
    async with connect(base(stack) + "/ws") as back:
        await back.send("back")
        assert await recv(back) == "Echo: back"


async def test_a_ping_flood_is_closed_1008(stack) -> None:
    """Pings are outside the frame rate limit, and each costs a pong: a flood of them,
    unread, grew the gateway by 20 MB/s, and parsed in one go held up every handshake.
    (A raw socket: the flood is written whole before the server answers, so no write
    of the client's races the server's close.)"""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateways[0].port)
    try:
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        writer.write(Frame(Opcode.PING, b"p").serialize(mask=True, extensions=[]) * 200)
        await writer.drain()
        frames = await asyncio.wait_for(reader.read(), 10)  # until the server's FIN
    finally:
        writer.close()
    close = Frame(Opcode.CLOSE, Close(1008, "too many pings").serialize()).serialize(
        mask=False, extensions=[]
    )
    assert frames.endswith(close), frames[-40:]
    # pongs (those websockets queued for the slice the limit was passed in), then the close
    assert 0 < frames.count(b"\x8a\x01p") < 100
    async with connect(base(stack) + "/ws") as fresh:  # not banned: a new socket works
        await fresh.send("after")
        assert await recv(fresh) == "Echo: after"


async def test_v2_frames_over_the_rate_limit_get_errors_with_their_ids(stack) -> None:
    """A client waiting for replies by id learns which of its requests were refused."""
    await asyncio.sleep(2.2)  # any ban from the flood test above has passed
    client = await V2.open(base(stack) + "/ws/v2?username=hasty")
    try:
        ids = [f"p{i}" for i in range(40)]
        for rid in ids:  # burst of 20, then refusals (fewer than would close it)
            await client.send("ping", rid=rid)
        replies = [await client.reply(rid) for rid in ids]  # one reply for each id
        refused = [r for r in replies if r["type"] == "error"]
        assert refused and all(r["payload"]["code"] == "429" for r in refused)
        assert {r["type"] for r in replies} == {"pong", "error"}
    finally:
        await client.close()


async def test_idle_connection_closed(stack) -> None:
    async with connect(base(stack) + "/ws") as ws:
        started = time.monotonic()
        code, reason = await closed_with(ws, timeout=6)
        assert (code, reason) == (1000, "idle timeout")
        assert 2.5 < time.monotonic() - started < 6


async def lazy_reader(stack: LocalStack):
    """A /ws/v2 client with a 4 KiB socket receive buffer and no permessage-deflate (the
    payloads must really take room on the wire), for a test to stop reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", stack.gateways[0].port))
    return await connect(
        base(stack) + "/ws/v2?username=lazy", sock=sock, max_queue=1, compression=None
    )


async def test_slow_room_reader_disconnected_1013_then_recovers_everything(slow_stack) -> None:
    stack = slow_stack
    room = "slow-room"
    port = stack.gateways[0].port
    writer = await V2.open(base(stack) + "/ws/v2?username=writer")
    # A reader that stops reading, with a tiny socket receive buffer so that the
    # gateway's send queue (64 KiB here) fills after a few hundred KB.
    lazy = await lazy_reader(stack)
    try:
        await lazy.send(json.dumps({"type": "join", "id": "j", "room": room}))
        first = json.loads(await recv(lazy))
        assert first["type"] == "ack"
        since = first["payload"]["seq"]
        lazy.transport.pause_reading()  # never read again
        await writer.request("join", room)
        text = base64.b64encode(os.urandom(45000)).decode()  # 60 KB, incompressible
        last = 0
        for i in range(150):
            last = (await writer.request("publish", room, text=text, i=i))["payload"]["seq"]
        lazy.transport.resume_reading()
        with pytest.raises(websockets.ConnectionClosed) as exc:
            while True:
                await recv(lazy, timeout=10)
        assert exc.value.rcvd.code == 1013
        # Nothing lost: rejoin with since and get every message, once.
        back = await V2.open(base(stack) + "/ws/v2?username=lazy")
        ack = await back.reply(await back.send("join", room, since=since))
        assert ack["payload"]["recovered"] is True
        # the replay (9 MB: several history replies) comes whole before the ack
        assert back.seqs(room) == list(range(since + 1, ack["payload"]["seq"] + 1))
        events = await back.until_seq(room, last)
        assert [e["seq"] for e in events] == list(range(since + 1, events[-1]["seq"] + 1))
        assert [e["payload"]["i"] for e in events if e["type"] == "message"] == list(range(150))
        await back.close()
        assert (
            sample(
                scrape(port), "switchboard_gateway_dropped_messages_total", reason="slow_consumer"
            )
            >= 1
        )
    finally:
        await writer.close()
        await lazy.close()


async def test_a_long_replay_is_fetched_as_the_client_reads(slow_stack) -> None:
    """A join with since on a long history, from a client that does not read: the gateway
    holds about one chat reply (SB_CHAT_REPLY_BUDGET_BYTES, 1 MiB) beyond the send
    queue's bound (64 KiB here), not the whole replay (7 MB: it fetched page after page
    into the queue). Once the client reads, every event comes, in order, then the ack."""
    stack = slow_stack
    room = "long-replay"
    port = stack.gateways[0].port
    writer = await V2.open(base(stack) + "/ws/v2?username=writer")
    text = base64.b64encode(os.urandom(45000)).decode()  # 60 KB, incompressible
    for i in range(120):
        await writer.request("publish", room, text=text, i=i)
    await writer.close()
    lazy = await lazy_reader(stack)
    try:
        await lazy.send(
            json.dumps({"type": "join", "id": "j", "room": room, "payload": {"since": 0}})
        )
        lazy.transport.pause_reading()
        await asyncio.sleep(2.5)  # the gateway samples its queues once a second
        queued = sample(scrape(port), "switchboard_gateway_send_queue_bytes", stat="max")
        lazy.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20
        )
        lazy.transport.resume_reading()
        seqs = []
        while (frame := json.loads(await recv(lazy, timeout=10)))["type"] != "ack":
            seqs.append(frame["seq"])
        assert seqs == list(range(1, frame["payload"]["seq"] + 1)), seqs
        assert 120 < len(seqs) and frame["payload"]["recovered"] is True
        assert queued < 1.5 * 2**20, f"{queued / 2**20:.1f} MiB queued"
    finally:
        await lazy.close()
