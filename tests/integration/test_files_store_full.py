"""JetStream itself out of room (nats-server ``max_file_store``; SB_BINARY_STORE_MAX_BYTES
not set, as in production): uploads answer 507 at once, never stall for the store
timeout nor end in 500, and keep what they stored for a resume once there is room."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
import uuid
from collections.abc import Iterator

import nats
import pytest

from switchboard.filesclient import FileError, FilesClient, files_url, upload_path
from switchboard.localstack import LocalStack, running
from tests.integration.jsfull import CAPPED, fill, full

KIB, MIB = 1024, 1024 * 1024
CHUNK = 256 * KIB
STORE_TIMEOUT = 5.0  # services/binary/settings.py: what a refused chunk used to wait


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("jsfull"), nats_conf=CAPPED) as s:
        yield s


def url_of(stack: LocalStack) -> str:
    user = f"u{uuid.uuid4().hex[:8]}"
    return files_url(f"ws://127.0.0.1:{stack.gateways[0].port}", user=user)


async def test_an_upload_that_fills_the_store_gets_507_at_once_and_resumes_later(
    stack: LocalStack, tmp_path
) -> None:
    url = url_of(stack)
    path = tmp_path / "big.bin"
    data = os.urandom(3 * MIB)
    path.write_bytes(data)
    retried: list[BaseException] = []
    async with full(stack.nats_url, leave=MIB):
        began = time.monotonic()
        with pytest.raises(FileError) as refused:
            await upload_path(url, path, on_retry=lambda _a, exc, _d: retried.append(exc))
        took = time.monotonic() - began
        assert refused.value.code == "507" and "full" in refused.value.message, refused.value
        assert not refused.value.transient and not retried, retried  # not retried
        assert took < STORE_TIMEOUT - 1, took  # told at once, not after the store timeout
        async with await FilesClient.open(url) as files:
            listed = await files.list()
            # a new upload while full: 507 too (recording it needs room), not 500
            small = os.urandom(CHUNK)
            with pytest.raises(FileError) as again:
                await files.upload(
                    io.BytesIO(small), "s", len(small), hashlib.sha256(small).hexdigest()
                )
            assert again.value.code == "507", again.value
    [upload] = listed["uploads"]
    assert 0 < upload["offset"] < len(data), upload
    offsets: list[int] = []
    async with await FilesClient.open(url) as files:  # room again: carries on from there
        stored = await files.upload(
            io.BytesIO(data),
            "big.bin",
            len(data),
            hashlib.sha256(data).hexdigest(),
            progress=lambda done, _total: offsets.append(done),
        )
        await files.delete(stored["file"])  # room for the next test
    assert stored["size"] == len(data) and offsets[0] == upload["offset"], offsets[:3]


async def put(files: FilesClient, data: bytes, name: str, **kwargs) -> dict:
    return await files.upload(
        io.BytesIO(data), name, len(data), hashlib.sha256(data).hexdigest(), **kwargs
    )


async def test_deletes_while_the_store_is_full_free_it_and_leave_nothing_broken(
    stack: LocalStack,
) -> None:
    url = url_of(stack)
    stored_data, partial_data = os.urandom(MIB), os.urandom(2 * MIB)
    async with await FilesClient.open(url) as files:
        stored = await put(files, stored_data, "stored.bin")
    with contextlib.suppress(ConnectionError):  # an upload left half done
        async with await FilesClient.open(url) as files:
            await put(files, partial_data, "partial.bin", stop_after=MIB)
    async with full(stack.nats_url), await FilesClient.open(url) as files:
        listed = await files.list()
        [partial] = listed["uploads"]
        # a KV delete marker needs room: this answered 503 until there was some
        assert (await files.delete(partial["file"]))["kind"] == "upload"
        await fill(stack.nats_url)  # what that freed, taken again
        # nats-py's ObjectStore.delete wrote a 'deleted' record first (refused: 500),
        # then purged the chunks anyway: the file stayed listed, unreadable for good
        assert (await files.delete(stored["file"]))["kind"] == "file"
        listed = await files.list()
        assert listed["files"] == listed["uploads"] == [] and listed["usage"] == 0, listed
        with pytest.raises(FileError) as gone:
            await files.inspect(stored["file"])
        assert gone.value.code == "404"
    async with await FilesClient.open(url) as files:  # room again: stored anew, readable
        offsets: list[int] = []
        again = await put(
            files, stored_data, "stored.bin", progress=lambda d, _t: offsets.append(d)
        )
        assert again["file"] == stored["file"] and offsets[0] == 0, offsets[:2]
        sink = io.BytesIO()
        await files.download(stored["file"], sink)
        assert sink.getvalue() == stored_data
        await files.delete(stored["file"])


async def test_a_file_whose_chunks_were_lost_is_stored_anew_by_its_upload(
    stack: LocalStack,
) -> None:
    """What a delete refused half-way left before (chunks purged, meta kept): the same
    upload answered ``stored`` without sending anything, and the file stayed unreadable."""
    url = url_of(stack)
    data = os.urandom(MIB)
    async with await FilesClient.open(url) as files:
        stored = await put(files, data, "lost.bin")
    nc = await nats.connect(stack.nats_url)
    try:
        chunks = f"$O.SB_FILES.C.{stored['file']}"  # the object store's layout
        await nc.jetstream().purge_stream("OBJ_SB_FILES", subject=chunks)
    finally:
        await nc.close()
    async with await FilesClient.open(url) as files:
        offsets: list[int] = []
        await put(files, data, "lost.bin", progress=lambda d, _t: offsets.append(d))
        assert offsets[0] == 0, offsets[:2]  # sent again, from the start
        sink = io.BytesIO()
        await files.download(stored["file"], sink)
        assert sink.getvalue() == data
