"""The gateway's live figures: its own snapshot out, everybody's snapshots in, once a
second the system-wide figures out to every dashboard socket.

- publishes this gateway's snapshot on ``sb.stats.gateway.<id>`` (:mod:`wire.stats`);
- subscribes to ``sb.stats.>`` and keeps the newest two snapshots of every instance
  (gateways and workers, this one included: its figures come back over NATS too);
- every second computes the figures (:meth:`Aggregator.figures`) — frames/s per
  endpoint, answered frames/s by outcome, p50/p99 per hop and end to end, connections
  per endpoint, instances per component, requests/s per service — sets the
  ``switchboard_gateway_service_instances`` and ``switchboard_gateway_ready`` gauges, and
  offers the figures to every dashboard socket.

A dashboard socket only ever gets the newest figures: each has a one-slot mailbox
(:class:`Watcher`); a slow reader skips figures, it never queues them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import CollectorRegistry

from wire import stats as live
from wire.metrics import GatewayMetrics, Hop
from wire.subjects import Service, stats_subject, stats_wildcard

log = logging.getLogger(__name__)

HOPS = (Hop.RECEIVE, Hop.TRANSIT, Hop.HANDLING, Hop.RETURN, Hop.SEND, "total")


class Watcher:
    """One dashboard socket's mailbox: holds only the newest figures."""

    __slots__ = ("_closed", "_latest", "_ready")

    def __init__(self) -> None:
        self._closed = False
        self._latest: bytes | None = None
        self._ready = asyncio.Event()

    def offer(self, figures: bytes) -> None:
        self._latest = figures  # an unsent older one is dropped: only the newest counts
        self._ready.set()

    async def next(self) -> bytes | None:
        """The newest figures, once there are new ones; None once closed."""
        while self._latest is None and not self._closed:
            self._ready.clear()
            await self._ready.wait()
        if self._closed:
            return None
        figures, self._latest = self._latest, None
        return figures

    def close(self) -> None:
        """The gateway is shutting down: :meth:`next` answers None from now on."""
        self._closed = True
        self._ready.set()


class Aggregator:
    """Snapshots in, figures out. Pure: no I/O, clock passed in (unit-testable)."""

    def __init__(self, stale_after: float = live.STALE_AFTER) -> None:
        self.stale_after = stale_after
        # (component, id) -> (previous snapshot or None, newest snapshot, heard at)
        self.instances: dict[tuple[str, str], tuple[dict | None, dict, float]] = {}

    def ingest(self, snapshot: Mapping[str, Any], now: float) -> None:
        if snapshot.get("v") != live.VERSION:
            return
        key = (str(snapshot["component"]), str(snapshot["id"]))
        known = self.instances.get(key)
        previous = known[1] if known else None
        if previous is not None and snapshot["at"] <= previous["at"]:
            return  # duplicate or out of order
        self.instances[key] = (previous, dict(snapshot), now)

    def _alive(self, now: float) -> list[tuple[dict | None, dict]]:
        for key, (_, _, heard) in list(self.instances.items()):
            if now - heard > self.stale_after:
                del self.instances[key]
        return [(prev, cur) for prev, cur, _ in self.instances.values()]

    def figures(self, now: float) -> dict[str, Any]:
        alive = self._alive(now)
        instances = {str(s): 0 for s in Service}
        instances["gateway"] = 0
        rates: dict[str, dict[str, float]] = {}
        gauges: dict[str, dict[str, float]] = {}
        buckets: dict[str, list[float]] = {}
        for prev, cur in alive:
            component = cur["component"]
            instances[component] = instances.get(component, 0) + 1
            for figure, values in cur.get("gauges", {}).items():
                into = gauges.setdefault(figure, {})
                for label, value in values.items():
                    into[label] = into.get(label, 0.0) + value
            if prev is None:
                continue
            span = cur["at"] - prev["at"]
            if span <= 0:
                continue
            for figure, values in cur.get("counters", {}).items():
                before = prev.get("counters", {}).get(figure, {})
                name = f"{component}.{figure}" if figure == "requests" else figure
                into = rates.setdefault(name, {})
                for label, value in values.items():
                    delta = max(0.0, value - before.get(label, 0.0))
                    into[label] = into.get(label, 0.0) + delta / span
            for hop, counts in cur.get("hops", {}).items():
                before = prev.get("hops", {}).get(hop)
                if before is None or len(before) != len(counts):
                    continue
                into = buckets.setdefault(hop, [0.0] * len(counts))
                for i, (a, b) in enumerate(zip(before, counts, strict=True)):
                    into[i] += max(0.0, b - a)
        p50 = {str(h): live.quantile(0.5, buckets[h]) if h in buckets else None for h in HOPS}
        p99 = {str(h): live.quantile(0.99, buckets[h]) if h in buckets else None for h in HOPS}
        return {
            "at": time.time(),
            "interval": live.INTERVAL,
            "instances": instances,
            "frames_per_second": rates.get("frames_in", {}),
            "answered_per_second": rates.get("frames", {}),
            "errors_per_second": sum(rates.get("errors", {}).values()),
            "requests_per_second": {
                str(s): sum(rates.get(f"{s}.requests", {}).values()) for s in Service
            },
            "connections": gauges.get("connections", {}),
            "in_flight": sum(gauges.get("in_flight", {}).values()),
            "p50_seconds": p50,
            "p99_seconds": p99,
        }


