"""A delete on one binary replica against a commit of the same upload on another: either
the delete wins (nothing stored) or the commit does (the delete then deletes the stored
file), never both (a file listed and counted whose chunks the delete purged). Two
FileStores in process against a real nats-server, the interleaving forced."""

from __future__ import annotations

import hashlib
import os

import nats
import orjson

from services.binary.files import FileStore
from services.binary.settings import BinarySettings
from switchboard.localstack import LocalStack
from wire import headers as h
from wire.frames import Request, request_headers
from wire.subjects import upload_subject


async def test_a_delete_racing_a_commit_on_another_replica_leaves_no_broken_file(
    server: LocalStack,
) -> None:
    settings = BinarySettings(SB_NATS_URL=server.nats_url, metrics_port=0)
    conns = [await nats.connect(server.nats_url) for _ in range(3)]
    a, b = FileStore(conns[0], settings, "A"), FileStore(conns[1], settings, "B")
    await a.start()
    await b.start()
    try:
        who, chunk = "alice", settings.chunk_bytes
        data = os.urandom(2 * chunk)
        body = orjson.dumps(
            {"name": "x", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
        upload = Request(body, "text", headers={h.USER: who})
        fid = orjson.loads(await a.upload(upload))["file"]
        commit = a._commit

        async def fails_once(owned):  # JetStream did not answer: A lets the upload go
            a._commit = commit
            raise TimeoutError("no answer")

        a._commit = fails_once
        for offset in (0, chunk):
            extra = {h.OFFSET: str(offset)}
            await conns[2].request(
                upload_subject(fid),
                data[offset : offset + chunk],
                timeout=10,
                headers=request_headers("text", user=who, extra=extra),
            )
        assert fid not in a.owned  # every chunk stored, no owner, not committed
        kv_delete = b.kv.delete

        async def resumed_meanwhile(key, *args, **kwargs):
            # the user's upload sent again reaches A between B's last look and its delete
            assert orjson.loads(await a.upload(upload))["state"] == "stored"
            return await kv_delete(key, *args, **kwargs)

        b.kv.delete = resumed_meanwhile
        try:
            deleted = orjson.loads(await b._delete(fid, who))
        except Exception as exc:  # a 503 "send delete again" is fine too
            deleted = {"error": str(exc)}
        stored = await b._stored(fid, who)
        state = await b.js.stream_info(b.stream, subjects_filter=b._chunks(fid))
        chunks = (state.state.subjects or {}).get(b._chunks(fid), 0)
        assert stored is None or chunks == 2, (deleted, stored, chunks)
        assert deleted.get("deleted") == "file" and stored is None, deleted
    finally:
        await a.stop()
        await b.stop()
        for nc in conns:
            await nc.close()
