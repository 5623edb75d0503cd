"""The local stack runner (`make run`, and every integration test's stack)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from switchboard.localstack import ROOT, LocalStack, Process, free_port, port_free


def test_stack_processes_do_not_share_the_runners_process_group(stack) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group. The stack's
    processes have groups of their own, so only the runner gets it and stops them in
    order: gateways, workers (which drain through NATS), then NATS."""
    procs = [stack.nats, *stack.processes]
    assert len(procs) >= 5
    for proc in procs:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0), proc.name


def test_port_free_means_nobody_listens() -> None:
    """A port whose listener is gone is free, even with its last connection still in
    TIME_WAIT (the state a previous `make run`'s Prometheus leaves behind)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_free(port)
        with socket.create_connection(("127.0.0.1", port)) as client:
            server, _ = listener.accept()
            server.close()  # the side that closes first keeps TIME_WAIT on this port
            client.recv(1)
    assert port_free(port)


def test_the_runner_names_the_ports_in_use_instead_of_a_traceback(tmp_path) -> None:
    """A second `make run` with another PORT and NATS_PORT still wanted the NATS
    monitor's 8222 and the workers' metrics ports: nats-server failed to start and the
    runner ended in a bare traceback naming neither."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        env = {
            **os.environ,
            "PORT": str(free_port()),
            "NATS_PORT": str(free_port()),
            "NATS_MONITOR_PORT": str(busy),
            "SB_CODEC_METRICS_PORT": str(free_port()),
            "SB_BINARY_METRICS_PORT": str(free_port()),
            "SB_CHAT_METRICS_PORT": str(free_port()),
            "VAR_DIR": str(tmp_path),
        }
        run = subprocess.run(
            [sys.executable, "-m", "switchboard.localstack"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert run.returncode == 1
    assert f"{busy} (NATS monitoring: NATS_MONITOR_PORT)" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "nats").exists()  # nothing was started


def test_a_stack_interrupted_while_stopping_leaves_no_process(tmp_path, monkeypatch) -> None:
    """pytest-timeout firing inside stop() (waiting for a slow gateway) left the other
    processes running into the next tests."""
    stack = LocalStack(var_dir=tmp_path)
    for name in ("a", "b", "c"):
        argv = [sys.executable, "-c", "import time; time.sleep(60)"]
        stack.processes.append(Process(name, argv, dict(os.environ), tmp_path / name).start())

    def interrupted(self: Process, timeout: float = 10.0) -> None:
        raise TimeoutError("the test's time is up")

    monkeypatch.setattr(Process, "stop", interrupted)
    with pytest.raises(TimeoutError):
        stack.stop()
    for proc in stack.processes:
        assert proc.wait(5) is not None, proc.name
