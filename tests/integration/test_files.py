"""Files over /ws/files against the real stack: gateway -> NATS -> binary -> JetStream
Object Store and back. Round trips of edge sizes, drops at random points and resume,
digest, size limit and quota, concurrency, a slow reader's bounded gateway memory,
list/delete/inspect, the command line."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import os
import random
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import orjson
import pytest
import websockets

from switchboard.filesclient import FileError, FilesClient, files_url
from switchboard.localstack import ROOT, LocalStack, running
from tests.integration.client import closed_with, connect, recv, sample, scrape
from tests.integration.dropproxy import DropProxy
from tests.unit.test_files_wire import png
from wire import errors
from wire import files as wf
from wire import headers as h
from wire.frames import request_headers
from wire.subjects import Op, Service, direct_get_subject, service_subject, upload_subject

KIB = 1024
MIB = 1024 * KIB
CHUNK = 256 * KIB
LIMITS = {
    "SB_BINARY_MAX_FILE_BYTES": str(64 * MIB),
    "SB_BINARY_QUOTA_BYTES": str(160 * MIB),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("files"), env=LIMITS) as s:
        yield s


def url(stack: LocalStack, user: str) -> str:
    return files_url(f"ws://127.0.0.1:{stack.gateways[0].port}", user=user)


def user() -> str:
    return f"u{uuid.uuid4().hex[:10]}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rss(pid: int) -> int:
    """Resident set size of a process, bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def upload(stack: LocalStack, who: str, data: bytes, name: str = "f.bin", **kw) -> dict:
    async with await FilesClient.open(url(stack, who)) as client:
        return await client.upload(io.BytesIO(data), name, len(data), sha(data), **kw)


async def download(stack: LocalStack, who: str, file: str, **kw) -> bytes:
    sink = io.BytesIO()
    async with await FilesClient.open(url(stack, who)) as client:
        await client.download(file, sink, **kw)
    return sink.getvalue()


@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK, CHUNK + 1, 50 * MIB],
    ids=["0B", "1B", "one-chunk", "one-chunk-plus-1", "50MiB"],
)
async def test_round_trip(stack, size: int) -> None:
    who = user()
    data = os.urandom(size)
    ups: list[int] = []
    info = await upload(stack, who, data, progress=lambda done, total: ups.append(done))
    assert info["size"] == size and info["sha256"] == sha(data)
    assert ups == sorted(ups) and ups[-1] == size
    downs: list[int] = []
    got = await download(stack, who, info["file"], progress=lambda done, total: downs.append(done))
    assert got == data
    assert downs == sorted(downs) and (size == 0 or downs[-1] == size)
    # The same upload again finds the stored file: nothing is sent twice.
    again = await upload(stack, who, data)
    assert again == info
    if size == CHUNK + 1:
        # A real NATS object: nats-py's own reader gets it back and checks the digest.
        nc = await nats.connect(stack.nats_url)
        try:
            obs = await nc.jetstream().object_store("SB_FILES")
            assert (await obs.get(info["file"])).data == data
        finally:
            await nc.close()


async def test_resume_after_drops_at_random_points(stack) -> None:
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    who = user()
    data = os.urandom(6 * MIB + 123)
    cuts = sorted(rnd.randrange(10_000, len(data)) for _ in range(3))
    # Each connection is cut after its own number of bytes (mid-frame, no close frame).
    cuts = [cuts[0], cuts[1] - cuts[0] + 20_000, cuts[2] - cuts[1] + 20_000]
    starts: list[int] = []
    port = stack.gateways[0].port
    async with DropProxy(port, cuts) as proxy:
        for attempt in range(10):  # noqa: B007 (checked after the loop)
            first: list[int] = []
            try:
                async with await FilesClient.open(files_url(proxy.url(), user=who)) as client:
                    info = await client.upload(
                        io.BytesIO(data),
                        "resumed.bin",
                        len(data),
                        sha(data),
                        progress=lambda d, t, first=first: first or first.append(d),
                    )
                break
            except (websockets.ConnectionClosed, OSError, FileError) as exc:
                assert not isinstance(exc, FileError) or exc.transient, exc
            finally:
                starts.append(first[0] if first else -1)
        else:
            raise AssertionError(f"no upload after 10 attempts (seed {seed})")
    assert attempt == 3, (seed, starts)
    assert starts[0] == 0 and all(b >= a for a, b in itertools.pairwise(starts))
    assert starts[-1] > 0, (seed, starts)  # resumed, not restarted
    assert info["sha256"] == sha(data)
    assert await download(stack, who, info["file"]) == data
    async with await FilesClient.open(url(stack, who)) as client:
        assert (await client.list())["uploads"] == []


