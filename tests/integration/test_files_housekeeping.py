"""Upload housekeeping (FileStore._sweep, docs/protocol.md "Which binary replica gets
which chunk"): an owner lets go of an upload silent for ``SB_BINARY_UPLOAD_IDLE_TIMEOUT``,
so that another replica claims it and carries on from what is stored; an upload not
resumed within ``SB_BINARY_UPLOAD_TTL`` expires, and the sweep purges its chunks, while
stored files keep theirs. FileStores in process against a real nats-server, each test
with buckets of its own, the sweep called directly (it runs every 30 s in a worker)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator

import nats
import orjson
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from services.binary.files import FileStore
from services.binary.settings import BinarySettings
from switchboard.localstack import LocalStack
from wire import headers as h
from wire.frames import Request, request_headers
from wire.subjects import upload_subject

CHUNK = 1024  # the smallest chunk size allowed
TTL = 2.0  # seconds: SB_BINARY_UPLOAD_TTL here


def settings(server: LocalStack, **extra) -> BinarySettings:
    tag = uuid.uuid4().hex[:8]
    return BinarySettings(
        SB_NATS_URL=server.nats_url,
        metrics_port=0,
        files_bucket=f"F{tag}",
        uploads_bucket=f"U{tag}",
        chunk_bytes=CHUNK,
        **extra,
    )


@pytest.fixture
async def client(server: LocalStack) -> AsyncIterator[Client]:
    """The gateway's side: sends chunks to an upload's owner."""
    nc = await nats.connect(server.nats_url)
    yield nc
    await nc.close()


def begin(who: str, name: str, data: bytes) -> Request:
    body = {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return Request(orjson.dumps(body), "text", headers={h.USER: who})


async def send_chunk(nc: Client, fid: str, who: str, data: bytes, offset: int) -> Msg:
    reply = await nc.request(
        upload_subject(fid),
        data[offset : offset + CHUNK],
        timeout=10,
        headers=request_headers("text", user=who, extra={h.OFFSET: str(offset)}),
    )
    assert (reply.headers or {}).get(h.ERROR_CODE) is None, reply.headers
    return reply


async def chunks_stored(store: FileStore, fid: str) -> int:
    subject = store._chunks(fid)
    state = await store.js.stream_info(store.stream, subjects_filter=subject)
    return (state.state.subjects or {}).get(subject, 0)


async def test_an_idle_owner_lets_go_and_another_replica_carries_on(
    server: LocalStack, client: Client
) -> None:
    config = settings(server)  # the default idle timeout (5 min) to begin with
    conns = [await nats.connect(server.nats_url) for _ in range(2)]
    a, b = FileStore(conns[0], config, "A"), FileStore(conns[1], config, "B")
    await a.start()
    await b.start()
    try:
        who, data = "alice", os.urandom(2 * CHUNK + 10)
        fid = orjson.loads(await a.upload(begin(who, "idle.bin", data)))["file"]
        await send_chunk(client, fid, who, data, 0)

        await a._sweep(orphans=False)
        assert fid in list(a.owned)  # active within the idle timeout: kept

        config.upload_idle_timeout = 0.05
        await asyncio.sleep(0.1)  # silent for longer than that now
        await a._sweep(orphans=False)
        assert fid not in list(a.owned)  # let go: it no longer takes the upload's chunks...
        with pytest.raises(NoRespondersError):
            await client.request(upload_subject(fid), b"", timeout=2, headers={h.CONTROL: "sync"})
        found = await a._record(fid)
        assert found is not None and "owner" not in found[0].extra  # ...nor claims it

        # the upload sent again reaches the other replica: it claims it at once and
        # carries on from the stored chunk
        resumed = orjson.loads(await b.upload(begin(who, "idle.bin", data)))
        assert (resumed["state"], resumed["offset"]) == ("upload", CHUNK), resumed
        assert fid in list(b.owned)
        found = await b._record(fid)
        assert found is not None and found[0].extra.get("owner") == "B"
        await send_chunk(client, fid, who, data, CHUNK)
        info = orjson.loads((await send_chunk(client, fid, who, data, 2 * CHUNK)).data)
        assert (info["file"], info["sha256"]) == (fid, hashlib.sha256(data).hexdigest())
        obs = await conns[0].jetstream().object_store(config.files_bucket)
        assert (await obs.get(fid)).data == data  # digest checked by nats-py too
    finally:
        await a.stop()
        await b.stop()
        for nc in conns:
            await nc.close()


async def test_an_upload_not_resumed_within_the_ttl_expires_and_its_chunks_are_purged(
    server: LocalStack, client: Client
) -> None:
    config = settings(server, upload_ttl=TTL, upload_idle_timeout=0.05)
    nc = await nats.connect(server.nats_url)
    store = FileStore(nc, config, "A")
    await store.start()
    try:
        who = "bob"
        left, kept = os.urandom(3 * CHUNK), os.urandom(2 * CHUNK)
        # a file stored in full: its chunks are older than the TTL too, but they stay
        stored = orjson.loads(await store.upload(begin(who, "kept.bin", kept)))["file"]
        for offset in range(0, len(kept), CHUNK):
            await send_chunk(client, stored, who, kept, offset)
        # an upload left after its first chunk
        fid = orjson.loads(await store.upload(begin(who, "left.bin", left)))["file"]
        await send_chunk(client, fid, who, left, 0)
        last_write = time.time()

        # its record expires with the TTL, and its chunk gets older than that
        deadline = time.monotonic() + 10 * TTL
        while await store._record(fid) is not None:
            assert time.monotonic() < deadline, "the upload's record did not expire"
            await asyncio.sleep(0.1)
        await asyncio.sleep(max(0.0, last_write + TTL + 0.2 - time.time()))
        assert await chunks_stored(store, fid) == 1
        listing = orjson.loads(await store.list(Request(b"", "text", headers={h.USER: who})))
        assert listing["uploads"] == []  # expired

        await store._sweep(orphans=True)
        assert fid not in list(store.owned)  # let go (idle)
        assert await chunks_stored(store, fid) == 0  # and purged
        assert await chunks_stored(store, stored) == 2
        obs = await nc.jetstream().object_store(config.files_bucket)
        assert (await obs.get(stored)).data == kept
        # sent again, it starts over: nothing of the expired upload is resumed
        again = orjson.loads(await store.upload(begin(who, "left.bin", left)))
        assert (again["file"], again["offset"]) == (fid, 0), again
    finally:
        await store.stop()
        await nc.close()
