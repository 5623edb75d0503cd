"""``python -m switchboard``: files from the command line, over ``/ws/files``.

    python -m switchboard upload FILE [--name NAME]
    python -m switchboard download ID [-o PATH] [--force]
    python -m switchboard ls
    python -m switchboard rm ID
    python -m switchboard inspect ID

Options (or environment): ``--url`` (``SB_URL``, default ``ws://127.0.0.1:8000``),
``--user`` (``SB_USER``, default the login name), ``--token`` (``SB_TOKEN``, a JWT).
Uploads and downloads show a progress bar on stderr and, when the connection drops,
reconnect and carry on from where the server (upload) or the part file (download) is.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import time
from typing import Any

import websockets

from switchboard.filesclient import FileError, FilesClient, download_path, files_url, upload_path

MIB = 1024 * 1024


class Bar:
    """A one-line progress bar on stderr (redrawn at most 10 times a second)."""

    def __init__(self, label: str, stream=sys.stderr, width: int = 30) -> None:
        self.label = label
        self.stream = stream
        self.width = width
        self.started = time.monotonic()
        self.drawn = 0.0
        self.first: int | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first, self.started = done, now
        if done < total and now - self.drawn < 0.1:
            return
        self.drawn = now
        fraction = done / total if total else 1.0
        filled = int(self.width * fraction)
        elapsed = max(now - self.started, 1e-6)
        rate = (done - self.first) / elapsed / MIB
        line = (
            f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {fraction:6.1%} "
            f"{done / MIB:8.1f}/{total / MIB:.1f} MiB {rate:7.1f} MiB/s"
        )
        self.stream.write(line)
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _size(n: int) -> str:
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n} B"


def _row(info: dict[str, Any]) -> str:
    dims = f" {info['width']}x{info['height']}" if "width" in info else ""
    return (
        f"{info['file']}  {info['size']:>12}  {info['sha256'][:16]}  "
        f"{info['media_type']}{dims}  {info['name']}"
    )


async def _client(args: argparse.Namespace) -> FilesClient:
    return await FilesClient.open(files_url(args.url, args.user, args.token))


def _retrying(attempt: int, exc: BaseException, delay: float) -> None:
    print(f"\n{_reason(exc)}; resuming in {delay:g} s (attempt {attempt + 1})", file=sys.stderr)


def _reason(exc: BaseException) -> str:
    """One line for what went wrong, without a traceback."""
    if isinstance(exc, FileError):
        return f"error {exc.code}: {exc.message}"
    if isinstance(exc, websockets.ConnectionClosed):
        close = exc.rcvd
        if close is None:
            return "connection lost"
        return f"closed by the server: {close.code} {close.reason}".rstrip()
    if isinstance(exc, websockets.InvalidStatus):
        return f"not a Switchboard files endpoint: HTTP {exc.response.status_code}"
    if isinstance(exc, websockets.InvalidURI):
        return f"bad --url: {exc}"
    return f"error: {exc}" if str(exc) else f"error: {type(exc).__name__}"


async def run(args: argparse.Namespace) -> int:
    url = files_url(args.url, args.user, args.token)
    quiet = args.quiet or (not sys.stderr.isatty() and not args.progress)
    match args.command:
        case "upload":
            bar = None if quiet else Bar(os.path.basename(args.file))
            info = await upload_path(url, args.file, args.name, progress=bar, on_retry=_retrying)
            print(_row(info))
        case "download":
            bar = None if quiet else Bar(args.id)
            path = await download_path(
                url, args.id, args.output, progress=bar, on_retry=_retrying, overwrite=args.force
            )
            print(path)
        case "ls":
            async with await _client(args) as client:
                listing = await client.list()
            for info in listing["files"]:
                print(_row(info))
            for up in listing["uploads"]:
                print(f"{up['file']}  {up['offset']:>12}/{up['size']}  (uploading)  {up['name']}")
            print(f"{_size(listing['usage'])} of {_size(listing['quota'])} used", file=sys.stderr)
        case "rm":
            async with await _client(args) as client:
                await client.delete(args.id)
        case "inspect":
            async with await _client(args) as client:
                info = await client.inspect(args.id)
            for key, value in info.items():
                print(f"{key}: {value}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m switchboard", description="Files from the command line, over /ws/files."
    )
    _common_options(p, defaults=True)
    # the same options after the command too (``ls --url ...``), set only if given there
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, defaults=False)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    up = command("upload", "upload a file (resumes after a dropped connection)")
    up.add_argument("file")
    up.add_argument("--name", help="name to store it under (default: the file's name)")
    down = command("download", "download a file by id (resumes from FILE.<id>.part)")
    down.add_argument("id")
    down.add_argument("-o", "--output", help="path or directory (default: its name, here)")
    down.add_argument("-f", "--force", action="store_true", help="replace an existing file")
    command("ls", "list your files and unfinished uploads")
    command("rm", "delete a file or an unfinished upload").add_argument("id")
    command("inspect", "size, SHA-256, media type of a stored file").add_argument("id")
    return p


def _common_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p.add_argument("--url", default=default(os.environ.get("SB_URL", "ws://127.0.0.1:8000")))
    p.add_argument("--user", default=default(os.environ.get("SB_USER") or getpass.getuser()))
    p.add_argument("--token", default=default(os.environ.get("SB_TOKEN")))
    p.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="no progress bar"
    )
    p.add_argument(
        "--progress",
        action="store_true",
        default=default(False),
        help="progress bar even if not a tty",
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except (
        FileError,
        OSError,
        TimeoutError,
        websockets.ConnectionClosed,
        websockets.InvalidHandshake,
        websockets.InvalidURI,
    ) as exc:
        print(_reason(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