async def test_download_resumes_from_an_offset(stack) -> None:
    who = user()
    data = os.urandom(3 * MIB + 5)
    info = await upload(stack, who, data)
    sink = io.BytesIO()
    digest = hashlib.sha256()
    async with DropProxy(stack.gateways[0].port, [0]) as proxy:
        proxy.cuts = []  # (cut the server->client side by closing the client instead)
        async with await FilesClient.open(files_url(proxy.url(), user=who)) as client:

            async def stop_early(n: int) -> None:
                if sink.tell() > MIB:
                    await client.ws.close()

            with pytest.raises(websockets.ConnectionClosed):
                await client.download(info["file"], sink, digest=digest, on_chunk=stop_early)
    have = sink.tell()
    assert MIB < have < len(data)
    for offset in (have, CHUNK * 3, CHUNK * 3 + 17, len(data) - 1):
        part = io.BytesIO()
        resumed = hashlib.sha256(data[:offset])
        async with await FilesClient.open(url(stack, who)) as client:
            await client.download(info["file"], part, offset=offset, digest=resumed)
        assert part.getvalue() == data[offset:]
    async with await FilesClient.open(url(stack, who)) as client:
        part = io.BytesIO()
        await client.download(info["file"], part, offset=len(data), digest=hashlib.sha256(data))
        assert part.getvalue() == b""  # nothing left: done at once
        with pytest.raises(FileError) as refused:
            await client.download(info["file"], io.BytesIO(), offset=len(data) + 1)
        assert (refused.value.code, refused.value.message) == (
            "400",
            f"offset {len(data) + 1} is past the end ({len(data)} bytes)",
        )
        await client.download(info["file"], part)  # the socket is still usable
        assert part.getvalue() == data


async def test_download_chunks_go_from_the_store_straight_to_the_gateway(stack) -> None:
    """file_read answers with an empty reply; nats-server itself sends the chunks, then an
    end of batch, to the inbox named in Sb-Deliver. Only an inbox is accepted there, and
    only the owner's files are read."""
    who = user()
    data = os.urandom(5 * CHUNK + 3)
    info = await upload(stack, who, data)
    nc = await nats.connect(stack.nats_url)
    try:
        inbox = nc.new_inbox()
        got: asyncio.Queue = asyncio.Queue()
        await nc.subscribe(inbox, cb=got.put)

        async def read(owner: str, deliver: str, offset: int, cursor: int | None = None):
            extra = {h.FILE: info["file"], h.OFFSET: str(offset), h.COUNT: "2", h.DELIVER: deliver}
            if cursor is not None:
                extra[h.CURSOR] = str(cursor)
            headers = request_headers("text", user=owner, extra=extra)
            return await nc.request(service_subject(Service.BINARY, Op.FILE_READ), b"",
                                    headers=headers, timeout=5)  # fmt: skip

        async def batch() -> list[wf.StoredChunk | wf.BatchEnd]:
            items = [wf.stored_item((m := await asyncio.wait_for(got.get(), 5)).headers, m.data)]
            while items[-1].kind == "chunk":
                m = await asyncio.wait_for(got.get(), 5)
                items.append(wf.stored_item(m.headers, m.data))
            return items

        reply = await read(who, inbox, CHUNK + 7)  # inside the second chunk
        assert reply.data == b"" and errors.from_headers(reply.headers) is None
        first, second, end = await batch()
        assert end == wf.BatchEnd(204)
        assert (first.offset, first.end, second.offset) == (CHUNK, 2 * CHUNK, 2 * CHUNK)
        assert first.data + second.data == data[CHUNK : 3 * CHUNK]
        await read(who, inbox, 3 * CHUNK, cursor=second.seq + 1)  # from the cursor on
        third, fourth, end = await batch()
        assert third.data + fourth.data == data[3 * CHUNK : 5 * CHUNK] and end.status == 204
        await read(who, inbox, 5 * CHUNK, cursor=fourth.seq + 1)
        last, end = await batch()
        assert last.data == data[5 * CHUNK :] and end.status == 204

        for owner, deliver, code in ((who, "sb.room.general", 400), (user(), inbox, 404)):
            reply = await read(owner, deliver, 0)
            error = errors.from_headers(reply.headers)
            assert error is not None and int(error.code) == code, (owner, deliver, error)
        await asyncio.sleep(0.2)
        assert got.empty()  # refused reads deliver nothing
    finally:
        await nc.close()


