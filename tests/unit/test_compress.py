"""codec transform (services/codec/compress.py): every format both ways, levels, the
report, malformed input, and the bombs refused while holding one chunk."""

from __future__ import annotations

import gzip
import io
import os
import struct
import time
import tracemalloc
import zlib
from dataclasses import replace

import orjson
import pytest
import zstandard

from services.codec.compress import (
    CHUNK,
    CorruptData,
    Expired,
    compress,
    decompress,
    decompressed_size,
    make_transform,
)
from tests import bombs
from wire.codec import Direction, Format, encode_request, parse_request
from wire.errors import ErrorCode, WireError
from wire.frames import decode_frames, decode_request

DATA = b"".join(b"line %d of some fairly repetitive text\n" % i for i in range(20000)) + os.urandom(
    5000
)
PYTHON_DECOMPRESS = {
    Format.ZLIB: zlib.decompress,
    Format.GZIP: gzip.decompress,
    Format.ZSTD: lambda d: zstandard.ZstdDecompressor().decompress(d),
}
PYTHON_COMPRESS = {
    Format.ZLIB: zlib.compress,
    Format.GZIP: gzip.compress,
    Format.ZSTD: lambda d: zstandard.ZstdCompressor().compress(d),
}
CAP = 16 * 1024 * 1024


@pytest.mark.parametrize("fmt", list(Format))
def test_compress_then_standard_decompress(fmt: Format) -> None:
    out = compress(fmt, 6 if fmt is not Format.ZSTD else 3, DATA)
    assert len(out) < len(DATA) / 3
    assert PYTHON_DECOMPRESS[fmt](out) == DATA


@pytest.mark.parametrize("fmt", list(Format))
def test_standard_compress_then_decompress(fmt: Format) -> None:
    packed = PYTHON_COMPRESS[fmt](DATA)
    assert decompressed_size(fmt, packed, CAP) == len(DATA)
    assert decompress(fmt, packed, CAP) == DATA


@pytest.mark.parametrize("fmt", list(Format))
def test_empty_and_tiny(fmt: Format) -> None:
    for data in (b"", b"x"):
        assert decompress(fmt, compress(fmt, 1, data), CAP) == data


