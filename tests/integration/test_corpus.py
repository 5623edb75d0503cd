"""A bad-input corpus over every WebSocket endpoint, against a real stack.

Each case opens a fresh socket, sends hostile input and asserts the exact documented
outcome: a reply or error frame (in the endpoint's own shape) or a close code. A case
whose socket stays open ends with a normal round trip on that same socket. Afterwards,
the gateway and every worker still answer normally, and no process logged a crash.

Two tables:

- ``TRANSPORT``: what the WebSocket layer itself refuses, the same on every endpoint —
  discovered from the app's routes, so an endpoint added later is covered too: invalid
  UTF-8 in a text frame (1007), frames and fragmented messages over the size limit
  (1009), a permessage-deflate bomb (1009), protocol garbage (1002).
- ``APP``: per endpoint, frames the endpoint must answer: wrong frame type, invalid or
  wrongly shaped JSON, deep nesting, huge numbers, empty frames, fragmented messages,
  compression bombs, room names with subject wildcards, spoofed senders, unknown types,
  binary garbage.

Frames the ``websockets`` client refuses to send (invalid UTF-8, bare continuation
frames, unmasked frames) go through :class:`Raw`, websockets' sans-I/O protocol over an
asyncio stream, or as hand-built bytes.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import json
import random
import re
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.routing import WebSocketRoute
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from gateway.app import create_app
from gateway.settings import GatewaySettings
from switchboard.localstack import SERVICES, LocalStack, running
from tests.integration.conftest import http_base, ws_base

MAX = 1024 * 1024  # SB_GATEWAY_MAX_FRAME_BYTES (default)
HANDSHAKE_TIMEOUT = 1.0  # SB_GATEWAY_HANDSHAKE_TIMEOUT here (default 10 s)
TIMEOUT = 5.0
GARBAGE = random.Random(7).randbytes(256)  # binary garbage, the same in every run


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Default settings, but a short handshake deadline (tested at the end)."""
    env = {"SB_GATEWAY_HANDSHAKE_TIMEOUT": str(HANDSHAKE_TIMEOUT)}
    with running(tmp_path_factory.mktemp("corpus"), env=env) as s:
        yield s


# -- a client that sends anything -------------------------------------------------------


@dataclass(frozen=True)
class Closed:
    code: int
    reason: str | None = None  # None: any reason

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Closed):
            return NotImplemented
        return self.code == other.code and (
            self.reason is None or other.reason is None or self.reason == other.reason
        )

    __hash__ = None  # type: ignore[assignment]


class Raw:
    """WebSocket client on websockets' sans-I/O protocol: sends any frame, invalid ones
    included, and reports the server's frames and close code."""

    def __init__(self, proto: ClientProtocol, reader, writer) -> None:
        self.proto = proto
        self.reader = reader
        self.writer = writer
        self.events: deque[str | bytes | Closed] = deque()

    @classmethod
    async def open(cls, url: str, deflate: bool = False) -> Raw:
        uri = parse_uri(url)
        extensions = [ClientPerMessageDeflateFactory()] if deflate else None
        proto = ClientProtocol(uri, extensions=extensions, max_size=None)
        reader, writer = await asyncio.open_connection(uri.host, uri.port)
        raw = cls(proto, reader, writer)
        proto.send_request(proto.connect())
        raw.flush()
        while True:
            data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
            assert data, "connection closed during the handshake"
            proto.receive_data(data)
            events = proto.events_received()
            if events and isinstance(events[0], Response):
                if proto.handshake_exc is not None:
                    raise proto.handshake_exc
                raw._file(events[1:])
                return raw

    def flush(self) -> None:
        data = b"".join(self.proto.data_to_send())
        if data:
            self.writer.write(data)

    def _file(self, events: list) -> None:
        for event in events:
            if not isinstance(event, Frame):
                continue
            if event.opcode is Opcode.TEXT:
                self.events.append(bytes(event.data).decode())
            elif event.opcode is Opcode.BINARY:
                self.events.append(bytes(event.data))
            elif event.opcode is Opcode.CLOSE:
                rcvd = self.proto.close_rcvd
                assert rcvd is not None
                self.events.append(Closed(rcvd.code, rcvd.reason))
        self.flush()  # pongs, the close echo

    async def send(self, op: Send) -> None:
        if op.kind == "raw":
            self.writer.write(op.data)
        elif op.kind == "text":
            self.proto.send_text(op.data, fin=op.fin)
        elif op.kind == "binary":
            self.proto.send_binary(op.data, fin=op.fin)
        else:
            self.proto.send_continuation(op.data, fin=op.fin)
        self.flush()
        await self.writer.drain()

    async def recv(self, timeout: float = TIMEOUT) -> str | bytes | Closed:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.events:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError("no frame from the server")
            data = await asyncio.wait_for(self.reader.read(65536), left)
            if not data:
                self.proto.receive_eof()
                self._file(self.proto.events_received())
                if not self.events:
                    return Closed(1006, "")
                break
            self.proto.receive_data(data)
            self._file(self.proto.events_received())
        return self.events.popleft()

    async def close(self) -> None:
        try:
            if self.proto.state.name == "OPEN":
                self.proto.send_close(1000)
                self.flush()
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except Exception:  # the server may already have reset it (e.g. after a 1009)
            pass


