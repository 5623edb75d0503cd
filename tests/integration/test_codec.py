"""Compression against the real stack: /ws/codec every format both ways, decompression
bombs refused while the codec process's memory stays under the cap (measured: its peak
RSS, VmHWM, reset before each case), and permessage-deflate on and off."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import websockets
import zstandard

from switchboard.localstack import LocalStack, running
from tests import bombs
from tests.integration.client import closed_with, connect, recv, recv_n
from wire.codec import LEVELS, Format, encode_request

MIB = 1024 * 1024
TRANSFORM_CAP = 4 * MIB  # SB_CODEC_TRANSFORM_CAP_BYTES default
INFLATE_CAP = 16 * MIB  # SB_CODEC_INFLATE_CAP_BYTES default
TEXT = b"".join(b"%d bottles of beer on the wall\n" % i for i in range(6000))  # 190 KB
DECOMPRESS = {
    Format.ZLIB: zlib.decompress,
    Format.GZIP: gzip.decompress,
    Format.ZSTD: lambda d: zstandard.ZstdDecompressor().decompressobj().decompress(d),
}
COMPRESS = {
    Format.ZLIB: lambda d: zlib.compress(d, 9),
    Format.GZIP: gzip.compress,
    Format.ZSTD: lambda d: zstandard.ZstdCompressor(level=10).compress(d),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("codec")) as s:
        yield s


def base(stack: LocalStack) -> str:
    return f"ws://127.0.0.1:{stack.gateways[0].port}"


async def transform(ws, frame: bytes) -> tuple[dict, bytes | None]:
    await ws.send(frame)
    report = orjson.loads(await recv(ws))
    if report["status"] != "success":
        return report, None
    output = await recv(ws)
    assert isinstance(output, bytes)
    return report, output


@pytest.mark.parametrize("fmt", list(Format))
async def test_every_codec_both_ways(stack, fmt: Format) -> None:
    low, high, default = LEVELS[fmt]
    async with connect(base(stack) + "/ws/codec") as ws:
        for level in (low, default, high):
            report, packed = await transform(ws, encode_request("compress", fmt, TEXT, level))
            assert packed is not None and DECOMPRESS[fmt](packed) == TEXT
            assert report == {
                "status": "success",
                "op": "compress",
                "format": fmt,
                "level": level,
                "input_bytes": len(TEXT),
                "output_bytes": len(packed),
                "ratio": round(len(packed) / len(TEXT), 4),
            }
        report, plain = await transform(ws, encode_request("decompress", fmt, COMPRESS[fmt](TEXT)))
        assert plain == TEXT
        assert report["op"] == "decompress" and report["output_bytes"] == len(TEXT)
        assert report["ratio"] < 0.1
        noise = os.urandom(100_000)  # incompressible: the ratio says so
        report, packed = await transform(ws, encode_request("compress", fmt, noise))
        assert report["ratio"] > 1.0 and DECOMPRESS[fmt](packed) == noise


async def test_codec_errors_keep_the_socket(stack) -> None:
    async with connect(base(stack) + "/ws/codec") as ws:
        for frame, message in [
            (b"compress:brotli\nxx", "format must be zlib, gzip or zstd"),
            (b"\x00\x01\x02", "a frame starts with a header line"),
            (encode_request("decompress", "gzip", b"not gzip"), "Failed to decompress data"),
            (encode_request("decompress", "zstd", COMPRESS[Format.ZSTD](TEXT)[:-9]), "Failed"),
        ]:
            report, _ = await transform(ws, frame)
            assert report["status"] == "error" and message in report["message"]
        await ws.send("text")
        assert orjson.loads(await recv(ws)) == {
            "status": "error",
            "message": "expected a binary frame",
        }
        report, out = await transform(ws, encode_request("compress", "zlib", b"still here"))
        assert zlib.decompress(out) == b"still here"


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak(pid: int) -> None:
    """Peak RSS (VmHWM) := current RSS (Linux clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


BOMBS = [
    ("/ws/codec", Format.ZLIB, bombs.zlib_gib, TRANSFORM_CAP),
    ("/ws/codec", Format.GZIP, bombs.gzip_gib, TRANSFORM_CAP),
    ("/ws/codec", Format.ZSTD, bombs.zstd_gib, TRANSFORM_CAP),
    ("/ws/codec", Format.ZSTD, bombs.zstd_kib, TRANSFORM_CAP),
    ("/ws/codec", Format.ZSTD, bombs.zstd_kib_declaring_gib, TRANSFORM_CAP),
    ("/ws/compressed", Format.ZLIB, bombs.zlib_gib, INFLATE_CAP),
]


@pytest.mark.parametrize(
    ("path", "fmt", "bomb", "cap"),
    BOMBS,
    ids=[
        "codec-zlib-1MiB-to-1GiB",
        "codec-gzip-1MiB-to-1GiB",
        "codec-zstd-32KiB-to-1GiB",
        "codec-zstd-1KiB-to-31MiB",
        "codec-zstd-1KiB-declaring-1GiB",
        "compressed-zlib-1MiB-to-1GiB",
    ],
)
async def test_bomb_refused_with_bounded_memory(stack, path, fmt, bomb, cap) -> None:
    codec = stack.replicas("codec")[0]
    data = bomb()
    frame = encode_request("decompress", fmt, data) if path == "/ws/codec" else data
    async with connect(base(stack) + path, max_size=None) as ws:
        await ws.send(
            encode_request("compress", "zlib", b"warm up")
            if path == "/ws/codec"
            else zlib.compress(b"warm up")
        )
        await recv_n(ws, 2 if path == "/ws/codec" else 1)
        _reset_peak(codec.pid)
        before = _status(codec.pid)
        await ws.send(frame)
        report = orjson.loads(await recv(ws, timeout=20))
        after = _status(codec.pid)
    assert report["status"] == "error"
    assert report["message"] == f"Decompressed data exceeds {cap} bytes"
    growth = after["VmHWM"] - before["VmRSS"]
    print(f"{path} {fmt} {len(data)} B in: codec peak RSS grew {growth / MIB:.2f} MiB")
    assert growth < cap, (growth, cap)


async def test_permessage_deflate_negotiated_and_working(stack) -> None:
    async with connect(base(stack) + "/ws", compression="deflate") as ws:
        agreed = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert "permessage-deflate" in agreed
        # By default without context takeover, both ways: no zlib state per idle socket
        # (SB_GATEWAY_DEFLATE_CONTEXT_TAKEOVER; docs/benchmarks.md, capacity).
        assert "server_no_context_takeover" in agreed
        assert "client_no_context_takeover" in agreed
        for n in (1, 2, 3):  # several messages: each compressed on its own
            text = TEXT.decode() * n
            await ws.send(text)
            assert await recv(ws) == f"Echo: {text}"
    async with connect(base(stack) + "/ws/codec", compression="deflate") as ws:
        _, packed = await transform(ws, encode_request("compress", "zstd", TEXT))
        assert DECOMPRESS[Format.ZSTD](packed) == TEXT


async def test_permessage_deflate_with_context_takeover(stack) -> None:
    gateway = stack.start_gateway(env={"SB_GATEWAY_DEFLATE_CONTEXT_TAKEOVER": "true"})
    try:
        url = f"ws://127.0.0.1:{gateway.port}/ws"
        async with connect(url, compression="deflate") as ws:
            agreed = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert "permessage-deflate" in agreed and "no_context_takeover" not in agreed
            for n in (1, 2, 3):
                text = TEXT.decode() * n
                await ws.send(text)
                assert await recv(ws) == f"Echo: {text}"
    finally:
        gateway.stop()


async def test_permessage_deflate_off(stack) -> None:
    gateway = stack.start_gateway(env={"SB_GATEWAY_PER_MESSAGE_DEFLATE": "false"})
    try:
        url = f"ws://127.0.0.1:{gateway.port}/ws"
        async with connect(url, compression="deflate") as ws:  # offered, not accepted
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await ws.send("plain")
            assert await recv(ws) == "Echo: plain"
    finally:
        gateway.stop()


async def test_permessage_deflate_bomb_closes_1009(stack) -> None:
    gateway = stack.gateways[0]
    before = _status(gateway.pid)["VmRSS"]
    _reset_peak(gateway.pid)
    async with connect(base(stack) + "/ws/binary", compression="deflate") as ws:
        await ws.send(bytes(64 * MIB))  # ~64 KiB on the wire, 64 MiB once inflated
        code, _ = await closed_with(ws)
    assert code == 1009
    growth = _status(gateway.pid)["VmHWM"] - before
    assert growth < 4 * MIB, growth  # inflation stopped at the 1 MiB frame limit
    with pytest.raises(websockets.InvalidStatus):  # (sanity: the helper is strict)
        async with connect(base(stack) + "/nope"):
            pass
