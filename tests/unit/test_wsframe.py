"""gateway.wsframe encodes exactly what the websockets library does for the same
unmasked, unfragmented server frame."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from gateway.wsframe import FRAME_KEY, encode


def reference(opcode: Opcode, data: bytes) -> bytes:
    return Frame(opcode, data).serialize(mask=False)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_lengths_at_every_boundary(size: int) -> None:
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    assert encode({"type": "websocket.send", "bytes": data}) == reference(Opcode.BINARY, data)
    text = "é" * (size // 2) + "a" * (size % 2)
    assert encode({"type": "websocket.send", "text": text}) == reference(Opcode.TEXT, text.encode())


@given(st.text(max_size=300))
def test_any_text(text: str) -> None:
    assert encode({"type": "websocket.send", "text": text}) == reference(Opcode.TEXT, text.encode())


def test_cached_on_the_message_and_none_for_a_close() -> None:
    message = {"type": "websocket.send", "text": "hi"}
    first = encode(message)
    assert message[FRAME_KEY] is first and encode(message) is first
    assert encode({"type": "websocket.close", "code": 1000}) is None