async def test_a_download_outlives_a_replica_that_hangs(stack) -> None:
    """A hung binary replica (or one killed with the request) leaves file_read requests
    unanswered: the gateway asks again after its share of the request timeout, to
    whichever replica NATS picks. When the hung one wakes up and has its batch
    delivered after all, mid-download, the gateway ignores it as stale."""
    who = user()
    data = os.urandom(4 * MIB + 3)  # 5 reads of 4 chunks
    info = await upload(stack, who, data)
    nc = await nats.connect(stack.nats_url)
    swallowed: list[str] = []
    late: list[asyncio.Task] = []

    async def deliver_late(deliver: str) -> None:  # the first chunks, to the old read
        await asyncio.sleep(2.7)  # just past the gateway's first attempt (10 s / 4)
        body = wf.direct_get_request(1, f"$O.SB_FILES.C.{info['file']}", 4)
        await nc.publish(direct_get_subject("OBJ_SB_FILES"), body, reply=deliver)

    async def hung(msg) -> None:  # a member of the binary queue group
        swallowed.append(msg.headers[h.DELIVER])
        late.append(asyncio.create_task(deliver_late(swallowed[-1])))
        if len(swallowed) == 2:  # then it leaves: every read gets an answer in the end
            late.append(asyncio.create_task(hole.unsubscribe()))

    hole = await nc.subscribe(
        service_subject(Service.BINARY, Op.FILE_READ), queue="binary", cb=hung
    )

    async def dawdle(n: int) -> None:  # a download that lasts past the late delivery
        await asyncio.sleep(0.15)

    try:
        for _ in range(10):  # NATS picks a queue member at random
            got = await download(stack, who, info["file"], on_chunk=dawdle)
            assert got == data
            if len(swallowed) == 2:
                break
        assert len(swallowed) == 2, "the hung replica never got a read: nothing was tested"
        await asyncio.gather(*late)
    finally:
        await nc.close()


async def test_wrong_digest_is_refused_and_nothing_kept(stack) -> None:
    who = user()
    data = os.urandom(CHUNK * 2 + 10)
    async with await FilesClient.open(url(stack, who)) as client:
        with pytest.raises(FileError) as caught:
            await client.upload(io.BytesIO(data), "bad.bin", len(data), sha(b"other"))
        listing = await client.list()
    assert caught.value.code == "400"
    assert "SHA-256 mismatch" in caught.value.message and sha(data) in caught.value.message
    assert listing["files"] == [] and listing["uploads"] == [] and listing["usage"] == 0


