"""binary: inspection with echo, and the mixed-type summary, with the tutorial's replies;
the inspection report (/ws/inspect) and files (services/binary/files.py)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping

from nats.aio.client import Client

from services.binary.files import FileStore
from services.binary.inspect import describe
from services.binary.settings import BinarySettings
from services.runner import Handler
from wire.frames import BinaryFrame, Request, TextFrame, encode_frames, encode_text
from wire.subjects import Op


async def inspect(req: Request) -> bytes:
    # 15 bytes are exactly the first 20 base64 characters of the whole.
    preview = base64.b64encode(req.data[:15]).decode()[:20]
    return encode_frames(
        (
            TextFrame(
                f"Received binary data of size {len(req.data)} bytes. "
                f"First 20 bytes in base64: {preview}..."
            ),
            BinaryFrame(req.data),
        )
    )


async def mixed(req: Request) -> bytes:
    if req.frame == "text":
        return encode_text(f"You sent a text message: {req.text}")
    return encode_text(f"You sent a binary message of size {len(req.data)} bytes")


def handlers() -> Mapping[Op, Handler]:
    return {Op.INSPECT: inspect, Op.MIXED: mixed, Op.DESCRIBE: describe}


async def build(nc: Client, settings: BinarySettings) -> Mapping[Op, Handler]:
    """Every operation, files included (their buckets are created here if missing)."""
    store = FileStore(nc, settings, secrets.token_hex(6))
    await store.start()
    return {**handlers(), **store.handlers()}
