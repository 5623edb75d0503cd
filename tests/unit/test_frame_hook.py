"""The frame hook of gateway.protocols.BoundedReadProtocol, on uvicorn's real protocol
with an in-memory transport: a relayed frame is handed to the app as it is parsed, past
the ASGI queue, but only while nothing is queued (frames stay in order) and only so many
per read (a flood is still parsed a slice per loop turn, with reading paused between)."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode

from gateway import protocols
from gateway.protocols import MAX_PINGS_PER_SECOND, PARSE_SLICE, BoundedReadProtocol
from gateway.wsframe import FRAME_HOOK


class Transport:
    """What the protocol needs of an asyncio transport, recording what it does."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.paused = False
        self.closed = False
        self.aborted = False
        self.unsent = 0  # bytes the "peer" has not read

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def set_protocol(self, protocol: Any) -> None:
        pass


def client_frame(text: str) -> bytes:
    """A masked client text frame."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=True, extensions=[])


def client_ping(payload: bytes = b"") -> bytes:
    return Frame(Opcode.PING, payload).serialize(mask=True, extensions=[])


def pongs(written: bytes | bytearray) -> int:
    return bytes(written).count(b"\x8a\x00")  # unmasked empty pong frames


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


async def open_socket(hook_answer) -> tuple[BoundedReadProtocol, Transport, list, list]:
    """A connected protocol whose app installs a hook answering ``hook_answer(text)``;
    returns it with the hooked frames and the app's ``receive()`` results."""
    hooked: list[str] = []
    received: list[dict] = []

    async def app(scope, receive, send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})

        def hook(text: bool, data: bytes) -> bool:
            if hook_answer(data.decode()):
                hooked.append(data.decode())
                return True
            return False

        scope["extensions"][FRAME_HOOK](hook)
        while True:
            message = await receive()
            received.append(message)
            if message["type"] == "websocket.disconnect":
                return

    protocol, transport = await connected(app)
    return protocol, transport, hooked, received


async def connected(app) -> tuple[BoundedReadProtocol, Transport]:
    """The gateway's reading protocol on uvicorn's sans-I/O WebSocket, running ``app``,
    after the upgrade."""
    config = Config(
        app=app,
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        lifespan="off",
        log_config=None,
    )
    config.load()
    protocol = BoundedReadProtocol(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(UPGRADE)
    for _ in range(20):
        await asyncio.sleep(0)
    assert b"101 Switching Protocols" in transport.written
    return protocol, transport


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_hooked_frames_skip_the_queue_and_reading_never_pauses() -> None:
    protocol, transport, hooked, received = await open_socket(lambda text: True)
    protocol.data_received(b"".join(client_frame(f"m{i}") for i in range(10)))
    assert hooked == [f"m{i}" for i in range(10)]
    assert protocol.queue.empty() and not transport.paused
    await settle()
    assert received == []


async def test_a_frame_the_hook_refuses_queues_and_so_do_all_after_it() -> None:
    protocol, _, hooked, received = await open_socket(lambda text: text != "m3")
    protocol.data_received(b"".join(client_frame(f"m{i}") for i in range(6)))
    assert hooked == ["m0", "m1", "m2"]  # m4 and m5 may not overtake m3
    await settle()
    texts = [m.get("text") for m in received]
    assert texts == ["m3", "m4", "m5"]
    # Once the app has taken them, the hook has frames again.
    protocol.data_received(client_frame("m6"))
    assert hooked[-1] == "m6"


async def test_a_flood_is_hooked_one_slice_per_loop_turn() -> None:
    protocol, transport, hooked, received = await open_socket(lambda text: True)
    n, size = 2000, len(client_frame("x"))  # 7 bytes each: ~27 slices
    per_slice = PARSE_SLICE // size
    protocol.data_received(b"".join(client_frame("x") for _ in range(n)))
    assert 0 < len(hooked) <= per_slice  # this turn: one slice
    assert transport.paused  # no more reads until the rest is parsed
    turns = 0
    while len(hooked) < n:
        before = len(hooked)
        await asyncio.sleep(0)
        assert len(hooked) - before <= per_slice
        turns += 1
        assert turns < 4 * n // per_slice, "the flood is not being parsed"
    assert turns >= n // per_slice - 1
    await settle()
    assert not transport.paused and received == [] and protocol.queue.empty()


async def test_a_read_of_pings_is_parsed_one_slice_per_loop_turn(monkeypatch) -> None:
    # Control frames neither queue nor hook: a read of them ran to its end in one go
    # (130 ms of the loop per 256 KiB), starving every other connection's handshake.
    protocol, transport, _, _ = await open_socket(lambda text: True)
    monkeypatch.setattr(protocols, "MAX_PINGS_PER_SECOND", 10**9)  # no limit in this test
    before = pongs(transport.written)
    per_slice = PARSE_SLICE // len(client_ping())
    protocol.data_received(client_ping() * 40 * per_slice)
    assert pongs(transport.written) - before <= per_slice
    assert transport.paused
    await settle()
    assert pongs(transport.written) - before == 40 * per_slice
    assert not transport.paused


async def test_pings_past_the_rate_close_1008_and_no_pong_while_the_peer_does_not_read() -> None:
    protocol, transport, _, received = await open_socket(lambda text: True)
    protocol.writable.clear()  # above the high-water mark: the peer reads nothing
    before = len(transport.written)
    protocol.data_received(client_ping(b"p"))
    assert len(transport.written) == before  # no pong piled on an unread buffer
    protocol.writable.set()
    protocol.data_received(client_ping(b"q"))
    assert len(transport.written) > before  # answered once the peer reads again
    protocol.data_received(client_ping() * (MAX_PINGS_PER_SECOND + 5))
    await settle()
    assert received[-1] == {
        "type": "websocket.disconnect",
        "code": 1008,
        "reason": "too many pings",
    }
    assert b"\x88" in transport.written and b"too many pings" in transport.written
    assert protocol.close_sent


async def test_a_peer_that_reads_nothing_is_dropped_not_held() -> None:
    # transport.close() waits for the write buffer to drain: against a peer that never
    # reads, the keepalive's close and the linger's never ended (memory held for good).
    protocol, transport, _, _ = await open_socket(lambda text: True)
    transport.unsent = 1 << 20
    protocol._hang_up()
    assert transport.aborted
    protocol, transport, _, _ = await open_socket(lambda text: True)
    transport.unsent = 0
    protocol._hang_up()
    assert transport.closed and not transport.aborted  # our close frame went out: FIN
    protocol, transport, _, _ = await open_socket(lambda text: True)
    transport.unsent = 1 << 20
    protocol.writable.clear()
    protocol.hang_up_later(0.01)
    await asyncio.sleep(0.05)
    assert transport.aborted
