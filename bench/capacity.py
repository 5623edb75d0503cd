"""``python -m bench capacity``: memory per idle WebSocket connection.

Opens 10,000 idle connections to one server and reads the server's resident memory
(``VmRSS``) before and after: (after - before) / connections is what one idle connection
costs. Two servers, measured in the same run:

- (a) bare: uvicorn with the gateway's WebSocket stack (websockets-sansio, uvloop,
  httptools) and a minimal echo app (:func:`echo_app`): the floor for any Python app on
  that stack;
- (b) gateway: ``python -m gateway`` on the local stack (nats-server and the workers),
  connections to ``/ws``, with its defaults except the connection caps
  (``SB_GATEWAY_MAX_CONNECTIONS``, ``SB_GATEWAY_MAX_CONNECTIONS_PER_IP``).

Target: at most 30 KiB per idle gateway connection.

The open-file limit is raised in this process (``resource.setrlimit``, soft to the hard
limit) and inherited by every process it starts; nothing is changed system-wide. The
connections come from several client processes (``python -m bench.capacity client``), a
lean asyncio protocol each: the HTTP upgrade, then only answering the server's pings.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import die_with_parent
from bench.servers import START_TIMEOUT, _get_ok, stop_process
from switchboard.localstack import ROOT, LocalStack, free_port

NAME = "capacity"
CONNECTIONS = 10_000
QUICK_CONNECTIONS = 2_000
CLIENTS = 4  # client processes
OPEN_CONCURRENCY = 64  # handshakes in flight per client process
TARGET_KIB = 30.0
SETTLE = 2.0  # seconds between the last handshake and reading RSS
FD_MARGIN = 512  # descriptors a server needs besides its sockets
# what browsers offer; set SB_CAPACITY_DEFLATE=1 to have the clients offer it too
DEFLATE_OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


# -- the bare baseline -------------------------------------------------------------------


async def echo_app(scope, receive, send) -> None:
    """Minimal ASGI WebSocket echo: the baseline server's whole app."""
    if scope["type"] != "websocket":
        return
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        out = {"type": "websocket.send"}
        if message.get("text") is not None:
            out["text"] = message["text"]
        else:
            out["bytes"] = message.get("bytes") or b""
        await send(out)


# -- the client processes ----------------------------------------------------------------


class IdleClient(asyncio.Protocol):
    """One idle WebSocket: the upgrade, then pongs to the server's pings, nothing else."""

    KEY = base64.b64encode(b"switchboard-capa").decode()

    def __init__(self, host: str, port: int, path: str, opened: asyncio.Future) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.KEY}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            + (DEFLATE_OFFER if os.environ.get("SB_CAPACITY_DEFLATE") else "")
            + "\r\n"
        ).encode()
        self.opened = opened
        self.buffer = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(head.split(b"\r\n")[0].decode()))
                return
            self.upgraded = True
            self.buffer = rest
            if not self.opened.done():
                self.opened.set_result(None)
        while len(self.buffer) >= 2:  # server frames: unmasked; answer pings
            first, size = self.buffer[0], self.buffer[1] & 0x7F
            start = 2 + (2 if size == 126 else 8 if size == 127 else 0)
            if len(self.buffer) < start:
                return
            if size >= 126:
                size = int.from_bytes(self.buffer[2:start], "big")
            if len(self.buffer) < start + size:
                return
            payload, self.buffer = self.buffer[start : start + size], self.buffer[start + size :]
            if first & 0x0F == 0x9 and self.transport is not None:  # ping -> pong, masked
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the upgrade"))


