"""services/lanes.py: ordered operations in order per connection, many connections at
once; and services.runner.laned, which puts chat's ordered endpoints behind it."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from services.lanes import Lanes
from services.runner import laned, wrap
from tests.unit.test_scheduler import FakeMsg, FakeRequest
from wire import headers as h
from wire.frames import Request, encode_text
from wire.metrics import ServiceMetrics
from wire.subjects import Op, Service, reply_prefix, reply_subject


def recorder():
    """Jobs that record when they start and end; a job named in ``gates`` waits for its
    event before it ends."""
    log: list[str] = []
    gates: dict[str, asyncio.Event] = {}

    def job(name: str):
        async def run() -> None:
            log.append(f"{name}>")
            if name in gates:
                await gates[name].wait()
            log.append(f"<{name}")

        return run

    return log, gates, job


async def test_a_blocked_caller_holds_up_only_its_own_later_requests() -> None:
    lanes = Lanes(limit=8)
    log, gates, job = recorder()
    gates["a1"] = asyncio.Event()
    for caller, name in (("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2")):
        await lanes.submit(caller, job(name))
    await asyncio.sleep(0.01)
    # B's requests ran, in order, while A's first waits; A's second has not started
    assert log == ["a1>", "b1>", "<b1", "b2>", "<b2"]
    assert lanes.taken == 2
    gates["a1"].set()
    await asyncio.wait_for(lanes.join(), 1)
    assert log[5:] == ["<a1", "a2>", "<a2"] and lanes.taken == 0


async def test_past_the_limit_submit_waits_for_a_request_to_be_answered() -> None:
    lanes = Lanes(limit=2)
    log, gates, job = recorder()
    gates["a1"], gates["b1"] = asyncio.Event(), asyncio.Event()
    await lanes.submit("A", job("a1"))
    await lanes.submit("B", job("b1"))
    third = asyncio.create_task(lanes.submit("C", job("c1")))
    await asyncio.sleep(0.01)
    assert not third.done() and "c1>" not in log  # waits: two taken, none answered
    gates["b1"].set()
    await asyncio.wait_for(third, 1)
    await asyncio.sleep(0.01)
    assert "<c1" in log and "<a1" not in log
    gates["a1"].set()
    await asyncio.wait_for(lanes.join(), 1)
    assert lanes.taken == 0


async def test_a_failing_job_does_not_stop_its_lane(caplog: pytest.LogCaptureFixture) -> None:
    lanes = Lanes(limit=1)
    log, _, job = recorder()

    async def broken() -> None:
        raise RuntimeError("bug")

    await lanes.submit("A", broken)
    await lanes.submit("A", job("a2"))  # waited for the slot the failed one released
    await asyncio.wait_for(lanes.join(), 1)
    assert log == ["a2>", "<a2"]
    assert "ordered request failed" in caplog.text


async def test_the_runner_orders_a_connections_requests_across_operations() -> None:
    """services.runner.laned, as chat's endpoints share it: one connection's join and
    the publish it pipelined after it (two subjects, two subscriptions) run in that
    order; another connection's run meanwhile. The caller is the Sb-Gateway and Sb-Conn
    headers (a socket's leave on close has no reply subject of its own); without them,
    the reply subject's connection."""
    metrics = ServiceMetrics(CollectorRegistry(), Service.CHAT)
    gates = {b"c1-join": asyncio.Event()}
    ran: list[bytes] = []

    async def handler(req: Request) -> bytes:
        ran.append(req.data)
        if req.data in gates:
            await gates[req.data].wait()
        return encode_text("ok")

    lanes = Lanes(limit=16)
    join, publish, leave = (
        laned(wrap(Service.CHAT, op, handler, metrics), lanes)
        for op in (Op.ROOM_JOIN, Op.PUBLISH, Op.ROOM_LEAVE)
    )
    prefix = reply_prefix("gw")

    def request(data: bytes, conn: int, seq: int, *, headers: bool = True) -> FakeRequest:
        hdrs = {h.SENT_AT: h.now_ns(), h.FRAME: "t"}
        if headers:
            hdrs |= {h.GATEWAY: "gw", h.CONN: str(conn)}
        return FakeRequest(data, hdrs, FakeMsg(reply_subject(prefix, conn, seq)))

    first = request(b"c1-join", 1, 1)
    then = request(b"c1-publish", 1, 2)
    gone = request(b"c1-leave", 1, 3)
    gone._msg.reply = reply_subject(prefix, 0, 0)  # hub.notify: no reply wanted
    other = request(b"c2-publish", 2, 1, headers=False)
    await join(first)  # each returns at once: taken, not handled
    await publish(then)
    await leave(gone)
    await publish(other)
    await asyncio.sleep(0.01)
    assert ran == [b"c1-join", b"c2-publish"] and len(other.replies) == 1
    assert then.replies == gone.replies == []  # behind their connection's join
    gates[b"c1-join"].set()
    await asyncio.wait_for(lanes.join(), 1)
    assert ran[2:] == [b"c1-publish", b"c1-leave"]
    assert len(first.replies) == len(then.replies) == len(gone.replies) == 1


async def test_a_join_whose_caller_stopped_waiting_is_answered_408_a_leave_still_runs() -> None:
    """Behind a slow request of its connection, a join whose Sb-Timeout passes before
    its turn is not handled (the gateway has told the client it failed and dropped the
    membership: handled late, it would store a join nobody leaves); a leave always is."""
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry, Service.CHAT)
    gate = asyncio.Event()
    ran: list[bytes] = []

    async def handler(req: Request) -> bytes:
        ran.append(req.data)
        if req.data == b"slow":
            await gate.wait()
        return encode_text("ok")

    lanes = Lanes(limit=16)
    timeouts = {
        op: metrics.requests.labels(Service.CHAT, op, "timeout")
        for op in (Op.ROOM_JOIN, Op.ROOM_LEAVE)
    }
    join = laned(wrap(Service.CHAT, Op.ROOM_JOIN, handler, metrics), lanes, timeouts[Op.ROOM_JOIN])
    leave = laned(wrap(Service.CHAT, Op.ROOM_LEAVE, handler, metrics), lanes)
    prefix = reply_prefix("gw")

    def request(data: bytes, seq: int, timeout_ms: str | None) -> FakeRequest:
        hdrs = {h.SENT_AT: h.now_ns(), h.FRAME: "t", h.GATEWAY: "gw", h.CONN: "1"}
        if timeout_ms is not None:
            hdrs[h.TIMEOUT] = timeout_ms
        return FakeRequest(data, hdrs, FakeMsg(reply_subject(prefix, 1, seq)))

    slow, late, bye, fresh = (
        request(b"slow", 1, None),
        request(b"late-join", 2, "20"),
        request(b"leave", 3, "20"),
        request(b"fresh-join", 4, "60000"),
    )
    await join(slow)
    await join(late)
    await leave(bye)
    await join(fresh)
    await asyncio.sleep(0.05)  # past the 20 ms
    gate.set()
    await asyncio.wait_for(lanes.join(), 1)
    assert ran == [b"slow", b"leave", b"fresh-join"]
    assert late.replies[0][h.ERROR_CODE] == "408"
    labels = {"service": "chat", "operation": "room_join", "status": "timeout"}
    assert registry.get_sample_value("switchboard_service_requests_total", labels) == 1
    assert h.ERROR_CODE not in bye.replies[0] and h.ERROR_CODE not in fresh.replies[0]
    # the wait behind "slow" is the queue hop (switchboard_service_queue_duration_seconds)
    ok = {"service": "chat", "operation": "room_join", "status": "ok"}
    queue = "switchboard_service_queue_duration_seconds"
    assert registry.get_sample_value(f"{queue}_count", ok) == 2  # slow, fresh
    assert registry.get_sample_value(f"{queue}_sum", ok) >= 0.05  # fresh waited for the gate
    assert registry.get_sample_value(f"{queue}_bucket", {**ok, "le": "0.025"}) == 1  # slow
