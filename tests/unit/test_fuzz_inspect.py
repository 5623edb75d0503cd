"""Fuzzing of binary's inspection (services/binary/inspect.py, /ws/inspect and file
inspection): any bytes get a report, in bounded time, with sane dimensions."""

from __future__ import annotations

import os
import struct
import time

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.binary.handlers import inspect as binary_inspect
from services.binary.inspect import HEAD_BYTES, MAX_DIMENSION, describe, kind
from wire.frames import BinaryFrame, Request, TextFrame, decode_frames

FUZZ = settings(
    max_examples=int(os.environ.get("SB_FUZZ_EXAMPLES", "200")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MAGIC = [
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"\xff\xd8\xff\xe0",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8X",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",
    b"\x00\x00\x00\x18ftypavif",
    b"\x00\x00\x00\x18ftypheic",
    b"<?xml version='1.0'?><svg ",
    b'<svg width="',
    b"P6\n",
    b"P1 ",
    b"\x00\x00\x01\x00",  # ico
    b"8BPS",
    b"PK\x03\x04",
    b"\x7fELF",
    b"%PDF-",
    b"{",
    b"\xef\xbb\xbf",
]


@st.composite
def heads(draw) -> bytes:
    magic = draw(st.sampled_from(MAGIC))
    body = draw(st.binary(max_size=300))
    # repeated structures (segments, boxes, IFD entries) make header walkers loop
    unit = draw(st.binary(min_size=1, max_size=12))
    return magic + body + unit * draw(st.integers(0, 200))


@FUZZ
@given(heads() | st.binary(max_size=400))
async def test_describe_any_bytes(data: bytes) -> None:
    start = time.perf_counter()
    (frame,) = decode_frames(await describe(Request(data, "binary")))
    assert time.perf_counter() - start < 0.5
    assert isinstance(frame, TextFrame)
    report = orjson.loads(frame.data)
    assert report["size"] == len(data) and "/" in report["media_type"]
    if "width" in report:
        assert 0 < report["width"] <= MAX_DIMENSION and 0 < report["height"] <= MAX_DIMENSION


@FUZZ
@given(heads() | st.binary(max_size=400))
async def test_binary_inspect_echoes(data: bytes) -> None:
    text, echoed = decode_frames(await binary_inspect(Request(data, "binary")))
    assert isinstance(text, TextFrame) and echoed == BinaryFrame(data)


def test_repeated_structures_at_full_head_size_are_bounded() -> None:
    """A full 256 KiB head of repeated segments / boxes / entries: bounded time."""
    jpeg_segments = b"\xff\xd8" + b"\xff\xfe\x00\x02" * (HEAD_BYTES // 4)
    isobmff = (
        b"\x00\x00\x00\x18ftypavif" + b"\x00" * 12 + b"\x00\x00\x00\x08free" * (HEAD_BYTES // 8)
    )
    tiff = b"II*\x00\x08\x00\x00\x00" + struct.pack("<H", 0xFFFF) + b"\x00" * (HEAD_BYTES - 10)
    jp2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x08jp2h" * (HEAD_BYTES // 8)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x00pHYs\x00\x00\x00\x00" * (HEAD_BYTES // 12)
    svg = b"<svg " + b" " * HEAD_BYTES
    pbm = b"P6\n" + b"#\n" * (HEAD_BYTES // 2)
    for data in (jpeg_segments, isobmff, tiff, jp2, png, svg, pbm, os.urandom(HEAD_BYTES)):
        start = time.perf_counter()
        kind(data)
        assert time.perf_counter() - start < 0.5, data[:16]
