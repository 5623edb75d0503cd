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
from tests.integration.client import sample, scrape
from wire import files as wf
from wire.subjects import Service, upload_subject

CONCURRENCY = 4  # file_upload requests at once per replica, at most 2 of one user's


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # few at once, so that turns decide who runs: with the default 16 (8 per user), one
    # queue in arrival order also left a slot for the other user, and the test passed
    # with turn-taking gone
    env = {"SB_BINARY_CONCURRENCY": str(CONCURRENCY)}
    with running(tmp_path_factory.mktemp("files-isolation"), env=env) as s:
        yield s


def queued_uploads(stack: LocalStack) -> float:
    text = scrape(stack.replicas("binary")[0].metrics_port)
    labels = {"service": "binary", "operation": "file_upload"}
    return sample(text, "switchboard_service_queued_requests", **labels)


async def test_a_user_stuck_on_a_hung_upload_owner_does_not_hold_up_others(stack) -> None:
    base = f"ws://127.0.0.1:{stack.gateways[0].port}"
    stuck, other = f"u{uuid.uuid4().hex[:8]}", f"u{uuid.uuid4().hex[:8]}"
    data = os.urandom(1000)
    digest = hashlib.sha256(data).hexdigest()
    names = [f"s{i}.bin" for i in range(6)]
    hung = await nats.connect(stack.nats_url)
    syncs = 0  # stuck's uploads the replica is working on: each waits for its owner

    async def take(msg) -> None:
        nonlocal syncs
        syncs += 1

    try:
        # the "owner" of each of stuck's uploads: takes their sync requests, answers none
        for name in names:
            fid = wf.file_id(stuck, name, len(data), digest)
            await hung.subscribe(upload_subject(fid), queue=str(Service.BINARY), cb=take)
        await hung.flush()
        sockets = [
            await websockets.connect(files_url(base, user=stuck), open_timeout=10) for _ in names
        ]
        try:
            for ws, name in zip(sockets, names, strict=True):
                begin = {"type": "upload", "id": "b1", "name": name, "size": len(data)}
                await ws.send(orjson.dumps({**begin, "sha256": digest}).decode())

            async def answer(ws) -> tuple[float, dict]:
                while (reply := orjson.loads(await asyncio.wait_for(ws.recv(), 15)))[
                    "type"
                ] != "error":
                    pass
                return time.monotonic(), reply

            answers = [asyncio.create_task(answer(ws)) for ws in sockets]
            # all six at the replica before the other user's: two of them running (their
            # owner asked), four waiting their turn (in arrival order: ahead of it)
            deadline = time.monotonic() + 10
            while (syncs, await asyncio.to_thread(queued_uploads, stack)) != (2, 4):
                assert time.monotonic() < deadline, (syncs, queued_uploads(stack))
                await asyncio.sleep(0.02)
            async with await FilesClient.open(files_url(base, user=other)) as client:
                info = await asyncio.wait_for(
                    client.upload(io.BytesIO(data), "o.bin", len(data), digest), 15
                )
            stored = time.monotonic()
            assert info["sha256"] == digest
            replies = await asyncio.gather(*answers)
            # stored while stuck's first two still waited for their owner: a slot of its
            # own, not a place behind stuck's four (in arrival order, 2 s each, two at a
            # time: after the first two, then the next two of them had failed)
            first = min(t for t, _ in replies)
            assert stored < first, f"stored {stored - first:.2f} s after stuck's first answer"
            # and stuck's own requests still get their answer. 503: the replica's "upload
            # busy; try again" (a gateway timeout is 408)
            for _, reply in replies:
                assert (reply["id"], reply["code"]) == ("b1", "503"), reply
        finally:
            for ws in sockets:
                await ws.close()
    finally:
        await hung.close()
