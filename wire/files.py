"""Files over ``/ws/files``: the client protocol, and what the gateway and the binary
service exchange. docs/protocol.md ("Files") is the prose version.

Client -> gateway, text frames (JSON objects; ``id`` is the client's request id, echoed)::

    {"type": "upload",   "id", "name", "size", "sha256"}   begin, resume or find an upload
    {"type": "download", "id", "file", "offset"?, "window"?}
    {"type": "ack",      "file", "offset"}                  download credit: bytes consumed
    {"type": "cancel",   "file"}                            stop a download
    {"type": "list",     "id"}
    {"type": "delete",   "id", "file"}
    {"type": "inspect",  "id", "file"}

Binary frames, both directions, are chunks of the transfer in progress::

    chunk := offset:u64 big-endian  data        (offset of data[0] in the file)

Gateway -> client, text frames::

    {"type": "upload",   "id", "file", "name", "size", "offset", "chunk_size", "window"}
    {"type": "progress", "file", "direction": "up"|"down", "offset", "size"}
    {"type": "stored",   "id"?, "file": <info>}            upload complete, digest verified
    {"type": "download", "id", "file": <info>, "offset", "window"}
    {"type": "done",     "file", "size", "sha256"}          download complete
    {"type": "list",     "id", "files": [<info>], "uploads": [<partial>], "usage", "quota"}
    {"type": "deleted",  "id", "file", "kind": "file"|"upload"}
    {"type": "inspect",  "id", "file": <info>}
    {"type": "error",    "id"?, "file"?, "code", "message"}

Between gateway and service (NATS, ``sb.svc.binary.file_*`` and the upload subject),
requests and replies are JSON or raw chunk bytes, with the ids and offsets in headers
(:mod:`wire.headers`): see the functions' docstrings in services/binary/files.py.

A download's chunks do not pass through the service: on ``file_read`` it asks nats-server
for a batch of them (a JetStream direct get, :func:`direct_get_request`), delivered
straight to the gateway's inbox, one NATS message per stored chunk and then an end of
batch (:func:`stored_item`)::

    chunk message   payload = the chunk's bytes; headers Sb-Offset, Sb-End (its byte
                    range in the file), Nats-Sequence (its stream sequence), ...
    end of batch    no payload; header Status: 204 (EOB), or 404 (nothing stored from
                    there on), or another status of nats-server's
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import orjson

from wire import headers as h
from wire.envelope import request_id
from wire.errors import ErrorCode, WireError

CHUNK_HEADER = struct.Struct(">Q")
MAX_NAME = 255
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE_ID = re.compile(r"[a-z2-7]{26}")
MAX_INT_DIGITS = 19  # header integers: int64 at most

ClientType = Literal["upload", "download", "ack", "cancel", "list", "delete", "inspect"]
ServerType = Literal[
    "upload", "progress", "stored", "download", "done", "list", "deleted", "inspect", "error"
]
CLIENT_TYPES: tuple[str, ...] = get_args(ClientType)
SERVER_TYPES: tuple[str, ...] = get_args(ServerType)


# -- chunks ----------------------------------------------------------------------------
def pack_chunk(offset: int, data: bytes) -> bytes:
    return CHUNK_HEADER.pack(offset) + data


def unpack_chunk(frame: bytes) -> tuple[int, memoryview]:
    """``(offset, data)`` of a binary chunk frame; WireError(400) if it has no header."""
    if len(frame) < CHUNK_HEADER.size:
        raise WireError(ErrorCode.BAD_REQUEST, "a chunk starts with its offset (8 bytes)")
    (offset,) = CHUNK_HEADER.unpack_from(frame)
    return offset, memoryview(frame)[CHUNK_HEADER.size :]


# -- identities and checks -------------------------------------------------------------
def file_id(user: str, name: str, size: int, sha256: str) -> str:
    """The id of ``user``'s file ``name`` with this size and digest: the same upload
    started again (another connection, another gateway) finds its own progress."""
    key = f"{user}\0{name}\0{size}\0{sha256}".encode()
    return base64.b32encode(hashlib.sha256(key).digest()[:16]).decode().rstrip("=").lower()


def is_file_id(value: str) -> bool:
    return _FILE_ID.fullmatch(value) is not None


def check_file_id(value: Any) -> str:
    if not isinstance(value, str) or not is_file_id(value):
        raise WireError(ErrorCode.BAD_REQUEST, "file must be a file id (26 characters)")
    return value


def check_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise WireError(ErrorCode.BAD_REQUEST, "name must be a non-empty string")
    if len(value) > MAX_NAME:
        raise WireError(ErrorCode.BAD_REQUEST, f"name is longer than {MAX_NAME} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in value):
        raise WireError(ErrorCode.BAD_REQUEST, "name contains control characters")
    return value


def check_sha256(value: Any) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
        raise WireError(ErrorCode.BAD_REQUEST, "sha256 must be 64 hexadecimal digits")
    return value.lower()


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 1 << 62:
        raise WireError(ErrorCode.BAD_REQUEST, f"{what} must be a non-negative integer")
    return value


def header_int(headers: dict[str, str] | None, name: str) -> int | None:
    """A non-negative integer header, or None when absent or not one."""
    raw = (headers or {}).get(name)
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > MAX_INT_DIGITS:
        return None
    return int(raw)


# -- what the service stores and answers -----------------------------------------------
@dataclass(slots=True)
class FileInfo:
    """A stored file as clients see it (``file`` is its id)."""

    file: str
    name: str
    size: int
    sha256: str
    media_type: str = "application/octet-stream"
    width: int | None = None
    height: int | None = None
    created: str = ""
    chunk_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.width is None:
            del out["width"], out["height"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileInfo:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(slots=True)
class UploadRecord:
    """An upload in progress (KV ``SB_UPLOADS``, key = file id)."""

    file: str
    user: str
    name: str
    size: int
    sha256: str
    chunk_size: int
    created: str
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> UploadRecord:
        raw = orjson.loads(data)
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


# -- download: stored chunks as nats-server delivers them -------------------------------
def direct_get_request(seq: int, subject: str, count: int) -> bytes:
    """The body of a batched direct get: up to ``count`` messages stored on ``subject``,
    from stream sequence ``seq`` on (nats-server 2.11+)."""
    return orjson.dumps({"seq": seq, "next_by_subj": subject, "batch": count})


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """One stored chunk: ``data`` is bytes ``[offset, end)`` of the file, ``seq`` its
    stream sequence (a batch after it starts at ``seq + 1``)."""

    seq: int
    offset: int
    end: int
    data: bytes
    kind: Literal["chunk"] = "chunk"


@dataclass(frozen=True, slots=True)
class BatchEnd:
    """The end of a batch: ``status`` 204 when it is complete, 404 when nothing is stored
    at or after the requested sequence, another of nats-server's statuses on an error."""

    status: int
    kind: Literal["end"] = "end"