async def test_size_limit_and_quota(stack) -> None:
    who = user()
    async with await FilesClient.open(url(stack, who)) as client:
        with pytest.raises(FileError) as caught:
            await client._begin("huge.bin", 64 * MIB + 1, "0" * 64)
        assert caught.value.code == "413"
        assert "more than the limit of 67108864 bytes" in caught.value.message
        # The quota counts uploads in progress at their declared size.
        first = await client._begin("a.bin", 60 * MIB, "1" * 64)
        await client._begin("b.bin", 60 * MIB, "2" * 64)
        with pytest.raises(FileError) as caught:
            await client._begin("c.bin", 50 * MIB, "3" * 64)
        assert caught.value.code == "413" and "quota exceeded" in caught.value.message
        listing = await client.list()
        assert listing["usage"] == 120 * MIB and listing["quota"] == 160 * MIB
        assert sorted(u["name"] for u in listing["uploads"]) == ["a.bin", "b.bin"]
        await client.delete(first["file"])  # an upload in progress can be discarded
        assert (await client._begin("c.bin", 50 * MIB, "3" * 64))["offset"] == 0
    # Other users have their own quota.
    assert (await upload(stack, user(), os.urandom(1000)))["size"] == 1000


async def test_concurrent_uploads_from_two_clients(stack) -> None:
    alice, bob = user(), user()
    files = {(alice, "a1"): os.urandom(8 * MIB), (bob, "b1"): os.urandom(8 * MIB + 1)}
    files[(alice, "a2")] = os.urandom(3 * MIB)
    infos = await asyncio.gather(
        *(upload(stack, who, data, name) for (who, name), data in files.items())
    )
    for ((who, _), data), info in zip(files.items(), infos, strict=True):
        assert info["sha256"] == sha(data)
        assert await download(stack, who, info["file"]) == data
    # Bob cannot see or read Alice's files.
    async with await FilesClient.open(url(stack, bob)) as client:
        assert [f["name"] for f in (await client.list())["files"]] == ["b1"]
        with pytest.raises(FileError) as caught:
            await client.inspect(infos[0]["file"])
        assert caught.value.code == "404"


async def test_slow_reader_does_not_make_the_gateway_buffer(stack) -> None:
    who = user()
    data = os.urandom(50 * MIB)
    info = await upload(stack, who, data)
    gateway = stack.gateways[0]
    base = rss(gateway.pid)
    peak = base
    sampling = True

    async def sample_rss() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss(gateway.pid))
            await asyncio.sleep(0.02)

    def sent_down() -> float:
        return sample(
            scrape(gateway.port), "switchboard_gateway_file_bytes_total", direction="down"
        )

    sampler = asyncio.create_task(sample_rss())
    try:
        # 1. A reader that stops acknowledging: the gateway stops at the window.
        window = 2 * MIB
        before = sent_down()
        client = await FilesClient.open(url(stack, who), max_queue=4)
        await client._send(type="download", id="d", file=info["file"], window=window)
        await asyncio.sleep(1.0)  # reads nothing, acks nothing
        stalled = sent_down() - before
        client.ws.transport.abort()
        assert stalled <= window, stalled
        # 2. A reader that acks everything at once but does not read: TCP backpressure.
        before = sent_down()
        client = await FilesClient.open(url(stack, who), max_queue=1)
        await client._send(type="download", id="d", file=info["file"])
        await client._send(type="ack", file=info["file"], offset=len(data))
        await asyncio.sleep(1.0)
        pushed = sent_down() - before
        client.ws.transport.abort()
        assert pushed < len(data) / 2, pushed
        # 3. A slow reader that gets the whole file, a little at a time.
        slow = 0

        async def dawdle(n: int) -> None:
            nonlocal slow
            slow += 1
            if slow < 60:
                await asyncio.sleep(0.01)

        got = await download(stack, who, info["file"], window=window, on_chunk=dawdle)
        assert got == data
    finally:
        sampling = False
        await sampler
    print(
        f"gateway RSS {base / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB; "
        f"stalled at {stalled / MIB:.2f} MiB, pushed {pushed / MIB:.2f} MiB"
    )
    assert peak - base < 20 * MIB, (base, peak)  # the file is 50 MiB


