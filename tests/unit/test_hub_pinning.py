"""gateway/hub.py: a connection's ordered requests when the replica they are pinned to
stops. Sent again elsewhere, a request must wait until every request sent before it is
answered, or another replica could handle it first."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from gateway.connection import Connection
from gateway.endpoints import PUBLISH, V2
from gateway.hub import Hub
from gateway.settings import GatewaySettings
from wire import headers as h
from wire.errors import ErrorCode, WireError
from wire.metrics import GatewayMetrics
from wire.subjects import Service, pinned_subject, reply_subject, service_subject


class Msg:
    def __init__(self, subject: str, headers: dict[str, str]) -> None:
        self.subject, self.data, self.headers = subject, b"", headers


class FakeNats:
    is_connected = True
    is_closed = False

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []  # (subject, reply)

    async def publish(self, subject, data, reply="", headers=None) -> None:
        self.sent.append((subject, reply))


class Harness:
    """A hub with one /ws/v2 connection and a fake NATS client: requests are recorded,
    replies are fed in by hand."""

    def __init__(self) -> None:
        self.hub = Hub(GatewaySettings(), GatewayMetrics(CollectorRegistry()))
        self.nc = self.hub.nc = FakeNats()  # type: ignore[assignment]
        self.conn = Connection(self.hub.new_id(), V2, 1000)
        self.hub.register(self.conn)

    def reply_to(self, seq: int) -> str:
        return reply_subject(self.hub._prefix, self.conn.id, seq)

    async def publish(self, count: int = 1) -> None:
        for _ in range(count):
            await self.hub.request(self.conn, PUBLISH, b"x", {})

    async def answer(self, seq: int, **hdrs: str) -> None:
        await self.hub._on_reply(Msg(self.reply_to(seq), hdrs))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)  # held requests go out from a task


async def test_a_request_sent_again_waits_for_those_the_stopping_replica_still_has() -> None:
    t = Harness()
    nc, conn, answer, reply_to = t.nc, t.conn, t.answer, t.reply_to
    await t.publish()
    await answer(0, **{h.INSTANCE: "A"})  # pinned to replica A
    await t.publish(4)  # 1 runs at A, 2 and 3 wait there, 4 finds A gone
    at_a = pinned_subject(Service.CHAT, "A", PUBLISH.op)
    assert nc.sent[-4:] == [(at_a, reply_to(seq)) for seq in (1, 2, 3, 4)]
    await answer(4, **{h.STATUS: "503"})  # no responders: A has left
    assert conn.gate == 3 and [s for s, _ in conn.held] == [4]
    # A stops out of time: 3 is refused at once, 2 handed to another replica, 1 runs on
    await answer(3, **{h.ERROR_CODE: "503", h.ERROR: "service stopping"})
    assert conn.gate == 2 and len(nc.sent) == 5  # 4 waits for 1 and 2
    await answer(2, **{h.INSTANCE: "B"})  # handed to replica B, which names itself
    assert conn.gate == 1 and len(nc.sent) == 5 and conn.pin is None  # 1 still at A
    await answer(1, **{h.INSTANCE: "A"})  # A's last answer: not pinned to A again
    assert conn.pin is None and conn.gate == 4
    assert nc.sent[-1] == (service_subject(Service.CHAT, PUBLISH.op), reply_to(4))
    await answer(4, **{h.INSTANCE: "B"})
    assert conn.pin == "B" and conn.gate is None and not conn.pending


async def test_after_a_timeout_new_requests_wait_for_those_still_out() -> None:
    """A pinned request times out (a hung replica): the connection unpins, and its next
    request must not go to the queue group while an earlier one may still be handled
    at the hung replica."""
    t = Harness()
    hub, nc, conn, answer = t.hub, t.nc, t.conn, t.answer
    await t.publish()
    await answer(0, **{h.INSTANCE: "A"})
    await t.publish(2)
    hub._fail(conn, 1, WireError(ErrorCode.TIMEOUT, "service unavailable"))
    assert conn.pin is None
    await t.publish()  # 3
    assert len(nc.sent) == 3 and conn.gate == 2  # held until 2 is answered
    await answer(2, **{h.INSTANCE: "A"})  # A's late answer to a pinned request
    assert conn.pin is None  # not pinned to A by it
    assert nc.sent[-1] == (
        service_subject(Service.CHAT, PUBLISH.op),
        reply_subject(hub._prefix, conn.id, 3),
    )


async def test_a_replica_that_timed_out_is_pinned_again_once_it_answers_afresh() -> None:
    """A pinned request that times out unpins (a hung replica); the connection's next
    request goes alone to the queue group, and if that same replica answers it, it is
    alive: the connection pins to it again (not one request at a time for ever)."""
    t = Harness()
    hub, nc, conn, answer = t.hub, t.nc, t.conn, t.answer
    await t.publish()
    await answer(0, **{h.INSTANCE: "A"})
    await t.publish()
    hub._fail(conn, 1, WireError(ErrorCode.TIMEOUT, "service unavailable"))
    assert conn.pin is None and conn.unpinned == "A"
    await t.publish()
    assert nc.sent[-1][0] == service_subject(Service.CHAT, PUBLISH.op)  # alone
    await answer(2, **{h.INSTANCE: "A"})
    assert conn.pin == "A"


def test_a_gateway_restarted_under_its_id_does_not_reuse_membership_ids() -> None:
    # Chat's dedupe ids of join and leave events are "<gateway id>:<membership id>": a
    # gateway restarted with the same SB_GATEWAY_ID counted from 1 again, so its first
    # joins within the dedupe window were taken for the old process's (not stored).
    settings = GatewaySettings(id="fixed")
    first = Hub(settings, GatewayMetrics(CollectorRegistry()))
    again = Hub(settings, GatewayMetrics(CollectorRegistry()))
    ours = {first.new_id() for _ in range(100)}
    assert not ours & {again.new_id() for _ in range(100)}