def raise_nofile(want: int | None = None) -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (or ``want``); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None or hard == resource.RLIM_INFINITY else min(hard, want)
    if target == resource.RLIM_INFINITY:
        target = max(soft, want or 1 << 20)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def client_main(host: str, port: int, path: str, count: int) -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []
    failures: list[str] = []
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one() -> None:
        async with gate:
            opened = loop.create_future()
            try:
                transport, _ = await loop.create_connection(
                    lambda: IdleClient(host, port, path, opened), host, port
                )
                transports.append(transport)
                await asyncio.wait_for(opened, 30)
            except Exception as exc:
                failures.append(repr(exc)[:120])

    await asyncio.gather(*(one() for _ in range(count)))
    print(f"ready {count - len(failures)} {len(failures)} {failures[:1]}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # hold until told
    for transport in transports:
        transport.close()
    await asyncio.sleep(0.2)
    print("closed", flush=True)


# -- measuring -------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Row:
    label: str
    what: str
    connections: int
    before_kib: int
    after_kib: int
    closed_kib: int
    open_seconds: float

    @property
    def per_connection(self) -> float:
        return (self.after_kib - self.before_kib) / max(1, self.connections)


def measure(
    label: str, what: str, port: int, pid: int, path: str, total: int, deflate: bool
) -> Row:
    """Open ``total`` idle connections to ``port`` from CLIENTS processes; RSS of ``pid``.
    ``deflate``: the clients offer permessage-deflate, as browsers do."""
    time.sleep(SETTLE)
    before = rss_kib(pid)
    per = [total // CLIENTS + (1 if i < total % CLIENTS else 0) for i in range(CLIENTS)]
    started = time.monotonic()
    clients = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.capacity",
                "client",
                "127.0.0.1",
                str(port),
                path,
                str(n),
            ],
            cwd=ROOT,
            env={**os.environ, "SB_CAPACITY_DEFLATE": "1" if deflate else ""},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        for n in per
    ]
    opened = 0
    errors: list[str] = []
    try:
        for client in clients:
            assert client.stdout is not None
            line = client.stdout.readline().split(maxsplit=3)
            if not line or line[0] != "ready":
                raise RuntimeError(f"client process failed: {line}")
            opened += int(line[1])
            if int(line[2]):
                errors.append(f"{line[2]} failed: {line[3]}")
        open_seconds = time.monotonic() - started
        time.sleep(SETTLE)
        after = rss_kib(pid)
    finally:
        for client in clients:
            with contextlib.suppress(OSError):
                assert client.stdin is not None
                client.stdin.write("close\n")
                client.stdin.flush()
        for client in clients:
            try:
                client.wait(30)
            except subprocess.TimeoutExpired:
                client.kill()
    if errors:
        print(f"capacity: {label}: {'; '.join(errors)}", file=sys.stderr, flush=True)
    time.sleep(SETTLE)
    closed = rss_kib(pid)
    return Row(label, what, opened, before, after, closed, open_seconds)


@contextlib.contextmanager
def bare_server(var_dir: Path):
    port = free_port()
    log_path = var_dir / "logs" / "bare.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "uvicorn", "bench.capacity:echo_app", "--port", str(port)]
    argv += ["--ws", "websockets-sansio", "--loop", "uvloop", "--http", "httptools"]
    argv += ["--log-level", "warning", "--no-access-log"]
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _port_open(port):
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bare server did not start; see {log_path}")
            time.sleep(0.05)
        yield port, popen.pid
    finally:
        stop_process(popen)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def gateway_server(var_dir: Path, total: int):
    caps = str(total + 1000)
    env = {"SB_GATEWAY_MAX_CONNECTIONS": caps, "SB_GATEWAY_MAX_CONNECTIONS_PER_IP": caps}
    stack = LocalStack(var_dir=var_dir, env=env)
    try:
        stack.start_nats(timeout=START_TIMEOUT)
        for name in ("codec", "binary", "chat"):
            stack.start_service(name, timeout=START_TIMEOUT)
        proc = stack.start_gateway(timeout=START_TIMEOUT)
        stack.wait_ready(proc, timeout=START_TIMEOUT)
        assert _get_ok(f"http://127.0.0.1:{proc.port}/healthz")
        yield proc.port, proc.pid
    finally:
        stack.stop()


# -- report ----------------------------------------------------------------------------------


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}; load average {load}"
    )


