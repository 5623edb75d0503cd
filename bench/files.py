"""Files benchmark: upload and download of a 100 MiB file through gateway -> NATS ->
binary -> JetStream Object Store (``/ws/files``), against the raw WebSocket binary echo of
the same bytes by a minimal uvicorn app on the same machine, in the same run.

(a) raw echo: :func:`echo_app` under uvicorn with the gateway's WebSocket settings
    (websockets-sansio, uvloop, httptools); the client sends the file as the same
    chunk frames (8-byte offset + 256 KiB) while reading the echoes; MB/s = file size /
    time until the last echo is back.
(b) upload: ``switchboard.filesclient`` (the same client the command line uses), from
    the ``upload`` request to ``stored`` (SHA-256 verified by the service). The client's
    SHA-256 of the file is computed beforehand, not timed.
(c) download: from the ``download`` request to ``done``, with acknowledgements (4 MiB
    window) and the client's SHA-256 check of what it received.

Each round runs (a), (b), (c) in turn; the report gives the median of the rounds and the
ratios (b)/(a) and (c)/(a) (target >= 0.5), and the CPU time each process spent.
``python -m bench files`` or ``python -m bench.files [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import websockets

from switchboard.filesclient import FilesClient, files_url
from switchboard.localstack import ROOT, free_port, running
from wire import files as wf

NAME = "files"
MIB = 1024 * 1024
CHUNK = 256 * 1024
TARGET_RATIO = 0.5
ECHO_MAX_FRAME = 2 * MIB


async def echo_app(scope, receive, send) -> None:
    """The baseline: a WebSocket that sends every binary frame straight back."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cpu:
    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {k: _cpu_seconds(p) for k, p in pids.items()}

    def used(self) -> dict[str, float]:
        return {k: _cpu_seconds(p) - self.start[k] for k, p in self.pids.items()}


def _start_echo(log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    argv = [
        sys.executable, "-m", "uvicorn", "bench.files:echo_app", "--port", str(port),
        "--ws", "websockets-sansio", "--loop", "uvloop", "--http", "httptools",
        "--ws-max-size", str(ECHO_MAX_FRAME), "--log-level", "warning",
    ]  # fmt: skip
    with log.open("ab") as out:
        popen = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
        except urllib.error.HTTPError:
            break  # up (404 for plain HTTP)
        except OSError:
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"echo app did not start; see {log}") from None
            time.sleep(0.05)
        else:
            break
    return popen, port


async def echo_round(port: int, data: bytes) -> float:
    """Seconds to send ``data`` as chunk frames and get every echo back."""
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/", max_size=ECHO_MAX_FRAME, compression=None
    ) as ws:
        view = memoryview(data)
        started = time.perf_counter()

        async def sender() -> None:
            for offset in range(0, len(data), CHUNK):
                await ws.send(wf.pack_chunk(offset, view[offset : offset + CHUNK]))

        task = asyncio.create_task(sender())
        received = 0
        while received < len(data):
            received += len(await ws.recv()) - wf.CHUNK_HEADER.size
        await task
        return time.perf_counter() - started


async def upload_round(url: str, data: bytes, digest: str, name: str) -> tuple[float, str]:
    async with await FilesClient.open(url) as client:
        started = time.perf_counter()
        info = await client.upload(io.BytesIO(data), name, len(data), digest)
        return time.perf_counter() - started, info["file"]


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        return len(b)


async def download_round(url: str, file: str) -> float:
    async with await FilesClient.open(url) as client:
        started = time.perf_counter()
        await client.download(file, _Discard())
        elapsed = time.perf_counter() - started
        await client.delete(file)
        return elapsed


def _mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


async def measure(size: int, rounds: int, var_dir: Path, log=print) -> str:
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    echo, echo_port = _start_echo(var_dir / "echo.log")
    times: dict[str, list[float]] = {"echo": [], "upload": [], "download": []}
    cpu: dict[str, dict[str, float]] = {}
    try:
        with running(var_dir / "stack") as stack:
            gateway = stack.gateways[0]
            url = files_url(f"ws://127.0.0.1:{gateway.port}", user="bench")
            assert stack.nats is not None
            pids = {
                "client": os.getpid(),
                "gateway": gateway.pid,
                "nats-server": stack.nats.pid,
                "binary": stack.replicas("binary")[0].pid,
                "echo server": echo.pid,
            }
            await echo_round(echo_port, data[: 4 * MIB])  # warm up both paths
            _, warm = await upload_round(
                url, data[: 4 * MIB], hashlib.sha256(data[: 4 * MIB]).hexdigest(), "warm"
            )
            await download_round(url, warm)
            for index in range(rounds):
                for kind in ("echo", "upload", "download"):
                    meter = Cpu(pids)
                    if kind == "echo":
                        seconds = await echo_round(echo_port, data)
                    elif kind == "upload":
                        seconds, file = await upload_round(url, data, digest, f"bench-{index}")
                    else:
                        seconds = await download_round(url, file)
                    times[kind].append(seconds)
                    used = meter.used()
                    for proc, value in used.items():
                        cpu.setdefault(kind, {}).setdefault(proc, 0.0)
                        cpu[kind][proc] += value / rounds
                    log(f"round {index + 1}/{rounds} {kind:8} {_mbps(size, seconds):7.1f} MB/s")
    finally:
        echo.terminate()
        echo.wait(10)
    return report(size, rounds, times, cpu)


def report(size: int, rounds: int, times: dict[str, list[float]], cpu) -> str:
    rate = {k: _mbps(size, statistics.median(v)) for k, v in times.items()}
    up, down = rate["upload"] / rate["echo"], rate["download"] / rate["echo"]
    lines = [
        f"files benchmark, {dt.datetime.now().isoformat(timespec='seconds')}, "
        f"{platform.node()}, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"file {size / MIB:.0f} MiB, chunks of {CHUNK // 1024} KiB, median of {rounds} rounds",
        "",
        f"{'':34}{'MB/s':>8}  {'vs echo':>8}  cpu s: client gateway nats binary echo",
    ]
    names = {
        "echo": "(a) raw WebSocket echo",
        "upload": "(b) upload -> object store",
        "download": "(c) download <- object store",
    }
    for kind in ("echo", "upload", "download"):
        used = cpu.get(kind, {})
        ratio = "" if kind == "echo" else f"{rate[kind] / rate['echo']:8.2f}"
        procs = " ".join(
            f"{used.get(p, 0.0):6.2f}"
            for p in ("client", "gateway", "nats-server", "binary", "echo server")
        )
        lines.append(f"{names[kind]:34}{rate[kind]:8.1f}  {ratio:>8}  {procs}")
    verdict = "met" if min(up, down) >= TARGET_RATIO else "NOT met"
    lines += [
        "",
        f"ratio upload/echo {up:.2f}, download/echo {down:.2f} "
        f"(target >= {TARGET_RATIO}: {verdict})",
    ]
    return "\n".join(lines) + "\n"


def run(quick: bool, results_dir: Path) -> str:
    """Entry point for ``python -m bench`` (see bench/__main__.py)."""
    size, rounds = (32 * MIB, 1) if quick else (100 * MIB, 3)
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-files-") as tmp:
        text = asyncio.run(
            measure(size, rounds, Path(tmp), log=lambda s: print(s, file=sys.stderr, flush=True))
        )
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / (f"{NAME}.quick.txt" if quick else f"{NAME}.txt")).write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.files", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="32 MiB, one round")
    args = parser.parse_args()
    print(run(args.quick, Path(__file__).resolve().parent / "results"))


if __name__ == "__main__":
    main()
