"""A JetStream store out of room, for the tests of what users see then: a nats-server
capped with :data:`CAPPED` (``LocalStack(nats_conf=...)``, ``running(nats_conf=...)``),
filled by a stream of its own until JetStream refuses for want of room."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import nats
from nats.js.errors import APIError, BadRequestError

from wire.errors import storage_full

CAPPED = "jetstream { max_file_store: 4MB }"
FILLER = "FILLER"
CHUNK = 256 * 1024


async def fill(url: str) -> None:
    """Stream FILLER written to until JetStream refuses for want of room."""
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=2)
    with contextlib.suppress(BadRequestError):  # there already
        await js.add_stream(name=FILLER, subjects=["filler.>"])
    try:
        for size in (CHUNK, 16 * 1024, 1024):
            while True:
                try:
                    await js.publish("filler.x", b"x" * size)
                except APIError as exc:
                    assert storage_full(exc) is not None, exc
                    break
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def full(url: str, leave: int = 0) -> AsyncIterator[None]:
    """The store filled (to the last KiB), then ``leave`` bytes of it freed again;
    emptied on the way out."""
    await fill(url)
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=2)
    try:
        state = await js.stream_info(FILLER)
        for seq in range(state.state.first_seq, state.state.first_seq + leave // CHUNK):
            await js.delete_msg(FILLER, seq)
        yield
    finally:
        await js.purge_stream(FILLER)
        await nc.close()
