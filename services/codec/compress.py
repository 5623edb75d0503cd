"""codec ``transform``: compress or decompress zlib, gzip and zstd, as the client asks
(wire/codec.py), with a report of the sizes and the ratio.

Bomb safety: decompression is streamed in chunks of :data:`CHUNK` bytes. A first pass
only counts the output and stops as soon as it passes the cap, so data that would
inflate to gigabytes is refused while the process holds one chunk of it; only data
known to fit is decompressed a second time, for real. zstd frames that declare a content
size above the cap are refused before any decoding, and zstd windows are limited to
:data:`ZSTD_MAX_WINDOW` (a frame asking for more is refused instead of allocating it).

Time: compression and both passes go :data:`CHUNK` bytes at a time and check the
request's deadline between chunks (:class:`Expired`): zlib level 9 can spend seconds on
1 MiB of some data, and nobody waits for the result once the gateway gave up.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import Executor
from functools import partial

import orjson
import zstandard

from services.runner import Handler
from wire.codec import Direction, Format, parse_request
from wire.errors import ErrorCode, WireError
from wire.frames import BinaryFrame, Request, TextFrame, encode_frames, encode_text

CHUNK = 64 * 1024
ZSTD_MAX_WINDOW = 8 * 1024 * 1024  # enough for levels 1-19 without --long


class CorruptData(ValueError):
    """Not a complete stream of the format."""


class Expired(Exception):
    """The request's deadline passed while it was worked on."""


EXPIRED = WireError(ErrorCode.TIMEOUT, "request expired while it was handled")


def in_time(deadline: float | None) -> None:
    """Raise :class:`Expired` once ``deadline`` (``time.monotonic()``) has passed."""
    if deadline is not None and time.monotonic() > deadline:
        raise Expired


def compress(
    fmt: Format, level: int, data: bytes | memoryview, deadline: float | None = None
) -> bytes:
    """``data`` compressed (gzip: no name, mtime 0), :data:`CHUNK` bytes at a time."""
    view = memoryview(data)
    match fmt:
        case Format.ZLIB:
            packer = zlib.compressobj(level)
        case Format.GZIP:
            packer = zlib.compressobj(level, zlib.DEFLATED, 31)
        case Format.ZSTD:
            packer = zstandard.ZstdCompressor(level=level).compressobj(size=len(view))
    out = []
    for start in range(0, len(view), CHUNK):
        in_time(deadline)
        out.append(packer.compress(view[start : start + CHUNK]))
    out.append(packer.flush())
    return b"".join(out)


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


def decompressed_size(
    fmt: Format, data: bytes | memoryview, cap: int, deadline: float | None = None
) -> int:
    """Size of ``data`` decompressed, holding one chunk at a time. Raises
    OverflowError past ``cap``, CorruptData if ``data`` is not a stream of the format
    (zlib and gzip: also if truncated; zstd truncation shows in :func:`decompress`)."""
    total = 0
    for chunk in _chunks(fmt, data, cap):
        total += len(chunk)
        if total > cap:
            raise OverflowError(total)
        in_time(deadline)
    return total


def _zstd_frames(data: bytes | memoryview, deadline: float | None = None) -> Iterator[bytes]:
    """Every frame of ``data`` decompressed, refusing a truncated one. Unbounded by
    itself: only called once the streaming pass has shown the output fits the cap.

    Each frame gets its input in slices that start at 1 KiB and double: what follows
    the frame's end in its last slice (``unused_data``, a copy) is at most the size of
    the frame, so a body of 100,000 tiny frames costs linear time (one call on all of
    the rest per frame copied the rest each time: seconds for 1 MiB)."""
    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    view = memoryview(data)
    position = 0
    while position < len(view):
        in_time(deadline)
        frame, step = dctx.decompressobj(), 1024
        try:
            while True:
                piece = view[position : position + step]
                position += len(piece)
                if out := frame.decompress(piece):
                    yield out
                if frame.eof:
                    position -= len(frame.unused_data)
                    break
                if position >= len(view):
                    raise CorruptData("truncated stream")
                step = min(step * 2, CHUNK * 16)
        except zstandard.ZstdError as exc:
            raise CorruptData(str(exc)) from None


def decompress(
    fmt: Format, data: bytes | memoryview, cap: int, deadline: float | None = None
) -> bytes:
    """``data`` decompressed; refused (OverflowError) past ``cap`` without holding it."""
    decompressed_size(fmt, data, cap, deadline)
    chunks = _zstd_frames(data, deadline) if fmt is Format.ZSTD else _chunks(fmt, data, cap)
    out = []
    for chunk in chunks:
        out.append(chunk)
        in_time(deadline)
    return b"".join(out)


def ratio(compressed: int, uncompressed: int) -> float:
    """Compressed size over uncompressed size, as the tutorial's ``compression_ratio``."""
    return round(compressed / uncompressed, 4) if uncompressed else 0.0


def _error(message: str) -> bytes:
    return encode_text(orjson.dumps({"status": "error", "message": message}).decode())


def make_transform(cap: int, executor: Executor | None = None) -> Handler:
    """The ``transform`` handler; the work runs in ``executor`` (threads: zlib and zstd
    release the GIL), never on the event loop."""

    async def transform(req: Request) -> bytes:
        try:
            spec = parse_request(req.data)
        except WireError as exc:
            return _error(exc.description)
        data = memoryview(req.data)[spec.start :]
        run = asyncio.get_running_loop().run_in_executor
        if spec.direction is Direction.COMPRESS:
            work = partial(compress, spec.format, spec.level, data, req.deadline)
            try:
                out = await run(executor, work)
            except Expired:
                raise EXPIRED from None
            compressed, uncompressed = len(out), len(data)
        else:
            try:
                out = await run(executor, partial(decompress, spec.format, data, cap, req.deadline))
            except Expired:
                raise EXPIRED from None
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