class LiveStats:
    """Runs the publisher and the aggregator of one gateway; hands out watchers."""

    def __init__(
        self,
        gateway_id: str,
        registry: CollectorRegistry,
        metrics: GatewayMetrics,
        interval: float = live.INTERVAL,
        serving: Callable[[], bool] = lambda: True,
    ) -> None:
        self.gateway_id = gateway_id
        self.serving = serving  # connected to NATS and accepting sockets
        self.registry = registry
        self.metrics = metrics
        self.interval = interval
        self.aggregator = Aggregator()
        self.watchers: set[Watcher] = set()
        self.latest: bytes | None = None
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._instances = {str(s): metrics.service_instances.labels(s) for s in Service}

    async def start(self, nc: Client) -> None:
        loop = asyncio.get_running_loop()

        async def on_stats(msg: Msg) -> None:
            try:
                snapshot = orjson.loads(msg.data)
                self.aggregator.ingest(snapshot, loop.time())
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.debug("malformed stats", extra={"subject": msg.subject})

        self._sub = await nc.subscribe(stats_wildcard(), cb=on_stats)
        self._tasks = [
            asyncio.create_task(
                live.publish_forever(
                    nc,
                    stats_subject("gateway", self.gateway_id),
                    lambda: live.gateway_snapshot(self.metrics, self.gateway_id),
                    self.interval,
                )
            ),
            asyncio.create_task(self._tick()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        # Half an interval after the snapshots, so each tick sees fresh ones.
        await asyncio.sleep(self.interval / 2)
        while True:
            figures = self.aggregator.figures(loop.time())
            instances = figures["instances"]
            for service, gauge in self._instances.items():
                gauge.set(instances.get(service, 0))
            ready = self.serving() and all(instances.get(s, 0) > 0 for s in self._instances)
            self.metrics.ready.set(1 if ready else 0)
            figures["ready"] = ready
            self.latest = orjson.dumps(figures)
            for watcher in self.watchers:
                watcher.offer(self.latest)
            await asyncio.sleep(self.interval)

    def watch(self) -> Watcher:
        watcher = Watcher()
        if self.latest is not None:
            watcher.offer(self.latest)
        self.watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    async def close_watchers(self, grace: float) -> None:
        """Shutdown: every dashboard socket closes with 1001 (see DashboardSocket); wait
        up to ``grace`` seconds for them to go (uvicorn's own shutdown would close them
        with 1012 and no reason)."""
        for watcher in self.watchers:
            watcher.close()
        deadline = asyncio.get_running_loop().time() + grace
        while self.watchers and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
