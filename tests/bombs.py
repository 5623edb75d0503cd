"""Decompression bombs for the codec tests (unit and integration).

A single deflate stream cannot expand more than ~1032:1, so a zlib or gzip stream that
inflates to 1 GiB is about 1 MiB (it still fits one 1 MiB frame). zstd gets ~32768:1
from RLE blocks (128 KiB of one byte in 4 bytes), so 1 KiB inflates to 31 MiB and a
1 GiB bomb is 32 KiB; a zstd frame header may also *declare* a content size that a
naive decoder allocates up front (1 GiB declared in 1 KiB here).
"""

from __future__ import annotations

import functools
import gzip
import struct
import zlib

GIB = 1 << 30
ZSTD_MAGIC = 0xFD2FB528
ZSTD_BLOCK = 128 * 1024


def zstd_rle(blocks: int, declared: int | None = None, byte: int = 0) -> bytes:
    """A zstd frame of ``blocks`` RLE blocks of 128 KiB (4 bytes each); ``declared``
    puts that content size in the frame header (true or not)."""
    if declared is None:
        head = struct.pack("<IBB", ZSTD_MAGIC, 0x00, 0x58)  # window 2 MiB, size unknown
    else:
        head = struct.pack("<IBQ", ZSTD_MAGIC, 0xE0, declared)  # single segment, 8-byte size
    out = bytearray(head)
    for i in range(blocks):
        header = (1 if i == blocks - 1 else 0) | (1 << 1) | (ZSTD_BLOCK << 3)  # last, RLE
        out += struct.pack("<I", header)[:3] + bytes([byte])
    return bytes(out)


BLOCK = 16 * 1024 * 1024


@functools.cache
def _deflate_gib() -> bytes:
    """Raw deflate of 1 GiB of zeros, built from one 16 MiB block compressed once: a
    full flush byte-aligns the output and resets the compressor, so every block's
    bytes are the same."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = compressor.compress(bytes(BLOCK)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return piece * (GIB // BLOCK) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def zlib_gib() -> bytes:
    """zlib stream of 1 GiB of zeros (~1 MiB)."""
    adler = (GIB % 65521) << 16 | 1  # adler32 of n zero bytes: a = 1, b = n mod 65521
    return b"\x78\xda" + _deflate_gib() + struct.pack(">I", adler)


@functools.cache
def gzip_gib() -> bytes:
    """gzip member of 1 GiB of zeros (~1 MiB)."""
    crc = 0
    block = bytes(BLOCK)
    for _ in range(GIB // BLOCK):
        crc = zlib.crc32(block, crc)
    header = gzip.compress(b"", mtime=0)[:10]
    return header + _deflate_gib() + struct.pack("<II", crc, GIB & 0xFFFFFFFF)


def zstd_gib() -> bytes:
    """zstd frame of 1 GiB of zeros, size not declared (32 KiB)."""
    return zstd_rle(GIB // ZSTD_BLOCK)


def zstd_kib_declaring_gib() -> bytes:
    """~1 KiB zstd frame declaring 1 GiB of content."""
    return zstd_rle(250, declared=GIB)


def zstd_kib() -> bytes:
    """~1 KiB zstd frame that inflates to 31 MiB (size not declared)."""
    return zstd_rle(250)


def zlib_kib() -> bytes:
    """1 KiB-ish zlib stream inflating to ~1 MiB: the most deflate can do from 1 KiB."""
    return zlib.compress(bytes(1024 * 1024), 9)
