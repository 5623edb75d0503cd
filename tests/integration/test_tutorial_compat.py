"""Every tutorial endpoint answers byte for byte what the tutorial's own code answers.

The tutorial app runs beside Switchboard; the same frames go to both and the replies
(type and content) must be identical.
"""

from __future__ import annotations

import os
import uuid
import zlib

import pytest

from tests.integration.client import connect, recv, recv_n
from tests.integration.conftest import ws_base

CASES: list[tuple[str, list[str | bytes], int]] = [
    ("/ws", ["hello", "", "ünïcödé € 🚀", "x" * 5000, '{"json": "as text"}'], 1),
    (
        "/ws/json",
        [
            '{"a": 1, "b": [1, 2, {"c": null}]}',
            "[1, 2, 3]",
            '"a string"',
            '{"f": 1.0, "e": 1e400, "big": 123456789012345678901234567890, "u": "\\u00e9\\ud83d\\ude80"}',
            "{}",
            "{bad json",
            "",
            '{"nested": {"deeper": {"deepest": [true, false]}}}',
            "\ufeff{}",  # a BOM: json.loads(bytes) would strip it, the tutorial's str does not
            "\x00[\x00]",  # json.loads(bytes) would read UTF-16 here
        ],
        1,
    ),
    ("/ws/binary", [b"\x00\x01\x02", b"", os.urandom(15), os.urandom(16), os.urandom(70_000)], 2),
    ("/ws/mixed", ["text here", b"\xff\xfe binary", "", b""], 1),
    (
        "/ws/compressed",
        [
            zlib.compress(b"hello world " * 100),
            b"definitely not zlib",
            zlib.compress(os.urandom(1000)),
            zlib.compress(b"x") + b"trailing garbage",
        ],
        1,
    ),
]


# Without permessage-deflate the gateway writes frames itself (gateway.wsframe); with it
# (what browsers and the websockets client offer by default) uvicorn's send compresses.
COMPRESSION = pytest.mark.parametrize("compression", ["deflate", None], ids=["deflate", "plain"])


@COMPRESSION
@pytest.mark.parametrize(("path", "frames", "replies"), CASES, ids=[c[0] for c in CASES])
async def test_same_replies_as_the_tutorial(
    stack, tutorial, path, frames, replies, compression
) -> None:
    async with (
        connect(tutorial + path, compression=compression) as ref,
        connect(ws_base(stack) + path, compression=compression) as ours,
    ):
        for frame in frames:
            await ref.send(frame)
            await ours.send(frame)
            expected = await recv_n(ref, replies)
            got = await recv_n(ours, replies)
            assert got == expected
            assert [type(g) for g in got] == [type(e) for e in expected]


@COMPRESSION
async def test_chat_same_frames_as_the_tutorial(stack, tutorial, compression) -> None:
    # A unique name keeps the tutorial's shared in-process room free of other tests.
    name = f"u{uuid.uuid4().hex[:8]}"
    script = ['{"message": "hello"}', '{"message": 42}', '{"message": "multi\\nline é"}']
    transcripts = []
    for base in (tutorial, ws_base(stack)):
        async with connect(f"{base}/ws/chat?username={name}", compression=compression) as ws:

            async def mine() -> str | bytes:
                # The room is shared: an earlier test's late leave notice may come first.
                while name not in (frame := await recv(ws)):
                    pass
                return frame

            seen = [await mine()]
            for frame in script:
                await ws.send(frame)
                seen.append(await mine())
        transcripts.append(seen)
    assert transcripts[1] == transcripts[0]
    assert transcripts[1][0] == (
        f'{{"message":"{name} has joined the chat","sender":"Server","type":"system"}}'
    )


async def test_anonymous_chat_user(stack, tutorial) -> None:
    expected = '{"message":"Anonymous has joined the chat","sender":"Server","type":"system"}'
    async with connect(ws_base(stack) + "/ws/chat") as ws:
        # The room is shared: an earlier test's late leave notice may come first.
        seen = [await recv(ws)]
        while seen[-1] != expected and len(seen) < 5:
            seen.append(await recv(ws))
    assert seen[-1] == expected, seen


@COMPRESSION
async def test_pipelined_frames_come_back_in_order(stack, compression) -> None:
    async with connect(ws_base(stack) + "/ws", compression=compression) as ws:
        for i in range(300):
            await ws.send(f"m{i}")
        got = await recv_n(ws, 300)
    assert got == [f"Echo: m{i}" for i in range(300)]
