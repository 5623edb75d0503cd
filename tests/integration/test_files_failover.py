"""An upload outlives the binary replica that owns it: with two replicas, the owner is
killed mid-upload (SIGKILL); the next upload request finds no owner, the other replica
claims the upload, rebuilds its digest from the chunks stored in JetStream, and the
client carries on from where the stored data ends."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import uuid
from collections.abc import Iterator

import nats
import orjson
import pytest

from services.binary.files import FileStore
from services.binary.settings import BinarySettings
from switchboard.filesclient import FileError, FilesClient, files_url
from switchboard.localstack import LocalStack, running
from wire import files as wf
from wire import headers as h
from wire.errors import WireError
from wire.frames import Request
from wire.subjects import upload_subject

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("failover"), replicas={"binary": 2}) as s:
        yield s


async def test_upload_survives_the_death_of_its_owner(stack) -> None:
    who = f"u{uuid.uuid4().hex[:8]}"
    url = files_url(f"ws://127.0.0.1:{stack.gateways[0].port}", user=who)
    data = os.urandom(5 * MIB + 11)
    digest = hashlib.sha256(data).hexdigest()
    fid = wf.file_id(who, "f.bin", len(data), digest)
    async with await FilesClient.open(url) as client:
        with pytest.raises(ConnectionError):
            await client.upload(io.BytesIO(data), "f.bin", len(data), digest, stop_after=2 * MIB)
    stored = 0
    for _ in range(50):
        async with await FilesClient.open(url) as client:
            uploads = (await client.list())["uploads"]
        stored = uploads[0]["offset"] if uploads else 0
        if stored >= MIB:
            break
        await asyncio.sleep(0.1)
    assert stored >= MIB
    owners = [
        p for p in stack.replicas("binary") if '"upload claimed"' in p.log() and fid in p.log()
    ]
    assert len(owners) == 1
    owners[0].kill()

    resumed_at: list[int] = []
    for _ in range(40):  # the survivor may say "busy" while the dead owner's claim is fresh
        try:
            async with await FilesClient.open(url) as client:
                info = await client.upload(
                    io.BytesIO(data),
                    "f.bin",
                    len(data),
                    digest,
                    progress=lambda done, total: resumed_at or resumed_at.append(done),
                )
            break
        except FileError as exc:
            assert exc.transient, exc
            await asyncio.sleep(0.25)
    else:
        raise AssertionError("the upload never resumed")
    assert resumed_at[0] >= MIB  # carried on, did not start again
    assert info["sha256"] == digest
    survivor = stack.replicas("binary")[0]
    assert '"upload claimed"' in survivor.log() and fid in survivor.log()
    nc = await nats.connect(stack.nats_url)
    try:
        obs = await nc.jetstream().object_store("SB_FILES")
        assert (await obs.get(fid)).data == data  # digest checked by nats-py too
    finally:
        await nc.close()


async def test_an_upload_stored_whole_but_never_committed_is_committed_on_resume(stack) -> None:
    """Its owner stores every chunk, then cannot commit the file (the metadata write
    fails: the state an owner killed between its last chunk and the commit leaves
    too). The last chunk is answered with 503, not left unanswered; the next upload
    request commits the file instead of asking for bytes that are all there already
    (``offset == size`` with nothing left to send would hang the client)."""
    who = f"u{uuid.uuid4().hex[:8]}"
    data = os.urandom(3 * 256 * 1024 + 5)
    digest = hashlib.sha256(data).hexdigest()
    fid = wf.file_id(who, "c.bin", len(data), digest)
    nc = await nats.connect(stack.nats_url)
    store = FileStore(nc, BinarySettings(), "a-replica-that-cannot-commit")
    failed_commits: list[str] = []

    async def write_meta_fails(record, *args, **kwargs):
        failed_commits.append(record.file)
        raise TimeoutError("JetStream did not answer")

    store._write_meta = write_meta_fails  # type: ignore[method-assign]
    try:
        await store.start()
        body = orjson.dumps({"name": "c.bin", "size": len(data), "sha256": digest})
        begun = orjson.loads(await store.upload(Request(body, "text", headers={h.USER: who})))
        assert (begun["state"], begun["file"], begun["offset"]) == ("upload", fid, 0)
        step = begun["chunk_size"]
        replies = [
            await nc.request(
                upload_subject(fid),
                data[offset : offset + step],
                timeout=5,
                headers={h.USER: who, h.OFFSET: str(offset)},
            )
            for offset in range(0, len(data), step)
        ]
    finally:
        await store.stop()
        await nc.close()
    assert failed_commits == [fid]
    assert [(r.headers or {}).get(h.ERROR_CODE) for r in replies] == [None, None, None, "503"]

    url = files_url(f"ws://127.0.0.1:{stack.gateways[0].port}", user=who)
    progress: list[int] = []
    async with await FilesClient.open(url) as client:
        info = await asyncio.wait_for(
            client.upload(
                io.BytesIO(data),
                "c.bin",
                len(data),
                digest,
                progress=lambda done, total: progress.append(done),
            ),
            30,
        )
        assert (info["file"], info["sha256"], info["size"]) == (fid, digest, len(data))
        assert progress == [len(data)]  # stored at once: not one byte sent again
        sink = io.BytesIO()
        await client.download(fid, sink)
    assert sink.getvalue() == data


async def test_two_replicas_starting_uploads_at_once_keep_the_quota(stack) -> None:
    """Two replicas take one user's uploads at the same moment: each checks the quota
    before either has recorded its upload (forced here), so each alone would fit. The
    one recorded first goes on; the other is refused (413), and nothing passes the quota.
    (Before: both went on, 2 x 60 MiB under a quota of 100 MiB.)"""
    who = f"u{uuid.uuid4().hex[:8]}"
    mib = 1 << 20
    settings = BinarySettings(quota_bytes=100 * mib)
    nc = await nats.connect(stack.nats_url)
    stores = [FileStore(nc, settings, f"racer-{i}") for i in range(2)]
    checked = asyncio.Barrier(2)
    for store in stores:
        usage = store._usage

        async def first_check_together(user, skip=None, before=None, usage=usage):
            if before is not None:
                return await usage(user, skip, before)
            total = await usage(user, skip)
            await checked.wait()  # both have checked; neither has recorded yet
            return total

        store._usage = first_check_together  # type: ignore[method-assign]
    try:
        for store in stores:
            await store.start()

        async def begin(store: FileStore, name: str) -> dict | str:
            body = orjson.dumps({"name": name, "size": 60 * mib, "sha256": "ab" * 32})
            try:
                reply = await store.upload(Request(body, "text", headers={h.USER: who}))
            except WireError as exc:
                return f"{exc.code} {exc.description}"
            return orjson.loads(reply)

        results = await asyncio.wait_for(
            asyncio.gather(begin(stores[0], "a.bin"), begin(stores[1], "b.bin")), 20
        )
        listing = orjson.loads(await stores[0].list(Request(b"", "text", headers={h.USER: who})))
    finally:
        for store in stores:
            await store.stop()
        await nc.close()
    begun = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, str)]
    assert len(begun) == 1 and begun[0]["state"] == "upload", results
    assert len(refused) == 1 and refused[0].startswith("413 quota exceeded"), results
    assert listing["usage"] == 60 * mib <= listing["quota"]
