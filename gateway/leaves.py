"""Leaves that must reach chat: a closed socket's (``/ws/chat``; ``/ws/v2``, each room
it was still in) and a ``/ws/v2`` leave that failed after the gateway dropped the
membership.

Each is a request awaiting a chat replica's reply, sent again with backoff while none
answers (all replicas restarting, the gateway's NATS connection down), in the order
they were queued, for at most ``SB_GATEWAY_LEAVE_RETRY_TIMEOUT``; then it is given up,
counted (``switchboard_gateway_leaves_total{outcome="given_up"}``) and logged. Chat
stores a leave under its membership's dedupe id, so one handled whose reply was lost is
not stored or told twice when it comes again. Queuing is synchronous: a closing
socket's teardown does not wait for chat, and nothing of this is on the per-frame path.

A join of the same user to the same room waits behind that user's queued leaves
(:meth:`Leaves.settled`, bounded): else a reconnecting user's join could be told
before their old socket's leave, and the room would take them for gone. A closing
socket reserves its leaves (:meth:`Leaves.expect`) before its teardown's first await
(waiting for its last requests' answers, leaving the rooms): a join waits behind a
reserved leave as behind a queued one, and the reservation is released on every way out
of the teardown, whether the leave was queued or not.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from gateway.endpoints import Route
from gateway.settings import GatewaySettings
from wire import errors
from wire import headers as h
from wire.errors import ErrorCode
from wire.metrics import GatewayMetrics, LeaveOutcome

log = logging.getLogger(__name__)

WINDOW = 64  # leaves out at once (a shutdown closes every socket at once)
FIRST_BACKOFF = 0.05  # seconds; doubled after each failed round
MAX_BACKOFF = 1.0
# chat could not take it yet (no replica, stopping, store unavailable): again later
_RETRY = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.INTERNAL})

Who = tuple[str, str]  # (user, room)


@dataclass(slots=True)
class Leave:
    route: Route
    headers: dict[str, str]
    who: Who
    until: float  # loop time: given up after it
    attempts: int = 0


class Leaves:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.timeout = settings.request_timeout  # per attempt
        self.bound = settings.leave_retry_timeout
        self.queue: collections.deque[Leave] = collections.deque()
        self.nc: Client | None = None
        self._who: collections.Counter[Who] = collections.Counter()
        self._cleared: dict[Who, asyncio.Future[None]] = {}  # settled()'s waiters
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._outcomes = {o: metrics.leaves.labels(o) for o in LeaveOutcome}
        self._retries = metrics.leave_retries
        self._pending = metrics.leaves_pending

    def start(self, nc: Client) -> None:
        self.nc = nc
        self._task = asyncio.get_running_loop().create_task(self._run())

    def add(self, route: Route, headers: dict[str, str], user: str, room: str) -> None:
        """Queue one leave; it goes out at once unless leaves ahead of it wait."""
        self._who[(user, room)] += 1
        self._queue(route, headers, (user, room))

    @contextlib.contextmanager
    def expect(self, whos: Iterable[Who]) -> Iterator[Expected]:
        """Reserve the leaves a closing socket will queue (one per ``(user, room)``
        given, repeats counted): :meth:`settled` waits for them from now, before the
        teardown's first await. Released on leaving the block, queued or not."""
        expected = Expected(self, collections.Counter(whos))
        self._who.update(expected.left)
        try:
            yield expected
        finally:
            for who, n in expected.left.items():
                for _ in range(n):
                    self._forget(who)
            expected.left.clear()

    def _queue(self, route: Route, headers: dict[str, str], who: Who) -> None:
        until = asyncio.get_running_loop().time() + self.bound
        self.queue.append(Leave(route, headers, who, until))
        self._pending.set(len(self.queue))
        self._wake.set()

    def reconnected(self) -> None:
        """NATS is back: try now, not at the end of the backoff."""
        self._wake.set()

    async def settled(self, user: str, room: str, most: float) -> None:
        """Wait (at most ``most`` s) until no leave of ``user`` from ``room`` is queued."""
        who = (user, room)
        if not self._who.get(who):
            return
        waiter = self._cleared.get(who)
        if waiter is None:
            waiter = self._cleared[who] = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), most)

    async def stop(self, grace: float) -> None:
        """Shutdown: let the queued leaves go (at most ``grace`` s), then give up the rest."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # Polled: it runs once, at shutdown.
        while self.queue and self._task is not None and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self.queue:
            self._done(self.queue.popleft(), LeaveOutcome.GIVEN_UP)

    # -- sending -------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = FIRST_BACKOFF
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            nc = self.nc
            failed = True
            if nc is not None and nc.is_connected:
                # the window is the queue's head: only this task takes from the queue
                window = list(itertools.islice(self.queue, WINDOW))
                outcomes = await asyncio.gather(*(self._attempt(nc, leave) for leave in window))
                for _ in window:
                    self.queue.popleft()
                now = loop.time()
                kept = []
                for leave, outcome in zip(window, outcomes, strict=True):
                    if outcome is None and leave.until <= now:
                        outcome = LeaveOutcome.GIVEN_UP
                    if outcome is None:
                        kept.append(leave)
                    else:
                        self._done(leave, outcome)
                self.queue.extendleft(reversed(kept))  # still first, in their order
                self._pending.set(len(self.queue))
                failed = bool(kept)
            else:  # the leaves are still given up after their bound
                while self.queue and self.queue[0].until <= loop.time():
                    self._done(self.queue.popleft(), LeaveOutcome.GIVEN_UP)
            if not failed:
                backoff = FIRST_BACKOFF
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):  # woken early by a reconnect
                await asyncio.wait_for(self._wake.wait(), backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _attempt(self, nc: Client, leave: Leave) -> LeaveOutcome | None:
        """One request; the outcome, or None to send it again later."""
        if leave.attempts:
            self._retries.inc()
        leave.attempts += 1
        leave.headers[h.SENT_AT] = h.now_ns()
        try:
            msg = await nc.request(
                leave.route.subject, b"", timeout=self.timeout, headers=leave.headers
            )
        except (NoRespondersError, NatsTimeout):
            return None
        except Exception as exc:  # reconnecting with a full buffer, closed
            log.debug("leave not sent: %r", exc)
            return None
        error = errors.from_headers(msg.headers)
        if error is None:
            return LeaveOutcome.DELIVERED
        if error.code in _RETRY:
            return None
        log.warning("chat refused a leave: %s", error, extra={"room": leave.who[1]})
        return LeaveOutcome.REFUSED

    def _done(self, leave: Leave, outcome: LeaveOutcome) -> None:
        self._outcomes[outcome].inc()
        if outcome is LeaveOutcome.GIVEN_UP:
            log.warning(
                "leave given up: no chat replica answered",
                extra={"room": leave.who[1], "attempts": leave.attempts},
            )
        self._forget(leave.who)
        self._pending.set(len(self.queue))

    def _forget(self, who: Who) -> None:
        """One leave of ``who`` (queued or reserved) is no more."""
        self._who[who] -= 1
        if self._who[who] <= 0:
            del self._who[who]
            waiter = self._cleared.pop(who, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


class Expected:
    """The leaves a closing socket reserved (:meth:`Leaves.expect`)."""

    __slots__ = ("leaves", "left")

    def __init__(self, leaves: Leaves, whos: collections.Counter[Who]) -> None:
        self.leaves = leaves
        self.left = whos  # reserved, not queued yet

    def add(self, route: Route, headers: dict[str, str], user: str, room: str) -> None:
        """Queue a leave, taking its reservation if there is one left."""
        who = (user, room)
        if self.left[who] <= 0:
            self.leaves.add(route, headers, user, room)
            return
        self.left[who] -= 1
        self.leaves._queue(route, headers, who)
