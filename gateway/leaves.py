"""Leaves that must reach chat: a closed socket's (``/ws/chat``; ``/ws/v2``, each room
it was still in) and a ``/ws/v2`` leave that failed after the gateway dropped the
membership.

Each is a request awaiting a chat replica's reply, sent again while none answers (all
replicas restarting, the gateway's NATS connection down), for at most
``SB_GATEWAY_LEAVE_RETRY_TIMEOUT``; then it is given up, counted
(``switchboard_gateway_leaves_total{outcome="given_up"}``) and logged (at most one
warning per ``LOG_EVERY`` s, with their count, and one at shutdown). Chat stores a leave
under its membership's dedupe id, so one handled whose reply was lost is not stored or
told twice when it comes again. Queuing is synchronous: a closing socket's teardown does not
wait for chat, and nothing of this is on the per-frame path.

Sending: up to ``WINDOW`` requests are out at once, each slot taken again as soon as
its request ends. A leave not answered is tried again after its own backoff (doubled
per attempt, at most ``MAX_BACKOFF``), so a leave that keeps failing, or a slow
replica, holds up only the leaves it has. Everything waits (a global backoff) only when a whole
window's worth of attempts in a row found no answer (no replica at all), or while NATS
is down; a reconnect to NATS cuts every wait short. Deadlines are checked over the
whole queue, not only the leaves being sent.

Order: the leaves of one ``(user, room)`` go one at a time, in the order queued: the
next is sent once the one before it is answered or given up. Leaves of different users
or rooms are sent concurrently and may reach chat in any order.

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
import functools
import heapq
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

WINDOW = 64  # requests out at once (a shutdown closes every socket at once)
FIRST_BACKOFF = 0.05  # seconds; a leave's wait is doubled after each failed attempt
MAX_BACKOFF = 1.0
LOG_EVERY = 10.0  # seconds: at most one warning of leaves given up in this long
LOG_GATHER = 1.0  # seconds: a first leave given up is logged with those given up in this long
# chat could not take it yet (no replica, stopping, store unavailable): again later
_RETRY = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.INTERNAL})

Who = tuple[str, str]  # (user, room)


@dataclass(slots=True, eq=False)
class Leave:
    route: Route
    headers: dict[str, str]
    who: Who
    until: float  # loop time: given up after it
    due: float  # loop time of its next attempt
    attempts: int = 0
    backoff: float = FIRST_BACKOFF  # its next wait after a failed attempt
    flying: bool = False  # a request is out
    done: bool = False


class Leaves:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.timeout = settings.request_timeout  # per attempt
        self.bound = settings.leave_retry_timeout
        self.nc: Client | None = None
        self.pending = 0  # queued, not answered or given up yet
        # each (user, room)'s leaves in order: only its first is sent (the others wait)
        self._chains: dict[Who, collections.deque[Leave]] = {}
        self._ready: list[tuple[float, int, Leave]] = []  # firsts not out, by due time
        self._order = itertools.count()  # ties in _ready
        # every leave in the order queued, so by deadline (the done ones dropped lazily)
        self._deadlines: collections.deque[Leave] = collections.deque()
        self._flying: set[asyncio.Task[LeaveOutcome | None]] = set()
        self._failed = 0  # attempts in a row that found no answer
        self._pause = FIRST_BACKOFF  # the next global wait
        self._paused_until = 0.0
        self._unlogged = 0  # given up, not logged yet
        self._log_at = 0.0
        self._stopping = False
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

    def queued(self) -> list[Leave]:
        """The leaves not answered or given up yet (those of one user and room in order)."""
        return [leave for chain in self._chains.values() for leave in chain]

    def add(self, route: Route, headers: dict[str, str], user: str, room: str) -> None:
        """Queue one leave; it goes out at once unless a leave of the same user from the
        same room is ahead of it, or every slot is taken."""
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
        now = asyncio.get_running_loop().time()
        leave = Leave(route, headers, who, now + self.bound, now)
        self._deadlines.append(leave)
        chain = self._chains.get(who)
        if chain is None:
            self._chains[who] = collections.deque((leave,))
            self._ready_at(leave, now)
        else:
            chain.append(leave)  # its turn comes when the one before it is done
        self.pending += 1
        self._pending.set(self.pending)
        self._wake.set()

    def reconnected(self) -> None:
        """NATS is back: try every leave now, not at the end of its backoff."""
        self._paused_until = 0.0
        self._pause = FIRST_BACKOFF
        self._failed = 0
        self._ready = [(0.0, order, leave) for _, order, leave in self._ready]
        heapq.heapify(self._ready)
        self._wake.set()

    async def settled(self, user: str, room: str, most: float) -> None:
        """Wait (at most ``most`` s) until no leave of ``user`` from ``room`` is queued
        (or reserved)."""
        who = (user, room)
        if not self._who.get(who):
            return
        waiter = self._cleared.get(who)
        if waiter is None:
            waiter = self._cleared[who] = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), most)

    async def stop(self, grace: float) -> None:
        """Shutdown: let the queued leaves go (at most ``grace`` s), then give up the rest
        (one warning with their count)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self._stopping = True
        # Polled: it runs once, at shutdown.
        while self.pending and self._task is not None and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        flying = list(self._flying)
        self._flying.clear()  # their callbacks see it: nothing more is sent
        for task in flying:
            task.cancel()
        await asyncio.gather(*flying, return_exceptions=True)
        for chain in list(self._chains.values()):
            for leave in list(chain):
                self._finish(leave, LeaveOutcome.GIVEN_UP)
        self._log_given_up(loop.time(), " at shutdown")

    # -- sending -------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()  # nothing below awaits: a wake from now on is kept
            now = loop.time()
            self._expire(now)
            if not self._stopping and now >= self._log_at:
                self._log_given_up(now)
            nc = self.nc
            sending = nc is not None and nc.is_connected and now >= self._paused_until
            ready = self._ready
            while sending and ready and len(self._flying) < WINDOW:
                due, _, leave = ready[0]
                if not leave.done and due > now:
                    break
                heapq.heappop(ready)
                if not leave.done:
                    self._send(nc, leave)  # type: ignore[arg-type]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next(now, sending))

    def _next(self, now: float, sending: bool) -> float | None:
        """Seconds until the runner has something to do (None: until woken)."""
        times = []
        if self._deadlines:
            times.append(self._deadlines[0].until)
        if self._unlogged and not self._stopping:
            times.append(self._log_at)
        if self._paused_until > now:
            times.append(self._paused_until)
        elif sending and self._ready and len(self._flying) < WINDOW:
            times.append(self._ready[0][0])
        return max(0.0, min(times) - now) if times else None

    def _expire(self, now: float) -> None:
        """Give up the leaves past their deadline, wherever they are in the queue (one
        out is given up when its attempt ends)."""
        deadlines = self._deadlines
        while deadlines and (deadlines[0].done or deadlines[0].until <= now):
            leave = deadlines.popleft()
            if not leave.done and not leave.flying:
                self._finish(leave, LeaveOutcome.GIVEN_UP)

    def _ready_at(self, leave: Leave, due: float) -> None:
        leave.due = due
        heapq.heappush(self._ready, (due, next(self._order), leave))

    def _send(self, nc: Client, leave: Leave) -> None:
        leave.flying = True
        task = asyncio.get_running_loop().create_task(self._attempt(nc, leave))
        self._flying.add(task)
        task.add_done_callback(functools.partial(self._landed, leave))

    def _landed(self, leave: Leave, task: asyncio.Task[LeaveOutcome | None]) -> None:
        leave.flying = False
        if task not in self._flying:
            return  # stopped: stop() gives it up
        self._flying.discard(task)
        self._wake.set()  # a slot is free
        outcome = None if task.cancelled() else task.result()
        now = asyncio.get_running_loop().time()
        if outcome is not None:  # chat answered
            self._failed = 0
            self._pause = FIRST_BACKOFF
            self._paused_until = 0.0
            self._finish(leave, outcome)
            return
        self._failed += 1
        if self._failed >= min(WINDOW, self.pending):  # nothing answers: chat is gone
            self._failed = 0
            self._paused_until = now + self._pause * random.uniform(0.5, 1.0)
            self._pause = min(self._pause * 2, MAX_BACKOFF)
        if leave.until <= now:
            self._finish(leave, LeaveOutcome.GIVEN_UP)
            return
        self._ready_at(leave, now + leave.backoff * random.uniform(0.5, 1.0))
        leave.backoff = min(leave.backoff * 2, MAX_BACKOFF)

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

    def _finish(self, leave: Leave, outcome: LeaveOutcome) -> None:
        """Answered or given up: the next leave of its user and room may go."""
        leave.done = True
        self.pending -= 1
        self._pending.set(self.pending)
        self._outcomes[outcome].inc()
        if outcome is LeaveOutcome.GIVEN_UP:
            if not self._unlogged:  # logged with those given up soon after it
                now = asyncio.get_running_loop().time()
                self._log_at = max(self._log_at, now + LOG_GATHER)
            self._unlogged += 1
        who = leave.who
        chain = self._chains[who]
        if chain[0] is leave:
            chain.popleft()
            if chain:
                self._ready_at(chain[0], chain[0].due)  # queued earlier: goes at once
        else:
            chain.remove(leave)  # given up while the one before it was out
        if not chain:
            del self._chains[who]
        self._forget(who)

    def _log_given_up(self, now: float, when: str = "") -> None:
        if self._unlogged:
            log.warning(
                "%d leave(s) given up%s: no chat replica answered within %g s",
                self._unlogged,
                when,
                self.bound,
                extra={"given_up": self._unlogged},
            )
            self._unlogged = 0
            self._log_at = now + LOG_EVERY

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
