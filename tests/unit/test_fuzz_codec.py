"""Fuzzing of codec transform (services/codec/compress.py) and the /ws/compressed and
/ws/json handlers: round trips, the cap, and only the documented exceptions."""

from __future__ import annotations

import gzip
import zlib

import orjson
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.codec.compress import (
    CorruptData,
    compress,
    decompress,
    decompressed_size,
    make_transform,
)
from services.codec.handlers import inflated_size, inspect_json, make_inflate
from wire.codec import LEVELS, Direction, Format, encode_request
from wire.frames import BinaryFrame, Request, TextFrame, decode_frames

FUZZ = settings(
    max_examples=int(__import__("os").environ.get("SB_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CAP = 64 * 1024

data_st = st.binary(max_size=2000) | st.sampled_from([b"a" * 5000, bytes(20000), b"xyz" * 3000])
formats = st.sampled_from(list(Format))


@st.composite
def fmt_level(draw):
    fmt = draw(formats)
    low, high, _ = LEVELS[fmt]
    return fmt, draw(st.integers(low, high))


def reference(fmt: Format, packed: bytes) -> bytes:
    """What the standard decoders make of ``packed`` (raises on bad input)."""
    if fmt is Format.ZLIB:
        return zlib.decompress(packed)
    if fmt is Format.GZIP:
        return gzip.decompress(packed)
    return zstandard.ZstdDecompressor().decompressobj().decompress(packed)


@FUZZ
@given(fmt_level(), data_st)
def test_round_trip(fl, data: bytes) -> None:
    fmt, level = fl
    packed = compress(fmt, level, data)
    assert reference(fmt, packed) == data
    assert decompressed_size(fmt, packed, len(data)) == len(data)
    assert decompress(fmt, packed, max(len(data), 1)) == data


@st.composite
def mangled(draw):
    """A stream of the format, then cut, flipped, doubled, padded or followed by junk."""
    fmt, level = draw(fmt_level())
    parts = [compress(fmt, level, draw(data_st)) for _ in range(draw(st.integers(1, 3)))]
    packed = b"".join(parts)
    match draw(st.integers(0, 5)):
        case 0:
            packed = packed[: draw(st.integers(0, len(packed)))]
        case 1:
            i = draw(st.integers(0, len(packed) - 1))
            packed = packed[:i] + bytes([packed[i] ^ draw(st.integers(1, 255))]) + packed[i + 1 :]
        case 2:
            packed += draw(st.binary(max_size=20))
        case 3:
            packed += bytes(draw(st.integers(0, 10)))
        case 4:
            packed = draw(st.binary(max_size=200))
    return fmt, packed


@FUZZ
@given(mangled(), st.integers(0, CAP))
def test_decompress_raises_only_corrupt_or_overflow(case, cap: int) -> None:
    fmt, packed = case
    try:
        size = decompressed_size(fmt, packed, cap)
    except (CorruptData, OverflowError):
        size = None
    else:
        assert 0 <= size <= cap
    try:
        out = decompress(fmt, packed, cap)
    except (CorruptData, OverflowError):
        return
    assert len(out) <= cap
    assert size == len(out)  # the counting pass and the real one agree
    if fmt is Format.GZIP:
        assert out == gzip.decompress(packed)
    elif fmt is Format.ZLIB:
        assert out == zlib.decompress(packed)


headers = st.sampled_from(
    [
        "compress:zlib",
        "compress:gzip:9",
        "compress:zstd:19",
        "decompress:zlib",
        "decompress:gzip",
        "decompress:zstd",
        "decompress:zstd:1",
        "compress:lz4",
        "x",
    ]
) | st.text(max_size=12)


@FUZZ
@given(
    st.binary(max_size=300)
    | st.builds(lambda h, d: h.encode() + b"\n" + d, headers, data_st)
    | mangled().map(lambda c: encode_request(Direction.DECOMPRESS, c[0], c[1]))
)
async def test_transform_always_answers_a_report(frame: bytes) -> None:
    transform = make_transform(CAP)
    out = await transform(Request(frame, "binary"))
    got = decode_frames(out)
    assert isinstance(got[0], TextFrame)
    report = orjson.loads(got[0].data)
    if report["status"] == "success":
        assert len(got) == 2 and isinstance(got[1], BinaryFrame)
        assert report["output_bytes"] == len(got[1].data)
        if report["op"] == "decompress":
            assert len(got[1].data) <= CAP
    else:
        assert len(got) == 1 and report["status"] == "error" and report["message"]


@FUZZ
@given(st.binary(max_size=300) | data_st.map(zlib.compress) | mangled().map(lambda c: c[1]))
async def test_inflate_always_answers(data: bytes) -> None:
    out = await make_inflate(CAP)(Request(data, "binary"))
    (frame,) = decode_frames(out)
    assert orjson.loads(frame.data)["status"] in ("success", "error")
    size = inflated_size(data, CAP)
    assert size is None or size <= CAP


json_text = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
).map(
    lambda v: (
        orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY) if False else __import__("json").dumps(v)
    )
)


@FUZZ
@given(st.text(max_size=100) | json_text | st.integers(1, 3000).map(lambda n: "[" * n + "]" * n))
@example('"\\ud800"')
@example("[" * 5000 + "]" * 5000)
async def test_inspect_json_always_answers_one_text_frame(text: str) -> None:
    (frame,) = decode_frames(
        await inspect_json(Request(text.encode("utf-8", "surrogatepass"), "text"))
    )
    assert isinstance(frame, TextFrame)
