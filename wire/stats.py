"""Live figures: what every instance publishes about itself once a second over NATS.

Each gateway and each worker instance publishes a snapshot of its own counters and hop
histograms on ``sb.stats.<component>.<instance>`` (:func:`wire.subjects.stats_subject`)
every :data:`INTERVAL` seconds; every gateway subscribes to ``sb.stats.>`` and turns the
newest two snapshots of each instance into rates and percentiles for its live dashboard
page (``gateway/stats.py``). Prometheus is not involved: the figures are the system's own.

Payload (JSON, one object)::

    {"v": 1,
     "component": "gateway" | "codec" | "binary" | "chat",
     "id": "<instance id>",              # gateway id / nats.micro service id
     "at": 1718000000.123,               # wall clock, seconds
     "counters": {"<figure>": {"<label value>": <cumulative value>, ...}, ...},
     "gauges":   {"<figure>": {"<label value>": <value>, ...}, ...},
     "hops":     {"<hop>": [<cumulative count per bucket of LATENCY_BUCKETS>, <+Inf>]}}

Gateway figures: counters ``frames_in`` by endpoint, ``frames`` (answered) by status,
``errors`` by code; gauges ``connections`` by endpoint; hops ``receive``, ``return``,
``send`` and ``total`` (end to end). Worker figures: counters ``requests`` by status;
gauges ``in_flight``; hops ``transit``, ``queue`` and ``handling``.

Snapshots are read once a second from the process's own metric objects (the
histograms' counts directly, not a ``registry.collect()``, which takes milliseconds of
the event loop for the gateway's ~2,000 histogram samples), so the hot path pays nothing
for them. Values are cumulative, so a lost
snapshot only widens the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from wire.metrics import LATENCY_BUCKETS, GatewayMetrics, ServiceMetrics

log = logging.getLogger(__name__)

VERSION = 1
INTERVAL = 1.0  # seconds between two snapshots of one instance
STALE_AFTER = 3.5  # an instance not heard from for this long is gone
BOUNDS = (*LATENCY_BUCKETS, math.inf)

Snapshot = dict[str, Any]


def _sum_by(
    samples: Iterable[Any], label: str, where: Mapping[str, str] | None = None
) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for s in samples:
        if where and any(s.labels.get(k) != v for k, v in where.items()):
            continue
        out[s.labels.get(label, "")] += s.value
    return dict(out)


def _samples_of(metric: Any, suffix: str = "") -> list[Any]:
    """One metric's samples; a counter's are ``_total`` (not ``_created``)."""
    return [s for f in metric.collect() for s in f.samples if s.name.endswith(suffix)]


def gateway_snapshot(metrics: GatewayMetrics, instance: str) -> Snapshot:
    """Read from the metric objects themselves, not ``registry.collect()``: the hop
    histograms alone are ~2,000 samples, ~6 ms of the gateway's event loop to build."""
    hops: dict[str, list[float]] = dict(metrics.hop_seconds.cumulative_by("hop"))
    by_status = metrics.frame_seconds.cumulative_by("status")
    total = metrics.frame_seconds.cumulative_by(None)
    if "" in total:
        hops["total"] = total[""]
    return {
        "v": VERSION,
        "component": "gateway",
        "id": instance,
        "at": time.time(),
        "counters": {
            "frames_in": _sum_by(
                _samples_of(metrics.frames, "_total"), "endpoint", {"direction": "in"}
            ),
            "frames": {status: counts[-1] for status, counts in by_status.items()},
            "errors": _sum_by(_samples_of(metrics.errors, "_total"), "code"),
        },
        "gauges": {
            "connections": _sum_by(_samples_of(metrics.connections), "endpoint"),
        },
        "hops": hops,
    }


def service_snapshot(metrics: ServiceMetrics, service: str, instance: str) -> Snapshot:
    hops = {
        "transit": metrics.transit_seconds.cumulative_by(None),
        "queue": metrics.queue_seconds.cumulative_by(None),
        "handling": metrics.handling_seconds.cumulative_by(None),
    }
    return {
        "v": VERSION,
        "component": service,
        "id": instance,
        "at": time.time(),
        "counters": {"requests": _sum_by(_samples_of(metrics.requests, "_total"), "status")},
        "gauges": {"in_flight": _sum_by(_samples_of(metrics.in_flight), "service")},
        "hops": {hop: counts[""] for hop, counts in hops.items() if "" in counts},
    }


def quantile(q: float, cumulative: list[float]) -> float | None:
    """The ``q`` quantile of a histogram, as PromQL's ``histogram_quantile`` computes it
    (linear interpolation inside the bucket; the highest finite bound if it falls in
    +Inf). None without observations."""
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(BOUNDS, cumulative, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return BOUNDS[-2]
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return BOUNDS[-2]


async def publish_forever(
    nc: Any, subject: str, build: Callable[[], Snapshot], interval: float = INTERVAL
) -> None:
    """Publish ``build()`` on ``subject`` every ``interval`` seconds until cancelled."""
    while True:
        with contextlib.suppress(Exception):  # reconnecting: the next one will do
            if nc.is_connected:
                await nc.publish(subject, orjson.dumps(build()))
        await asyncio.sleep(interval)