def _revision() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(rows: list[Row], quick: bool, nofile: int, elapsed: float) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"Switchboard connection capacity{' (--quick)' if quick else ''}, {when}",
        f"machine: {_machine()}; code: {_revision()}",
        f"open-file limit (soft, this process and its children): {nofile}",
        f"idle connections from {CLIENTS} client processes (upgrade, then pongs only); "
        "RSS = VmRSS of the server process (a fresh one per row), "
        f"read {SETTLE:.0f} s after the last handshake",
        "(a), (b): no permessage-deflate offered; (a'), (b'): offered and agreed, as with "
        "browsers (each side then keeps zlib contexts per connection)",
        "",
        "server      connections  RSS before   RSS after  after close  per connection  opened in",
    ]
    for r in rows:
        lines.append(
            f"{r.label:<11} {r.connections:>11,} {r.before_kib / 1024:>8.1f} MiB "
            f"{r.after_kib / 1024:>8.1f} MiB {r.closed_kib / 1024:>8.1f} MiB "
            f"{r.per_connection:>10.1f} KiB {r.open_seconds:>8.1f} s"
        )
    lines += ["", *dict.fromkeys(f"{r.label.replace(chr(39), '')}: {r.what}" for r in rows)]
    by = {r.label: r for r in rows}
    if "(b) gateway" in by:
        gw = by["(b) gateway"].per_connection
        verdict = "met" if gw <= TARGET_KIB else "MISSED"
        lines += [
            "",
            f"gateway per idle connection: {gw:.1f} KiB "
            f"(target <= {TARGET_KIB:.0f} KiB: {verdict})",
        ]
        if "(a) bare" in by:
            bare = by["(a) bare"].per_connection
            lines.append(f"gateway / bare uvicorn: {gw / bare:.2f} ({bare:.1f} KiB bare)")
        if "(b') gateway" in by and "(a') bare" in by:
            gw2, bare2 = by["(b') gateway"].per_connection, by["(a') bare"].per_connection
            lines.append(
                f"with permessage-deflate: gateway {gw2:.1f} KiB, bare {bare2:.1f} KiB, "
                f"ratio {gw2 / bare2:.2f} (target {'met' if gw2 <= TARGET_KIB else 'MISSED'})"
            )
    lines += ["", f"total run time {elapsed:.0f} s"]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def run(quick: bool, results_dir: Path) -> str:
    began = time.monotonic()
    total = QUICK_CONNECTIONS if quick else CONNECTIONS
    nofile = raise_nofile()
    if nofile < total + FD_MARGIN:  # the server holds one descriptor per connection
        print(
            f"capacity: open-file limit {nofile} allows {nofile - FD_MARGIN} connections, "
            f"not {total}",
            file=sys.stderr,
        )
        total = nofile - FD_MARGIN
    var_dir = Path(tempfile.mkdtemp(prefix="switchboard-bench-", dir="/tmp"))
    rows: list[Row] = []
    try:
        print(f"capacity: logs in {var_dir}/logs", file=sys.stderr, flush=True)
        bare = "uvicorn bench.capacity:echo_app (websockets-sansio, uvloop, httptools)"
        gateway = "python -m gateway, /ws, defaults but the connection caps"
        for deflate in (False, True):
            mark = "'" if deflate else ""
            with bare_server(var_dir) as (port, pid):
                rows.append(measure(f"(a{mark}) bare", bare, port, pid, "/", total, deflate))
            with gateway_server(var_dir, total) as (port, pid):
                label = f"(b{mark}) gateway"
                rows.append(measure(label, gateway, port, pid, "/ws", total, deflate))
    except BaseException:
        print(f"capacity: stopped; logs kept in {var_dir}/logs", file=sys.stderr)
        raise
    shutil.rmtree(var_dir, ignore_errors=True)
    text = report(rows, quick, nofile, time.monotonic() - began)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / (f"{NAME}.quick.txt" if quick else f"{NAME}.txt")).write_text(text)
    return text


if __name__ == "__main__" and sys.argv[1:2] == ["client"]:
    _, _, host, port, path, count = sys.argv
    asyncio.run(client_main(host, int(port), path, int(count)))
elif __name__ == "__main__":
    print(run(quick="--quick" in sys.argv, results_dir=Path(__file__).parent / "results"))
