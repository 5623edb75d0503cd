"""The /ws/files protocol types (wire/files.py) and inspection by content
(services/binary/inspect.py)."""

from __future__ import annotations

import io
import os
import socket
import struct
import zipfile
import zlib

import orjson
import pytest
import websockets
from websockets.frames import Close

from gateway.files import client_description
from services.binary import inspect
from switchboard.cli import parser
from switchboard.filesclient import FileError, download_path, local_name, worth_retrying
from wire import files as wf
from wire import headers as h
from wire.errors import SERVICE_BUSY, SERVICE_STOPPING, ErrorCode, WireError

SHA = "ab" * 32


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\0" + bytes(3 * width) for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\0\0\0" + b"\x3b"


def test_chunk_header_round_trip() -> None:
    frame = wf.pack_chunk(2**40 + 3, b"data")
    offset, data = wf.unpack_chunk(frame)
    assert offset == 2**40 + 3 and bytes(data) == b"data"
    with pytest.raises(WireError):
        wf.unpack_chunk(b"short")


def test_stored_items_of_a_direct_get_batch() -> None:
    """What nats-server sends a download's inbox: chunks with their byte range, then an
    end of batch; anything else is an internal error, not a crash or a wrong range."""
    hdrs = {h.STREAM_SEQUENCE: "41", h.OFFSET: "1024", h.END: "1028", "Nats-Subject": "x"}
    assert wf.stored_item(hdrs, b"data") == wf.StoredChunk(41, 1024, 1028, b"data")
    assert wf.stored_item({h.STATUS: "204", "Description": "EOB"}, b"") == wf.BatchEnd(204)
    assert wf.stored_item({h.STATUS: "404"}, b"").status == 404
    assert wf.stored_item({h.STATUS: "²"}, b"").status == 500
    for bad in (
        None,
        {**hdrs, h.END: "1029"},  # range and payload disagree
        {h.OFFSET: "0", h.END: "4"},  # no sequence
        {**hdrs, h.OFFSET: "-4"},
    ):
        with pytest.raises(WireError) as caught:
            wf.stored_item(bad, b"data")
        assert caught.value.code == ErrorCode.INTERNAL
    body = orjson.loads(wf.direct_get_request(7, "$O.B.C.f", 8))
    assert body == {"seq": 7, "next_by_subj": "$O.B.C.f", "batch": 8}


def test_file_id_is_stable_and_per_user() -> None:
    a = wf.file_id("alice", "x.bin", 10, SHA)
    assert a == wf.file_id("alice", "x.bin", 10, SHA)
    assert a != wf.file_id("bob", "x.bin", 10, SHA)
    assert a != wf.file_id("alice", "y.bin", 10, SHA)
    assert wf.is_file_id(a) and len(a) == 26


def test_decode_client_messages() -> None:
    up = wf.decode_client(
        orjson.dumps(
            {"type": "upload", "id": "1", "name": "a", "size": 5, "sha256": SHA.upper()}
        ).decode()
    )
    assert up == wf.Upload("1", "a", 5, SHA)
    fid = wf.file_id("u", "a", 5, SHA)
    down = wf.decode_client(f'{{"type": "download", "id": "2", "file": "{fid}", "window": 100}}')
    assert down == wf.Download("2", fid, 0, 100)
    assert wf.decode_client(f'{{"type": "ack", "file": "{fid}", "offset": 7}}') == wf.Ack(fid, 7)
    assert wf.decode_client('{"type": "list", "id": "3"}') == wf.ListFiles("3")


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[]",
        '{"type": "nope"}',
        '{"type": "upload", "id": "1", "name": "", "size": 1, "sha256": "' + SHA + '"}',
        '{"type": "upload", "id": "1", "name": "a\\u0000", "size": 1, "sha256": "' + SHA + '"}',
        '{"type": "upload", "id": "1", "name": "a", "size": -1, "sha256": "' + SHA + '"}',
        '{"type": "upload", "id": "1", "name": "a", "size": true, "sha256": "' + SHA + '"}',
        '{"type": "upload", "id": "1", "name": "a", "size": 1, "sha256": "xyz"}',
        '{"type": "upload", "name": "a", "size": 1, "sha256": "' + SHA + '"}',
        '{"type": "download", "id": "1", "file": "../../etc/passwd"}',
        '{"type": "delete", "id": "1", "file": "sb.>"}',
    ],
)
def test_malformed_client_frames(frame: str) -> None:
    with pytest.raises(WireError) as caught:
        wf.decode_client(frame)
    assert caught.value.code == ErrorCode.BAD_REQUEST


