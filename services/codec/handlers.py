"""codec: text echo, JSON inspection and zlib inflation, with the tutorial's replies; and
client-chosen compression (services/codec/compress.py)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any

from services.codec.compress import make_transform
from services.runner import Handler
from wire.frames import Request, encode_text
from wire.subjects import Op

INFLATE_CHUNK = 64 * 1024


def _json(value: Any) -> str:
    # Byte-for-byte what Starlette's send_json writes.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def echo(req: Request) -> bytes:
    return encode_text(f"Echo: {req.text}")


async def inspect_json(req: Request) -> bytes:
    try:
        # from str, as the tutorial does: json.loads(bytes) would also take a UTF-8 BOM
        # or UTF-16/32 (guessed from NUL bytes), which the tutorial calls invalid
        data = json.loads(req.data.decode())
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, an int over 4300 digits
        return encode_text("Error: Invalid JSON format")
    except RecursionError:
        return encode_text("Error: JSON nested too deeply")
    if not isinstance(data, dict | list | str):
        return encode_text("Error: JSON must be an object, an array or a string")
    reply = {
        "original_message": data,
        "response": f"Server received your JSON with {len(data)} fields",
    }
    try:
        return encode_text(_json(reply))
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
        return encode_text("Error: Invalid JSON format")
    except RecursionError:  # parsed, but one level too deep to encode with the reply
        return encode_text("Error: JSON nested too deeply")


def inflated_size(data: bytes, cap: int) -> int | None:
    """Size of zlib ``data`` once inflated, streaming, holding at most one chunk.

    None if the data is not a complete zlib stream. Raises OverflowError past ``cap``.
    Trailing bytes after the stream are ignored, as ``zlib.decompress`` does.
    """
    inflater = zlib.decompressobj()
    total = 0
    pending = data
    try:
        while True:
            chunk = inflater.decompress(pending, INFLATE_CHUNK)
            total += len(chunk)
            if total > cap:
                raise OverflowError(total)
            pending = inflater.unconsumed_tail
            if inflater.eof or (not pending and not chunk):
                break
    except zlib.error:
        return None
    return total if inflater.eof else None


def make_inflate(cap: int) -> Handler:
    async def inflate(req: Request) -> bytes:
        try:
            size = inflated_size(req.data, cap)
        except OverflowError:
            return encode_text(
                _json({"status": "error", "message": f"Decompressed data exceeds {cap} bytes"})
            )
        if size is None:
            return encode_text(_json({"status": "error", "message": "Failed to decompress data"}))
        if size == 0:
            return encode_text(_json({"status": "error", "message": "Decompressed data is empty"}))
        return encode_text(
            _json(
                {
                    "status": "success",
                    "message": f"Received and decompressed {len(req.data)} bytes into {size} bytes",
                    "compression_ratio": f"{len(req.data) / size:.2f}",
                }
            )
        )

    return inflate


def handlers(inflate_cap: int, transform_cap: int | None = None) -> Mapping[Op, Handler]:
    return {
        Op.ECHO: echo,
        Op.JSON: inspect_json,
        Op.INFLATE: make_inflate(inflate_cap),
        Op.TRANSFORM: make_transform(transform_cap or inflate_cap),
    }
