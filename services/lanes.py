"""Ordered operations handled concurrently: in order per connection, many connections
at once.

nats-py hands one subscription's messages to its callback one at a time, and chat's
ordered operations (joins, leaves, publishes: :data:`wire.subjects.ORDERED_OPS`) used to
be handled that way, so a replica did one at a time for everybody. Each spends most of
its time waiting for JetStream (an append's round trip, a recovery's reads), so a
reconnect storm (500 clients rejoining at once) queued joins behind each other until
the gateways' timeout, with chat's CPU mostly idle: 155 of 500 joins failed.

:class:`Lanes` keeps one lane per caller (a connection of one gateway): a caller's
requests run one after another in arrival order, as before, and different callers'
run at the same time. At most ``limit`` requests are taken and not yet answered; past
that, :meth:`Lanes.submit` waits, so the rest wait in the subscription's pending queue
(nats-py's limits), not here. Nothing is skipped or refused: an ordered operation's
request is always handled (a leave must never be lost).

:meth:`Lanes.join` waits until every request taken is answered (a stopping worker).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


class Lanes:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit >= 1")
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._lanes: dict[str, deque[Job]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def taken(self) -> int:
        """Requests taken and not yet answered."""
        return sum(len(lane) for lane in self._lanes.values())

    async def submit(self, caller: str, job: Job) -> None:
        """Take ``job`` behind ``caller``'s earlier ones. Called in arrival order (a
        subscription's callback); waits while ``limit`` requests are taken."""
        await self._slots.acquire()
        lane = self._lanes.get(caller)
        if lane is not None:
            lane.append(job)
            return
        self._lanes[caller] = deque([job])
        task = asyncio.get_running_loop().create_task(self._run(caller))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, caller: str) -> None:
        lane = self._lanes[caller]
        try:
            while lane:
                try:
                    await lane[0]()
                except Exception:  # the job answers its own errors; this is a bug
                    log.exception("ordered request failed", extra={"caller": caller})
                finally:
                    lane.popleft()
                    self._slots.release()
        finally:
            del self._lanes[caller]

    async def join(self) -> None:
        """Wait until every request taken is answered."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
