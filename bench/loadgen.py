"""The client side of the benchmarks: WebSocket load from worker processes.

The parent (:func:`run_load`) starts ``workers`` processes (``python -m bench.loadgen``),
each owning a share of the connections, and drives them over their stdin/stdout:

1. a worker connects its sockets, checks one echo round trip on each, prints ``ready``;
2. once every worker is ready the parent sends the measurement window (``CLOCK_MONOTONIC``
   times, the same clock in every process on Linux); the load starts at once, so the
   time before the window is warm-up;
3. each worker prints one JSON line: round trips counted inside the window and their
   latencies; the parent merges them.

Closed loop: each connection sends a text frame, waits for the reply, repeats.
Open loop: each connection sends on a fixed schedule (``rate`` msg/s spread over the
connections, staggered), whatever the replies do; latency is measured from the moment
the frame is written, and how late the generator wrote it (its own lag) is reported so
that a stalled generator cannot hide server latency.

Workers use the ``websockets`` asyncio client on uvloop, without permessage-deflate, and
exit on their own if the parent vanishes (stdin EOF, parent-death signal, deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["closed", "open"]

CONNECT_TIMEOUT = 20.0
GRACE = 5.0  # seconds after the window for the last replies and the result line


@dataclass(frozen=True, slots=True)
class Spec:
    url: str
    connections: int
    mode: Mode
    message: str
    expect: str  # the reply to the first message of every connection (sanity check)
    rate: float = 0.0  # open loop: msg/s for this worker
    offset: float = 0.0  # open loop: fraction of one interval, to stagger workers


@dataclass(slots=True)
class Result:
    count: int = 0  # replies received inside the window
    sent: int = 0  # open loop: frames scheduled inside the window
    latencies: list[float] = field(default_factory=list)  # seconds
    lag: list[float] = field(default_factory=list)  # open loop: send lateness, seconds
    errors: list[str] = field(default_factory=list)

    def merge(self, other: Result) -> None:
        self.count += other.count
        self.sent += other.sent
        self.latencies.extend(other.latencies)
        self.lag.extend(other.lag)
        self.errors.extend(other.errors)


# -- worker process ----------------------------------------------------------------


async def _closed(ws: Any, message: str, start: float, end: float, out: Result) -> None:
    send, recv, clock = ws.send, ws.recv, time.monotonic
    latencies = out.latencies
    while True:
        t0 = clock()
        await send(message)
        await recv()
        t1 = clock()
        if t1 >= end:
            return
        if t1 >= start:
            latencies.append(t1 - t0)


async def _open(
    ws: Any, message: str, first: float, interval: float, start: float, end: float, out: Result
) -> None:
    send, recv, clock = ws.send, ws.recv, time.monotonic
    sent_at: deque[float] = deque()
    done = False

    async def receive() -> None:
        while not (done and not sent_at):
            await recv()
            t1 = clock()
            t0 = sent_at.popleft()
            if start <= t0 < end:
                out.latencies.append(t1 - t0)

    receiver = asyncio.create_task(receive())
    try:
        due = first
        while due < end:
            now = clock()
            if due > now:
                await asyncio.sleep(due - now)
            t0 = clock()
            sent_at.append(t0)
            await send(message)
            if start <= t0 < end:
                out.sent += 1
                out.lag.append(t0 - due)
            due += interval
        done = True
        if sent_at:
            await asyncio.wait_for(receiver, GRACE)
    finally:
        receiver.cancel()


async def _worker(spec: Spec) -> None:
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def open_one() -> Any:
        ws = await connect(
            spec.url,
            compression=None,
            open_timeout=CONNECT_TIMEOUT,
            close_timeout=1,
            ping_interval=None,
            max_queue=None,
        )
        await ws.send(spec.message)
        reply = await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT)
        if reply != spec.expect:
            raise RuntimeError(f"unexpected reply {reply!r}, expected {spec.expect!r}")
        return ws

    sockets = await asyncio.gather(*(open_one() for _ in range(spec.connections)))
    _emit("ready")
    line = await reader.readline()
    if not line:
        return  # the parent is gone
    times = json.loads(line)
    start, end = float(times["start"]), float(times["end"])
    out = Result()
    window = (start, end, out)
    try:
        if spec.mode == "closed":
            runs = [_closed(ws, spec.message, *window) for ws in sockets]
        else:
            n = len(sockets)
            interval = n / spec.rate
            first = time.monotonic()
            runs = [
                _open(ws, spec.message, first + (i + spec.offset) * interval / n, interval, *window)
                for i, ws in enumerate(sockets)
            ]
        await asyncio.wait_for(asyncio.gather(*runs), end - time.monotonic() + GRACE)
    except Exception as exc:
        out.errors.append(f"{type(exc).__name__}: {exc}")
    _emit(
        json.dumps(
            {
                "count": len(out.latencies),
                "sent": out.sent,
                "latencies": [round(x, 7) for x in out.latencies],
                "lag": [round(x, 7) for x in out.lag],
                "errors": out.errors,
            },
            separators=(",", ":"),
        )
    )
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*(ws.close() for ws in sockets)), 2)


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def worker_main(argv: list[str]) -> None:
    spec = Spec(**json.loads(argv[0]))
    deadline = float(argv[1]) if len(argv) > 1 else 600.0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.alarm(int(deadline) + 1)  # hard bound whatever happens
    import uvloop

    try:
        uvloop.run(_worker(spec))
    except Exception as exc:
        sys.stderr.write(f"loadgen worker: {type(exc).__name__}: {exc}\n")
        sys.exit(1)


# -- parent side -------------------------------------------------------------------


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when the benchmark process dies (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PDEATHSIG


class Worker:
    """One ``python -m bench.loadgen`` process and a thread reading its lines."""

    def __init__(self, spec: Spec, deadline: float) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", json.dumps(_asdict(spec)), str(deadline)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C goes to the parent only, which stops us
            preexec_fn=die_with_parent,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect_line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            raise TimeoutError(f"loadgen worker {self.pid} silent for {timeout:.0f}s") from None
        if line is None:
            raise RuntimeError(f"loadgen worker {self.pid} exited with {self.popen.wait()}")
        return line

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(5)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()


def _asdict(spec: Spec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in Spec.__slots__}


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal positive shares."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_load(
    url: str,
    *,
    mode: Mode,
    connections: int,
    workers: int,
    warmup: float,
    duration: float,
    message: str,
    expect: str,
    rate: float = 0.0,
    on_window: Callable[[float, float, list[int]], None] | None = None,
) -> Result:
    """Run one load level and return the merged result.

    ``on_window(start, end, worker_pids)`` is called (in the parent) right after the
    window is sent, e.g. to sample server CPU over the same window.
    """
    shares = split(connections, workers)
    deadline = CONNECT_TIMEOUT + warmup + duration + 3 * GRACE + 10
    procs: list[Worker] = []
    try:
        for i, n in enumerate(shares):
            spec = Spec(
                url,
                n,
                mode,
                message,
                expect,
                rate=rate * n / connections,
                offset=i / len(shares),
            )
            procs.append(Worker(spec, deadline))
        limit = time.monotonic() + CONNECT_TIMEOUT + 10
        for proc in procs:
            line = proc.expect_line(limit - time.monotonic())
            if line != "ready":
                raise RuntimeError(f"loadgen worker {proc.pid}: {line}")
        start = time.monotonic() + warmup
        end = start + duration
        window = json.dumps({"start": start, "end": end})
        for proc in procs:
            proc.send(window)
        if on_window is not None:
            on_window(start, end, [p.pid for p in procs])
        total = Result()
        for proc in procs:
            data = json.loads(proc.expect_line(end - time.monotonic() + 2 * GRACE))
            total.merge(
                Result(
                    count=data["count"],
                    sent=data["sent"],
                    latencies=data["latencies"],
                    lag=data["lag"],
                    errors=data["errors"],
                )
            )
        return total
    finally:
        for proc in procs:
            proc.stop()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    worker_main(sys.argv[1:])
