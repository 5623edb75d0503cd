"""The stack's shape for the fault cases: NATS, two gateways, two replicas of each
service, and how to get back to it."""

from __future__ import annotations

import json
import time
import urllib.request

from switchboard.localstack import SERVICES, LocalStack

REPLICAS = 2
GATEWAYS = 2


def instances(port: int) -> dict[str, int]:
    """Worker instances a gateway finds with ``$SRV.PING`` (its ``/readyz``)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return json.loads(r.read())["instances"]
    except OSError as exc:  # 503 while not ready: the body still says why
        body = getattr(exc, "read", lambda: b"{}")()
        try:
            return json.loads(body).get("instances") or {}
        except ValueError:
            return {}


def wait_instances(stack: LocalStack, service: str, n: int, timeout: float = 20.0) -> None:
    """Until every gateway sees ``n`` instances of ``service``."""
    deadline = time.monotonic() + timeout
    while True:
        counts = [instances(gw.port).get(service, 0) for gw in stack.gateways]  # type: ignore[arg-type]
        if counts and all(c == n for c in counts):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{service}: gateways see {counts} instances, want {n}")
        time.sleep(0.2)


def restore(stack: LocalStack) -> None:
    """NATS up, two replicas of each service, two gateways, all seen by every gateway."""
    if stack.nats is None or not stack.nats.alive():
        stack.start_nats()
    stack.processes[:] = [p for p in stack.processes if p.alive()]  # forget the dead
    for name in SERVICES:
        while len(stack.replicas(name)) < REPLICAS:
            stack.start_service(name)
        for extra in stack.replicas(name)[REPLICAS:]:
            extra.stop()
    while len(stack.gateways) < GATEWAYS:
        stack.start_gateway()
    for gw in stack.gateways:
        stack.wait_ready(gw, 30)
    for name in SERVICES:
        wait_instances(stack, name, REPLICAS)
