"""Leaves sent until a chat replica answers (gateway/leaves.py), with a fake NATS
client whose replicas are gone, then back."""

from __future__ import annotations

import asyncio

import pytest
from nats.errors import NoRespondersError
from prometheus_client import CollectorRegistry

from gateway.endpoints import CHAT_LEAVE, ROOM_LEAVE
from gateway.leaves import Leaves
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


async def test_leaves_are_sent_again_in_order_until_a_replica_answers() -> None:
    leaves, nc, metrics = made()
    for conn in (1, 2, 3):
        leave(leaves, conn)  # synchronous: a closing socket does not wait
    await asyncio.sleep(0.3)
    assert nc.answered == [] and len(nc.tried) > 3 and len(leaves.queue) == 3
    nc.up = True
    leaves.reconnected()  # at once, not at the end of the backoff
    await asyncio.sleep(0.05)
    assert nc.answered == ["1", "2", "3"]
    assert count(metrics, LeaveOutcome.DELIVERED) == 3
    assert metrics.leave_retries._value.get() == len(nc.tried) - 3
    await leaves.stop(1.0)


async def test_a_leave_is_given_up_after_its_bound() -> None:
    leaves, _, metrics = made(leave_retry_timeout=0.2)
    leave(leaves, 1)
    await asyncio.sleep(0.6)
    assert not leaves.queue and count(metrics, LeaveOutcome.GIVEN_UP) == 1
    assert metrics.leaves_pending._value.get() == 0
    await leaves.stop(1.0)


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
    assert nc.answered == ["1", "2"]
    leaves, nc, metrics = made()  # no replica comes back: given up at the grace
    leave(leaves, 3)
    started = asyncio.get_running_loop().time()
    await leaves.stop(0.3)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert count(metrics, LeaveOutcome.GIVEN_UP) == 1 and not leaves.queue
