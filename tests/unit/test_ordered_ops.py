"""Chat's ordered operations (joins, leaves, publishes) through services.runner with
:class:`OrderedOps`: one FairScheduler whose callers are connections, one request of
each at a time, many connections at once, taking turns."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from services.runner import REQUEST_OVERHEAD, OrderedOps, wrap
from tests.unit.test_scheduler import FakeMsg, FakeRequest
from wire import headers as h
from wire.frames import Request, encode_text
from wire.metrics import ServiceMetrics
from wire.subjects import Op, Service, reply_prefix, reply_subject

PREFIX = reply_prefix("gw")


class Chat:
    """Ordered endpoints of a fake chat replica sharing one scheduler, as serve() builds
    them; requests whose data is in ``gates`` wait for their event."""

    def __init__(self, concurrency: int = 8, max_queued_bytes: int = 1 << 20) -> None:
        self.registry = CollectorRegistry()
        metrics = ServiceMetrics(self.registry, Service.CHAT)
        self.scheduler = OrderedOps(concurrency, max_queued_bytes).scheduler()
        self.gates: dict[bytes, asyncio.Event] = {}
        self.ran: list[bytes] = []
        self.handed_off: list[bytes] = []  # what a stopping replica passed on
        self.endpoints = {
            op: wrap(Service.CHAT, op, self.handler, metrics, "i1", self.scheduler, self.hand_off)
            for op in (Op.ROOM_JOIN, Op.PUBLISH, Op.ROOM_LEAVE)
        }

    async def hand_off(self, msg: FakeRequest) -> None:
        self.handed_off.append(msg.data)

    async def handler(self, req: Request) -> bytes:
        self.ran.append(req.data)
        if req.data in self.gates:
            await self.gates[req.data].wait()
        return encode_text("ok")

    def gate(self, data: bytes) -> asyncio.Event:
        self.gates[data] = asyncio.Event()
        return self.gates[data]

    async def send(self, op: Op, req: FakeRequest) -> FakeRequest:
        await self.endpoints[op](req)  # returns at once: taken, not handled
        return req

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, {"service": "chat", **labels})


def request(
    data: bytes, conn: int, seq: int, *, headers: bool = True, timeout_ms: str | None = None
) -> FakeRequest:
    hdrs = {h.SENT_AT: h.now_ns(), h.FRAME: "t"}
    if headers:
        hdrs |= {h.GATEWAY: "gw", h.CONN: str(conn)}
    if timeout_ms is not None:
        hdrs[h.TIMEOUT] = timeout_ms
    return FakeRequest(data, hdrs, FakeMsg(reply_subject(PREFIX, conn, seq)))


def errors(req: FakeRequest) -> list[str | None]:
    return [reply.get(h.ERROR_CODE) for reply in req.replies]


async def test_a_connections_requests_run_in_order_across_operations() -> None:
    """One connection's join and the publish and leave it pipelined after it (three
    subjects, three subscriptions) run in that order; another connection's run
    meanwhile. The caller is the Sb-Gateway and Sb-Conn headers (a socket's leave on
    close has no reply subject of its own); without them, the reply subject's."""
    chat = Chat()
    gate = chat.gate(b"c1-join")
    first = await chat.send(Op.ROOM_JOIN, request(b"c1-join", 1, 1))
    then = await chat.send(Op.PUBLISH, request(b"c1-publish", 1, 2))
    gone = request(b"c1-leave", 1, 3)
    gone._msg.reply = reply_subject(PREFIX, 0, 0)  # hub.notify: no reply wanted
    await chat.send(Op.ROOM_LEAVE, gone)
    other = await chat.send(Op.PUBLISH, request(b"c2-publish", 2, 1, headers=False))
    await asyncio.sleep(0.01)
    assert chat.ran == [b"c1-join", b"c2-publish"] and len(other.replies) == 1
    assert then.replies == gone.replies == []  # behind their connection's join
    gate.set()
    await asyncio.wait_for(chat.scheduler.join(), 1)
    assert chat.ran[2:] == [b"c1-publish", b"c1-leave"]
    assert errors(first) == errors(then) == errors(gone) == [None]


async def test_a_connection_pipelining_many_takes_one_slot_not_all() -> None:
    """However many requests one connection has waiting, it runs one at a time: with 2
    slots, another connection is served while the first one's backlog waits."""
    chat = Chat(concurrency=2)
    gate = chat.gate(b"a0")
    for i in range(64):
        await chat.send(Op.PUBLISH, request(b"a%d" % i, 1, i + 1))
    other = await chat.send(Op.PUBLISH, request(b"b0", 2, 1))
    await asyncio.sleep(0.01)
    assert chat.ran == [b"a0", b"b0"] and errors(other) == [None]
    gate.set()
    await asyncio.wait_for(chat.scheduler.join(), 1)
    assert chat.ran[2:] == [b"a%d" % i for i in range(1, 64)]  # in order