def test_header_int_is_strict() -> None:
    assert wf.header_int({"Sb-End": "42"}, "Sb-End") == 42
    for bad in ("", "-1", "4.2", "²", "9" * 40):
        assert wf.header_int({"Sb-End": bad}, "Sb-End") is None
    assert wf.header_int(None, "Sb-End") is None


def test_inspect_by_content_not_name() -> None:
    report = inspect.report(png(7, 5))
    assert report["media_type"] == "image/png"
    assert (report["width"], report["height"]) == (7, 5)
    assert report["size"] == len(png(7, 5))
    assert inspect.kind(gif(300, 200)) == inspect.Kind("image/gif", 300, 200)
    assert inspect.kind(b"%PDF-1.7\n...").media_type == "application/pdf"
    assert inspect.kind("plain text, ünïcode\n".encode()).media_type == "text/plain"
    assert inspect.kind(bytes(range(256))).media_type == inspect.OCTET_STREAM
    assert inspect.kind(b"").media_type == inspect.OCTET_STREAM
    # one byte is no signature: binary that happens to start with "{" is not JSON
    assert inspect.kind(b"{" + bytes(range(256))).media_type == inspect.OCTET_STREAM
    assert inspect.kind(b'{"a": [1, 2]}').media_type == "application/json"


def test_inspect_truncated_image_has_no_dimensions() -> None:
    assert inspect.kind(png(7, 5)[:12]).width is None


def test_image_dimensions_library_reads_headers_only() -> None:
    # imagesize reads the header fields: a huge declared image costs nothing.
    header = png(1, 1)[:33].replace(struct.pack(">II", 1, 1), struct.pack(">II", 60000, 40000))
    assert inspect.kind(header + b"\0" * 100) == inspect.Kind("image/png", 60000, 40000)


def test_image_headers_are_walked_a_bounded_number_of_steps() -> None:
    # A JPEG whose size comes after 60,000 empty segments: imagesize walked them all,
    # one read each (80 ms per 256 KiB frame, on the worker's event loop). Now the
    # walk stops at MAX_HEADER_READS and the type alone is reported.
    # SOF0: height 30, width 40
    sof = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 30, 40) + b"\x03" + bytes(9)
    jpeg = b"\xff\xd8" + b"\xff\xe0\x00\x02" * 60_000 + sof + b"\xff\xd9"
    assert inspect.kind(jpeg) == inspect.Kind("image/jpeg")
    # the same image with a few segments before its size is measured
    short = b"\xff\xd8" + b"\xff\xe0\x00\x02" * 10 + sof + b"\xff\xd9"
    assert inspect.kind(short) == inspect.Kind("image/jpeg", 40, 30)


@pytest.mark.parametrize(
    ("name", "local"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("dir\\evil.txt", "evil.txt"),
        ("..", "FILEID"),
        (".", "FILEID"),
        ("", "FILEID"),
        ("a/", "FILEID"),
        ("nul\0byte", "FILEID"),
    ],
)
def test_local_name_never_leaves_the_directory(name: str, local: str) -> None:
    assert local_name(name, "FILEID") == local


def test_worth_retrying_only_what_connecting_again_may_fix() -> None:
    dropped = websockets.ConnectionClosed(None, None)
    policy = websockets.ConnectionClosed(Close(1008, "user name 'system' is reserved"), None)
    restart = websockets.ConnectionClosed(Close(1012, "service restart"), None)
    assert worth_retrying(dropped) and worth_retrying(restart)
    assert not worth_retrying(policy)
    assert worth_retrying(ConnectionRefusedError()) and worth_retrying(TimeoutError())
    assert worth_retrying(FileError("503", "service unavailable"))
    assert not worth_retrying(FileError("413", "quota exceeded"))
    assert not worth_retrying(FileError("507", "file storage is full"))  # until freed
    assert not worth_retrying(websockets.InvalidURI("foo", "not a ws URI"))


