"""``/ws/codec`` frames: compress or decompress with the format and level the client picks.

A request is one binary frame: a short ASCII header line, then the data::

    request := op ":" format [":" level] "\\n" data
    op      := "compress" | "decompress"
    format  := "zlib" | "gzip" | "zstd"
    level   := zlib, gzip: 0-9 (default 6); zstd: 1-19 (default 3); decompress checks
               it the same way, then ignores it

The gateway relays the frame unchanged; the codec service parses it here. The reply is
a text frame (JSON report: sizes and ratio, or ``{"status": "error", ...}``), then, on
success, a binary frame with the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from wire.errors import ErrorCode, WireError

MAX_HEADER = 32


class Direction(StrEnum):
    COMPRESS = "compress"
    DECOMPRESS = "decompress"


class Format(StrEnum):
    ZLIB = "zlib"
    GZIP = "gzip"
    ZSTD = "zstd"


LEVELS: dict[Format, tuple[int, int, int]] = {  # (lowest, highest, default)
    Format.ZLIB: (0, 9, 6),
    Format.GZIP: (0, 9, 6),
    Format.ZSTD: (1, 19, 3),  # 20-22 ("ultra") need up to 1 GiB of window memory
}


@dataclass(frozen=True, slots=True)
class CodecRequest:
    direction: Direction
    format: Format
    level: int
    start: int  # where the data begins in the frame


def encode_request(
    direction: Direction | str, fmt: Format | str, data: bytes, level: int | None = None
) -> bytes:
    head = f"{Direction(direction)}:{Format(fmt)}" + ("" if level is None else f":{level}")
    return head.encode() + b"\n" + data


def parse_request(frame: bytes) -> CodecRequest:
    """The header of a ``/ws/codec`` frame; WireError(400) when malformed."""
    end = frame.find(b"\n", 0, MAX_HEADER + 1)
    if end < 0:
        raise WireError(
            ErrorCode.BAD_REQUEST,
            "a frame starts with a header line such as 'compress:zstd:3' and a newline",
        )
    try:
        parts = frame[:end].decode("ascii").split(":")
    except UnicodeDecodeError:
        raise WireError(ErrorCode.BAD_REQUEST, "header is not ASCII") from None
    if len(parts) not in (2, 3):
        raise WireError(ErrorCode.BAD_REQUEST, "header is <op>:<format>[:<level>]")
    try:
        direction = Direction(parts[0])
    except ValueError:
        raise WireError(ErrorCode.BAD_REQUEST, "op must be compress or decompress") from None
    try:
        fmt = Format(parts[1])
    except ValueError:
        raise WireError(ErrorCode.BAD_REQUEST, "format must be zlib, gzip or zstd") from None
    low, high, default = LEVELS[fmt]
    level = default
    if len(parts) == 3:
        raw = parts[2]
        # removeprefix, not lstrip: "--1" passed lstrip("-").isdigit() and int() raised
        if not raw.removeprefix("-").isdigit() or len(raw) > 3 or not low <= int(raw) <= high:
            raise WireError(ErrorCode.BAD_REQUEST, f"{fmt} level must be {low}-{high}")
        level = int(raw)
    return CodecRequest(direction, fmt, level, end + 1)
