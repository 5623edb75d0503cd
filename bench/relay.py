"""Relay benchmark: the tutorial's in-process echo against Switchboard's ``/ws`` relayed
over NATS to the codec worker, with both gateway reply designs.

(a)  ``uvicorn bench.tutorial_app:app``, uvicorn's defaults, echoing in-process;
(b)  the gateway as it ships: one reply subscription per gateway, and the frames of one
     event-loop pass for the same operation sent as one NATS message (wire/batch.py);
(b1) the same without batches (``SB_GATEWAY_BATCH=false``): one NATS message per frame;
(b') the gateway with ``SB_GATEWAY_REPLY_MODE=request``: one ``nc.request()`` per frame.

For each: closed loop with 1, 10 and 100 connections (msgs/s), then an open loop at a
fixed 1,000 msg/s over 10 connections (p50/p99). Loopback only; the load generator runs
in separate processes (:mod:`bench.loadgen`).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from bench import servers
from bench.cpu import Sampler, Usage
from bench.loadgen import Mode, Result, percentile, run_load
from switchboard.localstack import ROOT

NAME = "relay"
MESSAGE = "switchboard benchmark text frame"  # 32 bytes
EXPECT = f"Echo: {MESSAGE}"
LEVELS = (1, 10, 100)
OPEN_RATE = 1000.0
OPEN_CONNECTIONS = 10
TARGET_RATIO = 1.0  # (b)/(a) at 100 connections
TARGET_P99_MS = 2.0  # at 1,000 msg/s
OTHER_LOAD_WARNING = 25.0  # % of a core busy outside servers and load generator
CODE_UNDER_TEST = ("gateway", "services", "wire", "switchboard", "bench", "infra")

LABELS = {"a": "(a)", "b": "(b)", "b1": "(b1)", "b'": "(b')"}
DESIGNS = {
    "a": "(a)  tutorial: uvicorn bench.tutorial_app:app, defaults, echo in-process",
    "b": "(b)  switchboard /ws -> NATS -> codec worker, one reply subscription per gateway, "
    "frames batched per loop pass (the default)",
    "b1": "(b1) switchboard, SB_GATEWAY_BATCH=false: one NATS message per frame",
    "b'": "(b') switchboard, SB_GATEWAY_REPLY_MODE=request: one nc.request() future per frame",
}


@dataclass(frozen=True, slots=True)
class Plan:
    warmup: float
    closed: float  # seconds per closed-loop level
    open: float  # seconds of the open loop

    @classmethod
    def make(cls, quick: bool) -> Plan:
        return cls(0.5, 1.5, 2.0) if quick else cls(1.0, 5.0, 8.0)


def loadgen_processes(connections: int) -> int:
    """Worker processes of the load generator for a level.

    One process cannot keep 10+ busy connections fed on this kind of machine, and more
    than two only take CPU from the servers on 2 cores (measured: see docs/benchmarks.md).
    """
    return 1 if connections < 10 else 2


@dataclass(slots=True)
class Row:
    design: str
    mode: Mode
    connections: int
    rate: float  # replies/s inside the window
    count: int
    p50: float  # ms
    p99: float
    max: float
    usage: Usage | None
    sent: int = 0
    lag_p99: float = math.nan  # open loop: generator lateness, ms
    errors: list[str] = field(default_factory=list)


def measure(design: str, server: servers.Server, plan: Plan) -> list[Row]:
    url = f"{server.url}/ws"
    rows = []
    for conns in LEVELS:
        rows.append(_level(design, url, server, plan, "closed", conns, plan.closed))
    rows.append(_level(design, url, server, plan, "open", OPEN_CONNECTIONS, plan.open))
    return rows


def _level(
    design: str,
    url: str,
    server: servers.Server,
    plan: Plan,
    mode: Mode,
    conns: int,
    duration: float,
) -> Row:
    sampler = Sampler(server.pids)
    result: Result = run_load(
        url,
        mode=mode,
        connections=conns,
        workers=1 if mode == "open" else loadgen_processes(conns),
        warmup=plan.warmup,
        duration=duration,
        message=MESSAGE,
        expect=EXPECT,
        rate=OPEN_RATE if mode == "open" else 0.0,
        on_window=sampler.window,
    )
    lat = result.latencies
    row = Row(
        design,
        mode,
        conns,
        result.count / duration,
        result.count,
        percentile(lat, 50) * 1e3,
        percentile(lat, 99) * 1e3,
        (max(lat) if lat else math.nan) * 1e3,
        sampler.usage,
        sent=result.sent,
        lag_p99=percentile(result.lag, 99) * 1e3 if result.lag else math.nan,
        errors=result.errors,
    )
    if mode == "open" and row.count < row.sent and not row.errors:
        row.errors.append(f"{row.sent - row.count} of {row.sent} frames got no reply")
    print(f"  {_progress(row)}", file=sys.stderr, flush=True)
    return row


def _progress(row: Row) -> str:
    what = f"{row.connections} conns closed loop" if row.mode == "closed" else "open loop"
    return (
        f"{LABELS[row.design]:<4} {what:<20} {row.rate:>9,.0f} msgs/s  "
        f"p50 {row.p50:.3f} ms  p99 {row.p99:.3f} ms"
    )


# -- report ------------------------------------------------------------------------


def _cpu(usage: Usage | None) -> str:
    if usage is None:
        return f"{'-':>5} {'-':>5} {'-':>5} "
    mark = "!" if usage.other > OTHER_LOAD_WARNING else " "
    return f"{usage.servers:>5.0f} {usage.loadgen:>5.0f} {usage.other:>5.0f}{mark}"


def _cpu_per_message(row: Row) -> float | None:
    """Server CPU microseconds per message: the figure that least depends on what else the
    two cores are doing (msgs/s falls with any contention; this mostly does not)."""
    if row.usage is None or row.rate <= 0:
        return None
    return row.usage.servers * 1e4 / row.rate


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(rows: list[Row], plan: Plan, quick: bool, elapsed: float) -> str:
    closed = {(r.design, r.connections): r for r in rows if r.mode == "closed"}
    opened = {r.design: r for r in rows if r.mode == "open"}
    designs = [d for d in DESIGNS if any(r.design == d for r in rows)]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Switchboard relay benchmark{' (--quick)' if quick else ''}, {now}",
        f"machine: {_cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"loopback 127.0.0.1; load average before: {_loadavg()}; nice {os.nice(0)}; "
        f"code: {_revision()}",
        f"load generator: websockets {version('websockets')} asyncio client on uvloop, "
        "no permessage-deflate, separate processes "
        f"({', '.join(f'{loadgen_processes(n)} for {n}' for n in LEVELS)} connections)",
        f'frame: {len(MESSAGE)}-byte text, reply "Echo: <frame>"; closed loop {plan.warmup:g} s '
        f"warm-up + {plan.closed:g} s per level; open loop {plan.warmup:g} s + {plan.open:g} s",
        "CPU: % of one core over the window (machine = 200 %): srv = server processes "
        "(b: gateway + nats-server + 3 workers), gen = load generator, oth = the rest of the "
        "machine (kernel threads, anything else running)",
        "",
        *(DESIGNS[d] for d in designs),
        "",
        "Closed loop (each connection: send, wait for the reply, repeat)",
        f"{'conns':>5}  {'design':<6} {'msgs/s':>8} {'p50 ms':>7} {'p99 ms':>7}  "
        f"{'srv%':>5} {'gen%':>5} {'oth%':>5} {'srv us':>6}  ratio to (a)",
    ]
    for n in LEVELS:
        base = closed.get(("a", n))
        for d in designs:
            r = closed.get((d, n))
            if r is None:
                continue
            vs_a = ""
            if d != "a" and base is not None and base.rate > 0:
                vs_a = f"{r.rate / base.rate:.2f}"
            us = _cpu_per_message(r)
            lines.append(
                f"{n:>5}  {LABELS[d]:<6} {r.rate:>8,.0f} {r.p50:>7.3f} {r.p99:>7.3f}  "
                f"{_cpu(r.usage)}{'-' if us is None else f'{us:.1f}':>6}  {vs_a}"
            )
    lines.append("(srv us: server CPU microseconds per message, all server processes)")
    lines += [
        "",
        f"Open loop: {OPEN_RATE:,.0f} msg/s over {OPEN_CONNECTIONS} connections, "
        "latency from the frame's write to its reply",
        f"{'design':<6} {'msgs/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'lag p99':>7}  {'srv%':>5} {'gen%':>5} {'oth%':>5}",
    ]
    for d in designs:
        r = opened.get(d)
        if r is None:
            continue
        lines.append(
            f"{LABELS[d]:<6} {r.rate:>8,.0f} {r.p50:>7.3f} {r.p99:>7.3f} {r.max:>7.3f} "
            f"{r.lag_p99:>7.3f}  {_cpu(r.usage)}"
        )
    lines.append("(lag p99: how late the generator wrote frames against its schedule, ms)")
    lines += ["", "Targets"]
    top = LEVELS[-1]
    base = closed.get(("a", top))
    base_us = _cpu_per_message(base) if base is not None else None
    for d in designs:
        if d == "a":
            continue
        r = closed.get((d, top))
        if r is not None and base is not None and base.rate > 0:
            ratio = r.rate / base.rate
            lines.append(
                f"  {LABELS[d]}/(a) msgs/s at {top} connections >= {TARGET_RATIO:.1f}: "
                f"{ratio:.2f}  {_verdict(ratio >= TARGET_RATIO)}"
            )
            us = _cpu_per_message(r)
            if us is not None and base_us:
                lines.append(
                    f"    server CPU per message (no target; steadier than msgs/s on a busy "
                    f"machine): {us:.1f} us, {us / base_us:.2f} x (a)'s {base_us:.1f} us"
                )
    for d in designs:
        r = opened.get(d)
        if r is not None:
            lines.append(
                f"  {LABELS[d]} p99 at {OPEN_RATE:,.0f} msg/s <= {TARGET_P99_MS:g} ms: "
                f"{r.p99:.3f} ms  {_verdict(r.p99 <= TARGET_P99_MS)}"
            )
    for mine, other, what in (
        ("b1", "b'", "reply subscription vs request() per frame, (b1)/(b')"),
        ("b", "b1", "batches vs one message per frame, (b)/(b1)"),
    ):
        parts = []
        for n in LEVELS:
            one, two = closed.get((mine, n)), closed.get((other, n))
            if one is not None and two is not None and two.rate > 0:
                parts.append(f"{one.rate / two.rate:.2f} at {n}")
        if parts:
            lines.append(f"  {what}: {', '.join(parts)}")
    busy = [r.usage.other for r in rows if r.usage is not None]
    if busy and max(busy) > OTHER_LOAD_WARNING:
        lines += [
            "",
            f"WARNING: other load on the machine during the windows marked ! (oth up to "
            f"{max(busy):.0f} % of a core): those figures are disturbed; rerun on a quiet machine",
        ]
    errors = [f"  {LABELS[r.design]} {r.mode} {r.connections}: {e}" for r in rows for e in r.errors]
    if errors:
        lines += ["", "Errors", *errors]
    lines += ["", f"total run time {elapsed:.0f} s"]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _revision() -> str:
    """The commit measured, and whether the code under test differed from it."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", *CODE_UNDER_TEST, ":(exclude)bench/results"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"{head} with local changes" if dirty else head


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# -- entry point -------------------------------------------------------------------


