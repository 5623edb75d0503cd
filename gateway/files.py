"""``/ws/files``: resumable uploads and flow-controlled downloads through the binary
service (protocol: wire/files.py and docs/protocol.md "Files"), and the files page.

Upload: the gateway forwards each chunk frame to the upload's subject, where the one
binary replica that owns the upload stores it (services/binary/files.py), with at most
``SB_GATEWAY_FILES_UPLOAD_WINDOW`` chunks unanswered; past that it stops reading the
socket, so a fast client is held back by TCP, not buffered. Each stored chunk becomes a
``progress`` event.

Download: the gateway asks the service for a batch of chunks at a time (``file_read``);
the service has nats-server send them straight to the download's inbox here (they never
pass through the service). The next batch is asked for once the previous one has
arrived and while the client has credit (``ack``: bytes it has consumed, plus the
window) and fewer than a batch's worth of chunks wait for the socket; a chunk goes to
the socket once it has taken the previous one. At most two batches of chunks are in the
gateway per download, whatever the file size or the reader's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import Field
from pydantic_settings import SettingsConfigDict
from starlette.routing import WebSocketRoute

from gateway.auth import SUBPROTOCOL, Authenticator
from gateway.connection import Connection, text_bytes
from gateway.endpoints import EndpointSpec
from gateway.hub import Hub
from gateway.pages import Page
from gateway.relay import RelayEndpoint
from gateway.settings import GatewaySettings
from wire import envelope, errors
from wire import files as wf
from wire import headers as h
from wire.errors import SERVICE_STOPPING, ErrorCode, WireError
from wire.frames import request_headers
from wire.metrics import GatewayMetrics
from wire.settings import StrictSettings
from wire.subjects import (
    Op,
    Service,
    delivery_read,
    delivery_subject,
    delivery_wildcard,
    service_subject,
    upload_subject,
)

log = logging.getLogger(__name__)
REPLACED = "%s ended: another one began on this socket (one at a time; send it again to resume)"

PATH = "/ws/files"
PAGE_PATH = "/files"
PAGE = Path(__file__).parent / "static" / "files.html"
FILES_SUBPROTOCOL = "switchboard.files"
MIB = 1024 * 1024
READ_ATTEMPTS = 4  # per batch of a download, within the request timeout (FilesSocket._read)


class FilesSettings(StrictSettings):
    """``SB_GATEWAY_FILES_*``: flow control of ``/ws/files``."""

    model_config = SettingsConfigDict(env_prefix="SB_GATEWAY_FILES_", extra="ignore")

    upload_window: int = Field(8, ge=1, le=64, description="chunks in flight per upload")
    download_window: int = Field(
        4 * MIB, ge=1, description="default credit of a download, bytes (client may ask)"
    )
    max_download_window: int = Field(16 * MIB, ge=1, description="largest credit granted")
    read_chunks: int = Field(4, ge=1, le=16, description="chunks per batch from the store")
    request_timeout: float = Field(10.0, gt=0, description="seconds for a service answer")


class FileMetrics:
    """``/ws/files`` transfers (names as in wire/metrics.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.bytes = Counter(
            "switchboard_gateway_file_bytes_total",
            "File bytes relayed: up (client -> store) and down (store -> client)",
            ["direction"],
            registry=registry,
        )
        self.transfers = Counter(
            "switchboard_gateway_file_transfers_total",
            "File transfers finished, by direction and outcome (ok, error, abandoned)",
            ["direction", "status"],
            registry=registry,
        )
        self.active = Gauge(
            "switchboard_gateway_file_transfers_active",
            "File transfers in progress",
            ["direction"],
            registry=registry,
        )
        for direction in ("up", "down"):
            self.bytes.labels(direction)
            self.active.labels(direction)
            for status in ("ok", "error", "abandoned"):
                self.transfers.labels(direction, status)


def _error_shape(error: WireError, description: str, tag: str | None) -> dict[str, Any]:
    return {"type": "websocket.send", "text": wf.error(tag, str(error.code), description)}


FILES = EndpointSpec(PATH, None, None, _error_shape)


_background: set[asyncio.Task[None]] = set()


async def _unsubscribe(sub: Subscription) -> None:
    with contextlib.suppress(Exception):
        await sub.unsubscribe()


def _route_subject(op: Op) -> str:
    return service_subject(Service.BINARY, op)


@dataclass(eq=False)
class UploadState:
    rid: str
    file: str
    size: int
    chunk_size: int
    subject: str
    next_offset: int  # where the client's next chunk must start
    acked: int  # stored, as reported by the service
    inbox: str = ""
    sub: Subscription | None = None
    inflight: int = 0
    room: asyncio.Event = field(default_factory=asyncio.Event)  # set: may send more
    answered: float = field(default_factory=time.monotonic)  # last reply (or start)
    done: bool = False


@dataclass(eq=False)
class DownloadState:
    rid: str | None  # the download request's id: its errors carry it
    file: str
    size: int
    acked: int  # the client's credit: bytes it has consumed
    window: int
    chunk: int  # the file's chunk size
    fetched: int  # where the next chunk from the store must start
    sent: int  # where the next chunk to the client starts
    credit: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    # fetching (FilesSocket.fetch): chunks arrive from nats-server at this inbox
    inbox: str = ""
    sub: Subscription | None = None
    cursor: int | None = None  # stream sequence after the last chunk that arrived
    reading: asyncio.Task[None] | None = None  # the file_read of the batch on its way
    read: int = 0  # its number: what is delivered for any other read is stale
    arrived: bool = False  # something of it has arrived
    heard: float = 0.0  # monotonic time of the last sign of that batch
    pieces: asyncio.Queue[bytes | memoryview | WireError] = field(default_factory=asyncio.Queue)


NO_SERVICE = WireError(ErrorCode.UNAVAILABLE, "service unavailable")
# What no worker answering, a request timing out or a worker stopping are called: the
# client is told "service unavailable" for each, as on every endpoint.
_NO_SERVICE = frozenset({NO_SERVICE.description, "service timed out", SERVICE_STOPPING.description})


def client_description(error: WireError) -> str:
    """The message of an error frame: the service's own words for its 503, 408 and 507
    (``upload busy; send delete again``, ``file storage is full ...``: what to do next),
    ``service unavailable`` when no worker answered, ``internal error`` for a 500 (its
    details are in the service's log). Every 503 used to read ``service unavailable``."""
    if error.code is ErrorCode.INTERNAL:
        return "internal error"
    if (
        error.code in (ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT)
        and error.description in _NO_SERVICE
    ):
        return NO_SERVICE.description
    return error.description


class FilesSocket:
    """One ``/ws/files`` connection's state and behaviour."""

    def __init__(
        self,
        conn: Connection,
        hub: Hub,
        user: str,
        config: FilesSettings,
        metrics: FileMetrics,
        max_chunk: int,
    ) -> None:
        self.conn = conn
        self.hub = hub
        self.user = user
        self.config = config
        self.metrics = metrics
        self.max_chunk = max_chunk
        self.upload: UploadState | None = None
        self.download: DownloadState | None = None
        self.drained = asyncio.Event()
        self.drained.set()

    # -- output --------------------------------------------------------------------
    def send_text(self, text: str) -> None:
        conn = self.conn
        conn.enqueue({"type": "websocket.send", "text": text})
        if conn.out_bytes >= conn.max_out_bytes:
            conn.capacity.clear()  # the receiver stops reading until the client reads
        self.drained.clear()
        conn.wake.set()

    def send_error(
        self,
        rid: str | None,
        error: WireError,
        file: str | None = None,
        offset: int | None = None,
    ) -> None:
        self.hub.metrics.errors.labels(error.code).inc()
        self.send_text(wf.error(rid, str(error.code), client_description(error), file, offset))

    async def until_drained(self) -> None:
        while self.conn.out_bytes > 0 and not self.conn.closing:
            self.drained.clear()
            await self.drained.wait()

    # -- requests to the binary service ------------------------------------------------
    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return request_headers("text", user=self.user, extra=extra)

    async def ask(
        self,
        op: Op,
        payload: bytes = b"",
        extra: Mapping[str, str] | None = None,
        within: float | None = None,
    ):
        """One request to the binary service, answered ``within`` seconds (default: the
        request timeout); its error answer raised as WireError."""
        nc = self.hub.nc
        if nc is None or not nc.is_connected:
            raise WireError(ErrorCode.UNAVAILABLE, "service unavailable")
        timeout = within or self.config.request_timeout
        headers = self._headers(extra)
        headers[h.TIMEOUT] = h.timeout_ms(timeout)  # a worker that cannot start it by then skips it
        try:
            msg = await nc.request(_route_subject(op), payload, timeout=timeout, headers=headers)
        except NoRespondersError:
            raise WireError(ErrorCode.UNAVAILABLE, "service unavailable") from None
        except NatsTimeout:
            raise WireError(ErrorCode.TIMEOUT, "service timed out") from None
        error = errors.from_headers(msg.headers)
        if error is not None:
            raise error
        return msg

    # -- client frames ---------------------------------------------------------------
    async def on_text(self, text: str) -> None:
        try:
            message = wf.decode_client(text)
        except WireError as exc:
            self.send_error(envelope.request_id_of(text), exc)
            return
        rid, fid = getattr(message, "id", None), getattr(message, "file", None)
        try:
            await self.dispatch(message)
        except WireError as exc:
            self.send_error(rid, exc, fid)
        except Exception:
            log.exception("files request failed", extra={"type": message.type})
            self.send_error(rid, WireError(ErrorCode.INTERNAL, "internal error"), fid)

    async def dispatch(self, message: wf.ClientMessage) -> None:
        match message:
            case wf.Upload():
                await self.begin_upload(message)
            case wf.Download():
                await self.begin_download(message)
            case wf.Ack(file=fid, offset=offset):
                dl = self.download
                if dl is not None and dl.file == fid and offset > dl.acked:
                    dl.acked = min(offset, dl.size)
                    dl.credit.set()
                    self.fetch(dl)
            case wf.Cancel(file=fid):
                if self.download is not None and self.download.file == fid:
                    self.stop_download("abandoned")
            case wf.ListFiles(id=rid):
                msg = await self.ask(Op.FILE_LIST)
                body = orjson.loads(msg.data)
                self.send_text(wf.server("list", id=rid, **body))
            case wf.Delete(id=rid, file=fid):
                msg = await self.ask(Op.FILE_DELETE, extra={h.FILE: fid})
                if self.upload is not None and self.upload.file == fid:
                    await self.end_upload("abandoned")
                kind = orjson.loads(msg.data).get("deleted")
                self.send_text(wf.server("deleted", id=rid, file=fid, kind=kind))
            case wf.Inspect(id=rid, file=fid):
                msg = await self.ask(Op.FILE_INFO, extra={h.FILE: fid})
                self.send_text(wf.server("inspect", id=rid, file=orjson.loads(msg.data)))

    # -- upload ----------------------------------------------------------------------
    async def begin_upload(self, req: wf.Upload) -> None:
        up = self.upload
        if up is not None:  # one at a time per socket: the client hears which one ended
            self.send_error(up.rid, WireError(ErrorCode.BAD_REQUEST, REPLACED % "upload"), up.file)
            await self.end_upload("abandoned")
        body = orjson.dumps({"name": req.name, "size": req.size, "sha256": req.sha256})
        reply = orjson.loads((await self.ask(Op.FILE_UPLOAD, body)).data)
        if reply["state"] == "stored":
            self.send_text(wf.server("stored", id=req.id, file=reply["file"]))
            return
        chunk = min(reply["chunk_size"], self.max_chunk)
        up = UploadState(
            req.id,
            reply["file"],
            reply["size"],
            chunk,
            upload_subject(reply["file"]),
            reply["offset"],
            reply["offset"],
        )
        nc = self.hub.nc
        assert nc is not None
        up.inbox = nc.new_inbox()
        up.sub = await nc.subscribe(up.inbox, cb=functools.partial(self.on_stored, up))
        up.room.set()
        self.upload = up
        self.metrics.active.labels("up").inc()
        self.send_text(
            wf.server(
                "upload",
                id=req.id,
                file=up.file,
                name=reply["name"],
                size=up.size,
                offset=up.acked,
                chunk_size=chunk,
                window=self.config.upload_window * chunk,
            )
        )

    async def on_chunk(self, frame: bytes) -> None:
        up = self.upload
        if up is None:
            self.send_error(None, WireError(ErrorCode.BAD_REQUEST, "no upload in progress"))
            return
        offset, data = wf.unpack_chunk(frame)
        problem = None
        if offset != up.next_offset:
            problem = f"chunk at {offset}: the upload continues at {up.next_offset}"
        elif offset + len(data) > up.size:
            problem = f"chunk ends at {offset + len(data)}, past the size {up.size}"
        elif len(data) != (due := min(up.chunk_size, up.size - offset)):
            # Each chunk is stored as one stream message with headers: tiny ones would
            # multiply the store's use past the quota, and inspection reads the first.
            problem = f"a chunk here is {due} bytes (chunk_size, or the rest), not {len(data)}"
        if problem is not None:  # with the offset the upload continues at
            error = WireError(ErrorCode.BAD_REQUEST, problem)
            self.send_error(up.rid, error, up.file, up.next_offset)
            await self.end_upload("error")
            return
        nc = self.hub.nc
        assert nc is not None
        extra = {h.OFFSET: str(offset)}
        up.next_offset = offset + len(data)
        if up.inflight == 0:
            up.answered = time.monotonic()
        up.inflight += 1
        if up.inflight >= self.config.upload_window:
            up.room.clear()
        try:
            # a memoryview: nats-py copies it once into the PUB command, no copy here
            await nc.publish(up.subject, data, reply=up.inbox, headers=self._headers(extra))  # type: ignore[arg-type]
        except Exception as exc:
            log.warning("chunk publish failed: %s", exc)
            self.send_error(up.rid, NO_SERVICE, up.file)
            await self.end_upload("error")
            return
        self.metrics.bytes.labels("up").inc(len(data))

    async def on_stored(self, up: UploadState, msg: Msg) -> None:
        if up.done:
            return
        up.inflight -= 1
        up.answered = time.monotonic()
        if up.inflight < self.config.upload_window:
            up.room.set()
        error = errors.from_headers(msg.headers)
        end = wf.header_int(msg.headers, h.END)
        if error is not None:
            self.send_text(
                wf.server(
                    "error",
                    id=up.rid,
                    file=up.file,
                    code=str(error.code),
                    message=error.description,
                    offset=end,
                )
            )
            self.hub.metrics.errors.labels(error.code).inc()
            await self.end_upload("error")
            return
        if end is not None and end > up.acked:
            up.acked = end
        if msg.data:  # the last chunk: the stored file's info
            self.send_text(wf.server("stored", id=up.rid, file=orjson.loads(msg.data)))
            await self.end_upload("ok")
            return
        self.send_text(
            wf.server("progress", file=up.file, direction="up", offset=up.acked, size=up.size)
        )

    async def end_upload(self, status: str) -> None:
        up = self.upload
        if up is None or up.done:
            return
        up.done = True
        up.room.set()
        self.upload = None
        self.metrics.active.labels("up").dec()
        self.metrics.transfers.labels("up", status).inc()
        if up.sub is not None:
            # In a task of its own: this may run in the subscription's own callback, and
            # nats-py's unsubscribe cancels the task running that callback.
            task = asyncio.get_running_loop().create_task(_unsubscribe(up.sub))
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def upload_room(self) -> None:
        """Wait until the upload may take another chunk (window not full)."""
        up = self.upload
        if up is not None and not up.room.is_set():
            await up.room.wait()

    # -- download --------------------------------------------------------------------
    async def begin_download(self, req: wf.Download) -> None:
        dl = self.download
        if dl is not None:  # one at a time per socket: the client hears which one ended
            self.send_error(
                dl.rid, WireError(ErrorCode.BAD_REQUEST, REPLACED % "download"), dl.file
            )
            self.stop_download("abandoned")
        msg = await self.ask(Op.FILE_INFO, extra={h.FILE: req.file})
        info = orjson.loads(msg.data)
        size = info["size"]
        if req.offset > size:  # offset == size: nothing left, done at once
            raise WireError(
                ErrorCode.BAD_REQUEST, f"offset {req.offset} is past the end ({size} bytes)"
            )
        offset = req.offset
        chunk = max(info.get("chunk_size") or 0, 1)
        window = req.window or self.config.download_window
        window = max(chunk, min(window, self.config.max_download_window))
        dl = DownloadState(
            req.id,
            req.file,
            size,
            acked=offset,
            window=window,
            chunk=chunk,
            fetched=offset,
            sent=offset,
        )
        self.download = dl
        self.metrics.active.labels("down").inc()
        self.send_text(wf.server("download", id=req.id, file=info, offset=offset, window=window))
        dl.task = asyncio.create_task(self.pump(dl, info["sha256"]))

    def stop_download(self, status: str) -> None:
        dl = self.download
        if dl is None:
            return
        self.download = None
        self.metrics.active.labels("down").dec()
        self.metrics.transfers.labels("down", status).inc()
        if dl.task is not None and dl.task is not asyncio.current_task():
            dl.task.cancel()

    def fetch(self, dl: DownloadState) -> None:
        """Ask for the next batch of chunks, unless one is on its way, the file has
        arrived, the client's credit is used up or a batch's worth is still waiting for
        the socket: the gateway holds at most two batches per download, whatever the
        reader's speed."""
        if (
            dl.reading is not None
            or not dl.inbox
            or self.download is not dl
            or dl.fetched >= dl.size
            or dl.fetched - dl.acked >= dl.window
            or dl.fetched - dl.sent >= self.config.read_chunks * dl.chunk
        ):
            return
        extra = {h.FILE: dl.file, h.OFFSET: str(dl.fetched), h.COUNT: str(self.config.read_chunks)}
        if dl.cursor is not None:
            extra[h.CURSOR] = str(dl.cursor)
        dl.reading = task = asyncio.create_task(self._read(dl, extra))
        _background.add(task)  # may outlive its batch: the chunks can come before the reply
        task.add_done_callback(_background.discard)

    async def _read(self, dl: DownloadState, extra: dict[str, str]) -> None:
        """One batch's ``file_read``. Reads are idempotent: an attempt that gets no
        answer within its share of the request timeout (its replica hung, or died with
        the request) is made again, as a new read, to whichever replica NATS picks; what
        is delivered for an earlier attempt is then stale (:meth:`on_fetched`)."""
        me = asyncio.current_task()
        attempts = READ_ATTEMPTS
        for attempt in range(attempts):
            dl.read += 1
            dl.arrived = False
            dl.heard = time.monotonic()
            extra[h.DELIVER] = delivery_subject(dl.inbox, dl.read)
            try:
                await self.ask(
                    Op.FILE_READ, extra=extra, within=self.config.request_timeout / attempts
                )
                return
            except WireError as exc:
                if dl.reading is not me or self.download is not dl or dl.arrived:
                    return  # the batch is coming all the same: only the answer was late
                if exc.code != ErrorCode.TIMEOUT or attempt + 1 == attempts:
                    dl.pieces.put_nowait(exc)
                    return
                log.warning("file_read unanswered, asking again", extra={"file": dl.file})

    async def on_fetched(self, dl: DownloadState, msg: Msg) -> None:
        """A message of the batch on its way (wire.files.stored_item): a chunk is queued
        for the pump from where the previous one ended; the end of the batch asks for
        the next one."""
        if self.download is not dl or delivery_read(msg.subject) != dl.read:
            return  # another download's, or an earlier attempt's (see _read)
        dl.heard = time.monotonic()
        dl.arrived = True
        try:
            item = wf.stored_item(msg.headers, msg.data)
        except WireError as exc:
            dl.pieces.put_nowait(exc)
            return
        if item.kind == "end":
            dl.reading = None
            if item.status == 204:
                self.fetch(dl)
            else:  # 404: chunks missing from dl.fetched on; else nats-server's error
                error = f"file {dl.file}: the store answered {item.status} at {dl.fetched}"
                dl.pieces.put_nowait(WireError(ErrorCode.INTERNAL, error))
            return
        if not item.offset <= dl.fetched < item.end:
            error = WireError(ErrorCode.INTERNAL, f"bad read at {dl.fetched}")
            dl.pieces.put_nowait(error)
            return
        skip = dl.fetched - item.offset  # a download that resumes inside a chunk
        dl.pieces.put_nowait(memoryview(item.data)[skip:] if skip else item.data)
        dl.fetched = item.end
        dl.cursor = item.seq + 1

    async def pump(self, dl: DownloadState, sha256: str) -> None:
        """Sends the chunks to the client as they arrive, within its credit, one at a
        time once the socket has taken the previous one."""
        reported = dl.sent
        timeout = self.config.request_timeout
        nc = self.hub.nc
        try:
            if dl.sent < dl.size:
                if nc is None or not nc.is_connected:
                    raise WireError(ErrorCode.UNAVAILABLE, "service unavailable")
                dl.inbox = nc.new_inbox()
                dl.sub = await nc.subscribe(
                    delivery_wildcard(dl.inbox), cb=functools.partial(self.on_fetched, dl)
                )
                self.fetch(dl)
            while dl.sent < dl.size:
                try:
                    piece = await asyncio.wait_for(dl.pieces.get(), timeout)
                except TimeoutError:
                    if dl.reading is not None and time.monotonic() - dl.heard > timeout:
                        raise WireError(ErrorCode.TIMEOUT, "service timed out") from None
                    continue  # waiting for the client's credit, not for the store
                if isinstance(piece, WireError):
                    raise piece
                while dl.sent + len(piece) - dl.acked > dl.window:  # no credit
                    dl.credit.clear()
                    await dl.credit.wait()
                await self.until_drained()  # the socket took the previous chunk
                self.conn.enqueue(
                    {"type": "websocket.send", "bytes": wf.pack_chunk(dl.sent, piece)}
                )
                self.drained.clear()
                self.conn.wake.set()
                dl.sent += len(piece)
                self.metrics.bytes.labels("down").inc(len(piece))
                self.fetch(dl)
                if dl.sent - reported >= self.config.read_chunks * dl.chunk or dl.sent >= dl.size:
                    reported = dl.sent
                    self.send_text(
                        wf.server(
                            "progress",
                            file=dl.file,
                            direction="down",
                            offset=dl.sent,
                            size=dl.size,
                        )
                    )
            self.send_text(wf.server("done", file=dl.file, size=dl.size, sha256=sha256))
            if self.download is dl:
                self.stop_download("ok")
        except WireError as exc:
            self.send_error(dl.rid, exc, dl.file)
            self.stop_download("error")
        finally:
            if dl.reading is not None:
                dl.reading.cancel()
            if dl.sub is not None:
                task = asyncio.get_running_loop().create_task(_unsubscribe(dl.sub))
                _background.add(task)
                task.add_done_callback(_background.discard)

    # -- lifecycle ---------------------------------------------------------------------
    async def watchdog(self) -> None:
        """An upload whose chunks get no answer within the request timeout fails
        (its owner died): the client sends ``upload`` again and resumes."""
        while True:
            await asyncio.sleep(0.25)
            up = self.upload
            if up is None or up.inflight == 0:
                continue
            if time.monotonic() - up.answered > self.config.request_timeout:
                error = WireError(ErrorCode.TIMEOUT, "storage timed out; send upload again")
                self.send_error(up.rid, error, up.file)
                await self.end_upload("error")

    async def close(self) -> None:
        await self.end_upload("abandoned")
        self.stop_download("abandoned")


class FilesEndpoint(RelayEndpoint):
    """ASGI app for ``/ws/files``."""

    def __init__(
        self,
        hub: Hub,
        auth: Authenticator,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        config: FilesSettings,
        file_metrics: FileMetrics,
    ) -> None:
        super().__init__(FILES, hub, settings, metrics)
        self.auth = auth
        self.config = config
        self.file_metrics = file_metrics
        self.max_chunk = settings.max_frame_bytes - wf.CHUNK_HEADER.size

    async def __call__(self, scope, receive, send) -> None:  # ASGI
        if (await receive())["type"] != "websocket.connect":
            return
        hub = self.hub
        admitted = await self.authenticate(scope, send, (FILES_SUBPROTOCOL, SUBPROTOCOL))
        if admitted is None:
            return
        ip, identity = admitted
        conn = self.connection(ip, identity.user, None)
        files = FilesSocket(
            conn, hub, identity.user, self.config, self.file_metrics, self.max_chunk
        )
        try:
            async with anyio.create_task_group() as tg:

                async def receiver() -> None:
                    await self._receive_files(conn, files, receive)
                    tg.cancel_scope.cancel()

                async def sender() -> None:
                    await self._send(conn, send, on_empty=files.drained.set)
                    tg.cancel_scope.cancel()

                tg.start_soon(receiver)
                tg.start_soon(sender)
                tg.start_soon(files.watchdog)
        finally:
            await files.close()
            hub.unregister(conn)
            self.open.dec()

    async def _receive_files(self, conn: Connection, files: FilesSocket, receive) -> None:
        while True:
            await files.upload_room()
            if not conn.capacity.is_set():  # replies the client does not read: wait
                await conn.capacity.wait()
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            conn.active = time.monotonic()
            text = message.get("text")
            if text is not None:
                size = text_bytes(text)
                self.in_text.inc()
                self.in_text_bytes.inc(size)
                # Control frames count against the rate limits (in bytes, as everywhere);
                # chunks are bounded by the upload window, the file size limit and the
                # quota instead.
                if not conn.limiter.allow(size):
                    if await self.refuse_rate(conn, envelope.request_id_of(text)):
                        return
                    continue
                await files.on_text(text)
                continue
            data = message.get("bytes") or b""
            self.in_binary.inc()
            self.in_binary_bytes.inc(len(data))
            # Chunks of an upload are bounded by its window; without one, each binary
            # frame only earns an error frame: rate-limited like a control frame.
            if files.upload is None and not conn.limiter.allow(len(data)):
                if await self.refuse_rate(conn):
                    return
                continue
            try:
                await files.on_chunk(data)
            except WireError as exc:
                files.send_error(None, exc)


def mount(app: FastAPI, hub: Hub, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
    """``/ws/files`` and ``GET /files``."""
    config = FilesSettings()
    endpoint = FilesEndpoint(
        hub, Authenticator(settings), settings, metrics, config, FileMetrics(metrics.registry)
    )
    app.router.routes.append(WebSocketRoute(PATH, endpoint))
    page = Page(PAGE.read_text())

    @app.get(PAGE_PATH, response_class=HTMLResponse, include_in_schema=False)
    async def files_page() -> HTMLResponse:
        return page.response()
