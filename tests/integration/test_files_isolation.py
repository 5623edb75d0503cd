"""One user's slow /ws/files requests do not hold up another user's on the same binary
replica (services/scheduler.py). The slow case: an upload whose owner hangs (alive on
NATS, never answering): each ``upload`` of it waits the 2 s sync timeout, then "upload
busy; try again". One at a time, six of those (six files) made every other user's
request on that replica wait 12 s, past the gateway's 10 s: "service timed out"."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
import uuid
from collections.abc import Iterator

import nats
import orjson
import pytest
import websockets

from switchboard.filesclient import FilesClient, files_url
from switchboard.localstack import LocalStack, running
from wire import files as wf
from wire.subjects import Service, upload_subject


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("files-isolation")) as s:
        yield s


async def test_a_user_stuck_on_a_hung_upload_owner_does_not_hold_up_others(stack) -> None:
    base = f"ws://127.0.0.1:{stack.gateways[0].port}"
    stuck, other = f"u{uuid.uuid4().hex[:8]}", f"u{uuid.uuid4().hex[:8]}"
    data = os.urandom(1000)
    digest = hashlib.sha256(data).hexdigest()
    names = [f"s{i}.bin" for i in range(6)]
    hung = await nats.connect(stack.nats_url)
    try:
        # the "owner" of each of stuck's uploads: takes their sync requests, answers none
        for name in names:
            fid = wf.file_id(stuck, name, len(data), digest)
            await hung.subscribe(upload_subject(fid), queue=str(Service.BINARY))
        await hung.flush()
        sockets = [
            await websockets.connect(files_url(base, user=stuck), open_timeout=10) for _ in names
        ]
        try:
            for ws, name in zip(sockets, names, strict=True):
                begin = {"type": "upload", "id": "b1", "name": name, "size": len(data)}
                await ws.send(orjson.dumps({**begin, "sha256": digest}).decode())
            await asyncio.sleep(0.2)  # all six reached the replica
            started = time.monotonic()
            async with await FilesClient.open(files_url(base, user=other)) as client:
                info = await asyncio.wait_for(
                    client.upload(io.BytesIO(data), "o.bin", len(data), digest), 15
                )
            took = time.monotonic() - started
            assert info["sha256"] == digest
            assert took < 5, took  # not behind six 2 s waits (12 s: the gateway's 408 at 10)
            for ws in sockets:  # and stuck's own requests still get their answer
                while (reply := orjson.loads(await asyncio.wait_for(ws.recv(), 15)))[
                    "type"
                ] != "error":
                    pass
                # 503: the replica's "upload busy; try again" (a gateway timeout is 408)
                assert (reply["id"], reply["code"]) == ("b1", "503"), reply
        finally:
            for ws in sockets:
                await ws.close()
    finally:
        await hung.close()
