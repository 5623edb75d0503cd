"""Fault injection under continuous load (issue 8).

Every case runs the same load (tests/faults/load.py) against NATS, two gateways and two
replicas of each service: on each gateway two ``/ws`` echo clients and one
``/ws/binary`` client in a closed loop, one ``/ws/v2`` publisher and one subscriber on a
room of the case's own. After a couple of seconds of steady traffic one fault is
injected; the load keeps running through it and for a few seconds after, then stops,
every subscriber catches up, and the figures are counted and checked.

Every case: nothing acknowledged is lost, nothing is delivered twice, no gap, no wrong
reply, no request left hanging. Per case, what may fail (error frames) and how long a
client may wait depends on the fault; see each test.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from switchboard.localstack import SERVICES, LocalStack
from tests.faults.load import REPORTS, REQUEST_TIMEOUT, Load, Report, Urls
from tests.faults.topology import wait_instances
from tests.integration.client import sample, scrape
from tests.integration.v2client import V2

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]

# Client-side slack over the gateway's request timeout: the client's clock includes the
# socket, the event loop of a test process driving 16 clients, and a busy 2-core box.
SLACK = 0.75
BEFORE = 2.0  # steady load before the fault
AFTER = 4.0  # load after the fault (and after the topology is restored, where it is)

Fault = Callable[[Load], Awaitable[dict[str, Any] | None]]


def gateway_urls(stack: LocalStack) -> Urls:
    def urls() -> list[str]:
        return [f"ws://127.0.0.1:{p.port}" for p in list(stack.gateways)]

    return urls


async def run_case(stack: LocalStack, name: str, fault: Fault) -> Report:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name)
    load = Load(gateway_urls(stack), f"faults-{slug}-{uuid.uuid4().hex[:6]}")
    try:
        await load.start()
        await asyncio.sleep(BEFORE)
        extra = await fault(load) or {}
        await asyncio.sleep(AFTER)
        report = await load.finish()
    except BaseException:
        await load.abort()
        raise
    report.case = name
    report.extra.update(extra)
    report.load = load
    REPORTS.append(report)
    print(report.line())
    return report


def check_exactly_once(r: Report) -> None:
    """What every case must show, whatever the fault."""
    why = "\n".join(r.notes)
    assert r.acknowledged > 0 and r.answered > 0, why
    assert r.lost == 0, why
    assert r.duplicated == 0, why
    assert r.gaps == 0, why
    assert r.unrecovered == 0, why
    assert r.mismatches == 0, why
    assert r.unacked == 0 and r.acknowledged == r.published, why
    assert r.request_hangs == 0 and r.room_hangs == 0, why
    assert r.delivered >= r.expected, why


def retries(stack: LocalStack) -> float:
    return sum(
        sample(scrape(gw.port), "switchboard_gateway_retries_total")  # type: ignore[arg-type]
        for gw in stack.gateways
    )


async def replace(stack: LocalStack, name: str) -> None:
    """Bring ``name`` back to two replicas, while the load runs."""
    await asyncio.to_thread(stack.start_service, name)
    await asyncio.to_thread(wait_instances, stack, name, 2)


# -- no fault: the reference ------------------------------------------------------------
async def test_steady_state(topology) -> None:
    r = await run_case(topology, "no fault", lambda load: asyncio.sleep(0))
    check_exactly_once(r)
    assert r.errors == 0 and r.reconnects == 0, r.notes
    assert r.max_wait < REQUEST_TIMEOUT, r.notes


# -- SIGTERM ----------------------------------------------------------------------------
@pytest.mark.parametrize("service", SERVICES)
async def test_sigterm_service_replica(topology, service) -> None:
    """A replica drains (answers what it has, takes nothing new) while the other one
    exists: zero failed requests, then a replacement restores two replicas."""
    stack = topology
    victim = stack.replicas(service)[0]

    async def fault(load: Load) -> dict[str, Any]:
        victim.signal(signal.SIGTERM)
        code = await asyncio.to_thread(victim.wait, 15)
        await asyncio.sleep(1.0)  # one replica carries the load for a while
        await replace(stack, service)
        return {"exit": code}

    r = await run_case(stack, f"SIGTERM {service}", fault)
    assert r.extra["exit"] == 0, victim.log()[-3000:]
    assert "draining" in victim.log()
    check_exactly_once(r)
    assert r.errors == 0, r.notes  # graceful: not one failed request
    assert r.drops == 0, r.notes
    assert r.max_wait < REQUEST_TIMEOUT, r.notes


async def test_sigterm_gateway(topology) -> None:
    """The gateway answers what is in flight, sends v2 clients a ``reconnect`` hint and
    closes every socket with 1001; its clients move to the other gateway, subscribers
    rejoin with ``since`` and miss nothing."""
    stack = topology
    victim = stack.gateways[0]
    url = f"ws://127.0.0.1:{victim.port}"

    async def fault(load: Load) -> dict[str, Any]:
        on_victim = [c for c in load.clients if c.url == url]
        victim.signal(signal.SIGTERM)
        code = await asyncio.to_thread(victim.wait, 20)
        await asyncio.to_thread(stack.start_gateway)  # back to two gateways
        return {"exit": code, "on_victim": len(on_victim)}

    r = await run_case(stack, "SIGTERM gateway", fault)
    # uvicorn re-raises the signal once its shutdown is complete: -15 is a clean exit
    assert r.extra["exit"] == 0, victim.log()[-3000:]
    assert "Application shutdown complete" in victim.log()
    check_exactly_once(r)
    load: Load = r.load
    moved = [c for c in load.clients if c.home == 0]
    assert r.extra["on_victim"] == len(moved) > 0
    assert all(c.reconnects >= 1 for c in moved), r.notes
    assert all(c.close_codes[:1] == [1001] for c in moved), [c.close_codes for c in moved]
    # subscribers are always reading: they see the hint before the close (a publisher
    # may find the socket closed when it next sends; test_shutdown.py checks every
    # v2 socket gets the hint)
    subs = [s for s in load.subscribers if s.home == 0]
    assert all(s.hints >= 1 for s in subs), [(s.name, s.close_codes, s.notes) for s in subs]
    assert all(s.rejoins >= 1 for s in load.subscribers if s.home == 0)
    assert r.errors == 0, r.notes  # a closed socket, never an error frame


# -- SIGKILL ----------------------------------------------------------------------------
@pytest.mark.parametrize("service", SERVICES)
async def test_sigkill_service_replica(topology, service) -> None:
    """A replica dies with requests in flight (stopped for 0.3 s first, so that some
    are queued at it). Idempotent ones (echo, inspect) are sent again after half the
    timeout and answered by the other replica: no error frame. A chat publish is not
    idempotent: it gets an error frame at the timeout and the client re-sends it with
    the same id, which dedupe turns into exactly one stored message. No request waits
    longer than the request timeout."""
    stack = topology
    victim = stack.replicas(service)[0]
    before = retries(stack)

    async def fault(load: Load) -> dict[str, Any]:
        victim.signal(signal.SIGSTOP)
        await asyncio.sleep(0.3)
        victim.kill()
        await asyncio.sleep(1.0)
        await replace(stack, service)
        return {}

    r = await run_case(stack, f"SIGKILL {service}", fault)
    r.extra["gateway retries"] = int(retries(stack) - before)
    print(f"[SIGKILL {service}] gateway retries: {r.extra['gateway retries']}")
    check_exactly_once(r)
    assert r.drops == 0, r.notes
    assert r.max_wait < REQUEST_TIMEOUT + SLACK, r.notes
    assert r.request_errors == 0, r.notes  # echo and inspect are retried
    if service == "chat":
        assert r.duplicate_acks <= r.room_errors, r.notes  # re-sends of refused publishes
    else:
        assert r.room_errors == 0, r.notes
        assert r.extra["gateway retries"] > 0  # requests were in flight at the victim


async def test_sigkill_gateway(topology) -> None:
    """A gateway dies without a word: its clients' sockets break, they reconnect to the
    other gateway with jittered backoff, publishers re-send what was unacknowledged
    with the same id, subscribers rejoin with ``since``: exactly once, no gap."""
    stack = topology
    victim = stack.gateways[0]

    async def fault(load: Load) -> dict[str, Any]:
        victim.kill()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(stack.start_gateway)
        return {}

    r = await run_case(stack, "SIGKILL gateway", fault)
    check_exactly_once(r)
    load: Load = r.load
    moved = [c for c in load.clients if c.home == 0]
    assert all(c.reconnects >= 1 for c in moved), r.notes
    assert all(c.close_codes[:1] == [1006] for c in moved)  # no close frame: a dead peer
    assert all(c.url != f"ws://127.0.0.1:{victim.port}" for c in moved)
    assert all(s.rejoins >= 1 for s in load.subscribers if s.home == 0)
    assert all(c.reconnects == 0 for c in load.clients if c.home == 1), r.notes
    assert r.errors == 0, r.notes


# -- NATS -------------------------------------------------------------------------------
async def test_nats_restart(topology) -> None:
    """NATS stops and starts again on the same port and data directory. Every socket
    stays open; requests during the outage get error frames at once (never a hang);
    gateways and workers reconnect by themselves; room fan-out works afterwards; the
    room's JetStream history from before the restart is intact."""
    stack = topology
    marks: dict[str, Any] = {}

    async def fault(load: Load) -> dict[str, Any]:
        marks["seq"] = max(s for p in load.publishers for s in p.acked.values())
        t0 = time.monotonic()
        await asyncio.to_thread(stack.restart_nats)
        for gw in list(stack.gateways):
            await asyncio.to_thread(stack.wait_ready, gw, 30)
        marks["deliveries"] = load.deliveries()
        marks["acked"] = max(s for p in load.publishers for s in p.acked.values())
        return {"outage": round(time.monotonic() - t0, 2)}

    r = await run_case(stack, "NATS restart", fault)
    check_exactly_once(r)
    load: Load = r.load
    assert r.drops == 0 and r.reconnects == 0, r.notes  # sockets stayed open
    assert r.max_wait < REQUEST_TIMEOUT + SLACK, r.notes  # errors, not hangs
    assert r.errors > 0, "no client saw the outage"
    # fan-out after the restart: every subscriber got messages acknowledged after it
    acked = {pid: seq for p in load.publishers for pid, seq in p.acked.items()}
    later = {seq: pid for pid, seq in acked.items() if seq > marks["acked"]}
    assert later, "nothing published after the restart"
    for sub in load.subscribers:
        assert all(sub.delivered.get(seq) == pid for seq, pid in later.items())
    assert load.deliveries() > marks["deliveries"]
    # history written before the restart is still there, exactly as acknowledged
    client = await V2.open(f"{gateway_urls(stack)()[0]}/ws/v2?username=auditor")
    try:
        reply = await client.request("history", load.room, before=marks["seq"] + 1, limit=500)
    finally:
        await client.close()
    assert reply["type"] == "history", reply
    stored = {
        e["seq"]: e["payload"].get("pid")
        for e in reply["payload"]["events"]
        if e["type"] == "message"
    }
    before = {seq: pid for pid, seq in acked.items() if seq <= marks["seq"]}
    window = sorted(before)[-len(stored) :] if stored else []
    assert len(stored) >= min(len(before), 400), (len(stored), len(before))
    assert all(stored.get(seq) == before[seq] for seq in window)


# -- rolling restart ------------------------------------------------------------------
async def test_rolling_restart(topology) -> None:
    """Every replica of every service, one at a time: start a replacement, wait until
    every gateway sees it, SIGTERM the old one. Zero failed client requests."""
    stack = topology

    async def fault(load: Load) -> dict[str, Any]:
        codes = []
        for service in SERVICES:
            for old in list(stack.replicas(service)):
                await asyncio.to_thread(stack.start_service, service)
                await asyncio.to_thread(wait_instances, stack, service, 3)
                old.signal(signal.SIGTERM)
                codes.append(await asyncio.to_thread(old.wait, 15))
                await asyncio.to_thread(wait_instances, stack, service, 2)
        return {"exits": codes}

    r = await run_case(stack, "rolling restart", fault)
    assert r.extra["exits"] == [0] * 2 * len(SERVICES)
    check_exactly_once(r)
    assert r.errors == 0, r.notes
    assert r.drops == 0, r.notes
    assert r.max_wait < REQUEST_TIMEOUT, r.notes
