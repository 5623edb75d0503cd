"""services/scheduler.py: turns between callers, the concurrency bound, expiry, the
queue bound, join; and the wire helpers it relies on (Sb-Timeout, reply_caller)."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from services.runner import REQUEST_OVERHEAD, wrap
from services.scheduler import FairScheduler, Job
from wire import headers as h
from wire.frames import Request, encode_text
from wire.metrics import ServiceMetrics
from wire.subjects import Op, Service, reply_caller, reply_prefix, reply_subject


class Log:
    """Records what ran, expired, and how many ran at once; each job waits for its gate."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.running = 0
        self.most = 0
        self.gates: dict[str, asyncio.Event] = {}

    def job(self, name: str, deadline: float = math.inf, size: int = 1) -> Job:
        gate = self.gates[name] = asyncio.Event()

        async def run() -> None:
            self.running += 1
            self.most = max(self.most, self.running)
            self.events.append(f"start {name}")
            try:
                await gate.wait()
            finally:
                self.running -= 1

        async def expire() -> None:
            self.events.append(f"expired {name}")

        return Job(run, expire, deadline, size)


async def finish(log: Log, *names: str) -> None:
    for name in names:
        log.gates[name].set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)


async def test_callers_take_turns_instead_of_arrival_order() -> None:
    log = Log()
    s = FairScheduler(concurrency=1, max_queued_bytes=1000)
    for i in range(4):
        assert s.submit("heavy", log.job(f"h{i}"))
    assert s.submit("light", log.job("l0"))
    assert s.submit("other", log.job("o0"))
    await asyncio.sleep(0)
    assert log.events == ["start h0"]
    await finish(log, "h0", "h1", "l0", "o0", "h2", "h3")
    await asyncio.wait_for(s.join(), 1)
    # h0 was taken at once, so h1 found the turn empty and leads it; then each caller's
    # first job before heavy's third, not every heavy job before the others
    assert log.events == [
        "start h0",
        "start h1",
        "start l0",
        "start o0",
        "start h2",
        "start h3",
    ]


async def test_a_caller_arriving_late_waits_for_one_job_of_each_caller_ahead() -> None:
    log = Log()
    s = FairScheduler(concurrency=1, max_queued_bytes=1000)
    for i in range(5):
        s.submit("heavy", log.job(f"h{i}"))
    await asyncio.sleep(0)
    await finish(log, "h0")  # h1 starts
    s.submit("light", log.job("l0"))  # behind heavy's turn: after h2, not after h4
    await finish(log, "h1", "h2", "l0", "h3", "h4")
    await asyncio.wait_for(s.join(), 1)
    assert log.events == [f"start {n}" for n in ("h0", "h1", "h2", "l0", "h3", "h4")]


async def test_at_most_concurrency_jobs_run_at_once() -> None:
    log = Log()
    s = FairScheduler(concurrency=3, max_queued_bytes=10_000)
    names = [f"j{i}" for i in range(10)]
    for i, name in enumerate(names):
        s.submit(f"c{i % 4}", log.job(name))
    await asyncio.sleep(0)
    assert log.running == 3 and s.running == 3 and s.queued == 7
    for name in names:
        await finish(log, name)
    await asyncio.wait_for(s.join(), 1)
    assert log.most == 3
    assert sorted(log.events) == sorted(f"start {n}" for n in names)


async def test_one_caller_gets_half_the_slots_so_others_find_one_free() -> None:
    log = Log()
    s = FairScheduler(concurrency=4, max_queued_bytes=10_000)
    assert s.per_caller == 2
    for i in range(6):
        s.submit("greedy", log.job(f"g{i}"))
    await asyncio.sleep(0)
    assert log.events == ["start g0", "start g1"]  # two slots of four left idle for others
    s.submit("other", log.job("o0"))
    await asyncio.sleep(0)
    assert log.events[-1] == "start o0" and s.running == 3  # at once, no wait
    await finish(log, "g0")
    assert log.events[-1] == "start g2" and s.running == 3  # greedy's own slot back
    await finish(log, "o0", "g1", "g2", "g3", "g4", "g5")
    await asyncio.wait_for(s.join(), 1)
    assert log.most == 3 and s._running == {}


def test_per_caller_slots_can_be_chosen() -> None:
    assert FairScheduler(concurrency=1, max_queued_bytes=0).per_caller == 1
    assert FairScheduler(concurrency=16, max_queued_bytes=0, per_caller=16).per_caller == 16
    with pytest.raises(ValueError):
        FairScheduler(concurrency=4, max_queued_bytes=0, per_caller=0)


async def test_a_job_whose_caller_stopped_waiting_is_expired_not_run() -> None:
    log = Log()
    s = FairScheduler(concurrency=1, max_queued_bytes=1000)
    now = asyncio.get_running_loop().time()
    s.submit("a", log.job("first"))
    s.submit("b", log.job("stale", deadline=now + 0.05))
    s.submit("c", log.job("fresh", deadline=now + 60))
    await asyncio.sleep(0.1)  # "stale" passes its deadline while "first" runs
    await finish(log, "first")
    await finish(log, "fresh")
    await asyncio.wait_for(s.join(), 1)
    assert log.events == ["start first", "expired stale", "start fresh"]


