"""codec ``transform``: compress or decompress zlib, gzip and zstd, as the client asks
(wire/codec.py), with a report of the sizes and the ratio.

Bomb safety: decompression is streamed in chunks of :data:`CHUNK` bytes. A first pass
only counts the output and stops as soon as it passes the cap, so data that would
inflate to gigabytes is refused while the process holds one chunk of it; only data
known to fit is decompressed a second time, for real. zstd frames that declare a content
size above the cap are refused before any decoding, and zstd windows are limited to
:data:`ZSTD_MAX_WINDOW` (a frame asking for more is refused instead of allocating it).
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Iterator

import orjson
import zstandard

from services.runner import Handler
from wire.codec import Direction, Format, parse_request
from wire.errors import WireError
from wire.frames import BinaryFrame, Request, TextFrame, encode_frames, encode_text

CHUNK = 64 * 1024
ZSTD_MAX_WINDOW = 8 * 1024 * 1024  # enough for levels 1-19 without --long


class CorruptData(ValueError):
    """Not a complete stream of the format."""


def compress(fmt: Format, level: int, data: bytes | memoryview) -> bytes:
    match fmt:
        case Format.ZLIB:
            return zlib.compress(data, level)
        case Format.GZIP:
            return gzip.compress(data, compresslevel=level, mtime=0)
        case Format.ZSTD:
            return zstandard.ZstdCompressor(level=level).compress(data)


def _zlib_chunks(data: bytes | memoryview, wbits: int) -> Iterator[bytes]:
    """Inflate one zlib (``wbits`` 15) or gzip (31) stream; gzip may have several
    members, then zero padding. Trailing bytes after a zlib stream are ignored, as
    ``zlib.decompress`` does. Input goes in :data:`CHUNK` bytes at a time and output
    comes out :data:`CHUNK` bytes at a time: nothing grows with the data."""
    view = memoryview(data)
    start = 0  # where the current (gzip) member begins
    while True:
        inflater = zlib.decompressobj(wbits)
        position = start
        try:
            while not inflater.eof:
                if inflater.unconsumed_tail:
                    chunk = inflater.decompress(inflater.unconsumed_tail, CHUNK)
                elif position < len(view):
                    piece = view[position : position + CHUNK]
                    position += len(piece)
                    chunk = inflater.decompress(piece, CHUNK)
                else:
                    break
                if chunk:
                    yield chunk
        except zlib.error as exc:
            raise CorruptData(str(exc)) from None
        if not inflater.eof:
            raise CorruptData("truncated stream")
        if wbits != 31:
            return
        start = position - len(inflater.unused_data)
        rest = view[start:]
        if rest[:2] == b"\x1f\x8b":
            continue  # another member
        if bytes(rest).strip(b"\0"):  # zero padding is allowed, as gzip.decompress does
            raise CorruptData("trailing data after the gzip stream")
        return


def _zstd_chunks(data: bytes | memoryview, cap: int) -> Iterator[bytes]:
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise CorruptData(str(exc)) from None
    if declared > cap:  # -1: not declared
        raise OverflowError(declared)
    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    try:
        with dctx.stream_reader(data, read_across_frames=True) as reader:
            while chunk := reader.read(CHUNK):
                yield chunk
    except zstandard.ZstdError as exc:
        raise CorruptData(str(exc)) from None


def _chunks(fmt: Format, data: bytes | memoryview, cap: int) -> Iterator[bytes]:
    if fmt is Format.ZSTD:
        return _zstd_chunks(data, cap)
    return _zlib_chunks(data, 15 if fmt is Format.ZLIB else 31)


def decompressed_size(fmt: Format, data: bytes | memoryview, cap: int) -> int:
    """Size of ``data`` decompressed, holding one chunk at a time. Raises
    OverflowError past ``cap``, CorruptData if ``data`` is not a stream of the format
    (zlib and gzip: also if truncated; zstd truncation shows in :func:`decompress`)."""
    total = 0
    for chunk in _chunks(fmt, data, cap):
        total += len(chunk)
        if total > cap:
            raise OverflowError(total)
    return total


def _zstd_frames(data: bytes | memoryview) -> bytes:
    """Every frame of ``data`` decompressed, refusing a truncated one. Unbounded by
    itself: only called once the streaming pass has shown the output fits the cap."""
    out = []
    rest: bytes | memoryview = data
    while len(rest):
        frame = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).decompressobj()
        try:
            out.append(frame.decompress(rest))
        except zstandard.ZstdError as exc:
            raise CorruptData(str(exc)) from None
        if not frame.eof:
            raise CorruptData("truncated stream")
        rest = frame.unused_data
    return b"".join(out)


def decompress(fmt: Format, data: bytes | memoryview, cap: int) -> bytes:
    """``data`` decompressed; refused (OverflowError) past ``cap`` without holding it."""
    decompressed_size(fmt, data, cap)
    if fmt is Format.ZSTD:
        return _zstd_frames(data)
    return b"".join(_chunks(fmt, data, cap))


def ratio(compressed: int, uncompressed: int) -> float:
    """Compressed size over uncompressed size, as the tutorial's ``compression_ratio``."""
    return round(compressed / uncompressed, 4) if uncompressed else 0.0


def _error(message: str) -> bytes:
    return encode_text(orjson.dumps({"status": "error", "message": message}).decode())


def make_transform(cap: int) -> Handler:
    async def transform(req: Request) -> bytes:
        try:
            spec = parse_request(req.data)
        except WireError as exc:
            return _error(exc.description)
        data = memoryview(req.data)[spec.start :]
        if spec.direction is Direction.COMPRESS:
            out = await asyncio.to_thread(compress, spec.format, spec.level, data)
            compressed, uncompressed = len(out), len(data)
        else:
            try:
                out = await asyncio.to_thread(decompress, spec.format, data, cap)
            except OverflowError:
                return _error(f"Decompressed data exceeds {cap} bytes")
            except CorruptData:
                return _error(f"Failed to decompress data: not a complete {spec.format} stream")
            compressed, uncompressed = len(data), len(out)
        report = {
            "status": "success",
            "op": str(spec.direction),
            "format": str(spec.format),
            "level": spec.level if spec.direction is Direction.COMPRESS else None,
            "input_bytes": len(data),
            "output_bytes": len(out),
            "ratio": ratio(compressed, uncompressed),
        }
        if report["level"] is None:
            del report["level"]
        return encode_frames((TextFrame(orjson.dumps(report).decode()), BinaryFrame(out)))

    return transform