async def test_list_delete_and_inspect(stack) -> None:
    who = user()
    image = png(640, 480)
    info = await upload(stack, who, image, "picture.dat")  # the name says nothing
    assert info["media_type"] == "image/png"
    assert (info["width"], info["height"]) == (640, 480)
    text = await upload(stack, who, b"hello\n" * 100, "notes")
    async with await FilesClient.open(url(stack, who)) as client:
        inspected = await client.inspect(info["file"])
        assert inspected == info and inspected["sha256"] == sha(image)
        assert (await client.inspect(text["file"]))["media_type"] == "text/plain"
        listing = await client.list()
        assert {f["file"] for f in listing["files"]} == {info["file"], text["file"]}
        assert listing["usage"] == len(image) + 600
        assert (await client.delete(info["file"]))["kind"] == "file"
        assert [f["file"] for f in (await client.list())["files"]] == [text["file"]]
        for call in (client.inspect(info["file"]), client.delete(info["file"])):
            with pytest.raises(FileError) as caught:
                await call
            assert caught.value.code == "404"
        with pytest.raises(FileError) as caught:
            await client.download(info["file"], io.BytesIO())
        assert caught.value.code == "404"


async def test_deleting_an_upload_while_its_last_chunk_is_stored_leaves_nothing(stack) -> None:
    """Socket B deletes the upload socket A is sending its last chunk of. Before, the
    commit went on after the delete purged the chunks: A was told ``stored``, B
    ``upload`` deleted, and the file stayed listed and counted with no data (its
    download failed; 17 of 30 rounds). Now either the delete comes first (A's chunk is
    answered 404, nothing is stored) or the commit does (B deletes the stored file)."""
    for i in range(12):
        who = user()
        data = os.urandom(2 * CHUNK)
        async with connect(url(stack, who)) as a, connect(url(stack, who)) as b:
            begin = {"type": "upload", "id": "u", "name": "x", "size": len(data)}
            await a.send(orjson.dumps({**begin, "sha256": sha(data)}).decode())
            fid = orjson.loads(await recv(a))["file"]
            await a.send(wf.pack_chunk(0, data[:CHUNK]))
            assert orjson.loads(await recv(a))["type"] == "progress"

            async def delete(b: websockets.ClientConnection, fid: str, delay: float) -> dict:
                await asyncio.sleep(delay)
                await b.send(orjson.dumps({"type": "delete", "id": "d", "file": fid}).decode())
                return orjson.loads(await recv(b))

            _, deleted = await asyncio.gather(
                a.send(wf.pack_chunk(CHUNK, data[CHUNK:])), delete(b, fid, 0.001 * (i % 6))
            )
            last = orjson.loads(await recv(a))
        assert deleted["type"] == "deleted", deleted
        if deleted["kind"] == "file":
            assert last["type"] == "stored", last
        else:
            assert (last["type"], last["code"]) == ("error", "404"), last
        async with await FilesClient.open(url(stack, who)) as client:
            listing = await client.list()
        assert listing["files"] == [] and listing["usage"] == 0, listing


async def test_a_last_chunk_sent_twice_is_answered_with_the_file_both_times(stack) -> None:
    """Two connections of one user racing on an upload (a resumed client and its old
    self) both send the last chunk: the repeat was acknowledged as a plain chunk, so the
    gateway told that socket ``progress`` at 100 % and it never heard ``stored``."""
    nc = await nats.connect(stack.nats_url)
    try:
        who = user()
        data = os.urandom(2 * CHUNK)
        body = orjson.dumps({"name": "x", "size": len(data), "sha256": sha(data)})
        begun = await nc.request(
            service_subject(Service.BINARY, Op.FILE_UPLOAD),
            body,
            timeout=5,
            headers=request_headers("text", user=who),
        )
        subject = upload_subject(orjson.loads(begun.data)["file"])
        first = request_headers("text", user=who, extra={h.OFFSET: "0"})
        await nc.request(subject, data[:CHUNK], timeout=5, headers=first)
        last = request_headers("text", user=who, extra={h.OFFSET: str(CHUNK)})
        replies = await asyncio.gather(
            nc.request(subject, data[CHUNK:], timeout=5, headers=dict(last)),
            nc.request(subject, data[CHUNK:], timeout=5, headers=dict(last)),
        )
        for reply in replies:
            assert not (reply.headers or {}).get(h.ERROR_CODE), reply.headers
            assert orjson.loads(reply.data)["sha256"] == sha(data), reply.data
    finally:
        await nc.close()


