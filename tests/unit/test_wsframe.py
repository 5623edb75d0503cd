"""gateway.wsframe encodes exactly what the websockets library does for the same
unmasked, unfragmented server frame."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from gateway.wsframe import FRAME_KEY, cut, encode


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


# -- cut: where the gateway's reader slices a stream of client frames ------------------


def client_frame(size: int, masked: bool = True) -> bytes:
    payload = bytes(i % 251 for i in range(size))
    return Frame(Opcode.BINARY, payload).serialize(mask=masked)


def cuts(stream: bytes, reads: list[int], limit: int) -> list[tuple[int, int]]:
    """The (start, end) of each slice the reader parses, for ``stream`` arriving in reads
    of the given sizes, carrying an incomplete header over as the protocol does."""
    out: list[tuple[int, int]] = []
    left, head, offset = 0, 0, 0  # head: bytes of an incomplete header carried over
    for size in reads:
        start = offset - head
        buf = stream[start : offset + size]
        offset += size
        pos = 0
        while pos < len(buf):
            n, left = cut(buf[pos:], left, limit)
            if n == 0:
                break
            out.append((start + pos, start + pos + n))
            pos += n
        head = len(buf) - pos
    return out


def boundaries(frames: list[bytes]) -> list[int]:
    ends, total = [], 0
    for f in frames:
        total += len(f)
        ends.append(total)
    return ends


@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(0, 130), st.sampled_from([65535, 65536, 70000])),
            st.booleans(),
        ),
        min_size=1,
        max_size=12,
    ),
    st.lists(st.integers(1, 9000), min_size=1, max_size=40),
    st.sampled_from([1, 64, 512]),
)
def test_cut_slices_at_frame_boundaries(sizes, reads, limit) -> None:
    frames = [client_frame(size, masked) for size, masked in sizes]
    stream = b"".join(frames)
    total = sum(reads)
    if total < len(stream):
        reads = [*reads, len(stream) - total]
    slices = cuts(stream, reads, limit)
    # every byte is parsed once, in order
    assert slices[0][0] == 0 and slices[-1][1] == len(stream)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))
    ends = boundaries(frames)
    for start, end in slices:
        inside = [e for e in ends if start < e < end]
        if inside:  # more than one frame: small ones, within the limit, from a boundary
            assert end - start <= limit
            assert start == 0 or start in ends
        # else: (part of) one frame, however large


def test_cut_passes_a_large_frame_on_in_one_slice_per_read() -> None:
    frame = client_frame(256 * 1024)
    reads = [65536] * 4 + [len(frame) - 4 * 65536]
    slices = cuts(frame, reads, 512)
    assert len(slices) == len(reads)  # was one parser call per 512 bytes: 513


def test_cut_a_flood_of_tiny_frames_stays_within_the_limit() -> None:
    stream = client_frame(1) * 10_000  # 7 bytes each
    slices = cuts(stream, [len(stream)], 512)
    assert max(end - start for start, end in slices) <= 512
    assert len(slices) == -(-10_000 // (512 // 7))


def test_cut_waits_for_a_length_split_between_reads() -> None:
    frame = client_frame(70000)  # 127, then the length in 8 bytes
    assert cut(frame[:5], 0, 512) == (0, 0)
    n, left = cut(frame[:20], 0, 512)
    assert (n, left) == (20, len(frame) - 20)
    assert cut(frame[20:], left, 512) == (len(frame) - 20, 0)
