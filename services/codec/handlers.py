"""codec: text echo, JSON inspection and zlib inflation, with the tutorial's replies; and
client-chosen compression (services/codec/compress.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from services.codec.compress import (
    EXPIRED,
    CorruptData,
    Expired,
    decompressed_size,
    make_transform,
)
from services.runner import Handler
from wire.codec import Format
from wire.frames import Request, encode_text
from wire.subjects import Op


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


def inflated_size(data: bytes, cap: int, deadline: float | None = None) -> int | None:
    """Size of zlib ``data`` once inflated, streaming, holding at most one chunk.

    None if the data is not a complete zlib stream. Raises OverflowError past ``cap``,
    :class:`~services.codec.compress.Expired` past ``deadline``. Trailing bytes after the
    stream are ignored, as ``zlib.decompress`` does.
    """
    try:
        return decompressed_size(Format.ZLIB, data, cap, deadline)
    except CorruptData:
        return None


def make_inflate(cap: int, executor: Executor | None = None) -> Handler:
    """``/ws/compressed``. Inflating up to ``cap`` takes tens of milliseconds: it runs
    in ``executor``'s threads, never on the event loop, where one client's bombs held
    up every other request of the replica."""

    async def inflate(req: Request) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            size = await loop.run_in_executor(executor, inflated_size, req.data, cap, req.deadline)
        except Expired:
            raise EXPIRED from None
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


def handlers(
    inflate_cap: int, transform_cap: int | None = None, executor: Executor | None = None
) -> Mapping[Op, Handler]:
    return {
        Op.ECHO: echo,
        Op.JSON: inspect_json,
        Op.INFLATE: make_inflate(inflate_cap, executor),
        Op.TRANSFORM: make_transform(transform_cap or inflate_cap, executor),
    }