@dataclass(frozen=True)
class Send:
    kind: str  # text | binary | cont | raw
    data: bytes
    fin: bool = True


def text(value: str | bytes, fin: bool = True) -> Send:
    return Send("text", value.encode() if isinstance(value, str) else value, fin)


def binary(value: bytes, fin: bool = True) -> Send:
    return Send("binary", value, fin)


def cont(value: str | bytes, fin: bool = True) -> Send:
    return Send("cont", value.encode() if isinstance(value, str) else value, fin)


def raw_frame(first: int, payload: bytes, masked: bool = True) -> Send:
    """A hand-built frame: ``first`` = FIN, RSV bits and opcode; mask key 0 (a masked
    frame whose payload reads as is)."""
    n = len(payload)
    mask = 0x80 if masked else 0
    if n < 126:
        head = bytes([first, mask | n])
    elif n < 65536:
        head = bytes([first, mask | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, mask | 127]) + struct.pack(">Q", n)
    return Send("raw", head + (b"\0\0\0\0" if masked else b"") + payload)


# -- payloads ---------------------------------------------------------------------------


def zstd_bomb(size: int) -> bytes:
    """A valid zstd frame of RLE blocks: 4 bytes per 128 KiB of zeros (64 MiB in 2 KiB).
    Layout: magic, descriptor 0x00 (no content size, no checksum), window 2**17, then
    block headers (last:1, type:2 = RLE, size:21) each followed by the byte to repeat."""
    block = 128 * 1024
    out = bytearray(struct.pack("<I", 0xFD2FB528) + b"\x00\x38")
    count = size // block
    for i in range(count):
        header = block << 3 | 1 << 1 | (i == count - 1)
        out += header.to_bytes(3, "little") + b"\0"
    return bytes(out)


def zip_bomb(size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * size)
    return buffer.getvalue()


ZEROS = 32 * 1024 * 1024  # inflated size of the bombs; codec's cap is 16 MiB
ZLIB_BOMB = zlib.compress(b"\0" * ZEROS, 9)
ZIP_BOMB = zip_bomb(ZEROS)
GZIP_BOMB = gzip.compress(b"\0" * ZEROS, 9)
ZSTD_BOMB = zstd_bomb(2 * ZEROS)
DIGITS = "1" * 5000  # Python's int() refuses over 4300 digits
DEEP = 50_000


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# -- expectations -------------------------------------------------------------------------


def j(value: Any) -> Callable[[Any], bool]:
    """A text frame holding exactly this JSON value."""

    def check(frame: Any) -> bool:
        return isinstance(frame, str) and json.loads(frame) == value

    check.__name__ = f"json {value!r}"[:120]
    return check


def text_err(description: str) -> str:
    return f"Error: {description}"


def status_err(message: str) -> Callable[[Any], bool]:
    return j({"status": "error", "message": message})


def v2_err(code: str, message: str, rid: str | None = None) -> Callable[[Any], bool]:
    frame: dict[str, Any] = {"type": "error"}
    if rid is not None:
        frame["id"] = rid
    frame["payload"] = {"code": code, "message": message}
    return j(frame)


def matches(expected: Any, got: Any) -> bool:
    return expected(got) if callable(expected) else expected == got


ROOM_RULE = "room must be 1-64 characters of [A-Za-z0-9_-]"
ID_RULE = "id must be 1-64 printable ASCII characters"


# -- the tables ----------------------------------------------------------------------------


@dataclass
class Case:
    path: str
    name: str
    sends: list[Send]
    expect: list[Any]  # frames (str, bytes, predicate) then, optionally, a Closed
    deflate: bool = False
    query: str = ""
    check: Callable[[list[Any], str], None] | None = None  # extra checks on what came

    @property
    def id(self) -> str:
        return f"{self.path}:{self.name}"


