"""The local stack runner (`make run`, and every integration test's stack)."""

from __future__ import annotations

import os
import socket

from switchboard.prometheus import port_free


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
