"""The file store's streams deleted under a running binary service (an operator's
``nats stream rm``): requests answer 503 while the service makes them again, then work;
they used to answer 500 until the service restarted."""

from __future__ import annotations

import hashlib
import io
import os
import uuid

import nats
import pytest

from switchboard.filesclient import FileError, FilesClient, files_url
from switchboard.localstack import LocalStack

CHUNK = 256 * 1024


async def test_deleted_file_streams_are_made_again(stack: LocalStack) -> None:
    url = files_url(f"ws://127.0.0.1:{stack.gateways[0].port}", user=f"u{uuid.uuid4().hex[:8]}")
    data = os.urandom(2 * CHUNK)
    digest = hashlib.sha256(data).hexdigest()
    async with await FilesClient.open(url) as files:
        stored = await files.upload(io.BytesIO(data), "a.bin", len(data), digest)
    nc = await nats.connect(stack.nats_url)
    try:
        for stream in ("OBJ_SB_FILES", "KV_SB_UPLOADS"):
            await nc.jetstream().delete_stream(stream)
            errors: list[FileError] = []
            async with await FilesClient.open(url) as files:
                for _ in range(3):  # once made again, the upload goes through
                    try:
                        again = await files.upload(io.BytesIO(data), "a.bin", len(data), digest)
                        break
                    except FileError as exc:
                        errors.append(exc)
                else:
                    pytest.fail(f"{stream}: {errors}")
                # the service's own words reach the client (the gateway used to replace
                # every 503's with "service unavailable")
                want = "file storage unavailable; try again"
                assert all(e.code == "503" and e.message == want for e in errors), errors
                assert errors or stream != "OBJ_SB_FILES"  # the first request found it gone
                assert again["file"] == stored["file"]
                sink = io.BytesIO()
                await files.download(stored["file"], sink)
                assert sink.getvalue() == data, stream
    finally:
        await nc.close()