def stored_item(headers: dict[str, str] | None, data: bytes) -> StoredChunk | BatchEnd:
    """One message of a direct get batch; WireError(500) if it is neither a chunk with
    a consistent byte range nor a status."""
    status = (headers or {}).get(h.STATUS)
    if status is not None:
        code = header_int(headers, h.STATUS)  # three digits; not one: nats-server's error
        return BatchEnd(code if code is not None and code < 1000 else 500)
    seq = header_int(headers, h.STREAM_SEQUENCE)
    offset = header_int(headers, h.OFFSET)
    end = header_int(headers, h.END)
    if seq is None or offset is None or end is None or end - offset != len(data):
        raise WireError(ErrorCode.INTERNAL, "a stored chunk without a consistent byte range")
    return StoredChunk(seq, offset, end, data)


# -- client messages -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Upload:
    id: str
    name: str
    size: int
    sha256: str
    type: Literal["upload"] = "upload"


@dataclass(frozen=True, slots=True)
class Download:
    id: str
    file: str
    offset: int = 0
    window: int | None = None
    type: Literal["download"] = "download"


@dataclass(frozen=True, slots=True)
class Ack:
    file: str
    offset: int
    type: Literal["ack"] = "ack"


@dataclass(frozen=True, slots=True)
class Cancel:
    file: str
    type: Literal["cancel"] = "cancel"


@dataclass(frozen=True, slots=True)
class ListFiles:
    id: str
    type: Literal["list"] = "list"


@dataclass(frozen=True, slots=True)
class Delete:
    id: str
    file: str
    type: Literal["delete"] = "delete"


@dataclass(frozen=True, slots=True)
class Inspect:
    id: str
    file: str
    type: Literal["inspect"] = "inspect"


ClientMessage = Upload | Download | Ack | Cancel | ListFiles | Delete | Inspect


def _rid(raw: dict[str, Any]) -> str:
    rid = request_id(raw)
    if rid is None:
        raise WireError(ErrorCode.BAD_REQUEST, "id must be 1-64 printable ASCII characters")
    return rid


def decode_client(text: str) -> ClientMessage:
    """One client text frame -> its message; WireError(400) when malformed."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise WireError(ErrorCode.BAD_REQUEST, "invalid JSON") from None
    if not isinstance(raw, dict):
        raise WireError(ErrorCode.BAD_REQUEST, "a frame is a JSON object")
    kind = raw.get("type")
    match kind:
        case "upload":
            return Upload(
                _rid(raw),
                check_name(raw.get("name")),
                _count(raw.get("size"), "size"),
                check_sha256(raw.get("sha256")),
            )
        case "download":
            window = raw.get("window")
            return Download(
                _rid(raw),
                check_file_id(raw.get("file")),
                _count(raw.get("offset", 0), "offset"),
                None if window is None else _count(window, "window"),
            )
        case "ack":
            return Ack(check_file_id(raw.get("file")), _count(raw.get("offset"), "offset"))
        case "cancel":
            return Cancel(check_file_id(raw.get("file")))
        case "list":
            return ListFiles(_rid(raw))
        case "delete":
            return Delete(_rid(raw), check_file_id(raw.get("file")))
        case "inspect":
            return Inspect(_rid(raw), check_file_id(raw.get("file")))
    raise WireError(ErrorCode.BAD_REQUEST, f"type must be one of {', '.join(CLIENT_TYPES)}")


# -- server messages -------------------------------------------------------------------
def server(kind: ServerType, /, **fields: Any) -> str:
    """A gateway -> client text frame; ``None`` fields are left out."""
    body = {"type": kind, **{k: v for k, v in fields.items() if v is not None}}
    return orjson.dumps(body).decode()


def error(
    rid: str | None, code: str, message: str, file: str | None = None, offset: int | None = None
) -> str:
    return server("error", id=rid, file=file, code=code, message=message, offset=offset)