def transport_cases(path: str) -> list[Case]:
    """Refused by the WebSocket layer (uvicorn + websockets) the same on every endpoint."""
    c = lambda name, sends, code, **kw: Case(path, name, sends, [Closed(code)], **kw)  # noqa: E731
    return [
        c("invalid-utf8", [text(b"caf\xc3 \xff\xfe")], 1007),
        c(
            "invalid-utf8-fragmented",
            [text(b"ok ", fin=False), cont(b"\xc3", fin=False), cont(b"(")],
            1007,
        ),
        c("oversize-text", [text("x" * (MAX + 1))], 1009),
        c("oversize-binary", [binary(b"x" * (MAX + 1))], 1009),
        # more than the socket buffers hold: the gateway refuses it while the client is
        # still writing, and must not reset the connection under its close frame
        c("oversize-still-sending", [binary(b"x" * (32 * MAX))], 1009),
        c(
            "fragmented-over-the-limit",
            [binary(b"x" * (MAX // 2), fin=False), cont(b"x" * (MAX // 2), fin=False), cont(b"x")],
            1009,
        ),
        c("deflate-bomb-binary", [binary(b"\0" * (16 * MAX))], 1009, deflate=True),
        c("deflate-bomb-text", [text("a" * (16 * MAX))], 1009, deflate=True),
        c("protocol-garbage", [Send("raw", b"\xff" * 64)], 1002),
        c("unmasked-frame", [raw_frame(0x81, b"hi", masked=False)], 1002),
        c("reserved-opcode", [raw_frame(0x83, b"hi")], 1002),
        c("reserved-bits", [raw_frame(0x81 | 0x40, b"hi")], 1002),  # RSV1, no deflate agreed
        c("continuation-without-start", [raw_frame(0x80, b"hi")], 1002),
        c("control-frame-over-125-bytes", [raw_frame(0x89, b"p" * 126)], 1002),
        c("fragmented-control-frame", [raw_frame(0x09, b"p")], 1002),
        c(
            "oversize-length-field",
            [Send("raw", bytes([0x82, 0xFF]) + struct.pack(">Q", 2**62))],
            1009,
        ),
    ]


def ws_cases() -> list[Case]:
    p = "/ws"
    return [
        Case(p, "empty-text", [text("")], ["Echo: "]),
        Case(p, "binary-garbage", [binary(GARBAGE)], [text_err("expected a text frame")]),
        Case(p, "empty-binary", [binary(b"")], [text_err("expected a text frame")]),
        Case(
            p,
            "deep-json-is-just-text",
            [text("[" * DEEP + "]" * DEEP)],
            ["Echo: " + "[" * DEEP + "]" * DEEP],
        ),
        Case(p, "huge-number-is-just-text", [text(DIGITS)], ["Echo: " + DIGITS]),
        Case(p, "control-characters", [text("\x00\x1b[2J\r\n")], ["Echo: \x00\x1b[2J\r\n"]),
        Case(
            p,
            "fragmented-utf8-split-across-frames",
            [text(b"hel", fin=False), cont(b"lo w\xc3", fin=False), cont(b"\xb6rld")],
            ["Echo: hello wörld"],
        ),
    ]


def json_cases() -> list[Case]:
    p = "/ws/json"
    shape = text_err("JSON must be an object, an array or a string")
    invalid = text_err("Invalid JSON format")
    return [
        Case(p, "invalid-json", [text("{'a': 1}")], [invalid]),
        Case(p, "empty-text", [text("")], [invalid]),
        *(
            Case(p, f"wrong-shape-{v}", [text(v)], [shape])
            for v in ("5", "true", "null", "NaN", "-Infinity")
        ),
        Case(
            p,
            "deeply-nested",
            [text("[" * DEEP + "]" * DEEP)],
            [text_err("JSON nested too deeply")],
        ),
        Case(p, "huge-integer", [text(DIGITS)], [invalid]),
        Case(p, "huge-integer-in-an-array", [text(f"[{DIGITS}]")], [invalid]),
        Case(
            p,
            "float-overflow-is-infinity",
            [text("[1e999]")],
            [
                '{"original_message":[Infinity],"response":"Server received your JSON with 1 fields"}'
            ],
        ),
        Case(
            p,
            "long-integer-within-limits",
            [text(f'{{"n":{"7" * 4000}}}')],
            [
                f'{{"original_message":{{"n":{"7" * 4000}}},"response":"Server received your JSON with 1 fields"}}'
            ],
        ),
        Case(p, "binary-garbage", [binary(GARBAGE)], [text_err("expected a text frame")]),
        Case(
            p,
            "fragmented-json",
            [text('{"a":', fin=False), cont("[1,", fin=False), cont("2]}")],
            [
                '{"original_message":{"a":[1,2]},"response":"Server received your JSON with 1 fields"}'
            ],
        ),
        Case(p, "lone-surrogate-escape", [text('"\\ud800"')], [invalid]),
    ]


def binary_cases() -> list[Case]:
    p = "/ws/binary"

    def report(data: bytes) -> str:
        preview = base64.b64encode(data[:15]).decode()[:20]
        return f"Received binary data of size {len(data)} bytes. First 20 bytes in base64: {preview}..."

    return [
        Case(p, "text-frame", [text("hello")], [text_err("expected a binary frame")]),
        Case(p, "empty-text", [text("")], [text_err("expected a binary frame")]),
        Case(p, "binary-garbage", [binary(GARBAGE)], [report(GARBAGE), GARBAGE]),
        Case(p, "empty-binary", [binary(b"")], [report(b""), b""]),
        Case(
            p,
            "fragmented-binary",
            [binary(GARBAGE[:10], fin=False), cont(GARBAGE[10:20], fin=False), cont(GARBAGE[20:])],
            [report(GARBAGE), GARBAGE],
        ),
    ]


def mixed_cases() -> list[Case]:
    p = "/ws/mixed"
    return [
        Case(
            p, "binary-garbage", [binary(GARBAGE)], ["You sent a binary message of size 256 bytes"]
        ),
        Case(p, "empty-binary", [binary(b"")], ["You sent a binary message of size 0 bytes"]),
        Case(p, "empty-text", [text("")], ["You sent a text message: "]),
        Case(
            p,
            "text-garbage",
            [text("\x00\ufffe\U0010ffff")],
            ["You sent a text message: \x00\ufffe\U0010ffff"],
        ),
        Case(
            p, "fragmented-text", [text("a", fin=False), cont("b")], ["You sent a text message: ab"]
        ),
    ]


def compressed_cases() -> list[Case]:
    p = "/ws/compressed"
    failed = status_err("Failed to decompress data")
    return [
        Case(p, "text-frame", [text("x")], [status_err("expected a binary frame")]),
        Case(p, "binary-garbage", [binary(GARBAGE)], [failed]),
        Case(p, "empty-binary", [binary(b"")], [failed]),
        Case(p, "truncated-zlib", [binary(zlib.compress(b"abc" * 100)[:-3])], [failed]),
        Case(
            p,
            "zlib-bomb",
            [binary(ZLIB_BOMB)],
            [status_err("Decompressed data exceeds 16777216 bytes")],
        ),
        Case(
            p,
            "zlib-of-nothing",
            [binary(zlib.compress(b""))],
            [status_err("Decompressed data is empty")],
        ),
        Case(p, "zip-bomb", [binary(ZIP_BOMB)], [failed]),
        Case(p, "gzip-bomb", [binary(GZIP_BOMB)], [failed]),
        Case(p, "zstd-bomb", [binary(ZSTD_BOMB)], [failed]),
        Case(
            p,
            "fragmented-zlib",
            [
                binary(zlib.compress(b"abc" * 100)[:5], fin=False),
                cont(zlib.compress(b"abc" * 100)[5:]),
            ],
            [j(compressed_reply(b"abc" * 100))],
        ),
    ]


def codec_cases() -> list[Case]:
    p = "/ws/codec"
    header = "a frame starts with a header line such as 'compress:zstd:3' and a newline"
    over = status_err("Decompressed data exceeds 4194304 bytes")  # SB_CODEC_TRANSFORM_CAP_BYTES

    def c(name: str, frame: bytes, *expect: Any) -> Case:
        return Case(p, name, [binary(frame)], list(expect))

    return [
        Case(p, "text-frame", [text("compress:zlib\nx")], [status_err("expected a binary frame")]),
        c("empty-binary", b"", status_err(header)),
        c("binary-garbage", GARBAGE, status_err(header)),
        c("header-too-long", b"compress:zstd:" + b"9" * 40 + b"\nx", status_err(header)),
        c("header-not-ascii", b"\xff\xfe:zlib\nx", status_err("header is not ASCII")),
        c("header-missing-format", b"compress\nx", status_err("header is <op>:<format>[:<level>]")),
        c("unknown-op", b"COMPRESS:zlib\nx", status_err("op must be compress or decompress")),
        c("unknown-format", b"compress:lz4\nx", status_err("format must be zlib, gzip or zstd")),
        c("level-too-high", b"compress:zstd:99\nx", status_err("zstd level must be 1-19")),
        c("level-negative", b"compress:zstd:-1\nx", status_err("zstd level must be 1-19")),
        c("level-double-minus", b"compress:zstd:--1\nx", status_err("zstd level must be 1-19")),
        c("zstd-bomb", b"decompress:zstd\n" + ZSTD_BOMB, over),
        c("zlib-bomb", b"decompress:zlib\n" + ZLIB_BOMB, over),
        c("gzip-bomb", b"decompress:gzip\n" + GZIP_BOMB, over),
        c(
            "zip-bomb-as-zlib",
            b"decompress:zlib\n" + ZIP_BOMB,
            status_err("Failed to decompress data: not a complete zlib stream"),
        ),
        c(
            "zstd-garbage",
            b"decompress:zstd\n\x28\xb5\x2f\xfd" + b"\xff" * 20,
            status_err("Failed to decompress data: not a complete zstd stream"),
        ),
    ]


def inspect_cases() -> list[Case]:
    p = "/ws/inspect"

    def report(data: bytes, media: str) -> Callable[[Any], bool]:
        return j(
            {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "media_type": media}
        )

    png_header_only = b"\x89PNG\r\n\x1a\n" + b"\0" * 20
    return [
        Case(p, "text-frame", [text("x")], [status_err("expected a binary frame")]),
        Case(p, "empty-binary", [binary(b"")], [report(b"", "application/octet-stream")]),
        Case(p, "binary-garbage", [binary(GARBAGE)], [report(GARBAGE, "application/octet-stream")]),
        Case(p, "truncated-png", [binary(png_header_only)], [report(png_header_only, "image/png")]),
        Case(
            p,
            "zstd-bomb-is-not-inflated",
            [binary(ZSTD_BOMB)],
            [lambda f: json.loads(f)["size"] == len(ZSTD_BOMB)],
        ),
    ]


def files_cases() -> list[Case]:
    p = "/ws/files"

    def err(
        code: str, message: str, rid: str | None = None, file: str | None = None
    ) -> Callable[[Any], bool]:
        frame: dict[str, Any] = {"type": "error"}
        if rid is not None:
            frame["id"] = rid
        if file is not None:
            frame["file"] = file
        return j({**frame, "code": code, "message": message})

    def e(name: str, frame: str, *expect: Any) -> Case:
        return Case(p, name, [text(frame)], list(expect))

    env = json.dumps
    file_rule = "file must be a file id (26 characters)"
    return [
        e("invalid-json", "nope", err("400", "invalid JSON")),
        e("empty-text", "", err("400", "invalid JSON")),
        e("not-an-object", "[1]", err("400", "a frame is a JSON object")),
        e(
            "deeply-nested",
            '{"type":"list","id":"l","x":' + nested(2000) + "}",
            err("400", "invalid JSON"),
        ),
        e(
            "unknown-type",
            env({"type": "hello", "id": "a"}),
            err(
                "400",
                "type must be one of upload, download, ack, cancel, list, delete, inspect",
                "a",
            ),
        ),
        e(
            "upload-missing-fields",
            env({"type": "upload", "id": "a"}),
            err("400", "name must be a non-empty string", "a"),
        ),
        e(
            "upload-negative-size",
            env({"type": "upload", "id": "u", "name": "n", "size": -1, "sha256": "0" * 64}),
            err("400", "size must be a non-negative integer", "u"),
        ),
        e(
            "upload-huge-size",
            env({"type": "upload", "id": "u", "name": "n", "size": 10**30, "sha256": "0" * 64}),
            err("400", "size must be a non-negative integer", "u"),
        ),
        e(
            "upload-control-characters-in-name",
            env({"type": "upload", "id": "u", "name": "a\u0000b", "size": 1, "sha256": "0" * 64}),
            err("400", "name contains control characters", "u"),
        ),
        e(
            "download-path-traversal",
            env({"type": "download", "id": "d", "file": "../../etc/passwd"}),
            err("400", file_rule, "d"),
        ),
        e(
            "download-subject-wildcards",
            env({"type": "download", "id": "d", "file": "a.*.>"}),
            err("400", file_rule, "d"),
        ),
        e(
            "ack-huge-offset",
            env({"type": "ack", "file": "a" * 26, "offset": 2**70}),
            err("400", "offset must be a non-negative integer"),
        ),
        e(
            "delete-unknown-file",
            env({"type": "delete", "id": "x", "file": "a" * 26}),
            err("404", f"no file {'a' * 26}", "x", "a" * 26),
        ),
        Case(p, "chunk-without-upload", [binary(GARBAGE)], [err("400", "no upload in progress")]),
        Case(p, "empty-chunk", [binary(b"")], [err("400", "no upload in progress")]),
    ]


def compressed_reply(data: bytes) -> dict[str, str]:
    packed = zlib.compress(data)
    return {
        "status": "success",
        "message": f"Received and decompressed {len(packed)} bytes into {len(data)} bytes",
        "compression_ratio": f"{len(packed) / len(data):.2f}",
    }


def chat_msg(user: str, message: str) -> dict[str, str]:
    return {"message": f"{user}: {message}", "sender": user, "type": "message"}


def chat_err(message: str) -> dict[str, str]:
    return {"message": message, "sender": "Server", "type": "error"}


CHAT_USER = "{user}"  # replaced by each case's unique user name


def chat_cases() -> list[Case]:
    p = "/ws/chat"
    invalid = chat_err("Invalid JSON format")
    shape = chat_err('Expected a JSON object with a "message" field')
    u = CHAT_USER
    return [
        Case(p, "invalid-json", [text("{message: hi}")], [invalid]),
        Case(p, "empty-text", [text("")], [invalid]),
        *(
            Case(p, f"wrong-shape-{i}", [text(v)], [shape])
            for i, v in enumerate(['["message"]', '{"text": 1}', "5"])
        ),
        Case(p, "deeply-nested", [text('{"message":' + "[" * DEEP + "]" * DEEP + "}")], [invalid]),
        Case(p, "huge-integer", [text(f'{{"message":{DIGITS}}}')], [invalid]),
        Case(p, "wrong-type-number", [text('{"message": 5}')], [chat_msg(u, "5")]),
        Case(p, "wrong-type-null", [text('{"message": null}')], [chat_msg(u, "None")]),
        Case(
            p, "wrong-type-object", [text('{"message": {"a": [1]}}')], [chat_msg(u, "{'a': [1]}")]
        ),
        Case(
            p,
            "spoofed-sender-and-type",
            [text('{"message": "hi", "sender": "admin", "type": "system"}')],
            [chat_msg(u, "hi")],
        ),
        Case(
            p,
            "unknown-type-field",
            [text('{"type": "delete_all", "message": "x"}')],
            [chat_msg(u, "x")],
        ),
        Case(p, "binary-garbage", [binary(GARBAGE)], [chat_err("expected a text frame")]),
        Case(
            p,
            "fragmented",
            [text('{"mess', fin=False), cont('age": "frag"}')],
            [chat_msg(u, "frag")],
        ),
        Case(
            p,
            "user-name-with-subject-wildcards",
            [text('{"message": "w"}')],
            [chat_msg(u, "w")],
            query="a.*.>",
        ),
    ]


def v2_cases() -> list[Case]:
    p = "/ws/v2"

    def e(name: str, frame: str, *expect: Any) -> Case:
        return Case(p, name, [text(frame)], list(expect))

    def env(**frame: Any) -> str:
        return json.dumps(frame)

    cases = [
        e("invalid-json", "nope", v2_err("400", "invalid JSON")),
        e("empty-text", "", v2_err("400", "invalid JSON")),
        e("not-an-object", "[1, 2]", v2_err("400", "a frame must be a JSON object")),
        e("missing-type", env(id="a"), v2_err("400", "missing type", "a")),
        e("type-not-a-string", env(type=5, id="a"), v2_err("400", "missing type", "a")),
        e("unknown-type", env(type="hello", id="u"), v2_err("400", "unknown type 'hello'", "u")),
        e(
            "server-type-from-client",
            env(type="message", id="s", room="r"),
            v2_err("400", "unknown type 'message'", "s"),
        ),
        e("missing-id", env(type="ping"), v2_err("400", ID_RULE)),
        e("id-with-space", env(type="ping", id="a b"), v2_err("400", ID_RULE)),
        e("id-too-long", env(type="ping", id="x" * 65), v2_err("400", ID_RULE)),
        e("id-a-number", env(type="ping", id=5), v2_err("400", ID_RULE)),
        e(
            "payload-a-list",
            env(type="join", id="p", room="r", payload=[1]),
            v2_err("400", "payload must be a JSON object", "p"),
        ),
        e("deeply-nested-frame", "[" * 2000 + "]" * 2000, v2_err("400", "invalid JSON")),
        e(
            "deeply-nested-payload",
            '{"type":"publish","id":"d","room":"corpus-deep","payload":' + nested(300) + "}",
            v2_err("400", "payload nested too deeply", "d"),
        ),
        e(
            "number-overflow",
            '{"type":"join","id":"n","room":"r","payload":{"since":1e400}}',
            v2_err("400", "invalid JSON"),
        ),
        e(
            "oversize-payload",
            env(type="publish", id="o", room="r", payload={"text": "x" * 70_000}),
            v2_err("413", "payload over 65536 bytes", "o"),
        ),
        e(
            "limit-zero",
            env(type="history", id="l", room="r", payload={"limit": 0}),
            v2_err("400", "limit must be 1-500", "l"),
        ),
        e(
            "limit-too-big",
            env(type="history", id="l", room="r", payload={"limit": 501}),
            v2_err("400", "limit must be 1-500", "l"),
        ),
        e(
            "leave-not-joined",
            env(type="leave", id="n", room="nowhere"),
            v2_err("400", "not in nowhere", "n"),
        ),
        Case(p, "binary-frame", [binary(GARBAGE)], [v2_err("415", "expected a text frame")]),
        Case(
            p,
            "fragmented-envelope",
            [text('{"type":"pi', fin=False), cont('ng","id":"f"}')],
            [j({"type": "pong", "id": "f", "payload": {}})],
        ),
    ]
    for i, value in enumerate([-1, 1.5, True, "3", 2**60, 10**30, [1]]):
        cases.append(
            e(
                f"since-{i}-{str(value)[:8]}",
                env(type="join", id="s", room="r", payload={"since": value}),
                v2_err("400", "since must be a non-negative integer", "s"),
            )
        )
    for i, room in enumerate(["a.b", "*", ">", "sb.room.>", "a b", "", "x" * 65, "é", 5, None]):
        for kind in ("join", "publish", "history", "presence"):
            cases.append(
                e(
                    f"room-{kind}-{i}",
                    env(type=kind, id=f"w{i}", room=room),
                    v2_err("400", ROOM_RULE, f"w{i}"),
                )
            )
    cases.append(
        Case(
            p,
            "spoofed-sender",
            [
                text(env(type="join", id="j", room="corpus-spoof")),
                text(
                    env(
                        type="publish",
                        id="m",
                        room="corpus-spoof",
                        payload={"text": "hi", "sender": "admin", "ts": 1},
                    )
                ),
            ],
            [],
            query="corpus",
            check=check_spoof,
        )
    )
    cases.append(
        Case(
            p,
            "join-twice",
            [
                text(env(type="join", id="a", room="corpus-twice")),
                text(env(type="join", id="b", room="corpus-twice")),
            ],
            [
                lambda f: json.loads(f)["type"] == "ack",
                v2_err("400", "already joined corpus-twice", "b"),
            ],
        )
    )
    return cases


def check_spoof(frames: list[Any], user: str) -> None:
    """The message event carries the connection's user and the server's time, whatever
    the client wrote into ``sender`` and ``ts``."""
    parsed = [json.loads(f) for f in frames]
    event = next(f for f in parsed if f["type"] == "message")
    assert event["payload"]["sender"] == user
    assert event["payload"]["ts"] != 1 and event["payload"]["text"] == "hi"
    acks = {f["id"]: f for f in parsed if f["type"] == "ack"}
    assert set(acks) == {"j", "m"} and acks["m"]["payload"]["seq"] == event["seq"]


APP = [
    *ws_cases(),
    *json_cases(),
    *binary_cases(),
    *mixed_cases(),
    *compressed_cases(),
    *chat_cases(),
    *v2_cases(),
    *codec_cases(),
    *inspect_cases(),
    *files_cases(),
]

# A normal round trip per endpoint: (frame, the reply's frames).
NORMAL: dict[str, tuple[Send, list[Any]]] = {
    "/ws": (text("hello"), ["Echo: hello"]),
    "/ws/json": (
        text('{"a":1}'),
        ['{"original_message":{"a":1},"response":"Server received your JSON with 1 fields"}'],
    ),
    "/ws/binary": (
        binary(b"ok"),
        ["Received binary data of size 2 bytes. First 20 bytes in base64: b2s=...", b"ok"],
    ),
    "/ws/mixed": (text("hi"), ["You sent a text message: hi"]),
    "/ws/chat": (text('{"message": "normal"}'), [chat_msg(CHAT_USER, "normal")]),
    "/ws/compressed": (binary(zlib.compress(b"abc" * 100)), [j(compressed_reply(b"abc" * 100))]),
    "/ws/v2": (
        text('{"type":"ping","id":"normal"}'),
        [j({"type": "pong", "id": "normal", "payload": {}})],
    ),
    "/ws/codec": (
        binary(b"compress:zlib:9\n" + b"a" * 1000),
        [
            j(
                {
                    "status": "success",
                    "op": "compress",
                    "format": "zlib",
                    "level": 9,
                    "input_bytes": 1000,
                    "output_bytes": len(zlib.compress(b"a" * 1000, 9)),
                    "ratio": round(len(zlib.compress(b"a" * 1000, 9)) / 1000, 4),
                }
            ),
            zlib.compress(b"a" * 1000, 9),
        ],
    ),
    "/ws/inspect": (
        binary(b"GIF89a\x01\x00\x01\x00"),
        [lambda f: json.loads(f)["media_type"] == "image/gif" and json.loads(f)["width"] == 1],
    ),
    "/ws/files": (
        text('{"type":"list","id":"normal"}'),
        [lambda f: json.loads(f)["type"] == "list" and json.loads(f)["id"] == "normal"],
    ),
    "/ws/dashboard": (
        text("ignored"),
        [lambda f: isinstance(f, str) and isinstance(json.loads(f), dict)],
    ),
}


def endpoints() -> list[str]:
    """Every WebSocket path the gateway registers (endpoints added later included)."""
    app = create_app(GatewaySettings(id="corpus"))
    return sorted(r.path for r in app.router.routes if isinstance(r, WebSocketRoute))


ENDPOINTS = endpoints()
TRANSPORT = [case for path in ENDPOINTS for case in transport_cases(path)]


# -- running a case ------------------------------------------------------------------------


def chat_filter(user: str) -> Callable[[Any], bool]:
    """Frames of the shared room ``general`` that concern this case's user."""

    def mine(frame: Any) -> bool:
        if not isinstance(frame, str):
            return True
        data = json.loads(frame)
        return data["type"] == "error" or data["message"].startswith(f"{user}:")

    return mine


def personalise(expected: Any, user: str) -> Any:
    if isinstance(expected, dict):
        return j({k: v.replace(CHAT_USER, user) for k, v in expected.items()})
    return expected


async def open_case(
    stack, path: str, query: str, deflate: bool
) -> tuple[Raw, str, Callable[[Any], bool]]:
    user = f"corpus-{uuid.uuid4().hex[:6]}"
    url = ws_base(stack) + path
    keep: Callable[[Any], bool] = lambda frame: True  # noqa: E731
    if path == "/ws/chat":
        user = query or user
        url += f"?username={urllib.parse.quote(user, safe='')}"
        ws = await Raw.open(url, deflate)
        joined = {"message": f"{user} has joined the chat", "sender": "Server", "type": "system"}
        while json.loads(await ws.recv()) != joined:
            pass
        keep = chat_filter(user)
    elif path in ("/ws/v2", "/ws/files"):
        user = query or user
        ws = await Raw.open(f"{url}?username={user}", deflate)
    elif path == "/ws/dashboard":
        ws = await Raw.open(url, deflate)
        keep = lambda frame: not isinstance(frame, str) or not frame.startswith("{")  # noqa: E731
    else:
        ws = await Raw.open(url, deflate)
    return ws, user, keep


async def expect_frames(ws: Raw, expected: list[Any], keep: Callable[[Any], bool]) -> list[Any]:
    got: list[Any] = []
    for want in expected:
        while True:
            frame = await ws.recv(10)
            if isinstance(frame, Closed) or keep(frame):
                break
        got.append(frame)
        assert matches(want, frame), (
            f"expected {getattr(want, '__name__', want)!r}, got {str(frame)[:300]!r}"
        )
    return got


async def round_trip(ws: Raw, path: str, user: str, keep: Callable[[Any], bool]) -> None:
    frame, replies = NORMAL[path]
    await ws.send(frame)
    if path == "/ws/dashboard":  # its figures are the reply here
        keep = lambda frame: True  # noqa: E731
    await expect_frames(ws, [personalise(r, user) for r in replies], keep)


async def run_case(stack, case: Case) -> None:
    ws, user, keep = await open_case(stack, case.path, case.query, case.deflate)
    try:
        for op in case.sends:
            await ws.send(op)
        expected = [personalise(e, user) for e in case.expect]
        if case.check is not None:
            frames = [await ws.recv(10) for _ in range(3)]  # join ack, publish ack, event
            case.check([f for f in frames if isinstance(f, str)], user)
        await expect_frames(ws, expected, keep)
        if expected and isinstance(expected[-1], Closed):
            return
        # Still open and still working: a normal round trip on the same socket.
        await round_trip(ws, case.path, user, keep)
    finally:
        await ws.close()


@pytest.mark.parametrize("case", TRANSPORT, ids=lambda c: c.id)
async def test_transport_corpus(stack, case: Case) -> None:
    await run_case(stack, case)


@pytest.mark.parametrize("case", APP, ids=lambda c: c.id)
async def test_endpoint_corpus(stack, case: Case) -> None:
    await run_case(stack, case)


async def test_dashboard_ignores_whatever_it_is_sent(stack) -> None:
    """/ws/dashboard reads and drops every frame: garbage changes nothing."""
    ws, _, _ = await open_case(stack, "/ws/dashboard", "", False)
    try:
        for op in (binary(GARBAGE), text("{not json"), text(""), binary(b""), text("[" * DEEP)):
            await ws.send(op)
        frame = await ws.recv(5)
        assert isinstance(frame, str) and isinstance(json.loads(frame), dict)
    finally:
        await ws.close()


def test_every_endpoint_is_covered() -> None:
    """The transport corpus runs on every registered endpoint; the tutorial's and the
    rooms endpoints have their own tables too."""
    assert set(NORMAL) - {"/ws/dashboard"} <= {c.path for c in APP}
    assert set(NORMAL) <= set(ENDPOINTS)


# -- the handshake deadline -------------------------------------------------------------------


async def eof_after(stack, data: list[bytes], pause: float) -> float:
    """Seconds until the gateway closes a raw TCP connection that sends ``data`` pieces,
    ``pause`` seconds apart, and never completes a request."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateways[0].port)
    try:
        for piece in data:
            if reader.at_eof():
                break
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(pause)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing said
    except ConnectionError:  # closed while we were still writing
        pass
    finally:
        writer.close()
    return time.monotonic() - started


async def test_silent_connection_closed_at_the_handshake_deadline(stack) -> None:
    assert HANDSHAKE_TIMEOUT - 0.2 < await eof_after(stack, [], 0) < HANDSHAKE_TIMEOUT + 2


async def test_slow_headers_closed_at_the_handshake_deadline(stack) -> None:
    """Slowloris: a header line every 0.3 s, never the blank line that ends them."""
    lines = [b"GET /ws HTTP/1.1\r\n", *(b"X-Slow-%d: 1\r\n" % i for i in range(20))]
    assert await eof_after(stack, lines, 0.3) < HANDSHAKE_TIMEOUT + 2


async def test_upgraded_connection_outlives_the_handshake_deadline(stack) -> None:
    ws, user, keep = await open_case(stack, "/ws", "", False)
    try:
        await asyncio.sleep(HANDSHAKE_TIMEOUT + 0.5)
        await round_trip(ws, "/ws", user, keep)
    finally:
        await ws.close()


@pytest.mark.parametrize(
    ("request_line", "header", "status"),
    [
        (b"GET /ws/v2?token=" + b"a" * 9000 + b" HTTP/1.1", b"", b"414"),
        (
            b"GET /ws/v2 HTTP/1.1",
            b"Sec-WebSocket-Protocol: bearer." + b"a" * 9000 + b"\r\n",
            b"431",
        ),
        (b"GET /ws HTTP/1.1", b"".join(b"X-Many-%d: 1\r\n" % i for i in range(200)), b"431"),
    ],
    ids=["request-line-over-8k", "header-line-over-8k", "too-many-headers"],
)
async def test_an_upgrade_request_too_large_is_answered_and_closed(
    stack, request_line, header, status
) -> None:
    """The upgrade request passes uvicorn's HTTP parser, then websockets refuses it: the
    client gets that answer and the connection is closed at once (it used to stay open,
    unanswered, for good)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateways[0].port)
    try:
        writer.write(
            request_line + b"\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n" + header + b"\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), HANDSHAKE_TIMEOUT / 2)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
    assert time.monotonic() - started < HANDSHAKE_TIMEOUT / 2


# -- afterwards ------------------------------------------------------------------------------


def readyz(stack) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(http_base(stack) + "/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


CRASH = re.compile(r"Exception in ASGI application|Traceback|handler failed")
# uvicorn logs each invalid UTF-8 text frame at ERROR with a traceback, then closes 1007:
# expected here (the invalid-utf8 cases), not a crash.
UVICORN_UTF8 = "Invalid UTF-8 sequence received from client."


async def test_afterwards_everything_still_answers(stack) -> None:
    """Runs last in this module: the gateway is ready, every service has its instance,
    every process is alive, every endpoint answers normally, and no process logged a
    crash (an unhandled exception in the gateway's app, or a worker's 500)."""
    status, body = await asyncio.to_thread(readyz, stack)
    assert status == 200, body
    assert body["status"] == "ready" and all(body["instances"][s] >= 1 for s in SERVICES)
    assert stack.nats.alive() and all(p.alive() for p in stack.processes)
    for path in ENDPOINTS:
        if path not in NORMAL:
            continue
        ws, user, keep = await open_case(stack, path, "", False)
        try:
            await round_trip(ws, path, user, keep)
        finally:
            await ws.close()
    for proc in stack.processes:
        crashes = [
            line
            for line in proc.log().splitlines()
            if CRASH.search(line) and UVICORN_UTF8 not in line
        ]
        assert not crashes, f"{proc.name}: {crashes[:3]}"