@pytest.mark.parametrize("fmt", list(Format))
def test_corrupt_and_truncated_refused(fmt: Format) -> None:
    packed = compress(fmt, 6 if fmt is not Format.ZSTD else 3, DATA)
    for bad in (b"", b"not compressed at all", packed[: len(packed) // 2]):
        with pytest.raises(CorruptData):
            decompress(fmt, bad, CAP)


def test_gzip_members_padding_and_trailing_garbage() -> None:
    two = gzip.compress(b"ab") + gzip.compress(b"cd")
    assert decompress(Format.GZIP, two + b"\0\0\0", CAP) == b"abcd"
    with pytest.raises(CorruptData):
        decompress(Format.GZIP, two + b"junk", CAP)
    # zlib ignores what follows the stream, as zlib.decompress does (and /ws/compressed)
    assert decompress(Format.ZLIB, zlib.compress(b"x") + b"junk", CAP) == b"x"


def test_zstd_concatenated_frames() -> None:
    cctx = zstandard.ZstdCompressor()
    assert decompress(Format.ZSTD, cctx.compress(b"ab") + cctx.compress(b"cd"), CAP) == b"abcd"


def test_zstd_window_larger_than_allowed_refused() -> None:
    # A frame asking for a 128 MiB window (decoders allocate it) is refused outright.
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=27)
    sink = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(
        sink, closefd=False
    ) as writer:
        writer.write(b"x" * 1000)
    packed = sink.getvalue()
    assert zstandard.get_frame_parameters(packed).window_size == 1 << 27
    with pytest.raises(CorruptData):
        decompress(Format.ZSTD, packed, CAP)


def test_cap_is_exact() -> None:
    packed = zlib.compress(bytes(1000))
    assert decompressed_size(Format.ZLIB, packed, 1000) == 1000
    with pytest.raises(OverflowError):
        decompressed_size(Format.ZLIB, packed, 999)


@pytest.mark.parametrize(
    ("fmt", "bomb"),
    [
        (Format.ZLIB, bombs.zlib_gib),
        (Format.GZIP, bombs.gzip_gib),
        (Format.ZSTD, bombs.zstd_gib),
        (Format.ZSTD, bombs.zstd_kib),
        (Format.ZSTD, bombs.zstd_kib_declaring_gib),
    ],
    ids=["zlib-1GiB", "gzip-1GiB", "zstd-1GiB", "zstd-1KiB-31MiB", "zstd-1KiB-declares-1GiB"],
)
def test_bombs_refused_holding_one_chunk(fmt: Format, bomb) -> None:
    data = bomb()
    tracemalloc.start()
    try:
        with pytest.raises(OverflowError):
            decompress(fmt, data, 4 * 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Python-level allocations while refusing: a few chunks, never the cap (4 MiB).
    assert peak < 16 * CHUNK, peak


def _request(data: bytes) -> object:
    return decode_request(data, {"Sb-Frame": "b"})


async def test_transform_report_and_output() -> None:
    transform = make_transform(CAP)
    for fmt in Format:
        reply = decode_frames(await transform(_request(encode_request("compress", fmt, DATA))))
        report = orjson.loads(reply[0].data)
        assert report["status"] == "success"
        assert report["op"] == "compress" and report["format"] == fmt
        assert report["input_bytes"] == len(DATA)
        assert report["output_bytes"] == len(reply[1].data)
        assert report["ratio"] == round(len(reply[1].data) / len(DATA), 4)
        packed = reply[1].data
        back = decode_frames(await transform(_request(encode_request("decompress", fmt, packed))))
        report = orjson.loads(back[0].data)
        assert back[1].data == DATA
        assert report["input_bytes"] == len(packed) and report["output_bytes"] == len(DATA)
        assert "level" not in report


async def test_transform_errors_in_the_compressed_shape() -> None:
    transform = make_transform(1024)
    cases = {
        b"no header line": "a frame starts with a header line",
        b"squash:zlib\nxx": "op must be compress or decompress",
        b"compress:lz4\nxx": "format must be zlib, gzip or zstd",
        b"compress:zstd:22\nxx": "zstd level must be 1-19",
        b"decompress:zlib\nnot zlib": "Failed to decompress data",
        encode_request("decompress", "zlib", zlib.compress(bytes(2000))): "exceeds 1024 bytes",
    }
    for frame, message in cases.items():
        reply = decode_frames(await transform(_request(frame)))
        assert len(reply) == 1
        body = orjson.loads(reply[0].data)
        assert body["status"] == "error" and message in body["message"], (frame, body)


def test_parse_request() -> None:
    spec = parse_request(b"compress:gzip:9\nabc")
    assert (spec.direction, spec.format, spec.level) == (Direction.COMPRESS, Format.GZIP, 9)
    assert parse_request(b"decompress:zstd\n").level == 3
    for bad in (b"compress:zlib:10\n", b"compress:zlib:-1\n", b"compress\n", b"a:b:c:d\n"):
        with pytest.raises(WireError):
            parse_request(bad)


# Pathological for deflate's level 9 lazy matching: 1 MiB of random a/b takes seconds.
SLOW_FOR_DEFLATE = bytes(97 + b % 2 for b in os.urandom(1024 * 1024))


@pytest.mark.parametrize("fmt", list(Format))
def test_work_stops_at_the_deadline(fmt: Format) -> None:
    packed = compress(fmt, 1, DATA)
    past = time.monotonic() - 0.001
    with pytest.raises(Expired):
        compress(fmt, 1, DATA, past)
    with pytest.raises(Expired):
        decompress(fmt, packed, CAP, past)
    with pytest.raises(Expired):
        decompressed_size(fmt, packed, CAP, past)
    assert decompress(fmt, packed, CAP, time.monotonic() + 60) == DATA


def test_a_slow_compression_stops_within_a_chunk_of_its_deadline() -> None:
    # Before: one zlib.compress call on all of it, seconds past any deadline.
    start = time.monotonic()
    with pytest.raises(Expired):
        compress(Format.ZLIB, 9, SLOW_FOR_DEFLATE, start + 0.05)
    assert time.monotonic() - start < 2.0  # a chunk is ~0.2 s here; the whole ~3.7 s


async def test_transform_past_its_deadline_answers_timeout() -> None:
    transform = make_transform(CAP)
    for frame in (
        encode_request("compress", "zlib", DATA),
        encode_request("decompress", "zlib", zlib.compress(DATA)),
    ):
        taken = time.time_ns() - 2_000_000_000  # 2 s ago, with 1 s to answer
        late = {"Sb-Frame": "b", "Sb-Timeout": "1000"}
        req = replace(_request(frame), headers=late, received=taken)
        with pytest.raises(WireError) as refused:
            await transform(req)
        assert refused.value.code is ErrorCode.TIMEOUT


def test_many_tiny_zstd_frames_take_linear_time() -> None:
    empty = zstandard.ZstdCompressor().compress(b"")
    skippable = struct.pack("<II", 0x184D2A50, 0)
    body = (empty + skippable) * 60_000  # ~1 MiB
    start = time.monotonic()
    assert decompress(Format.ZSTD, body, CAP) == b""
    # one call per frame on all of the rest (a copy of it each time) took ~3 s here
    assert time.monotonic() - start < 1.5
    one = zstandard.ZstdCompressor().compress(b"abc" * 1000)
    assert decompress(Format.ZSTD, (empty + one + skippable) * 3, CAP) == b"abc" * 3000
    with pytest.raises(CorruptData):
        decompress(Format.ZSTD, empty * 1000 + one[:-2], CAP)
