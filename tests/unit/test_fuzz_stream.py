"""gateway.protocols.BoundedReadProtocol on uvicorn's real protocol, fed any stream of
client frames (text, binary, fragmented messages, pings, every length encoding) split
into reads at any points, with the frame hook taking or refusing each message: the app
gets every message once, in order, and reading never stalls."""

from __future__ import annotations

import asyncio
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from gateway.protocols import BoundedReadProtocol
from gateway.wsframe import FRAME_HOOK
from tests.unit.test_frame_hook import Transport, connected

FUZZ = settings(
    max_examples=int(os.environ.get("SB_FUZZ_EXAMPLES", "100")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

sizes = st.integers(0, 130) | st.sampled_from([125, 126, 127, 600, 65535, 65536, 70000])


@st.composite
def messages(draw) -> tuple[list[tuple[bool, bytes]], bytes]:
    """(text?, data) of each message, and the client's byte stream carrying them."""
    sent: list[tuple[bool, bytes]] = []
    stream = bytearray()
    pings = 0
    for _ in range(draw(st.integers(1, 25))):
        text = draw(st.booleans())
        size = draw(sizes)
        data = (b"ab\xc3\xa9" * (size // 4 + 1))[: size - size % 4] if text else os.urandom(size)
        parts = draw(st.integers(1, 3))  # fragments
        cuts = sorted(
            draw(st.lists(st.integers(0, len(data)), min_size=parts - 1, max_size=parts - 1))
        )
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        for i, piece in enumerate(pieces):
            opcode = (Opcode.TEXT if text else Opcode.BINARY) if i == 0 else Opcode.CONT
            stream += Frame(opcode, piece, fin=i == len(pieces) - 1).serialize(
                mask=True, extensions=[]
            )
            if pings < 20 and draw(st.booleans()):  # control frames between fragments
                pings += 1
                stream += Frame(Opcode.PING, b"p").serialize(mask=True, extensions=[])
        sent.append((text, data))
    return sent, bytes(stream)


async def run(sent, stream: bytes, reads: list[int], answers: list[bool]) -> None:
    got: list[tuple[bool, bytes]] = []
    turn = 0

    async def app(scope, receive, send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})

        def hook(text: bool, data: bytes) -> bool:
            nonlocal turn
            take = answers[turn % len(answers)]
            turn += 1
            if take:
                got.append((text, bytes(data)))
            return take

        scope["extensions"][FRAME_HOOK](hook)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                got.append((None, message))  # type: ignore[arg-type]
                return
            text = message.get("text")
            got.append((True, text.encode()) if text is not None else (False, message["bytes"]))

    protocol, transport = await connected(app)
    await feed(protocol, transport, stream, reads)
    for _ in range(500):
        await asyncio.sleep(0)
        if len(got) >= len(sent):
            break
    assert not transport.closed, got[-1:]
    assert got == sent
    protocol.connection_lost(None)
    await asyncio.sleep(0)


async def feed(
    protocol: BoundedReadProtocol, transport: Transport, stream: bytes, reads: list[int]
) -> None:
    """``stream`` in reads of ``reads`` bytes (the rest in one), each once reading is on
    again: it must come back on within a few hundred loop turns."""
    pos = 0
    for size in [*reads, len(stream)]:
        if pos >= len(stream):
            break
        for _ in range(500):  # the loop turns until reading resumes
            if not transport.paused:
                break
            await asyncio.sleep(0)
        assert not transport.paused, "reading paused for good"
        protocol.data_received(stream[pos : pos + size])
        pos += size


@FUZZ
@given(
    messages(),
    st.lists(st.integers(1, 3000) | st.integers(1, 12), min_size=1, max_size=60),
    st.lists(st.booleans(), min_size=1, max_size=8),
)
async def test_any_stream_any_reads_every_message_once_in_order(case, reads, answers) -> None:
    sent, stream = case
    await run(sent, stream, reads, answers)


@st.composite
def garbage(draw) -> bytes:
    """Frame-ish bytes: valid frames mixed with headers of any opcode, flags, mask bit
    and length encoding (up to 2**64-1), and random bytes."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 12))):
        match draw(st.integers(0, 2)):
            case 0:
                out += Frame(Opcode.TEXT, b"x" * draw(st.integers(0, 200))).serialize(
                    mask=True, extensions=[]
                )
            case 1:
                first = draw(st.integers(0, 255))
                masked = draw(st.booleans())
                code = draw(st.sampled_from([0, 5, 125, 126, 127]))
                out += bytes([first, (0x80 if masked else 0) | code])
                if code == 126:
                    out += draw(st.integers(0, 65535)).to_bytes(2, "big")
                elif code == 127:
                    out += draw(st.integers(0, 2**64 - 1) | st.integers(0, 70000)).to_bytes(
                        8, "big"
                    )
                if masked:
                    out += b"\x01\x02\x03\x04"
                out += draw(st.binary(max_size=50))
            case _:
                out += draw(st.binary(max_size=50))
    return bytes(out)


async def run_garbage(stream: bytes, reads: list[int]) -> None:
    done = asyncio.Event()

    async def app(scope, receive, send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        scope["extensions"][FRAME_HOOK](lambda text, data: False)
        while (await receive())["type"] != "websocket.disconnect":
            pass
        done.set()

    protocol, transport = await connected(app)
    await feed(protocol, transport, stream, reads)
    for _ in range(200):
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    for _ in range(20):
        await asyncio.sleep(0)
    assert done.is_set()


@FUZZ
@given(garbage(), st.lists(st.integers(1, 3000) | st.integers(1, 12), min_size=1, max_size=30))
async def test_any_bytes_never_raise_nor_stall(stream: bytes, reads: list[int]) -> None:
    await run_garbage(stream, reads)
