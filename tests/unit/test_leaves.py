"""Leaves sent until a chat replica answers (gateway/leaves.py), with a fake NATS
client whose replicas are gone, then back."""

from __future__ import annotations

import asyncio

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from prometheus_client import CollectorRegistry

from gateway.endpoints import CHAT_LEAVE, ROOM_LEAVE
from gateway.leaves import WINDOW, Leaves
from gateway.settings import GatewaySettings
from wire import headers as h
from wire.metrics import GatewayMetrics, LeaveOutcome


class Reply:
    headers = None


class FakeNats:
    """No chat replica until ``up`` is set: no responders; then every leave answered."""

    is_connected = True

    def __init__(self) -> None:
        self.up = False
        self.tried: list[str] = []  # Sb-Conn of each attempt
        self.answered: list[str] = []

    async def request(self, subject, data=b"", timeout=None, headers=None) -> Reply:
        self.tried.append(headers[h.CONN])
        await asyncio.sleep(0)
        if not self.up:
            raise NoRespondersError
        self.answered.append(headers[h.CONN])
        return Reply()


def made(**settings: float) -> tuple[Leaves, FakeNats, GatewayMetrics]:
    metrics = GatewayMetrics(CollectorRegistry())
    leaves = Leaves(GatewaySettings(**settings), metrics)  # type: ignore[arg-type]
    nc = FakeNats()
    leaves.start(nc)  # type: ignore[arg-type]
    return leaves, nc, metrics


def count(metrics: GatewayMetrics, outcome: LeaveOutcome) -> float:
    return metrics.leaves.labels(outcome)._value.get()


def leave(leaves: Leaves, conn: int, user: str = "alice", room: str = "general") -> None:
    route = CHAT_LEAVE if room == "general" else ROOM_LEAVE
    leaves.add(route, {h.GATEWAY: "gw", h.CONN: str(conn)}, user, room)


async def test_leaves_are_sent_again_until_a_replica_answers() -> None:
    leaves, nc, metrics = made()
    for conn, user in ((1, "alice"), (2, "bob"), (3, "carol")):
        leave(leaves, conn, user)  # synchronous: a closing socket does not wait
    await asyncio.sleep(0.3)
    assert nc.answered == [] and len(nc.tried) > 3 and leaves.pending == 3
    nc.up = True
    leaves.reconnected()  # at once, not at the end of the backoff
    await asyncio.sleep(0.05)
    assert sorted(nc.answered) == ["1", "2", "3"]
    assert count(metrics, LeaveOutcome.DELIVERED) == 3
    assert metrics.leave_retries._value.get() == len(nc.tried) - 3
    await leaves.stop(1.0)


class Slow(FakeNats):
    """Chat up; the leave of conn 1 is answered late, each one recorded as answered."""

    async def request(self, subject, data=b"", timeout=None, headers=None) -> Reply:
        conn = headers[h.CONN]
        self.tried.append(conn)
        await asyncio.sleep(0.2 if conn == "1" else 0.01)
        self.answered.append(conn)
        return Reply()


async def test_a_users_leaves_of_a_room_go_in_order_others_do_not_wait() -> None:
    leaves, _, _ = made()
    nc = leaves.nc = Slow()  # type: ignore[assignment]
    nc.up = True
    for conn in (1, 2, 3):
        leave(leaves, conn, "alice", "general")
    leave(leaves, 4, "bob", "general")
    leave(leaves, 5, "alice", "lounge")
    await asyncio.sleep(0.1)
    assert nc.tried == ["1", "4", "5"]  # alice's next leave of general waits for the first
    await asyncio.sleep(0.3)
    assert nc.answered == ["4", "5", "1", "2", "3"]
    await leaves.stop(1.0)


class Poisoned(FakeNats):
    """Chat up, answering after a moment; conn 0's leave never finds a replica."""

    async def request(self, subject, data=b"", timeout=None, headers=None) -> Reply:
        conn = headers[h.CONN]
        self.tried.append(conn)
        await asyncio.sleep(0.001)
        if conn == "0":
            raise NoRespondersError
        self.answered.append(conn)
        return Reply()


async def test_a_leave_that_fails_holds_up_no_other() -> None:
    # The leaves went in lockstep rounds of 64, the whole queue waiting the backoff
    # (up to 1 s) whenever one leave of a round failed: 504 of 1999 in 3 s.
    leaves, _, metrics = made()
    nc = leaves.nc = Poisoned()  # type: ignore[assignment]
    for conn in range(1000):
        leave(leaves, conn, f"u{conn}")
    await asyncio.sleep(1.0)  # ~16 windows of 1 ms each
    assert len(nc.answered) == 999
    assert leaves.pending == 1 and count(metrics, LeaveOutcome.DELIVERED) == 999
    await leaves.stop(0.1)
    assert count(metrics, LeaveOutcome.GIVEN_UP) == 1


async def test_with_no_replica_at_all_every_leave_waits() -> None:
    # Each leave's own backoff alone: 1000 leaves tried ~4 times each in 0.5 s.
    leaves, nc, _ = made()
    for conn in range(1000):
        leave(leaves, conn, f"u{conn}")
    await asyncio.sleep(0.5)
    assert WINDOW <= len(nc.tried) <= 8 * WINDOW
    nc.up = True  # a replica again: the next window's first answer ends the wait
    await asyncio.sleep(1.5)
    assert len(nc.answered) == 1000
    await leaves.stop(0.1)


