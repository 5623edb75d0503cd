"""/ws/files stops reading a client that leaves its replies unread: the gateway's queue of
unsent replies stays bounded (SB_GATEWAY_SEND_QUEUE_BYTES), the client is held back by
TCP, and once it reads again every reply comes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import orjson
import pytest

from switchboard.filesclient import files_url
from switchboard.localstack import LocalStack, running
from tests.integration.client import connect, recv
from tests.integration.test_files import rss

FRAMES = 150_000
JUNK = b"\0" * 9  # a binary frame with no upload: each earns one error frame (~90 B)
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {  # the rate limits out of the way: only the send queue bounds this client
        "SB_GATEWAY_SEND_QUEUE_BYTES": "65536",
        "SB_GATEWAY_RATE_FRAMES": "1000000",
        "SB_GATEWAY_RATE_FRAMES_BURST": "1000000",
        "SB_GATEWAY_RATE_BYTES": "10000000000",
        "SB_GATEWAY_RATE_BYTES_BURST": "10000000000",
    }
    with running(tmp_path_factory.mktemp("filesbp"), env=env) as s:
        yield s


async def test_a_client_not_reading_its_replies_is_held_back(stack) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", stack.gateways[0].port))
    url = files_url(f"ws://127.0.0.1:{stack.gateways[0].port}", user="hoarder")
    ws = await connect(url, sock=sock, max_queue=1, compression=None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        ws.transport.pause_reading()  # reads nothing for now

        async def send_all() -> int:
            sent = 0
            for _ in range(FRAMES):
                await ws.send(JUNK)
                sent += 1
            return sent

        before = rss(stack.gateways[0].pid)
        sending = asyncio.ensure_future(send_all())
        await asyncio.wait({sending}, timeout=6)
        # Unbounded, the gateway would read all 150,000 frames and hold ~14 MB of replies
        # as Python objects (+31 MiB measured); bounded it grew 1.4 MiB: 64 KiB queued, the
        # kernel buffers full.
        growth = rss(stack.gateways[0].pid) - before
        assert growth < 10 * MIB, f"gateway grew {growth / MIB:.0f} MiB"
        ws.transport.resume_reading()
        replies = 0
        while replies < FRAMES:  # nothing was lost: one error per frame
            reply = orjson.loads(await recv(ws, timeout=30))
            assert reply["message"] == "no upload in progress"
            replies += 1
        assert await asyncio.wait_for(sending, 30) == FRAMES
    finally:
        await ws.close()
