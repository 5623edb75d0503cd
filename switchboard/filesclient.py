"""A ``/ws/files`` client (protocol: wire/files.py, docs/protocol.md "Files"): upload
with the window the server grants and automatic resume, download with credit (acks),
list, delete, inspect. Used by the command line (switchboard/cli.py), the tests and
the benchmark."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlencode

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from wire import files as wf

_T = TypeVar("_T")

Progress = Callable[[int, int], None]  # (bytes done, total)
TRANSIENT = {"408", "429", "503"}  # worth reconnecting and resuming
READ_SIZE = 1024 * 1024


MISMATCH = "downloaded data does not match its SHA-256"


class FileError(Exception):
    """The server refused (``code`` is a wire error code, e.g. 413 or 400)."""

    def __init__(self, code: str, message: str, offset: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.offset = offset

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT


# Close codes after which connecting again may work: going away (a gateway restarting),
# server error, service restart, try again later. 1006 (no close frame) counts too: the
# connection dropped. Others (1008 policy, 1003, 1009...) would only be refused again.
RETRY_CLOSE_CODES = {1001, 1006, 1011, 1012, 1013}

Retry = Callable[[int, BaseException, float], None]  # (attempt, what failed, delay s)


def worth_retrying(exc: BaseException) -> bool:
    """A dropped connection, an unreachable gateway or a transient refusal: connecting
    again and resuming may succeed."""
    if isinstance(exc, FileError):
        return exc.transient
    if isinstance(exc, websockets.ConnectionClosed):
        close = exc.rcvd
        return close is None or close.code in RETRY_CLOSE_CODES
    if isinstance(exc, websockets.InvalidHandshake | websockets.InvalidURI):
        return False  # wrong URL, not a Switchboard gateway, refused by its proxy
    return isinstance(exc, OSError | TimeoutError)


def local_name(name: str, file: str) -> str:
    """Where a download named ``name`` goes in a directory: its last path part, or the
    file id if that part is empty, ``.`` or ``..`` or holds a NUL."""
    base = os.path.basename(name.replace("\\", "/"))
    if base in ("", ".", "..") or "\0" in base:
        return file
    return base


def sha256_of(path: Path | str, upto: int | None = None) -> str:
    """Hex SHA-256 of a file (or of its first ``upto`` bytes), read in 1 MiB pieces."""
    digest = hashlib.sha256()
    left = upto
    with open(path, "rb") as f:
        while left is None or left > 0:
            block = f.read(READ_SIZE if left is None else min(READ_SIZE, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
    return digest.hexdigest()


def files_url(base: str, user: str | None = None, token: str | None = None) -> str:
    """``ws://host:port`` (or a full ``/ws/files`` URL) -> the files endpoint URL."""
    url = base.rstrip("/")
    if url.startswith("http"):
        url = "ws" + url[4:]
    if not url.endswith("/ws/files"):
        url += "/ws/files"
    query = {k: v for k, v in (("username", user), ("token", token)) if v}
    return url + ("?" + urlencode(query) if query else "")


class FilesClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> FilesClient:
        kwargs.setdefault("max_size", 4 * 1024 * 1024)
        kwargs.setdefault("open_timeout", 10)
        kwargs.setdefault("close_timeout", 2)
        kwargs.setdefault("compression", None)  # chunks are bytes, mostly incompressible
        return cls(await websockets.connect(url, **kwargs))

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> FilesClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- frames ------------------------------------------------------------------------
    def _rid(self) -> str:
        return f"r{next(self._ids)}"

    async def _send(self, **body: Any) -> None:
        await self.ws.send(orjson.dumps(body).decode())

    async def _next_text(self, limit: float = 30.0) -> dict[str, Any]:
        while True:
            frame = await asyncio.wait_for(self.ws.recv(), limit)
            if isinstance(frame, str):
                return orjson.loads(frame)

    async def _call(self, kind: str, expect: str, **body: Any) -> dict[str, Any]:
        rid = self._rid()
        await self._send(type=kind, id=rid, **body)
        while True:
            msg = await self._next_text()
            if msg.get("id") != rid:
                continue
            if msg["type"] == "error":
                raise FileError(msg["code"], msg["message"], msg.get("offset"))
            if msg["type"] == expect:
                return msg

    # -- simple requests ---------------------------------------------------------------
    async def list(self) -> dict[str, Any]:
        return await self._call("list", "list")

    async def delete(self, file: str) -> dict[str, Any]:
        return await self._call("delete", "deleted", file=file)

    async def inspect(self, file: str) -> dict[str, Any]:
        return (await self._call("inspect", "inspect", file=file))["file"]

    # -- upload ------------------------------------------------------------------------
    async def upload(
        self,
        source: BinaryIO,
        name: str,
        size: int,
        sha256: str,
        progress: Progress | None = None,
        stop_after: int | None = None,
    ) -> dict[str, Any]:
        """Send ``source`` (seekable) from wherever the server says to continue; return
        the stored file's info. ``stop_after``: close the socket once that many bytes
        have been sent (tests: a connection dropped mid-upload)."""
        begun = await self._begin(name, size, sha256)
        if begun["type"] == "stored":
            if progress:
                progress(size, size)
            return begun["file"]
        file, offset = begun["file"], begun["offset"]
        chunk, window = begun["chunk_size"], begun["window"]
        acked = sent = offset
        if progress:
            progress(acked, size)
        source.seek(offset)
        while True:
            while sent < size and sent - acked < window:
                data = source.read(min(chunk, size - sent))
                if not data:
                    raise OSError(f"{name}: file shorter than {size} bytes")
                await self.ws.send(wf.pack_chunk(sent, data))
                sent += len(data)
                if stop_after is not None and sent >= stop_after:
                    await self.ws.close()
                    raise ConnectionError(f"stopped after {sent} bytes (stop_after)")
            msg = await self._next_text()
            match msg["type"]:
                case "progress" if msg.get("file") == file:
                    acked = max(acked, msg["offset"])
                    if progress:
                        progress(acked, size)
                case "stored":
                    if progress:
                        progress(size, size)
                    return msg["file"]
                case "error":
                    raise FileError(msg["code"], msg["message"], msg.get("offset"))

    async def _begin(self, name: str, size: int, sha256: str) -> dict[str, Any]:
        rid = self._rid()
        await self._send(type="upload", id=rid, name=name, size=size, sha256=sha256)
        while True:
            msg = await self._next_text()
            if msg.get("id") != rid:
                continue
            if msg["type"] == "error":
                raise FileError(msg["code"], msg["message"], msg.get("offset"))
            if msg["type"] in ("upload", "stored"):
                return msg

    # -- download ----------------------------------------------------------------------
    async def download(
        self,
        file: str,
        sink: BinaryIO,
        offset: int = 0,
        window: int | None = None,
        progress: Progress | None = None,
        digest: Any = None,
        on_chunk: Callable[[int], Any] | None = None,
    ) -> dict[str, Any]:
        """Write ``file`` from ``offset`` to ``sink``; ``digest`` (a hashlib object that
        already holds the first ``offset`` bytes) is updated and checked against the
        file's SHA-256 at the end. ``on_chunk(bytes)`` may be async (a slow reader)."""
        rid = self._rid()
        body: dict[str, Any] = {"type": "download", "id": rid, "file": file, "offset": offset}
        if window is not None:
            body["window"] = window
        await self._send(**body)
        digest = digest if digest is not None else hashlib.sha256()
        info: dict[str, Any] = {}
        position = acked = offset
        granted = 0
        while True:
            frame = await asyncio.wait_for(self.ws.recv(), 60)
            if isinstance(frame, bytes):
                start, data = wf.unpack_chunk(frame)
                if start != position:
                    raise FileError("500", f"chunk at {start}, expected {position}")
                sink.write(data)
                digest.update(data)
                position += len(data)
                if on_chunk is not None:
                    waited = on_chunk(len(data))
                    if asyncio.iscoroutine(waited):
                        await waited
                if position - acked >= max(granted // 4, 1):
                    acked = position
                    await self._send(type="ack", file=file, offset=position)
                continue
            msg = orjson.loads(frame)
            match msg["type"]:
                case "download" if msg.get("id") == rid:
                    info, granted = msg["file"], msg["window"]
                    if progress:
                        progress(position, info["size"])
                case "progress" if msg.get("file") == file:
                    if progress:
                        progress(position, msg["size"])
                case "done" if msg.get("file") == file:
                    if digest.hexdigest() != msg["sha256"]:
                        raise FileError("400", MISMATCH)
                    return info
                case "error":
                    raise FileError(msg["code"], msg["message"], msg.get("offset"))


async def upload_path(
    url: str,
    path: Path | str,
    name: str | None = None,
    progress: Progress | None = None,
    attempts: int = 20,
    backoff: float = 0.5,
    on_retry: Retry | None = None,
    **connect: Any,
) -> dict[str, Any]:
    """Upload a file from disk, reconnecting and resuming after a dropped connection or a
    transient error (up to ``attempts`` connections; :func:`worth_retrying`)."""
    path = Path(path)
    size = path.stat().st_size
    digest = sha256_of(path)
    name = name or path.name
    with path.open("rb") as source:  # noqa: ASYNC230 (local reads of 256 KiB)

        async def upload() -> dict[str, Any]:
            async with await FilesClient.open(url, **connect) as client:
                return await client.upload(source, name, size, digest, progress)

        return await _retried(upload, attempts, backoff, on_retry)


async def _retried(
    work: Callable[[], Awaitable[_T]], attempts: int, backoff: float, on_retry: Retry | None
) -> _T:
    """``work()``, again after each transient error (:func:`worth_retrying`), up to
    ``attempts`` times."""
    for attempt in itertools.count(1):
        try:
            return await work()
        except Exception as exc:
            if not worth_retrying(exc) or attempt >= attempts:
                raise
            await _pause(attempt, exc, backoff, on_retry)
    raise AssertionError("unreachable")


async def _pause(attempt: int, exc: BaseException, backoff: float, on_retry: Retry | None) -> None:
    delay = min(backoff * attempt, 5.0)
    if on_retry is not None:
        on_retry(attempt, exc, delay)
    await asyncio.sleep(delay)


async def download_path(
    url: str,
    file: str,
    dest: Path | str | None = None,
    progress: Progress | None = None,
    attempts: int = 20,
    backoff: float = 0.5,
    on_retry: Retry | None = None,
    overwrite: bool = False,
    **connect: Any,
) -> Path:
    """Download into ``dest`` (default: the file's name in the current directory; an
    existing file there only with ``overwrite``, else ``FileExistsError``) via
    ``<dest>.<file id>.part``, resuming from what the part file holds after a dropped
    connection. The part file is this file's alone (a stored file never changes); if
    what it held does not match the file's SHA-256 in the end, it is deleted and the
    download starts over."""

    async def inspect() -> dict[str, Any]:  # retried too: the gateway may be restarting
        async with await FilesClient.open(url, **connect) as client:
            return await client.inspect(file)

    info = await _retried(inspect, attempts, backoff, on_retry)
    target = Path(dest) if dest else Path(local_name(info["name"], file))
    if target.is_dir():
        target = target / local_name(info["name"], file)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (--force replaces it)")
    part = target.with_name(f"{target.name}.{file}.part")
    for attempt in itertools.count(1):
        have = part.stat().st_size if part.exists() else 0
        if have > info["size"]:
            part.unlink()
            have = 0
        digest = hashlib.sha256()
        if have:
            with part.open("rb") as f:
                while block := f.read(READ_SIZE):
                    digest.update(block)
        with part.open("ab") as sink:  # a local failure here is not retried
            try:
                async with await FilesClient.open(url, **connect) as client:
                    await client.download(file, sink, have, progress=progress, digest=digest)
            except Exception as exc:
                if isinstance(exc, FileError) and exc.message == MISMATCH and have:
                    part.unlink()  # the part was not this file's start: from the beginning
                    continue
                if not worth_retrying(exc) or attempt >= attempts:
                    raise
                await _pause(attempt, exc, backoff, on_retry)
                continue
        if overwrite:
            part.replace(target)
        else:  # a link fails if the target appeared meanwhile: then it stays as it was
            os.link(part, target)
            part.unlink()
        return target
    raise AssertionError("unreachable")
