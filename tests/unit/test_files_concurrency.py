"""The binary service runs /ws/files requests concurrently (services/scheduler.py): two
``file_upload`` requests of one file on one replica (two tabs, a client retrying) must
not both claim it. They did: the second's claim replaced the first, whose chunk
subscription stayed open in the queue group for good, taking a share of the file's
chunks (out-of-order errors, failed commits) until the process restarted.

FileStore runs against fakes of NATS, JetStream and the KV bucket here, so that the
timing of the interleaving is fixed: the KV acknowledges an update 20 ms after making it.
"""

from __future__ import annotations

import asyncio
import hashlib
import types

import orjson
import pytest
from nats.errors import NoRespondersError
from nats.js.errors import (
    APIError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)

from services.binary.files import FileStore
from services.binary.settings import BinarySettings
from wire import files as wf
from wire import headers as h
from wire.frames import Request


class FakeKV:
    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, int]] = {}
        self.revision = 0

    async def get(self, key: str):
        await asyncio.sleep(0.001)
        if key not in self.data:
            raise KeyNotFoundError
        value, revision = self.data[key]
        return types.SimpleNamespace(value=value, revision=revision)

    async def create(self, key: str, value: bytes) -> int:
        if key in self.data:
            raise KeyWrongLastSequenceError
        self.revision += 1
        self.data[key] = (value, self.revision)
        await asyncio.sleep(0.001)
        return self.revision

    async def update(self, key: str, value: bytes, last: int) -> int:
        if self.data[key][1] != last:
            raise KeyWrongLastSequenceError
        self.revision += 1
        self.data[key] = (value, self.revision)
        await asyncio.sleep(0.02)  # made at once, acknowledged 20 ms later
        return self.revision

    async def delete(self, key: str, last: int | None = None) -> None:
        if last is not None and key in self.data and self.data[key][1] != last:
            raise KeyWrongLastSequenceError()
        self.data.pop(key, None)


class FakeJetStream:
    def __init__(self, kv: FakeKV) -> None:
        self.kv = kv

    async def stream_info(self, name: str, subjects_filter: str | None = None):
        """The KV stream's subjects are the keys; the object store holds nothing."""
        keys = list(self.kv.data) if name.startswith("KV_") else []
        prefix = (subjects_filter or ">").removesuffix(">")
        subjects = {f"{prefix}{key}": 1 for key in keys}
        return types.SimpleNamespace(state=types.SimpleNamespace(subjects=subjects))

    async def get_last_msg(self, *args, **kwargs):
        raise NotFoundError

    async def get_msg(self, *args, **kwargs):
        raise NotFoundError

    async def purge_stream(self, *args, **kwargs) -> None:
        return None


class FakeSubscription:
    def __init__(self) -> None:
        self.closed = False

    @property
    def messages(self):
        async def never():
            await asyncio.Event().wait()
            yield

        return never()

    async def unsubscribe(self) -> None:
        self.closed = True


class FakeNats:
    def __init__(self) -> None:
        self.subscriptions: list[FakeSubscription] = []
        self.kv = FakeKV()

    def jetstream(self, timeout: float) -> FakeJetStream:
        return FakeJetStream(self.kv)

    async def request(self, *args, **kwargs):
        await asyncio.sleep(0.005)
        raise NoRespondersError  # no replica owns the upload yet

    async def subscribe(self, subject: str, queue: str | None = None) -> FakeSubscription:
        sub = FakeSubscription()
        self.subscriptions.append(sub)
        return sub


def request(body: dict, user: str = "alice") -> Request:
    return Request(orjson.dumps(body), "text", headers={h.USER: user})


SHA = hashlib.sha256(b"x" * 10).hexdigest()
UPLOAD = {"name": "a.bin", "size": 10, "sha256": SHA}


@pytest.mark.parametrize("gap", [0.0, 0.005, 0.012, 0.03])
async def test_two_uploads_of_one_file_make_one_owner(gap: float) -> None:
    nc = FakeNats()
    store = FileStore(nc, BinarySettings(), "r1")  # type: ignore[arg-type]
    store.kv = nc.kv
    first = asyncio.create_task(store.upload(request(UPLOAD)))
    await asyncio.sleep(gap)
    second = asyncio.create_task(store.upload(request(UPLOAD)))
    replies = [orjson.loads(r) for r in await asyncio.gather(first, second)]
    assert [r["state"] for r in replies] == ["upload", "upload"]
    assert replies[0]["file"] == replies[1]["file"]
    assert len(nc.subscriptions) == 1  # one claim, one chunk subscription
    assert list(store.owned) == [replies[0]["file"]]
    assert store.owned[replies[0]["file"]].sub is nc.subscriptions[0]
    assert store._locks == {}  # nothing kept per file once done
    for owned in list(store.owned.values()):
        await store._drop(owned, release=False)


async def test_a_delete_waits_for_an_upload_of_the_same_file() -> None:
    nc = FakeNats()
    store = FileStore(nc, BinarySettings(), "r1")  # type: ignore[arg-type]
    store.kv = nc.kv
    fid = wf.file_id("alice", UPLOAD["name"], UPLOAD["size"], SHA)
    begun = asyncio.create_task(store.upload(request(UPLOAD)))
    await asyncio.sleep(0.005)  # the upload is being claimed
    delete = Request(b"", "text", headers={h.USER: "alice", h.FILE: fid})
    gone = asyncio.create_task(store.delete(delete))
    assert orjson.loads(await begun)["state"] == "upload"
    assert orjson.loads(await gone) == {"file": fid, "deleted": "upload"}
    assert len(nc.subscriptions) == 1 and nc.subscriptions[0].closed  # let go of
    assert store.owned == {} and store.kv.data == {} and store._locks == {}


async def test_a_chunk_stored_after_a_refused_one_does_not_move_the_durable_offset() -> None:
    """Chunk 1 refused with an error that is not 'store full' (so the service looks the
    store up, a round trip), chunk 2 acked meanwhile: chunk 2 must not be answered as
    stored past the gap, nor the offset moved (found in review: it was)."""
    from services.binary.files import Owned

    store = object.__new__(FileStore)
    store.settings = types.SimpleNamespace(store_timeout=5.0)
    owned = Owned(wf.UploadRecord("f", "u", "n", 20, "0" * 64, 10, "now"), "subject")
    owned.received, owned.count = 20, 2
    answers: list[tuple[str, str, dict]] = []

    async def store_full(size: int) -> None:
        await asyncio.sleep(0.01)  # its stream_info round trip

    async def drop(owned: Owned, release: bool = True) -> None:
        owned.closed = True

    async def respond(msg: str, payload: bytes = b"", **hdrs: str) -> None:
        answers.append(("ok", msg, hdrs))

    async def respond_error(msg: str, error: Exception, **hdrs: str) -> None:
        answers.append(("error", msg, hdrs))

    store._store_full = store_full  # type: ignore[method-assign]
    store._drop = drop  # type: ignore[method-assign]
    store._respond = respond  # type: ignore[method-assign]
    store._respond_error = respond_error  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    acked = [
        asyncio.create_task(store._acked(owned, "chunk1", first, 10)),
        asyncio.create_task(store._acked(owned, "chunk2", second, 15)),
    ]
    await asyncio.sleep(0)
    first.set_exception(APIError(code=503, err_code=10077, description="maximum bytes exceeded"))
    second.set_result(types.SimpleNamespace(seq=7))
    await asyncio.gather(*acked)
    assert owned.durable == 0
    assert sorted(kind for kind, _, _ in answers) == ["error", "error"], answers
