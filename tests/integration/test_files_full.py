"""A file store with a size limit (SB_BINARY_STORE_MAX_BYTES) that fills up: uploads get
a 413 the client does not retry, not the 503 ("send upload again") they got before,
which made the command line and the files page retry for a minute into a full store."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import uuid
from collections.abc import Iterator

import pytest

from switchboard.filesclient import FileError, FilesClient, files_url
from switchboard.localstack import LocalStack, running

MIB = 1024 * 1024
CHUNK = 256 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {"SB_BINARY_STORE_MAX_BYTES": str(3 * MIB), "SB_BINARY_STORE_TIMEOUT": "1"}
    with running(tmp_path_factory.mktemp("full"), env=env) as s:
        yield s


async def put(url: str, data: bytes, name: str) -> dict:
    async with await FilesClient.open(url) as files:
        digest = hashlib.sha256(data).hexdigest()
        return await files.upload(io.BytesIO(data), name, len(data), digest)


async def test_a_full_store_refuses_uploads_with_413_until_files_are_deleted(stack) -> None:
    url = files_url(f"ws://127.0.0.1:{stack.gateways[0].port}", user=f"u{uuid.uuid4().hex[:8]}")
    first = await put(url, os.urandom(2 * MIB), "a")
    with pytest.raises(FileError) as refused:  # at once: its size does not fit
        await put(url, os.urandom(MIB + MIB // 2), "b")
    assert refused.value.code == "413" and "file storage is full" in refused.value.message
    assert not refused.value.transient
    # two uploads that each fit when they begin, but not both: those that find the
    # store full as they write are told so (each may have written part of itself)
    results = await asyncio.gather(
        put(url, os.urandom(3 * CHUNK), "c"),
        put(url, os.urandom(3 * CHUNK), "d"),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, Exception)]
    assert errors and all(isinstance(e, FileError) and e.code == "413" for e in errors), results
    async with await FilesClient.open(url) as files:
        await files.delete(first["file"])
    stored = await put(url, os.urandom(MIB + MIB // 2), "b")
    assert stored["size"] == MIB + MIB // 2