async def test_protocol_errors(stack) -> None:
    who = user()
    async with connect(url(stack, who)) as ws:
        await ws.send(wf.pack_chunk(0, b"no upload"))
        assert orjson.loads(await recv(ws))["message"] == "no upload in progress"
        await ws.send("not json")
        reply = orjson.loads(await recv(ws))
        assert reply["type"] == "error" and reply["code"] == "400"
        data = os.urandom(1000)
        await ws.send(
            orjson.dumps(
                {"type": "upload", "id": "u", "name": "x", "size": 1000, "sha256": sha(data)}
            ).decode()
        )
        begun = orjson.loads(await recv(ws))
        assert begun["type"] == "upload" and begun["offset"] == 0
        await ws.send(wf.pack_chunk(10, data))  # not where the upload continues
        reply = orjson.loads(await recv(ws))
        assert reply["code"] == "400" and "continues at 0" in reply["message"]
        assert (reply["id"], reply["file"], reply["offset"]) == ("u", begun["file"], 0)
        await ws.send(
            orjson.dumps(
                {"type": "upload", "id": "u2", "name": "x", "size": 1000, "sha256": sha(data)}
            ).decode()
        )
        assert orjson.loads(await recv(ws))["offset"] == 0
        # chunks shorter than chunk_size (but the last): each is a stream message with
        # headers, so 1-byte chunks stored ~118 times the quota's bytes
        await ws.send(wf.pack_chunk(0, data[:1]))
        reply = orjson.loads(await recv(ws))
        assert reply["code"] == "400" and reply["offset"] == 0, reply
        assert reply["message"] == "a chunk here is 1000 bytes (chunk_size, or the rest), not 1"
        await ws.send(
            orjson.dumps(
                {"type": "upload", "id": "u3", "name": "x", "size": 1000, "sha256": sha(data)}
            ).decode()
        )
        assert orjson.loads(await recv(ws))["offset"] == 0
        await ws.send(wf.pack_chunk(0, data))
        progress_or_stored = orjson.loads(await recv(ws))
        assert progress_or_stored["type"] in ("progress", "stored")


async def test_a_second_transfer_ends_the_first_with_an_error(stack) -> None:
    """One upload and one download at a time per socket: starting another ends the
    first, and the client is told which (before: silently)."""
    who = user()
    stored = []
    async with await FilesClient.open(url(stack, who)) as client:
        for data in (os.urandom(3 * MIB), os.urandom(3 * MIB)):
            stored.append(await client.upload(io.BytesIO(data), "f", len(data), sha(data)))
    async with connect(url(stack, who)) as ws:

        async def request(**frame) -> None:
            await ws.send(orjson.dumps(frame).decode())

        async def until(kind: str) -> dict:
            while True:
                msg = await recv(ws)
                if isinstance(msg, str) and (reply := orjson.loads(msg))["type"] == kind:
                    return reply

        a, b = os.urandom(100), os.urandom(200)
        await request(type="upload", id="ua", name="a", size=100, sha256=sha(a))
        first = await until("upload")
        await request(type="upload", id="ub", name="b", size=200, sha256=sha(b))
        ended = await until("error")
        assert (ended["id"], ended["file"], ended["code"]) == ("ua", first["file"], "400")
        assert ended["message"].startswith("upload ended: another one began on this socket")
        assert (await until("upload"))["id"] == "ub"

        one, two = (info["file"] for info in stored)
        await request(type="download", id="d1", file=one, window=1)  # a chunk at a time
        await until("download")
        await request(type="download", id="d2", file=two)
        ended = await until("error")
        assert (ended["id"], ended["file"], ended["code"]) == ("d1", one, "400")
        assert ended["message"].startswith("download ended: another one began on this socket")
        assert (await until("download"))["id"] == "d2"


