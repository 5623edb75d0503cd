"""binary: files in the JetStream Object Store, uploaded and downloaded in chunks.

Storage (the NATS object store layout, so ``nats object get`` and nats-py's
``ObjectStore.get()`` read these files too):

- stream ``OBJ_<bucket>``; the chunks of file ``<id>`` on ``$O.<bucket>.C.<id>``, each
  with headers ``Sb-Offset`` / ``Sb-End`` (its byte range); the file's meta on
  ``$O.<bucket>.M.<base64 id>``, written once the upload is complete and verified;
- uploads in progress: KV ``<uploads bucket>``, key = file id, value = ``UploadRecord``
  (who, name, size, SHA-256, chunk size, which replica owns it).

Which replica gets which chunk: an upload has exactly one owner, the replica that
claimed it. Only the owner subscribes to the upload's subject
(``sb.svc.binary.chunk.<id>``, in queue group ``binary``), so every chunk of an upload
reaches the same process, in order, whichever gateway it came through. The owner
appends chunks to the stream as they come (JetStream acks them in order; they are
pipelined, not one at a time), keeps the running SHA-256, and answers each chunk once
JetStream has stored it. The state that matters lives in JetStream: if the owner dies
or lets go, the next ``file_upload`` finds no owner (no responders), claims the upload
(compare-and-set on the KV record, so only one replica wins), re-reads the stored
chunks to rebuild the digest and drops anything after a gap, and carries on. Nothing
holds a whole file: a chunk at a time in the owner. Downloads do not pass through here
at all: :meth:`FileStore.read` has nats-server send a batch of chunks straight to the
gateway.

Digest: checked when the last byte is stored; a mismatch discards the upload. The owner
also checks that the stream holds exactly the chunks it knows of, so an upload written
by two replicas at once (a claim race) can never be committed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
)
from nats.js.kv import MSG_ROLLUP_SUBJECT
from nats.js.object_store import (
    OBJ_CHUNKS_PRE_TEMPLATE,
    OBJ_DIGEST_TEMPLATE,
    OBJ_DIGEST_TYPE,
    OBJ_META_PRE_TEMPLATE,
    OBJ_STREAM_TEMPLATE,
)

from services.binary import inspect
from services.binary.settings import BinarySettings
from services.runner import Handler
from wire import headers as h
from wire.errors import ErrorCode, WireError, storage_full
from wire.files import (
    FileInfo,
    UploadRecord,
    check_file_id,
    check_name,
    check_sha256,
    direct_get_request,
    file_id,
    header_int,
)
from wire.frames import Reply, Request
from wire.natsconn import with_jetstream
from wire.subjects import (
    Op,
    Service,
    delivery_read,
    delivery_subject,
    delivery_wildcard,
    direct_get_subject,
    is_inbox,
    upload_subject,
)

log = logging.getLogger(__name__)

EMPTY_SHA256 = hashlib.sha256().hexdigest()
CLAIM_GRACE = 2.0  # s: a claim younger than this is being set up, not abandoned
BUSY_AFTER = 5.0  # s: file_upload gives up (503, try again) when it cannot settle an owner
SYNC_TIMEOUT = 2.0
MAX_READ_CHUNKS = 16
SWEEP_INTERVAL = 30.0
ORPHAN_SWEEP_EVERY = 20  # sweeps (10 min)
HDR_USER, HDR_NAME, HDR_TYPE = "Sb-User", "Sb-Name", "Sb-Media-Type"
HDR_WIDTH, HDR_HEIGHT, HDR_CREATED = "Sb-Width", "Sb-Height", "Sb-Created"


def _full(exc: BaseException) -> WireError | None:
    """507 for a write JetStream refused for want of room (:func:`storage_full`), in
    the words of this service; else None."""
    if storage_full(exc) is None:
        return None
    return WireError(
        ErrorCode.STORAGE_FULL,
        "file storage is full: delete files or try again later "
        "(an upload keeps what was stored: send upload again to resume)",
    )


STREAM_NOT_FOUND = 10059  # JetStream's err_code


def _missing(exc: BaseException) -> bool:
    """A request that found a stream of the store gone: a direct get nobody answers, a
    publish no stream takes, the JetStream API's "stream not found"."""
    if isinstance(exc, NoRespondersError | NoStreamResponseError | BucketNotFoundError):
        return True
    return getattr(exc, "err_code", None) == STREAM_NOT_FOUND


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _user(req_headers: Mapping[str, str] | None) -> str:
    raw = (req_headers or {}).get(h.USER)
    if not raw:
        raise WireError(ErrorCode.UNAUTHORIZED, "no user")
    return unquote(raw)