async def test_past_the_queue_bound_a_job_is_refused_and_nothing_else_changes() -> None:
    log = Log()
    s = FairScheduler(concurrency=1, max_queued_bytes=100)
    assert s.submit("a", log.job("running", size=500))  # taken and started: queue empty
    assert s.submit("a", log.job("w1", size=60))
    assert not s.submit("b", log.job("w2", size=41))  # 60 + 41 > 100
    assert s.submit("b", log.job("w3", size=40))  # 60 + 40 fits
    assert (s.queued, s.queued_bytes) == (2, 100)
    await finish(log, "running", "w1", "w3")
    await asyncio.wait_for(s.join(), 1)
    assert "start w2" not in log.events and s.queued_bytes == 0


async def test_one_job_larger_than_the_bound_is_taken_when_nothing_waits() -> None:
    log = Log()
    s = FairScheduler(concurrency=1, max_queued_bytes=10)
    assert s.submit("a", log.job("first", size=5))
    assert s.submit("a", log.job("big", size=50))  # alone in the queue: taken
    assert not s.submit("b", log.job("next", size=1))
    await finish(log, "first", "big")
    await asyncio.wait_for(s.join(), 1)
    assert log.events == ["start first", "start big"]


async def test_join_waits_for_queued_and_running_jobs() -> None:
    log = Log()
    s = FairScheduler(concurrency=1, max_queued_bytes=1000)
    await asyncio.wait_for(s.join(), 1)  # nothing taken: returns at once
    s.submit("a", log.job("one"))
    s.submit("a", log.job("two"))
    joined = asyncio.create_task(s.join())
    await asyncio.sleep(0.05)
    assert not joined.done()
    await finish(log, "one")
    await asyncio.sleep(0.05)
    assert not joined.done()  # "two" runs now
    await finish(log, "two")
    await asyncio.wait_for(joined, 1)


async def test_a_failing_job_is_logged_and_frees_its_slot(caplog) -> None:
    s = FairScheduler(concurrency=1, max_queued_bytes=1000)
    ran = []

    async def boom() -> None:
        raise ConnectionError("closed")

    async def fine() -> None:
        ran.append("fine")

    async def never() -> None:
        raise AssertionError

    with caplog.at_level(logging.ERROR, logger="services.scheduler"):
        s.submit("a", Job(boom, never, math.inf, 1))
        s.submit("a", Job(fine, never, math.inf, 1))
        await asyncio.wait_for(s.join(), 1)
    assert ran == ["fine"]
    assert "request failed" in caplog.text


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        FairScheduler(concurrency=0, max_queued_bytes=1)


@pytest.mark.parametrize(
    ("seconds", "value"), [(2.0, "2000"), (0.0014, "2"), (0.0, "1"), (-1.0, "1"), (1.9996, "2000")]
)
def test_timeout_header_rounds_up_to_whole_milliseconds(seconds: float, value: str) -> None:
    assert h.timeout_ms(seconds) == value


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("2000", 2.0), ("1", 0.001), (None, None), ("", None), ("0", None), ("-5", None),
     ("soon", None), ("9" * 5000, None)],
)  # fmt: skip
def test_timeout_header_is_read_defensively(value: str | None, seconds: float | None) -> None:
    assert h.timeout_seconds(value) == seconds


def test_reply_caller_is_the_connection_of_a_gateway_reply_subject() -> None:
    prefix = reply_prefix("gw-a")
    assert reply_caller(reply_subject(prefix, 7, 1)) == reply_caller(reply_subject(prefix, 7, 99))
    assert reply_caller(reply_subject(prefix, 7, 1)) != reply_caller(reply_subject(prefix, 8, 1))
    other = reply_prefix("gw-b")
    assert reply_caller(reply_subject(prefix, 7, 1)) != reply_caller(reply_subject(other, 7, 1))
    assert reply_caller("_INBOX.abc.def") == "_INBOX.abc"
    assert reply_caller("plain") == "plain"


@dataclass
class FakeMsg:
    reply: str


@dataclass
class FakeRequest:
    """nats.micro's Request as services.runner uses it."""

    data: bytes
    headers: dict[str, str]
    _msg: FakeMsg
    replies: list[dict[str, str]] = field(default_factory=list)

    async def respond(self, data: bytes = b"", headers=None) -> None:
        self.replies.append(dict(headers or {}))

    async def respond_error(self, code, description, data=b"", headers=None) -> None:
        await self.respond(data, {**(headers or {}), h.ERROR_CODE: code, h.ERROR: description})


def gated_handler():
    """A handler that records each request's data, then waits for ``gate``."""
    gate = asyncio.Event()
    ran: list[bytes] = []

    async def handler(req: Request) -> bytes:
        ran.append(req.data)
        await gate.wait()
        return encode_text("done")

    return handler, gate, ran


