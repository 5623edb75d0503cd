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
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.js.errors import APIError, BadRequestError

from switchboard.filesclient import FileError, FilesClient, files_url, upload_path
from switchboard.localstack import LocalStack, running
from wire.errors import storage_full

KIB, MIB = 1024, 1024 * 1024
CHUNK = 256 * KIB
STORE_TIMEOUT = 5.0  # services/binary/settings.py: what a refused chunk used to wait


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    conf = "jetstream { max_file_store: 4MB }"
    with running(tmp_path_factory.mktemp("jsfull"), nats_conf=conf) as s:
        yield s


@contextlib.asynccontextmanager
async def full(stack: LocalStack, leave: int = 0) -> AsyncIterator[None]:
    """The store filled by a stream of its own (to the last KiB), then ``leave`` bytes
    of it freed again; emptied on the way out."""
    nc = await nats.connect(stack.nats_url)
    js = nc.jetstream(timeout=2)
    with contextlib.suppress(BadRequestError):
        await js.add_stream(name="FILLER", subjects=["filler.>"])
    try:
        for size in (CHUNK, 16 * KIB, KIB):
            while True:
                try:
                    await js.publish("filler.x", b"x" * size)
                except APIError as exc:
                    assert storage_full(exc) is not None, exc
                    break
        state = await js.stream_info("FILLER")
        for seq in range(state.state.first_seq, state.state.first_seq + leave // CHUNK):
            await js.delete_msg("FILLER", seq)
        yield
    finally:
        await js.purge_stream("FILLER")
        await nc.close()


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
    async with full(stack, leave=MIB):
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
    assert stored["size"] == len(data) and offsets[0] == upload["offset"], offsets[:3]