def _zip(*entries: tuple[str, bytes], stored_first: bool = False) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for i, (name, data) in enumerate(entries):
            method = zipfile.ZIP_STORED if stored_first and i == 0 else zipfile.ZIP_DEFLATED
            z.writestr(name, data, compress_type=method)
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (_zip(("notes.txt", b"hi" * 100)), "application/zip"),
        (
            _zip(("mimetype", b"application/vnd.oasis.opendocument.text"), ("content.xml", b"<x/>"), stored_first=True),
            "application/vnd.oasis.opendocument.text",
        ),
        (_zip(("mimetype", b"application/epub+zip"), ("a.xhtml", b"<x/>"), stored_first=True), "application/epub+zip"),
        (
            _zip(("[Content_Types].xml", b"<x/>"), ("word/document.xml", b"<x/>")),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        (
            _zip(("[Content_Types].xml", b"<x/>"), ("xl/workbook.xml", b"<x/>")),
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
        (_zip(("META-INF/MANIFEST.MF", b"Manifest-Version: 1.0\n")), "application/java-archive"),
        (b"\x7fELF\x02\x01\x01" + b"\0" * 200, "application/x-executable"),
    ],
    ids=["zip", "odt", "epub", "docx", "xlsx", "jar", "elf"],
)  # fmt: skip
def test_zip_based_and_elf_types_are_told_apart(data: bytes, mime: str) -> None:
    """puremagic names two dozen types for PK\\3\\4 (a plain ZIP came out as docx) and
    has no type for ELF (an executable came out as an AppImage)."""
    assert inspect.kind(data).media_type == mime


def test_svg_dimensions_are_whole_pixels() -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="20.4"></svg>'
    assert inspect.kind(svg) == inspect.Kind("image/svg+xml", 10, 20)


@pytest.mark.parametrize("width", [b"9" * 400, b"1e999", b"3000000000"])
def test_svg_dimensions_too_large_to_be_pixels_are_left_out(width: bytes) -> None:
    """``round(inf)`` raised while a file was committed: its upload failed with a 503
    on every resume, and /ws/inspect answered 'internal error'."""
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="' + width + b'" height="5"></svg>'
    assert inspect.kind(svg) == inspect.Kind("image/svg+xml")


async def test_a_download_retries_a_gateway_it_cannot_reach_yet(tmp_path) -> None:
    # The file's details were fetched outside the retry loop: an unreachable gateway
    # (restarting) failed the download at once, while an upload retried.
    with socket.socket() as nobody:  # a port nobody listens on
        nobody.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{nobody.getsockname()[1]}/ws/files?username=erin"
    retries: list[int] = []
    with pytest.raises(OSError):
        await download_path(
            url, "f" * 16, tmp_path / "x", attempts=3, backoff=0.01,
            on_retry=lambda attempt, exc, delay: retries.append(attempt),
        )  # fmt: skip
    assert retries == [1, 2]


def test_command_line_options_go_before_or_after_the_command() -> None:
    p = parser()
    after = p.parse_args(["ls", "--url", "ws://a:1", "--user", "erin", "-q"])
    before = p.parse_args(["--url", "ws://a:1", "--user", "erin", "-q", "ls"])
    assert vars(after) == vars(before)
    plain = p.parse_args(["ls"])
    assert plain.url == os.environ.get("SB_URL", "ws://127.0.0.1:8000") and not plain.quiet


def test_error_frames_carry_the_services_own_words() -> None:
    assert client_description(WireError(ErrorCode.UNAVAILABLE, "service unavailable")) == (
        "service unavailable"  # no worker answered
    )
    assert client_description(WireError(ErrorCode.TIMEOUT, "service timed out")) == (
        "service unavailable"
    )
    assert client_description(SERVICE_STOPPING) == "service unavailable"
    assert client_description(SERVICE_BUSY) == "service busy"
    busy = WireError(ErrorCode.UNAVAILABLE, "upload busy; send delete again")
    assert client_description(busy) == busy.description
    full = WireError(ErrorCode.STORAGE_FULL, "file storage is full: delete files")
    assert client_description(full) == full.description
    assert client_description(WireError(ErrorCode.INTERNAL, "KeyError('x')")) == "internal error"