async def test_a_leave_is_given_up_after_its_bound() -> None:
    leaves, _, metrics = made(leave_retry_timeout=0.2)
    leave(leaves, 1)
    await asyncio.sleep(0.6)
    assert not leaves.pending and count(metrics, LeaveOutcome.GIVEN_UP) == 1
    assert metrics.leaves_pending._value.get() == 0
    await leaves.stop(1.0)


class Hung(FakeNats):
    """Chat never answers: each request takes its whole timeout."""

    async def request(self, subject, data=b"", timeout=None, headers=None) -> Reply:
        self.tried.append(headers[h.CONN])
        await asyncio.sleep(timeout)
        raise NatsTimeout


class PartlyHung(Hung):
    """A replica that hangs takes every tenth leave; the others are answered."""

    async def request(self, subject, data=b"", timeout=None, headers=None) -> Reply:
        if int(headers[h.CONN]) % 10 == 0:
            return await super().request(subject, data, timeout, headers)
        self.tried.append(headers[h.CONN])
        await asyncio.sleep(0.001)
        self.answered.append(headers[h.CONN])
        return Reply()


async def test_a_hung_replica_holds_up_only_the_leaves_it_took() -> None:
    # Each round of 64 waited for its slowest request: the request timeout.
    leaves, _, _ = made(request_timeout=2.0)
    nc = leaves.nc = PartlyHung()  # type: ignore[assignment]
    for conn in range(300):
        leave(leaves, conn, f"u{conn}")
    await asyncio.sleep(0.5)
    assert len(nc.answered) == 270
    await leaves.stop(0.1)


async def test_leaves_not_out_are_given_up_at_their_bound_in_one_warning(caplog) -> None:
    # Only the 64 leaves out were checked against their deadline: those behind them
    # were given up a request timeout late or more, each with its own warning.
    leaves, _, metrics = made(leave_retry_timeout=0.2, request_timeout=2.0)
    nc = leaves.nc = Hung()  # type: ignore[assignment]
    for conn in range(200):
        leave(leaves, conn, f"u{conn}")
    await asyncio.sleep(0.4)
    assert len(nc.tried) == WINDOW
    assert count(metrics, LeaveOutcome.GIVEN_UP) == 200 - WINDOW
    assert leaves.pending == WINDOW
    await asyncio.sleep(1.0)  # those given up within a second: one warning
    warnings = [r for r in caplog.records if "given up" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].given_up == 200 - WINDOW
    await leaves.stop(0.1)
    warnings = [r for r in caplog.records if "given up" in r.getMessage()]
    assert len(warnings) == 2 and warnings[1].given_up == WINDOW


async def test_a_join_waits_behind_its_users_leave_of_the_room_bounded() -> None:
    leaves, nc, _ = made()
    leave(leaves, 1, "alice", "general")
    await leaves.settled("bob", "general", 5.0)  # not bob's: at once
    await leaves.settled("alice", "lounge", 5.0)  # nor that room's
    started = asyncio.get_running_loop().time()
    await leaves.settled("alice", "general", 0.2)  # chat still gone: bounded
    assert 0.15 < asyncio.get_running_loop().time() - started < 1.0

    async def back() -> None:
        await asyncio.sleep(0.1)
        nc.up = True
        leaves.reconnected()

    waking = asyncio.create_task(back())
    await leaves.settled("alice", "general", 5.0)
    assert nc.answered == ["1"]
    await waking
    await leaves.stop(1.0)


async def test_a_join_waits_behind_a_leave_reserved_before_it_is_queued() -> None:
    # A closing socket waits for its last requests before it queues its leave: a join
    # of the same user meanwhile waits for the reservation, then for the leave.
    leaves, nc, _ = made()
    nc.up = True
    with leaves.expect([("alice", "general")]) as expected:
        joining = asyncio.create_task(leaves.settled("alice", "general", 5.0))
        await asyncio.sleep(0.1)  # the old socket's last requests
        assert not joining.done()
        expected.add(CHAT_LEAVE, {h.GATEWAY: "gw", h.CONN: "1"}, "alice", "general")
    await asyncio.wait_for(joining, 1.0)
    assert nc.answered == ["1"]
    # a reservation not queued (the socket never joined, an error) is released
    with pytest.raises(RuntimeError), leaves.expect([("bob", "general")] * 2):
        raise RuntimeError
    with leaves.expect([("carol", "general")]):
        pass
    for user in ("bob", "carol"):
        await asyncio.wait_for(leaves.settled(user, "general", 5.0), 0.1)
    assert not leaves._who
    await leaves.stop(1.0)


async def test_shutdown_flushes_the_queued_leaves_within_its_grace() -> None:
    leaves, nc, metrics = made()
    nc.up = True
    leave(leaves, 1)
    leave(leaves, 2, "bob", "lounge")
    await leaves.stop(1.0)
    assert sorted(nc.answered) == ["1", "2"]
    leaves, nc, metrics = made()  # no replica comes back: given up at the grace
    leave(leaves, 3)
    started = asyncio.get_running_loop().time()
    await leaves.stop(0.3)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert count(metrics, LeaveOutcome.GIVEN_UP) == 1 and not leaves.pending