def _json_body(data: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise WireError(ErrorCode.BAD_REQUEST, "invalid JSON") from None
    if not isinstance(body, dict):
        raise WireError(ErrorCode.BAD_REQUEST, "a JSON object is expected")
    return body


def _info(meta: api.ObjectInfo) -> tuple[str, FileInfo]:
    """(owner, info) of a stored object's meta."""
    hdrs = meta.headers or {}

    def one(name: str) -> str | None:
        value = hdrs.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        return unquote(value) if isinstance(value, str) else None

    digest = (meta.digest or "").removeprefix(OBJ_DIGEST_TYPE)
    width, height = one(HDR_WIDTH), one(HDR_HEIGHT)
    info = FileInfo(
        file=meta.name,
        name=one(HDR_NAME) or meta.description or meta.name,
        size=meta.size or 0,
        sha256=base64.urlsafe_b64decode(digest).hex() if digest else EMPTY_SHA256,
        media_type=one(HDR_TYPE) or inspect.OCTET_STREAM,
        width=int(width) if width and width.isdigit() else None,
        height=int(height) if height and height.isdigit() else None,
        created=one(HDR_CREATED) or "",
        chunk_size=(meta.options.max_chunk_size or 0) if meta.options else 0,
    )
    return one(HDR_USER) or "", info


@dataclass(eq=False)
class Owned:
    """An upload this replica writes (see the module docstring)."""

    record: UploadRecord
    subject: str  # the chunks' subject in the stream
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    sha: Any = field(default_factory=hashlib.sha256)
    received: int = 0  # bytes published (stored or on their way)
    durable: int = 0  # bytes JetStream has acknowledged
    count: int = 0  # chunk messages in the stream, ours included
    first: int = 0  # stream sequence of the first chunk
    inflight: set[asyncio.Task[None]] = field(default_factory=set)
    sub: Subscription | None = None
    server: asyncio.Task[None] | None = None
    active: float = field(default_factory=time.monotonic)
    error: WireError | None = None  # set once broken: the next claim repairs it
    # set while the chunk that broke it finds out why (is the store full?): the answers
    # to the chunks after it wait for that, so the client's first error says it
    deciding: asyncio.Event | None = None
    closed: bool = False
    deleted: bool = False  # by file_delete: a chunk acknowledged after it commits nothing
    revision: int = 0  # of the upload's record as this replica last wrote it (_claim)

    def refusal(self) -> WireError:
        """The answer to a chunk of an upload this replica no longer owns."""
        if self.deleted:
            return WireError(ErrorCode.NOT_FOUND, f"upload {self.record.file} was deleted")
        return self.error or WireError(
            ErrorCode.UNAVAILABLE, "upload interrupted; send upload again"
        )

    async def settle(self) -> None:
        """Wait for every chunk on its way to be acknowledged (or to fail)."""
        while self.inflight:
            await asyncio.gather(*list(self.inflight), return_exceptions=True)


class Acks:
    """JetStream's acks of the chunks this replica publishes, on one inbox subscription
    (what nats-py's ``publish_async`` does, except that its reply handler raises on an
    error reply instead of failing the future: a chunk refused for want of room was
    never answered, and the upload stalled for ``store_timeout``). Nothing more per
    chunk than ``publish_async``: one publish, one reply."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.inbox = ""
        self.sub: Subscription | None = None
        self.futures: dict[int, asyncio.Future[api.PubAck]] = {}
        self.sent = 0

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str]
    ) -> asyncio.Future[api.PubAck]:
        if self.sub is None:
            self.inbox = self.nc.new_inbox()
            self.sub = await self.nc.subscribe(delivery_wildcard(self.inbox), cb=self._on_ack)
        self.sent += 1
        n = self.sent
        future: asyncio.Future[api.PubAck] = asyncio.get_running_loop().create_future()
        self.futures[n] = future
        future.add_done_callback(lambda _: self.futures.pop(n, None))
        try:
            await self.nc.publish(
                subject, payload, reply=delivery_subject(self.inbox, n), headers=headers
            )
        except BaseException:
            future.cancel()
            raise
        return future

    async def _on_ack(self, msg: Msg) -> None:
        n = delivery_read(msg.subject)
        future = self.futures.pop(n, None) if n is not None else None
        if future is None or future.done():
            return
        if (msg.headers or {}).get(api.Header.STATUS) == "503":  # no stream for the subject
            future.set_exception(NoStreamResponseError())
            return
        try:
            reply = orjson.loads(msg.data)
            if "error" in reply:
                APIError.from_error(reply["error"])  # raises the error's own class
            future.set_result(api.PubAck.from_response(reply))
        except Exception as exc:
            future.set_exception(exc)

    async def stop(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()


class FileStore:
    def __init__(self, nc: Client, settings: BinarySettings, instance: str) -> None:
        self.nc = nc
        self.settings = settings
        self.instance = instance
        self.js = nc.jetstream(timeout=settings.store_timeout)
        self.bucket = settings.files_bucket
        self.stream = OBJ_STREAM_TEMPLATE.format(bucket=self.bucket)
        self.kv: Any = None
        self.owned: dict[str, Owned] = {}
        self.acks = Acks(nc)
        self._ensuring = asyncio.Lock()
        self._ensured = 0.0  # monotonic time of the last _make_again
        self._sweeper: asyncio.Task[None] | None = None
        # file id -> (lock, holders): file_upload and file_delete of one file run one at
        # a time on this replica (the scheduler runs requests concurrently; two uploads
        # of one file interleaving could both claim it, one Owned then orphaned)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, fid: str) -> AsyncIterator[None]:
        lock, holders = self._locks.get(fid) or (asyncio.Lock(), 0)
        self._locks[fid] = (lock, holders + 1)
        try:
            async with lock:
                yield
        finally:
            lock, holders = self._locks[fid]
            if holders == 1:
                del self._locks[fid]
            else:
                self._locks[fid] = (lock, holders - 1)

    # -- setup -------------------------------------------------------------------------
    async def start(self) -> None:
        await with_jetstream(self._ensure)  # JetStream may still be starting up
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _ensure(self) -> None:
        s = self.settings
        try:
            await self.js.object_store(self.bucket)
        except BucketNotFoundError:
            await self.js.create_object_store(
                self.bucket,
                api.ObjectStoreConfig(
                    description="Switchboard files (services/binary/files.py)",
                    storage=api.StorageType.FILE,
                    max_bytes=s.store_max_bytes,
                ),
            )
        try:
            self.kv = await self.js.key_value(s.uploads_bucket)
        except BucketNotFoundError:
            self.kv = await self.js.create_key_value(
                api.KeyValueConfig(
                    bucket=s.uploads_bucket,
                    description="Switchboard uploads in progress",
                    history=1,
                    ttl=s.upload_ttl,
                    storage=api.StorageType.FILE,
                )
            )

    async def _make_again(self) -> None:
        """:meth:`_ensure` after a request found a stream missing: one at a time, and at
        most once a second (requests failing meanwhile wait for it, then answer 503)."""
        async with self._ensuring:
            if time.monotonic() - self._ensured < 1.0:
                return
            log.warning("a stream of the file store is missing: making it again")
            try:
                await self._ensure()
            except Exception as exc:
                log.warning("making the file store again failed: %s", exc)
            self._ensured = time.monotonic()

    def handlers(self) -> dict[Op, Handler]:
        ops: dict[Op, Handler] = {
            Op.FILE_UPLOAD: self.upload,
            Op.FILE_INFO: self.info,
            Op.FILE_READ: self.read,
            Op.FILE_LIST: self.list,
            Op.FILE_DELETE: self.delete,
        }
        return {op: self._storage_errors(handler) for op, handler in ops.items()}

    def _storage_errors(self, handler: Handler) -> Handler:
        """``handler``, with JetStream refusing a write for want of room answered 507
        (any step of it: recording an upload, claiming it, committing it), not 500; a
        stream of the store deleted under it (by hand, by an operator) made again and the
        request answered 503, not 500 until a restart (``_ensure`` ran only then)."""

        async def handle(req: Request) -> bytes | Reply:
            try:
                return await handler(req)
            except WireError:
                raise
            except Exception as exc:
                if (full := _full(exc)) is not None:
                    raise full from None
                if _missing(exc):
                    await self._make_again()
                    raise WireError(
                        ErrorCode.UNAVAILABLE, "file storage unavailable; try again"
                    ) from None
                raise

        return handle

    # -- helpers -----------------------------------------------------------------------
    def _chunks(self, fid: str) -> str:
        return OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self.bucket, obj=fid)

    def _meta_subject(self, fid: str) -> str:
        obj = base64.urlsafe_b64encode(fid.encode()).decode()
        return OBJ_META_PRE_TEMPLATE.format(bucket=self.bucket, obj=obj)

    async def _meta(self, fid: str) -> api.ObjectInfo | None:
        try:
            meta = await self.js.get_last_msg(self.stream, self._meta_subject(fid), direct=True)
        except NotFoundError:
            return None
        found = api.ObjectInfo.from_response(orjson.loads(meta.data or b"{}"))
        return None if found.deleted else found

    async def _stored(self, fid: str, user: str) -> FileInfo | None:
        """The stored file ``fid`` if ``user`` owns it (others' files do not exist)."""
        meta = await self._meta(fid)
        if meta is None:
            return None
        owner, info = _info(meta)
        return info if owner == user else None

    def _record_subject(self, fid: str) -> str:
        return f"$KV.{self.settings.uploads_bucket}.{fid}"

    async def _forget(self, fid: str) -> None:
        """Remove the upload's record by purging its subject: unlike a KV delete, which
        writes a marker, a purge needs no room, so it works with the store full."""
        await self.js.purge_stream(
            f"KV_{self.settings.uploads_bucket}", subject=self._record_subject(fid)
        )

    async def _record(self, fid: str) -> tuple[UploadRecord, int] | None:
        try:
            entry = await self.kv.get(fid)
        except KeyNotFoundError:
            return None
        return UploadRecord.decode(entry.value or b"{}"), entry.revision

    async def _next_chunk(self, subject: str, seq: int) -> api.RawStreamMsg | None:
        """The first message on ``subject`` at or after stream sequence ``seq``."""
        try:
            return await self.js.get_msg(self.stream, seq=max(seq, 1), subject=subject,
                                         direct=True, next=True)  # fmt: skip
        except NotFoundError:
            return None

    async def _last_chunk(self, subject: str) -> api.RawStreamMsg | None:
        try:
            return await self.js.get_last_msg(self.stream, subject, direct=True)
        except NotFoundError:
            return None

    async def _subjects(self, stream: str, prefix: str) -> list[str]:
        """The subjects under ``prefix`` that hold messages in ``stream``, from the
        stream's own state (one request). nats-py's ``kv.keys()`` and
        ``ObjectStore.list()`` watch the stream instead and may end before the first
        entries reach them (the consumer already has nothing pending, the client has not
        read them yet): under load they came back empty, so a listing showed no usage
        and a quota check counted nothing."""
        try:
            info = await self.js.stream_info(stream, subjects_filter=f"{prefix}>")
        except NotFoundError:
            return []
        return list((info.state.subjects or {}).keys())

    async def _records(self) -> list[tuple[UploadRecord, int]]:
        """Every upload in progress, with its KV revision."""
        prefix = self._record_subject("")
        out = []
        for subject in await self._subjects(f"KV_{self.settings.uploads_bucket}", prefix):
            found = await self._record(subject.removeprefix(prefix))
            if found is not None:
                out.append(found)
        return out

    async def _metas(self) -> list[api.ObjectInfo]:
        """Every stored file's meta (none deleted)."""
        metas = []
        for subject in await self._subjects(self.stream, self._meta_subject("")):
            try:
                msg = await self.js.get_last_msg(self.stream, subject, direct=True)
            except NotFoundError:
                continue
            meta = api.ObjectInfo.from_response(orjson.loads(msg.data or b"{}"))
            if not meta.deleted:
                metas.append(meta)
        return metas

    async def _usage(self, user: str, skip: str | None = None, before: int | None = None) -> int:
        """Bytes ``user`` has stored plus the declared sizes of its uploads in progress
        (with ``before``: only those created before KV revision ``before``)."""
        total = 0
        for meta in await self._metas():
            owner, info = _info(meta)
            if owner == user and info.file != skip:
                total += info.size
        for record, revision in await self._records():
            if record.user == user and record.file != skip:
                if before is None or (record.extra.get("born") or revision) < before:
                    total += record.size
        return total

    async def _respond(self, msg: Msg, payload: bytes = b"", **hdrs: str) -> None:
        hdrs[h.HANDLED_AT] = h.now_ns()
        trace = (msg.headers or {}).get(h.TRACEPARENT)
        if trace:
            hdrs[h.TRACEPARENT] = trace
        if msg.reply:
            with contextlib.suppress(Exception):
                await self.nc.publish(msg.reply, payload, headers=hdrs)

    async def _respond_error(self, msg: Msg, error: WireError, **hdrs: str) -> None:
        await self._respond(msg, b"", **error.headers(), **hdrs)

    # -- upload: begin, resume, or find the stored file --------------------------------
    async def upload(self, req: Request) -> bytes:
        """``file_upload``: JSON ``{name, size, sha256}`` -> JSON ``{"state": "upload",
        "file", "offset", "size", "chunk_size"}`` (send chunks from ``offset``) or
        ``{"state": "stored", "file": <info>}`` (nothing left to send)."""
        user = _user(req.headers)
        body = _json_body(req.data)
        name = check_name(body.get("name"))
        size = body.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise WireError(ErrorCode.BAD_REQUEST, "size must be a non-negative integer")
        sha = check_sha256(body.get("sha256"))
        limit = self.settings.max_file_bytes
        if size > limit:
            raise WireError(
                ErrorCode.TOO_LARGE, f"file is {size} bytes, more than the limit of {limit} bytes"
            )
        fid = file_id(user, name, size, sha)
        async with self._one_at_a_time(fid):
            return await self._upload(fid, user, name, size, sha)

    async def _upload(self, fid: str, user: str, name: str, size: int, sha: str) -> bytes:
        deadline = time.monotonic() + BUSY_AFTER
        while True:
            stored = await self._stored(fid, user)
            if stored is not None and not await self._lost(stored):
                return orjson.dumps({"state": "stored", "file": stored.to_dict()})
            owned = self.owned.get(fid)
            if owned is not None and not owned.closed:
                await owned.ready.wait()
                await owned.settle()
                if owned.error is None and not owned.closed:
                    return await self._resume(owned)
            end = await self._sync(fid)
            found = await self._record(fid)
            # end == size: the owner is committing the file (or failing to, and then
            # lets go of it): look again rather than tell the client to send nothing
            if end is not None and found is not None and end < size:
                return self._upload_reply(found[0], end)
            if found is None:
                record = UploadRecord(fid, user, name, size, sha, self.settings.chunk_bytes, _now())
                found = await self._create(record)
            if found is not None:
                if size == 0:
                    info = await self._commit_empty(found)
                    return orjson.dumps({"state": "stored", "file": info})
                owned = await self._claim(*found)
                if owned is not None:
                    return await self._resume(owned)
            if time.monotonic() > deadline:
                raise WireError(ErrorCode.UNAVAILABLE, "upload busy; try again")
            await asyncio.sleep(0.1)

    async def _lost(self, stored: FileInfo) -> bool:
        """A file listed whose chunks are gone (a delete that failed half-way before
        :meth:`_delete_if_stored` purged the meta first): its meta is purged, so that
        the upload stores it anew rather than answer ``stored`` for a file nobody can
        read. One read, and only when the file is stored already."""
        if not stored.size or await self._next_chunk(self._chunks(stored.file), 1) is not None:
            return False
        log.warning(
            "a stored file has lost its chunks: storing it anew", extra={"file": stored.file}
        )
        await self.js.purge_stream(self.stream, subject=self._meta_subject(stored.file))
        return True

    async def _resume(self, owned: Owned) -> bytes:
        """The reply to ``file_upload`` for an upload this replica owns: where to carry
        on, or, when every byte is already stored (its owner died between storing the
        last chunk and committing, or the commit failed), the file, committed now."""
        if owned.durable < owned.record.size:
            return self._upload_reply(owned.record, owned.durable)
        info = await self._commit_or_release(owned)
        return orjson.dumps({"state": "stored", "file": info.to_dict()})

    async def _commit_or_release(self, owned: Owned) -> FileInfo:
        """:meth:`_commit`; on a failure other than its own errors (JetStream did not
        answer), let go of the upload so that the next ``file_upload`` commits it."""
        try:
            return await self._commit(owned)
        except WireError:
            raise
        except Exception as exc:
            log.warning("committing a file failed: %s", exc, extra={"file": owned.record.file})
            owned.error = _full(exc) or WireError(
                ErrorCode.UNAVAILABLE, "storing failed; send upload again to resume"
            )
            await self._drop(owned)
            raise owned.error from None

    def _upload_reply(self, record: UploadRecord, offset: int) -> bytes:
        return orjson.dumps(
            {
                "state": "upload",
                "file": record.file,
                "name": record.name,
                "offset": offset,
                "size": record.size,
                "chunk_size": record.chunk_size,
            }
        )

    async def _create(self, record: UploadRecord) -> tuple[UploadRecord, int] | None:
        quota = self.settings.quota_bytes

        def over(usage: int) -> WireError:
            return WireError(
                ErrorCode.TOO_LARGE,
                f"quota exceeded: {usage} bytes used, {record.size} more would pass "
                f"the quota of {quota} bytes",
            )

        usage = await self._usage(record.user, skip=record.file)
        if usage + record.size > quota:
            raise over(usage)
        full = await self._store_full(record.size)
        if full is not None:
            raise full
        try:
            revision = await self.kv.create(record.file, record.encode())
        except KeyWrongLastSequenceError:
            return None  # created meanwhile by another replica: look again
        # Replicas starting uploads of one user at the same moment all passed the check
        # above. Of those, the one created first (the lower KV revision) goes first: count
        # it, and give way if it leaves no room. (Revisions order every key of the bucket;
        # a claim updates the record, so it keeps the one it was created with: "born".)
        usage = await self._usage(record.user, skip=record.file, before=revision)
        if usage + record.size > quota:
            with contextlib.suppress(Exception):
                await self.kv.delete(record.file)
            raise over(usage)
        return record, revision

    async def _store_full(self, size: int) -> WireError | None:
        """With ``SB_BINARY_STORE_MAX_BYTES`` set: the error for ``size`` more bytes that
        the store has no room for (JetStream would refuse the chunks, and nats-py leaves
        such a refused publish unanswered), else None."""
        limit = self.settings.store_max_bytes
        if limit < 0:
            return None
        used = (await self.js.stream_info(self.stream)).state.bytes
        if used + size <= limit:
            return None
        return WireError(
            ErrorCode.TOO_LARGE,
            f"file storage is full: {used} of {limit} bytes used, {size} more do not fit; "
            "delete files, then send upload again",
        )

    async def _sync(self, fid: str) -> int | None:
        """The durable offset according to the upload's owner, None if it has none."""
        try:
            msg = await self.nc.request(
                upload_subject(fid), b"", timeout=SYNC_TIMEOUT, headers={h.CONTROL: "sync"}
            )
        except NoRespondersError:
            return None
        except NatsTimeout:
            raise WireError(ErrorCode.UNAVAILABLE, "upload busy; try again") from None
        return header_int(msg.headers, h.END)

    async def _claim(self, record: UploadRecord, revision: int) -> Owned | None:
        """Become the upload's owner, or None when another replica is doing so."""
        holder = record.extra.get("owner")
        since = record.extra.get("claimed_at", 0)
        if holder and holder != self.instance and time.time() - since < CLAIM_GRACE:
            return None
        mine = self.owned.get(record.file)
        if mine is not None and not mine.closed:
            return None  # ours already: claiming again would orphan it
        # "born": the revision the record was created with (its place in the quota's
        # order, see _create), kept through every claim.
        born = record.extra.get("born") or revision
        record.extra = {"owner": self.instance, "claimed_at": time.time(), "born": born}
        try:
            revision = await self.kv.update(record.file, record.encode(), last=revision)
        except KeyWrongLastSequenceError:
            return None
        owned = Owned(record, self._chunks(record.file), revision=revision)
        self.owned[record.file] = owned
        try:
            owned.sub = await self.nc.subscribe(
                upload_subject(record.file), queue=str(Service.BINARY)
            )
            owned.server = asyncio.create_task(self._serve(owned))
            await self._scan(owned)
        except Exception:
            await self._drop(owned)
            raise
        finally:
            owned.ready.set()
        log.info("upload claimed", extra={"file": record.file, "offset": owned.durable})
        return owned

    async def _scan(self, owned: Owned) -> None:
        """Rebuild the digest and offset from the stored chunks; delete what follows a
        gap or an overlap (left by a failed write)."""
        expected = count = first = 0
        seq = 0
        while (msg := await self._next_chunk(owned.subject, seq + 1)) is not None:
            data = msg.data or b""
            start, end = header_int(msg.headers, h.OFFSET), header_int(msg.headers, h.END)
            if start != expected or end != start + len(data) or end > owned.record.size:
                await self._truncate(owned.subject, msg.seq)
                break
            owned.sha.update(data)
            expected, count, seq = end, count + 1, msg.seq
            first = first or msg.seq
        owned.received = owned.durable = expected
        owned.count, owned.first = count, first

    async def _truncate(self, subject: str, seq: int) -> None:
        while (msg := await self._next_chunk(subject, seq)) is not None:
            log.warning("dropping a stored chunk after a gap", extra={"seq": msg.seq})
            await self.js.delete_msg(self.stream, msg.seq)
            seq = msg.seq + 1

    # -- chunks (owner only) -----------------------------------------------------------
    async def _serve(self, owned: Owned) -> None:
        assert owned.sub is not None
        async for msg in owned.sub.messages:
            try:
                await self._on_chunk(owned, msg)
            except WireError as exc:
                await self._respond_error(msg, exc, **{h.END: str(owned.durable)})
            except Exception:
                log.exception("chunk failed", extra={"file": owned.record.file})
                await self._respond_error(msg, WireError(ErrorCode.INTERNAL, "internal error"))

    async def _on_chunk(self, owned: Owned, msg: Msg) -> None:
        await owned.ready.wait()
        hdrs = msg.headers or {}
        control = hdrs.get(h.CONTROL)
        if control == "sync":
            await owned.settle()
            if owned.error is not None or owned.closed:
                raise WireError(ErrorCode.UNAVAILABLE, "upload moved; send upload again")
            await self._respond(msg, **{h.END: str(owned.durable)})
            return
        if control == "abort":
            await self._abort(owned)
            await self._respond(msg)
            return
        owned.active = time.monotonic()
        if owned.error is not None or owned.closed:
            raise owned.refusal()
        record = owned.record
        if _user(hdrs) != record.user:
            raise WireError(ErrorCode.FORBIDDEN, "not your upload")
        start = header_int(hdrs, h.OFFSET)
        data = msg.data
        if start is None:
            raise WireError(ErrorCode.BAD_REQUEST, "chunk without an offset")
        end = start + len(data)
        if not data or len(data) > record.chunk_size:
            raise WireError(
                ErrorCode.BAD_REQUEST, f"a chunk is 1 to {record.chunk_size} bytes, not {len(data)}"
            )
        if end > record.size:
            raise WireError(
                ErrorCode.BAD_REQUEST, f"chunk ends at {end}, past the size {record.size}"
            )
        if end <= owned.received:  # sent twice (a resumed upload racing its old self)
            await owned.settle()
            if end == record.size:  # the last chunk again: answered as the first was
                stored = await self._stored(record.file, record.user)
                if stored is None:
                    raise owned.refusal()
                await self._respond(msg, orjson.dumps(stored.to_dict()), **{h.END: str(end)})
                return
            await self._respond(msg, **{h.END: str(owned.durable)})
            return
        if start > owned.received:
            raise WireError(
                ErrorCode.BAD_REQUEST, f"chunk at {start}: the upload continues at {owned.received}"
            )
        piece = data if start == owned.received else data[owned.received - start :]
        first = owned.received
        owned.received = first + len(piece)
        owned.sha.update(piece)
        owned.count += 1
        hdr = {h.OFFSET: str(first), h.END: str(owned.received)}
        try:
            future = await self.acks.publish(owned.subject, piece, headers=hdr)
        except Exception as exc:
            log.warning("storing a chunk failed: %r", exc, extra={"file": owned.record.file})
            owned.error = WireError(ErrorCode.UNAVAILABLE, "storage unavailable; try again")
            await self._drop(owned, release=False)
            raise owned.error from None
        task = asyncio.create_task(self._acked(owned, msg, future, owned.received))
        owned.inflight.add(task)
        task.add_done_callback(owned.inflight.discard)

    async def _acked(self, owned: Owned, msg: Msg, future: asyncio.Future, end: int) -> None:
        try:
            ack = await asyncio.wait_for(future, self.settings.store_timeout)
        except Exception as exc:
            if owned.error is None:
                log.warning("storing a chunk failed: %r", exc, extra={"file": owned.record.file})
                full = _full(exc)
                # set before the first await: a later chunk's ack must not move the
                # durable offset past this one meanwhile
                owned.error = full or WireError(
                    ErrorCode.UNAVAILABLE, "storing failed; send upload again to resume"
                )
                if full is None:
                    owned.deciding = deciding = asyncio.Event()
                    with contextlib.suppress(Exception):  # other uploads filled the store
                        owned.error = await self._store_full(owned.record.chunk_size) or (
                            owned.error
                        )
                    deciding.set()
                await self._drop(owned, release=False)
            await self._refuse_chunk(owned, msg)
            return
        if owned.error is not None:  # a chunk before it was refused: stored after a gap
            await self._refuse_chunk(owned, msg)
            return
        owned.first = owned.first or ack.seq
        owned.durable = max(owned.durable, end)
        if owned.closed and end == owned.record.size:  # deleted (or let go) meanwhile
            await self._respond_error(msg, owned.refusal(), **{h.END: str(owned.durable)})
            return
        if end < owned.record.size:
            await self._respond(msg, **{h.END: str(end)})
            return
        try:
            info = await self._commit_or_release(owned)
        except WireError as exc:
            await self._respond_error(msg, exc)
            return
        await self._respond(msg, orjson.dumps(info.to_dict()), **{h.END: str(end)})

    async def _refuse_chunk(self, owned: Owned, msg: Msg) -> None:
        """Answer a chunk of a broken upload with why it broke, once that is known."""
        if owned.deciding is not None:
            await owned.deciding.wait()
        assert owned.error is not None
        await self._respond_error(msg, owned.error, **{h.END: str(owned.durable)})

    # -- commit ------------------------------------------------------------------------
    async def _commit(self, owned: Owned) -> FileInfo:
        record = owned.record
        digest = owned.sha.digest()
        if digest.hex() != record.sha256:
            await self._discard(owned)
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"SHA-256 mismatch: the data hashes to {digest.hex()}, not {record.sha256}; "
                "upload discarded",
            )
        state = await self.js.stream_info(self.stream, subjects_filter=owned.subject)
        stored = (state.state.subjects or {}).get(owned.subject, 0)
        if stored != owned.count:
            owned.error = WireError(
                ErrorCode.UNAVAILABLE, "upload written concurrently; send upload again"
            )
            await self._drop(owned)
            raise owned.error
        head = await self._next_chunk(owned.subject, owned.first or 1)
        first_chunk = (head.data or b"") if head is not None else b""
        if owned.closed:  # deleted while this commit read the stream
            raise owned.refusal()
        await self._fence(owned)
        info = await self._write_meta(record, digest, owned.count, first_chunk)
        await self._drop(owned, release=False)
        with contextlib.suppress(Exception):
            await self._forget(record.file)
        log.info("file stored", extra={"file": record.file, "bytes": record.size})
        return info

    async def _fence(self, owned: Owned) -> None:
        """Mark the upload's record as committing, if it is still the one this replica
        claimed: a ``file_delete`` on any replica deletes the record only at the revision
        it read (:meth:`_delete`), so either the delete or the commit wins, never both
        (the file written and its chunks purged)."""
        record = owned.record
        record.extra = {**record.extra, "committing": time.time()}
        try:
            owned.revision = await self.kv.update(record.file, record.encode(), last=owned.revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            await self._drop(owned, release=False)
            if await self._record(record.file) is None:
                owned.deleted = True
            raise owned.refusal() from None

    async def _commit_empty(self, found: tuple[UploadRecord, int]) -> dict[str, Any]:
        record = found[0]
        if record.sha256 != EMPTY_SHA256:
            with contextlib.suppress(Exception):
                await self._forget(record.file)
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"SHA-256 mismatch: the data hashes to {EMPTY_SHA256}, not {record.sha256}; "
                "upload discarded",
            )
        info = await self._write_meta(record, hashlib.sha256().digest(), 0, b"")
        with contextlib.suppress(Exception):
            await self._forget(record.file)
        return info.to_dict()

    async def _write_meta(
        self, record: UploadRecord, digest: bytes, chunks: int, head: bytes
    ) -> FileInfo:
        found = inspect.kind(head)
        created = _now()
        hdrs = {
            HDR_USER: [quote(record.user, safe="")],
            HDR_NAME: [quote(record.name, safe="")],
            HDR_TYPE: [found.media_type],
            HDR_CREATED: [created],
        }
        if found.width is not None:
            hdrs[HDR_WIDTH], hdrs[HDR_HEIGHT] = [str(found.width)], [str(found.height)]
        meta = api.ObjectInfo(
            name=record.file,
            bucket=self.bucket,
            nuid=record.file,
            size=record.size,
            chunks=chunks,
            mtime=created,
            digest=OBJ_DIGEST_TEMPLATE.format(digest=base64.urlsafe_b64encode(digest).decode()),
            description=record.name,
            headers=hdrs,
            options=api.ObjectMetaOptions(max_chunk_size=record.chunk_size),
        )
        await self.js.publish(
            self._meta_subject(record.file),
            orjson.dumps(meta.as_dict()),
            headers={api.Header.ROLLUP: MSG_ROLLUP_SUBJECT},
        )
        return _info(meta)[1]

    async def _discard(self, owned: Owned) -> None:
        await self._drop(owned, release=False)
        with contextlib.suppress(Exception):
            await self.js.purge_stream(self.stream, subject=owned.subject)
        with contextlib.suppress(Exception):
            await self._forget(owned.record.file)

    async def _drop(self, owned: Owned, release: bool = True) -> None:
        """Stop owning an upload (idle, broken, committed or discarded)."""
        if owned.closed:
            return
        owned.closed = True
        if self.owned.get(owned.record.file) is owned:
            del self.owned[owned.record.file]
        if owned.sub is not None:
            with contextlib.suppress(Exception):
                await owned.sub.unsubscribe()
        if release:  # let another replica claim it at once
            with contextlib.suppress(Exception):
                found = await self._record(owned.record.file)
                if found and found[0].extra.get("owner") == self.instance:
                    found[0].extra = {}
                    await self.kv.update(found[0].file, found[0].encode(), last=found[1])

    # -- download ----------------------------------------------------------------------
    async def info(self, req: Request) -> bytes:
        """``file_info``: header ``Sb-File`` -> JSON info; 404 if not the user's."""
        user = _user(req.headers)
        fid = check_file_id(req.header(h.FILE))
        stored = await self._stored(fid, user)
        if stored is None:
            raise WireError(ErrorCode.NOT_FOUND, f"no file {fid}")
        return orjson.dumps(stored.to_dict())

    async def read(self, req: Request) -> Reply:
        """``file_read``: headers ``Sb-File``, ``Sb-Offset``, ``Sb-Count`` (chunks),
        ``Sb-Deliver`` (an inbox of the gateway), optional ``Sb-Cursor`` (the stream
        sequence after the last chunk the gateway got) -> empty reply, header
        ``Sb-Cursor`` (where the batch starts).

        The chunks do not pass through here: this checks the file is the user's, finds
        where the batch starts (the cursor, or the chunk holding ``Sb-Offset``) and asks
        nats-server to send up to ``Sb-Count`` chunks from there straight to
        ``Sb-Deliver``, then an end of batch (wire/files.py). The gateway checks that
        each chunk starts where the previous one ended."""
        user = _user(req.headers)
        fid = check_file_id(req.header(h.FILE))
        deliver = req.header(h.DELIVER) or ""
        if not is_inbox(deliver):
            raise WireError(ErrorCode.BAD_REQUEST, "file_read delivers to an inbox only")
        meta = await self._meta(fid)
        owner, info = _info(meta) if meta is not None else ("", None)
        if info is None or owner != user:
            raise WireError(ErrorCode.NOT_FOUND, f"no file {fid}")
        offset = header_int(req.headers, h.OFFSET) or 0
        count = min(max(header_int(req.headers, h.COUNT) or 1, 1), MAX_READ_CHUNKS)
        if offset >= info.size:
            raise WireError(ErrorCode.BAD_REQUEST, f"offset {offset} is not before the end")
        subject = self._chunks(fid)
        start = header_int(req.headers, h.CURSOR) or 0
        if not start and offset:
            found = await self._seek(subject, offset)
            if found is None:
                raise WireError(ErrorCode.INTERNAL, f"file {fid} is missing chunks")
            start = found.seq
        body = direct_get_request(max(start, 1), subject, count)
        await self.nc.publish(direct_get_subject(self.stream), body, reply=deliver)
        return Reply(b"", {h.CURSOR: str(max(start, 1))})

    async def _seek(self, subject: str, offset: int) -> api.RawStreamMsg | None:
        """The chunk holding byte ``offset``: binary search over the stream sequences
        of the file's chunks (their ``Sb-Offset`` headers), O(log chunks) reads."""
        low = await self._next_chunk(subject, 1)
        high = await self._last_chunk(subject)
        if low is None or high is None:
            return None
        if _covers(low, offset):
            return low
        if _covers(high, offset):
            return high
        lo, hi = low.seq + 1, high.seq - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            msg = await self._next_chunk(subject, mid)
            if msg is None or msg.seq > high.seq:
                hi = mid - 1
                continue
            if _covers(msg, offset):
                return msg
            if (header_int(msg.headers, h.END) or 0) <= offset:
                lo = msg.seq + 1
            else:
                hi = mid - 1
        return None

    # -- list, delete --------------------------------------------------------------------
    async def list(self, req: Request) -> bytes:
        """``file_list`` -> JSON ``{"files": [...], "uploads": [...], "usage", "quota"}``."""
        user = _user(req.headers)
        files = []
        for meta in await self._metas():
            owner, info = _info(meta)
            if owner == user:
                files.append(info)
        files.sort(key=lambda f: (f.created, f.name))
        uploads = []
        for record, _ in await self._records():
            if record.user != user:
                continue
            last = await self._last_chunk(self._chunks(record.file))
            uploads.append(
                {
                    "file": record.file,
                    "name": record.name,
                    "size": record.size,
                    "sha256": record.sha256,
                    "offset": (header_int(last.headers, h.END) or 0) if last else 0,
                    "created": record.created,
                }
            )
        usage = sum(f.size for f in files) + sum(u["size"] for u in uploads)
        return orjson.dumps(
            {
                "files": [f.to_dict() for f in files],
                "uploads": uploads,
                "usage": usage,
                "quota": self.settings.quota_bytes,
            }
        )

    async def delete(self, req: Request) -> bytes:
        """``file_delete``: a stored file, or an upload in progress (its chunks too)."""
        user = _user(req.headers)
        fid = check_file_id(req.header(h.FILE))
        async with self._one_at_a_time(fid):
            return await self._delete(fid, user)

    async def _delete(self, fid: str, user: str) -> bytes:
        """A stored file, else the upload (any of its steps may find the file committed
        meanwhile: then that is deleted)."""
        if (done := await self._delete_if_stored(fid, user)) is not None:
            return done
        found = await self._record(fid)
        if found is None or found[0].user != user:
            if (done := await self._delete_if_stored(fid, user)) is not None:
                return done
            raise WireError(ErrorCode.NOT_FOUND, f"no file {fid}")
        busy = WireError(ErrorCode.UNAVAILABLE, "upload busy; send delete again")
        owned = self.owned.get(fid)
        if owned is not None:
            await self._abort(owned)
        else:
            try:  # the owner waits for its chunks on their way (up to store_timeout)
                await self.nc.request(
                    upload_subject(fid),
                    b"",
                    timeout=SYNC_TIMEOUT + self.settings.store_timeout,
                    headers={h.CONTROL: "abort"},
                )
            except NoRespondersError:
                pass  # nobody owns it
            except Exception:  # the owner did not answer: it may still commit
                raise busy from None
        if (done := await self._delete_if_stored(fid, user)) is not None:
            return done
        try:  # only the record as read: a commit (_fence) or a claim since wins
            await self.kv.delete(fid, last=found[1])
        except KeyNotFoundError:
            pass
        except (KeyWrongLastSequenceError, APIError) as exc:
            if not (_full(exc) is not None and await self._forget_at(fid, found[1])):
                if (done := await self._delete_if_stored(fid, user)) is not None:
                    return done
                raise busy from None
        await self.js.purge_stream(self.stream, subject=self._chunks(fid))
        return orjson.dumps({"file": fid, "deleted": "upload"})

    async def _forget_at(self, fid: str, revision: int) -> bool:
        """With the store full (no room for a KV delete marker): purge the upload's
        record if it is still at ``revision``; True if it is gone."""
        found = await self._record(fid)
        if found is None or found[1] != revision:
            return False
        # Only entries up to ``revision``, in one step: a commit or claim written since
        # (once room came back) stays, and the delete answers busy.
        stream = f"KV_{self.settings.uploads_bucket}"
        await self.js.purge_stream(stream, subject=self._record_subject(fid), seq=revision + 1)
        found = await self._record(fid)
        return found is None

    async def _delete_if_stored(self, fid: str, user: str) -> bytes | None:
        """Delete ``fid`` if it is a stored file of ``user``: the answer, else None.

        The meta goes first, by a purge: if that fails, nothing has changed; once it
        has gone, so has the file, and its chunks follow (if that fails, the orphan
        sweep purges them). nats-py's ``ObjectStore.delete`` wrote a 'deleted' meta (a
        write: refused with the store full) and purged the chunks whatever came of it,
        which left a file listed whose chunks were gone, unreadable for good."""
        if await self._stored(fid, user) is None:
            return None
        await self.js.purge_stream(self.stream, subject=self._meta_subject(fid))
        try:
            await self.js.purge_stream(self.stream, subject=self._chunks(fid))
        except Exception as exc:
            log.warning("purging a deleted file's chunks failed: %s", exc, extra={"file": fid})
        return orjson.dumps({"file": fid, "deleted": "file"})

    async def _abort(self, owned: Owned) -> None:
        """An upload being deleted: stop owning it, and wait for its chunks on their way,
        which then commit nothing (a commit already writing the file finishes first)."""
        owned.deleted = True
        await self._drop(owned, release=False)
        await owned.settle()

    # -- housekeeping ------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            rounds += 1
            try:
                await self._sweep(orphans=rounds % ORPHAN_SWEEP_EVERY == 0)
            except Exception as exc:
                log.warning("file sweep failed: %s", exc)

    async def _sweep(self, orphans: bool) -> None:
        """Let go of idle uploads; purge chunks nobody will ever commit (their record
        expired after ``upload_ttl``)."""
        idle = time.monotonic() - self.settings.upload_idle_timeout
        for owned in list(self.owned.values()):
            if owned.active < idle and not owned.inflight:
                log.info("letting go of an idle upload", extra={"file": owned.record.file})
                await self._drop(owned)
        if not orphans:
            return
        state = await self.js.stream_info(self.stream, subjects_filter=self._chunks("*"))
        for subject in state.state.subjects or {}:
            fid = subject.rsplit(".", 1)[1]
            if fid in self.owned or await self._meta(fid) is not None:
                continue
            if await self._record(fid) is not None:
                continue
            last = await self._last_chunk(subject)
            if last is not None and last.time is not None:
                age = (datetime.now(UTC) - last.time).total_seconds()
                if age < self.settings.upload_ttl:
                    continue
            log.info("purging an abandoned upload", extra={"file": fid})
            await self.js.purge_stream(self.stream, subject=subject)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.acks.stop()


def _covers(msg: api.RawStreamMsg, offset: int) -> bool:
    begin = header_int(msg.headers, h.OFFSET)
    end = header_int(msg.headers, h.END)
    return begin is not None and end is not None and begin <= offset < end
