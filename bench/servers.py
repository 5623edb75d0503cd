"""The systems under test, as context managers that always stop what they started.

- :func:`tutorial`: ``uvicorn bench.tutorial_app:app`` with uvicorn's defaults (only the
  port is chosen), the tutorial's in-process design;
- :func:`switchboard`: nats-server and the codec/binary/chat workers
  (:class:`switchboard.localstack.LocalStack`), then :func:`gateway` on top of it, once
  per gateway configuration.

:func:`reap_children` is the last line of defence: it stops any child process of the
benchmark still running (e.g. one whose start failed half-way).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import die_with_parent
from switchboard.localstack import ROOT, SERVICES, LocalStack, free_port

START_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class Server:
    url: str  # ws://127.0.0.1:<port>
    pids: list[int]  # every process serving it, for CPU accounting


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def stop_process(popen: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)


@contextlib.contextmanager
def tutorial(var_dir: Path) -> Iterator[Server]:
    port = free_port()
    log_path = var_dir / "logs" / "tutorial.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.tutorial_app:app", "--port", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _get_ok(f"http://127.0.0.1:{port}/docs"):
            if popen.poll() is not None:
                raise RuntimeError(f"tutorial app exited with {popen.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"tutorial app not up after {START_TIMEOUT}s; see {log_path}")
            time.sleep(0.05)
        yield Server(f"ws://127.0.0.1:{port}", [popen.pid])
    finally:
        stop_process(popen)


@contextlib.contextmanager
def switchboard(var_dir: Path) -> Iterator[LocalStack]:
    """nats-server and one replica of every worker; gateways come and go on top."""
    stack = LocalStack(var_dir=var_dir)
    try:
        stack.start_nats(timeout=START_TIMEOUT)
        for name in SERVICES:
            stack.start_service(name, timeout=START_TIMEOUT)
        yield stack
    finally:
        stack.stop()


@contextlib.contextmanager
def gateway(stack: LocalStack, env: Mapping[str, str]) -> Iterator[Server]:
    # The per-connection rate limit (500 frames/s by default) would answer most of a
    # fast closed-loop connection's frames with "rate limit exceeded" errors, which the
    # tutorial baseline has no equivalent of: lift it, the benchmark measures the relay.
    env = {"SB_GATEWAY_RATE_FRAMES": "1000000", "SB_GATEWAY_RATE_FRAMES_BURST": "1000000", **env}
    proc = stack.start_gateway(env=env, timeout=START_TIMEOUT)
    try:
        stack.wait_ready(proc, timeout=START_TIMEOUT)
        assert stack.nats is not None
        workers = [p.pid for p in stack.processes if p.name in SERVICES and p.alive()]
        yield Server(f"ws://127.0.0.1:{proc.port}", [proc.pid, stack.nats.pid, *workers])
    finally:
        proc.stop()
        stack.processes.remove(proc)


def _children() -> list[int]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.append(int(entry))
    return found


def reap_children(grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, every child process still running; returns their pids."""
    pids = _children()
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _children() and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in _children():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
    return pids