def run(quick: bool, results_dir: Path) -> str:
    """Run (a), (b), (b1), (b'); print and save the report; return it."""
    plan = Plan.make(quick)
    began = time.monotonic()
    var_dir = Path(tempfile.mkdtemp(prefix="switchboard-bench-", dir="/tmp"))
    rows: list[Row] = []
    try:
        print(f"relay: servers' logs in {var_dir}/logs", file=sys.stderr, flush=True)
        with servers.tutorial(var_dir) as server:
            rows += measure("a", server, plan)
        with servers.switchboard(var_dir) as stack:
            for design, env in (
                ("b", {}),
                ("b1", {"SB_GATEWAY_BATCH": "false"}),
                ("b'", {"SB_GATEWAY_REPLY_MODE": "request"}),
            ):
                with servers.gateway(stack, env) as server:
                    rows += measure(design, server, plan)
    except Exception:
        print(f"relay: failed; logs kept in {var_dir}/logs", file=sys.stderr)
        raise
    except BaseException:  # Ctrl-C
        shutil.rmtree(var_dir, ignore_errors=True)
        raise
    shutil.rmtree(var_dir, ignore_errors=True)
    text = report(rows, plan, quick, time.monotonic() - began)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / (f"{NAME}.quick.txt" if quick else f"{NAME}.txt")).write_text(text)
    return text