async def test_inspect_endpoint(stack) -> None:
    base = f"ws://127.0.0.1:{stack.gateways[0].port}"
    async with connect(base + "/ws/inspect") as ws:
        image = png(33, 17)
        await ws.send(image)
        report = orjson.loads(await recv(ws))
        assert report == {
            "size": len(image),
            "sha256": sha(image),
            "media_type": "image/png",
            "width": 33,
            "height": 17,
        }
        await ws.send(b"just text")
        assert orjson.loads(await recv(ws))["media_type"] == "text/plain"
        await ws.send(b"")
        assert orjson.loads(await recv(ws))["size"] == 0
        await ws.send("a text frame")
        assert orjson.loads(await recv(ws)) == {
            "status": "error",
            "message": "expected a binary frame",
        }


def run_cli(stack_url: str, who: str, *args: str) -> asyncio.subprocess.Process:
    return asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "switchboard",
        "--url",
        stack_url,
        "--user",
        who,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def cli(stack_url: str, who: str, *args: str) -> tuple[int, str, str]:
    proc = await run_cli(stack_url, who, *args)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_command_line_resumes_by_itself(stack, tmp_path) -> None:
    who = user()
    source = tmp_path / "data.bin"
    # Fixed bytes, known to be sniffed as plain binary: random ones now and then look
    # like something (CI runs got application/json, then video/fli from a 2-byte magic).
    data = b"\0" + random.Random(0).randbytes(5 * MIB + 2)
    source.write_bytes(data)
    base = f"ws://127.0.0.1:{stack.gateways[0].port}"
    async with DropProxy(stack.gateways[0].port, [2 * MIB]) as proxy:
        code, out, err = await cli(proxy.url(), who, "--progress", "upload", str(source))
    assert code == 0, err
    assert proxy.connections >= 2  # dropped once, then resumed
    file = out.split()[0]
    assert sha(data)[:16] in out and "data.bin" in out
    assert "100.0%" in err  # the progress bar
    code, out, err = await cli(base, who, "ls")
    assert code == 0 and file in out
    target = tmp_path / "copy.bin"
    code, out, err = await cli(base, who, "-q", "download", file, "-o", str(target))
    assert code == 0, err
    assert target.read_bytes() == data
    # A download resumes from its part file, named after the file's id: one left by an
    # interrupted download of this file is carried on; one whose bytes are not this
    # file's start is found out by the digest, deleted, and the download starts over.
    again = tmp_path / "again.bin"
    part = tmp_path / f"again.bin.{file}.part"
    for left in (data[: MIB + 3], os.urandom(MIB)):
        part.write_bytes(left)
        again.unlink(missing_ok=True)
        code, out, err = await cli(base, who, "-q", "download", file, "-o", str(again))
        assert code == 0, err
        assert again.read_bytes() == data
        assert not part.exists()
    code, out, _ = await cli(base, who, "inspect", file)
    assert code == 0 and re.search(r"^media_type: application/octet-stream$", out, re.M)
    code, _, err = await cli(base, who, "rm", file)
    assert code == 0, err
    code, out, _ = await cli(base, who, "ls")
    assert file not in out
    code, _, err = await cli(base, who, "rm", file)
    assert code == 1 and "error 404" in err
    started = time.monotonic()
    code, _, err = await cli(base, who, "upload", str(tmp_path / "missing"))
    assert code == 1 and time.monotonic() - started < 10