async def test_the_runner_queues_by_connection_with_the_callers_deadline() -> None:
    """services.runner.wrap with a scheduler: the deadline comes from Sb-Timeout (none
    without it), the turn from the reply subject's connection; an expired request is
    answered 408 and a refused one 503 without running, each counted."""
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry, Service.CODEC)
    handler, gate, ran = gated_handler()

    queued = metrics.queued.labels(Service.CODEC, Op.TRANSFORM)
    # room for 4 small requests waiting, not for a 5th of 10 bytes
    room = 4 * (2 + REQUEST_OVERHEAD) + 9
    scheduler = FairScheduler(concurrency=1, max_queued_bytes=room, queued_gauge=queued)
    endpoint = wrap(Service.CODEC, Op.TRANSFORM, handler, metrics, scheduler=scheduler)
    prefix = reply_prefix("gw")

    def request(data: bytes, conn: int, seq: int, timeout_ms: str | None = None) -> FakeRequest:
        hdrs = {h.SENT_AT: h.now_ns(), h.FRAME: "b"}
        if timeout_ms is not None:
            hdrs[h.TIMEOUT] = timeout_ms
        return FakeRequest(data, hdrs, FakeMsg(reply_subject(prefix, conn, seq)))

    first = request(b"a1", 1, 1)  # runs at once, held by the gate
    second = request(b"a2", 1, 2)  # conn 1 again: first in the turn (it queued first)
    third = request(b"a3", 1, 3)  # after conns 2 and 3 had theirs
    stale = request(b"b1", 2, 1, timeout_ms="20")  # expires while it waits
    fresh = request(b"c1", 3, 1, timeout_ms="60000")
    refused = request(b"x" * 10, 4, 1)  # 4 x 2 bytes (+ overhead) waiting: full
    for req in (first, second, third, stale, fresh, refused):
        await endpoint(req)  # returns at once: queued, not handled
    await asyncio.sleep(0.01)
    assert ran == [b"a1"]
    assert refused.replies == [
        {
            h.HANDLED_AT: refused.replies[0][h.HANDLED_AT],
            h.ERROR_CODE: "503",
            h.ERROR: "service busy",
        }
    ]
    labels = {"service": "codec", "operation": "transform"}
    waiting = registry.get_sample_value("switchboard_service_queued_requests", labels)
    assert waiting == 4  # a2, a3, b1, c1 (a1 runs; x was refused)
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.wait_for(scheduler.join(), 1)
    assert registry.get_sample_value("switchboard_service_queued_requests", labels) == 0
    assert ran == [b"a1", b"a2", b"c1", b"a3"]  # turns: conn 1, 2 (expired), 3, 1
    assert stale.replies[0][h.ERROR_CODE] == "408"
    for req in (first, second, fresh, third):
        assert len(req.replies) == 1 and h.ERROR_CODE not in req.replies[0]

    def count(status: str) -> float:
        labels = {"service": "codec", "operation": "transform", "status": status}
        return registry.get_sample_value("switchboard_service_requests_total", labels) or 0.0

    assert (count("ok"), count("timeout"), count("busy")) == (4, 1, 1)


async def test_requests_through_one_inbox_take_turns_by_user() -> None:
    """Files requests come through their gateway's nc.request() inbox, one reply prefix
    for every user of that gateway: the Sb-User header tells the callers apart."""
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry, Service.BINARY)
    handler, gate, ran = gated_handler()

    scheduler = FairScheduler(concurrency=1, max_queued_bytes=1 << 20)
    endpoint = wrap(Service.BINARY, Op.FILE_LIST, handler, metrics, scheduler=scheduler)
    for n, (data, user) in enumerate(
        [(b"a1", "ann"), (b"a2", "ann"), (b"a3", "ann"), (b"b1", "bob")]
    ):
        hdrs = {h.SENT_AT: h.now_ns(), h.FRAME: "t", h.USER: user}
        await endpoint(FakeRequest(data, hdrs, FakeMsg(f"_INBOX.gateway1.{n}")))
    gate.set()
    await asyncio.wait_for(scheduler.join(), 1)
    assert ran == [b"a1", b"a2", b"b1", b"a3"]  # one inbox, FIFO, would be a1 a2 a3 b1


async def test_abandon_answers_the_waiting_and_lets_the_running_finish() -> None:
    """A worker out of time on shutdown: what waits is refused (not dropped), what runs
    finishes, nothing new starts."""
    log = Log()
    refused: list[str] = []
    s = FairScheduler(concurrency=1, max_queued_bytes=1000)
    s.submit("a", log.job("running"))
    for name in ("w1", "w2"):
        job = log.job(name)

        async def refuse(name: str = name) -> None:
            refused.append(name)

        job.refuse = refuse
        s.submit("b", job)
    await asyncio.sleep(0)
    await s.abandon()
    assert refused == ["w1", "w2"] and s.queued == 0
    joined = asyncio.create_task(s.join())
    await asyncio.sleep(0.01)
    assert not joined.done()  # "running" still runs
    await finish(log, "running")
    await asyncio.wait_for(joined, 1)
    assert log.events == ["start running"]
    assert not s.submit("c", log.job("late"))  # refused: nothing new once abandoned
