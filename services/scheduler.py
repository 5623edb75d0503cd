"""Fair, bounded, deadline-aware handling of a slow operation's requests.

nats-py hands one subscription's messages to its callback one at a time. For a handler
that takes half a second (``/ws/codec``: zstd level 19 on 1 MiB), every request queued
behind it waits: one client pipelining a dozen made every other client's request of that
operation time out, and the worker went on doing the work nobody waited for any more.

A :class:`FairScheduler` takes each request as it arrives and

- runs at most ``concurrency`` at once (the codec's work runs in threads: zlib and
  zstd release the GIL, so replicas use more than one core), and at most ``per_caller``
  of one caller's (half of them by default): however many one caller sends, the others
  find slots free;
- takes turns between callers, one queue each (a caller is one connection of one
  gateway, :func:`wire.subjects.reply_caller`): a client's tenth queued request waits
  for other clients' first ones, not the other way round;
- answers a request whose caller stopped waiting while it was queued (the gateway's
  ``Sb-Timeout`` has passed) with the expiry reply instead of running it;
- refuses a request at once, with the busy reply, past ``max_queued_bytes`` of requests
  waiting, so a flood is answered instead of held in memory.

:meth:`FairScheduler.join` waits until nothing is queued or running (a stopping worker
answers everything it took before its connection closes).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Job:
    run: Callable[[], Awaitable[None]]  # handle the request and reply
    expire: Callable[[], Awaitable[None]]  # reply that it expired, without handling it
    deadline: float  # event-loop time after which its caller no longer waits
    size: int  # bytes held while it waits
    refuse: Callable[[], Awaitable[None]] | None = None  # reply "not handled" (abandon)
    must_run: bool = False  # never refused for a full queue (a chat leave)


class Gauge(Protocol):
    def set(self, value: float) -> None: ...


class FairScheduler:
    def __init__(
        self,
        concurrency: int,
        max_queued_bytes: int,
        queued_gauge: Gauge | None = None,
        per_caller: int | None = None,
    ) -> None:
        if concurrency < 1 or max_queued_bytes < 0 or (per_caller is not None and per_caller < 1):
            raise ValueError("concurrency, per_caller >= 1 and max_queued_bytes >= 0")
        self.concurrency = concurrency
        self.per_caller = per_caller or max(1, concurrency // 2)
        self.max_queued_bytes = max_queued_bytes
        # caller -> its waiting jobs; dict order is the turn order (round robin)
        self._queues: dict[str, deque[Job]] = {}
        self._running: dict[str, int] = {}  # caller -> its jobs running
        self.queued = 0  # jobs waiting
        self.queued_bytes = 0
        self.running = 0
        self._gauge = queued_gauge  # set to the number of jobs waiting
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, caller: str, job: Job) -> bool:
        """Queue ``job`` for ``caller``; False (not queued) when the queue is full or the
        scheduler abandoned. A job alone is always taken, whatever its size (the frame
        size limit bounds it), and so is a ``must_run`` job."""
        if self.concurrency == 0:  # abandoned
            return False
        full = self.queued and self.queued_bytes + job.size > self.max_queued_bytes
        if full and not job.must_run:
            return False
        queue = self._queues.get(caller)
        if queue is None:
            queue = self._queues[caller] = deque()
        queue.append(job)
        self.queued += 1
        self.queued_bytes += job.size
        self._idle.clear()
        self._start()
        if self._gauge is not None:
            self._gauge.set(self.queued)
        return True

    def _next(self) -> tuple[str, Job] | None:
        """The oldest job of the first caller in the turn with a slot of its own left;
        that caller then goes to the back of the turn."""
        for caller in self._queues:
            if self._running.get(caller, 0) >= self.per_caller:
                continue
            queue = self._queues.pop(caller)
            job = queue.popleft()
            if queue:
                self._queues[caller] = queue
            self.queued -= 1
            self.queued_bytes -= job.size
            return caller, job
        return None

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        while self.running < self.concurrency:
            found = self._next()
            if found is None:
                break
            caller, job = found
            self.running += 1
            self._running[caller] = self._running.get(caller, 0) + 1
            task = loop.create_task(self._run(caller, job, loop))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, caller: str, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        try:
            if loop.time() > job.deadline:
                await job.expire()
            else:
                await job.run()
        except Exception:  # a reply that could not be sent (the connection closed)
            log.exception("request failed")
        finally:
            self.running -= 1
            if self._running[caller] == 1:
                del self._running[caller]
            else:
                self._running[caller] -= 1
            self._start()
            if self._gauge is not None:
                self._gauge.set(self.queued)
            if not self.running and not self.queued:
                self._idle.set()

    async def abandon(self) -> None:
        """Answer every job still waiting with its ``refuse`` instead of running it, and
        start no more (a worker out of time to finish on shutdown). Running jobs go on."""
        self.concurrency = 0
        waiting = [job for queue in self._queues.values() for job in queue]
        self._queues.clear()
        self.queued = self.queued_bytes = 0
        if self._gauge is not None:
            self._gauge.set(0)
        for job in waiting:
            try:
                await (job.refuse or job.expire)()
            except Exception:  # the connection may be closing
                log.exception("request failed")
        if not self.running:
            self._idle.set()

    async def join(self) -> None:
        """Wait until every job taken has been answered."""
        await self._idle.wait()