async def test_a_join_whose_caller_stopped_waiting_is_answered_408_a_leave_still_runs() -> None:
    """Behind a slow request of its connection, a join whose Sb-Timeout passes before
    its turn is not handled (the gateway has told the client it failed and dropped the
    membership: handled late, it would store a join nobody leaves); a leave always is.
    The wait is the queue hop."""
    chat = Chat()
    gate = chat.gate(b"slow")
    await chat.send(Op.ROOM_JOIN, request(b"slow", 1, 1))
    late = await chat.send(Op.ROOM_JOIN, request(b"late-join", 1, 2, timeout_ms="20"))
    bye = await chat.send(Op.ROOM_LEAVE, request(b"leave", 1, 3, timeout_ms="20"))
    fresh = await chat.send(Op.ROOM_JOIN, request(b"fresh-join", 1, 4, timeout_ms="60000"))
    await asyncio.sleep(0.05)  # past the 20 ms
    gate.set()
    await asyncio.wait_for(chat.scheduler.join(), 1)
    assert chat.ran == [b"slow", b"leave", b"fresh-join"]
    assert errors(late) == ["408"] and errors(bye) == errors(fresh) == [None]
    join = {"operation": "room_join"}
    total = "switchboard_service_requests_total"
    assert chat.sample(total, **join, status="timeout") == 1
    queue = "switchboard_service_queue_duration_seconds"
    assert chat.sample(f"{queue}_count", **join, status="ok") == 2  # slow, fresh
    assert chat.sample(f"{queue}_sum", **join, status="ok") >= 0.05  # fresh waited
    assert chat.sample(f"{queue}_bucket", **join, status="ok", le="0.025") == 1  # slow


async def test_past_the_queue_bound_joins_are_refused_busy_leaves_are_taken() -> None:
    chat = Chat(concurrency=1, max_queued_bytes=2 * (8 + REQUEST_OVERHEAD))
    gate = chat.gate(b"running")
    await chat.send(Op.PUBLISH, request(b"running", 1, 1))
    waiting = [await chat.send(Op.PUBLISH, request(b"wait-%03d" % i, 2, i)) for i in (1, 2)]
    refused = await chat.send(Op.ROOM_JOIN, request(b"join-000", 3, 1))
    leave = await chat.send(Op.ROOM_LEAVE, request(b"leave-00", 4, 1))
    assert errors(refused) == ["503"] and refused.replies[0][h.ERROR] == "service busy"
    gate.set()
    await asyncio.wait_for(chat.scheduler.join(), 1)
    assert b"leave-00" in chat.ran and b"join-000" not in chat.ran
    assert [errors(r) for r in waiting] == [[None], [None]] and errors(leave) == [None]


async def test_a_drain_that_times_out_cancels_nothing_taken() -> None:
    """services.runner waits for the scheduler under a shutdown timeout: running out
    of it must not cancel a running request nor drop those queued behind it (a leave
    among them); they are answered as they finish."""
    chat = Chat()
    gate = chat.gate(b"c1-publish")
    await chat.send(Op.PUBLISH, request(b"c1-publish", 1, 1))
    leave = await chat.send(Op.ROOM_LEAVE, request(b"c1-leave", 1, 2))
    try:
        await asyncio.wait_for(chat.scheduler.join(), 0.02)
    except TimeoutError:
        pass
    else:
        raise AssertionError("join() returned with a request still running")
    gate.set()
    await asyncio.wait_for(chat.scheduler.join(), 1)
    assert chat.ran == [b"c1-publish", b"c1-leave"] and errors(leave) == [None]


async def test_stopping_out_of_time_refuses_what_waits_and_hands_leaves_on() -> None:
    """services.runner._abandon: a worker out of time on shutdown answers what still
    waits 503 "service stopping" (the client sends it again), except a leave, which must
    happen: it goes to the queue group again, for another replica."""
    chat = Chat(concurrency=1)
    gate = chat.gate(b"running")
    await chat.send(Op.PUBLISH, request(b"running", 1, 1))
    waiting = await chat.send(Op.PUBLISH, request(b"waiting", 2, 1))
    leave = await chat.send(Op.ROOM_LEAVE, request(b"leave", 3, 1))
    await chat.scheduler.abandon()
    assert errors(waiting) == ["503"] and waiting.replies[0][h.ERROR] == "service stopping"
    assert leave.replies == [] and chat.handed_off == [b"leave"]
    gate.set()
    await asyncio.wait_for(chat.scheduler.join(), 1)
    assert chat.ran == [b"running"]
