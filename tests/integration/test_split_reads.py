"""The gateway's reader (gateway/protocols.py) slices reads at frame boundaries, carrying
an incomplete header over to the next read. Frames that arrive split at every possible
kind of place (inside a header, inside the mask, inside a large payload, several small
frames in one read) get the same replies as when sent whole."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.integration.client import connect, recv_n
from tests.integration.conftest import ws_base

pytestmark = pytest.mark.timeout(60)

BIG = bytes(random.Random(7).getrandbits(8) for _ in range(300 * 1024))
FRAMES: list[str | bytes] = ["hello", BIG, "", b"\x00\x01", "é" * 200, BIG[:70000], "last"]


def wire_frames(client: ClientProtocol) -> bytes:
    """FRAMES as a client sends them (masked), one text message in two fragments, and a
    ping in the middle."""
    for item in FRAMES[:3]:
        if isinstance(item, str):
            client.send_text(item.encode())
        else:
            client.send_binary(item)
    client.send_text(b"fragmented ", fin=False)
    client.send_continuation(b"message", fin=True)
    client.send_ping(b"p")
    for item in FRAMES[3:]:
        if isinstance(item, str):
            client.send_text(item.encode())
        else:
            client.send_binary(item)
    return b"".join(client.data_to_send())


async def whole(url: str) -> list[str | bytes]:
    async with connect(url, compression=None, max_size=None) as ws:
        for item in FRAMES[:3]:
            await ws.send(item)
        await ws.send(["fragmented ", "message"])
        for item in FRAMES[3:]:
            await ws.send(item)
        return await recv_n(ws, len(FRAMES) + 1)


async def split(url: str, seed: int) -> tuple[list[str | bytes], bool]:
    uri = parse_uri(url)
    client = ClientProtocol(uri, max_size=None)
    reader, writer = await asyncio.open_connection(uri.host, uri.port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.send_request(client.connect())
    writer.write(b"".join(client.data_to_send()))
    rng = random.Random(seed)
    replies: list[str | bytes] = []
    pong = False
    try:
        while client.handshake_exc is None and client.state is State.CONNECTING:
            client.receive_data(await asyncio.wait_for(reader.read(65536), 5))
        client.events_received()  # the handshake response
        stream = wire_frames(client)
        pos = 0
        while pos < len(stream):  # writes of 1 to 40 bytes, and now and then a large one
            size = rng.choice([1, 2, 3, 5, 7, 11, 40, rng.randint(100, 70000)])
            writer.write(stream[pos : pos + size])
            await writer.drain()
            await asyncio.sleep(0.0005 if size < 100 else 0)  # separate reads
            pos += size
        while len(replies) < len(FRAMES) + 1:
            client.receive_data(await asyncio.wait_for(reader.read(65536), 5))
            for event in client.events_received():
                assert isinstance(event, Frame)
                if event.opcode is Opcode.PONG:
                    pong = True
                elif event.opcode is Opcode.TEXT:
                    replies.append(event.data.decode())
                elif event.opcode is Opcode.BINARY:
                    replies.append(bytes(event.data))
    finally:
        writer.close()
    return replies, pong


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_frames_split_anywhere_get_the_same_replies(stack, seed: int) -> None:
    url = ws_base(stack) + "/ws/mixed"
    expected = await whole(url)
    got, pong = await split(url, seed)
    assert pong
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine == theirs  # compared one by one: never print 300 KiB
