"""What a run of bytes is, by content: media type from magic bytes (``puremagic``, a
pure-Python signature database) and, for images, the dimensions from the header
(``imagesize``: it reads the header fields, never decodes pixels).

Only the first :data:`HEAD_BYTES` are looked at, so inspecting a stored file costs one
chunk whatever its size; and imagesize gets :data:`MAX_HEADER_READS` reads of them.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from dataclasses import dataclass

import imagesize
import orjson
import puremagic

from wire.frames import Request, encode_text

HEAD_BYTES = 256 * 1024
OCTET_STREAM = "application/octet-stream"
MAX_DIMENSION = 2**31  # pixels; larger (or not finite) is no dimension worth reporting
# imagesize reads an image's header one segment, box or IFD entry at a time: real images
# take 15 to 40 reads and seeks; a JPEG of 65,000 empty segments took 325,000 (80 ms on
# the worker's event loop per 256 KiB frame). Past this many the dimensions are unknown.
MAX_HEADER_READS = 2000


class _TooManyReads(Exception):
    pass


class _BoundedReader(io.BytesIO):
    """The head for imagesize, refusing reads and seeks past :data:`MAX_HEADER_READS`."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.calls = 0

    def _count(self) -> None:
        self.calls += 1
        if self.calls > MAX_HEADER_READS:
            raise _TooManyReads

    def read(self, size: int | None = -1, /) -> bytes:
        self._count()
        return super().read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        self._count()
        return super().seek(offset, whence)


@dataclass(frozen=True, slots=True)
class Kind:
    media_type: str
    width: int | None = None
    height: int | None = None


def _looks_like_text(head: bytes) -> bool:
    if b"\0" in head:
        return False
    try:
        head.decode()
    except UnicodeDecodeError as exc:  # a character cut at the end of the head is fine
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


ZIP = b"PK\x03\x04"
ELF = b"\x7fELF"
_OOXML = (  # a folder in an Office Open XML package -> its type
    (b"word/", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    (b"xl/", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    (b"ppt/", "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
)
_MIME_VALUE = re.compile(rb"[a-z]+/[a-zA-Z0-9.+-]{1,100}")


def _zip_type(head: bytes) -> str:
    """A ZIP's own type from its entries, as file(1) finds it; puremagic only sees
    ``PK\\3\\4`` and names two dozen ZIP-based types for it, any of which it may rank
    first (a plain ZIP came out as docx). ODF and EPUB store their type first,
    uncompressed, as the entry ``mimetype``; an OOXML package has ``[Content_Types].xml``
    and a ``word/``, ``xl/`` or ``ppt/`` folder; a JAR ``META-INF/MANIFEST.MF``."""
    if len(head) >= 30:
        method, size = struct.unpack_from("<H", head, 8)[0], struct.unpack_from("<I", head, 18)[0]
        name_len, extra_len = struct.unpack_from("<HH", head, 26)
        if method == 0 and head[30 : 30 + name_len] == b"mimetype":
            start = 30 + name_len + extra_len
            value = head[start : start + size]
            if _MIME_VALUE.fullmatch(value):
                return value.decode()
    if b"[Content_Types].xml" in head:
        for folder, mime in _OOXML:
            if folder in head:
                return mime
    if b"META-INF/MANIFEST.MF" in head:
        return "application/java-archive"
    return "application/zip"


def media_type(head: bytes) -> str:
    if not head:
        return OCTET_STREAM
    if head.startswith(ZIP):
        return _zip_type(head)
    if head.startswith(ELF):  # puremagic's ELF entry has no type; it then said AppImage
        return "application/x-executable"
    try:
        found = puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        found = []
    text = _looks_like_text(head)
    for match in found:
        # puremagic names a file JSON on its first byte alone (``{``): one byte is no
        # signature, so a one-byte match counts only for text.
        if match.mime_type and (text or len(match.byte_match) > 1):
            return match.mime_type
    return "text/plain" if text else OCTET_STREAM


def kind(head: bytes) -> Kind:
    """Media type of data starting with ``head``; dimensions if it is an image."""
    head = head[:HEAD_BYTES]
    mime = media_type(head)
    if mime.startswith("image/"):
        try:
            width, height = imagesize.get(_BoundedReader(head))
        except Exception:  # a header it cannot read (or too long to walk): the type alone
            return Kind(mime)
        # SVG sizes come as floats (inf for width="9…9"): whole pixels, like others
        if 0 < width < MAX_DIMENSION and 0 < height < MAX_DIMENSION:
            return Kind(mime, max(1, round(width)), max(1, round(height)))
    return Kind(mime)


def report(data: bytes) -> dict[str, object]:
    found = kind(data)
    out: dict[str, object] = {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "media_type": found.media_type,
    }
    if found.width is not None:
        out["width"], out["height"] = found.width, found.height
    return out


async def describe(req: Request) -> bytes:
    """``/ws/inspect``: the frame's size, SHA-256, media type and image dimensions."""
    return encode_text(orjson.dumps(report(req.data)).decode())