async def test_token_identity(stack) -> None:
    import jwt

    secret = "s" * 40
    gateway = stack.start_gateway(
        env={"SB_GATEWAY_JWT_SECRET": secret, "SB_GATEWAY_ALLOW_ANONYMOUS": "false"}
    )
    try:
        base = f"ws://127.0.0.1:{gateway.port}/ws/files"
        token = jwt.encode({"sub": "carol", "exp": int(time.time()) + 60}, secret, "HS256")
        data = os.urandom(5000)
        async with await FilesClient.open(
            base, subprotocols=["switchboard.files", f"bearer.{token}"]
        ) as client:
            assert client.ws.subprotocol == "switchboard.files"
            info = await client.upload(io.BytesIO(data), "t.bin", len(data), sha(data))
        assert info["file"] == wf.file_id("carol", "t.bin", len(data), sha(data))
        async with connect(base + "?username=carol") as ws:  # no token: refused
            code, reason = await closed_with(ws)
        assert (code, reason) == (1008, "a token is required")
    finally:
        gateway.stop()


async def test_command_line_refused_fails_at_once_in_one_line(stack, tmp_path) -> None:
    """A policy close (here: the reserved user name) is not retried, and no traceback."""
    base = f"ws://127.0.0.1:{stack.gateways[0].port}"
    source = tmp_path / "small.txt"
    source.write_bytes(b"hello")
    for args in (["ls"], ["upload", str(source)]):
        started = time.monotonic()
        code, _, err = await cli(base, "system", "-q", *args)
        assert code == 1, err
        assert err.strip() == "closed by the server: 1008 user name 'system' is reserved", err
        assert time.monotonic() - started < 15  # not 20 attempts with back-off
    code, _, err = await cli("not a url", user(), "ls")
    assert code == 1 and "Traceback" not in err and err.startswith("bad --url"), err


@pytest.mark.parametrize("name", ["..", "."])
async def test_command_line_download_stays_in_its_directory(stack, tmp_path, name) -> None:
    base = f"ws://127.0.0.1:{stack.gateways[0].port}"
    who = user()
    data = b"dot dot"
    async with await FilesClient.open(url(stack, who)) as client:
        info = await client.upload(
            io.BytesIO(data), name, len(data), hashlib.sha256(data).hexdigest()
        )
    into = tmp_path / "a" / "b"
    into.mkdir(parents=True)
    code, out, err = await cli(base, who, "-q", "download", info["file"], "-o", str(into))
    assert code == 0, err
    assert out.strip() == str(into / info["file"])  # named after the id, inside into
    assert (into / info["file"]).read_bytes() == data
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["a", "b", info["file"]])
    target = into / info["file"]
    target.write_bytes(b"mine")  # an existing file is not replaced unless asked
    code, _, err = await cli(base, who, "-q", "download", info["file"], "-o", str(into))
    assert code == 1 and err.strip() == f"error: {target} exists (--force replaces it)", err
    assert target.read_bytes() == b"mine"
    code, _, err = await cli(base, who, "-q", "download", info["file"], "-o", str(into), "-f")
    assert code == 0 and target.read_bytes() == data, err


async def test_binary_frames_without_an_upload_are_rate_limited(stack) -> None:
    """Outside an upload a binary frame only earns an error frame: a flood of them meets
    the rate limit (429 errors, then close 1008) like control frames do, instead of
    queueing an error frame each without end. Last in this module: the close bans the
    address from this gateway for SB_GATEWAY_RATE_BAN_SECONDS."""
    async with connect(url(stack, user())) as ws:
        for _ in range(3000):  # the burst is 1000 frames, at 500/s
            await ws.send(b"\0" * 9)
        codes = []
        with pytest.raises(websockets.ConnectionClosed) as exc:
            while True:
                codes.append(orjson.loads(await recv(ws))["code"])
        assert exc.value.rcvd.code == 1008 and exc.value.rcvd.reason == "rate limit exceeded"
        assert codes[0] == "400" and "429" in codes
