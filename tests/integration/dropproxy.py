"""A TCP proxy that drops connections mid-stream: connection ``i`` is aborted (RST, no
WebSocket close) after ``cuts[i]`` bytes from the client; later ones pass through."""

from __future__ import annotations

import asyncio
import contextlib


class DropProxy:
    def __init__(self, target_port: int, cuts: list[int]) -> None:
        self.target_port = target_port
        self.cuts = list(cuts)
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> DropProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    def url(self, path: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        limit = self.cuts[index] if index < len(self.cuts) else None
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        def abort() -> None:
            writer.transport.abort()
            up_writer.transport.abort()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, cut: int | None):
            seen = 0
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    if cut is not None and seen + len(data) >= cut:
                        dst.write(data[: cut - seen])
                        abort()
                        return
                    seen += len(data)
                    dst.write(data)
                    await dst.drain()
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, limit), pipe(up_reader, writer, None))
