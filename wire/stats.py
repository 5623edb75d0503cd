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
gauges ``in_flight``; hops ``transit`` and ``handling``.

Snapshots are read from the process's own Prometheus registry (``registry.collect()``
once a second), so the hot path pays nothing for them. Values are cumulative, so a lost
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
from prometheus_client import CollectorRegistry

from wire.metrics import LATENCY_BUCKETS

log = logging.getLogger(__name__)

VERSION = 1
INTERVAL = 1.0  # seconds between two snapshots of one instance
STALE_AFTER = 3.5  # an instance not heard from for this long is gone
BOUNDS = (*LATENCY_BUCKETS, math.inf)

Snapshot = dict[str, Any]


def _samples(registry: CollectorRegistry) -> dict[str, list[Any]]:
    by_name: dict[str, list[Any]] = defaultdict(list)
    for family in registry.collect():
        for sample in family.samples:
            by_name[sample.name].append(sample)
    return by_name


def _sum_by(
    samples: Iterable[Any], label: str, where: Mapping[str, str] | None = None
) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for s in samples:
        if where and any(s.labels.get(k) != v for k, v in where.items()):
            continue
        out[s.labels.get(label, "")] += s.value
    return dict(out)


_BOUND_INDEX = {b: i for i, b in enumerate(BOUNDS)}


def _buckets_by(samples: Iterable[Any], label: str | None) -> dict[str, list[float]]:
    """Cumulative bucket counts of ``<histogram>_bucket`` samples, summed by ``label``."""
    out: dict[str, list[float]] = {}
    for s in samples:
        index = _BOUND_INDEX.get(float(s.labels["le"]))
        if index is None:  # a histogram with other buckets: not ours
            continue
        key = s.labels.get(label, "") if label else ""
        counts = out.get(key)
        if counts is None:
            counts = out[key] = [0.0] * len(BOUNDS)
        counts[index] += s.value
    return out


def gateway_snapshot(registry: CollectorRegistry, instance: str) -> Snapshot:
    by = _samples(registry)
    hops = _buckets_by(by["switchboard_gateway_hop_duration_seconds_bucket"], "hop")
    total = _buckets_by(by["switchboard_gateway_frame_duration_seconds_bucket"], None)
    if "" in total:
        hops["total"] = total[""]
    return {
        "v": VERSION,
        "component": "gateway",
        "id": instance,
        "at": time.time(),
        "counters": {
            "frames_in": _sum_by(
                by["switchboard_gateway_frames_total"], "endpoint", {"direction": "in"}
            ),
            "frames": _sum_by(by["switchboard_gateway_frame_duration_seconds_count"], "status"),
            "errors": _sum_by(by["switchboard_gateway_errors_total"], "code"),
        },
        "gauges": {
            "connections": _sum_by(by["switchboard_gateway_connections_open"], "endpoint"),
        },
        "hops": hops,
    }


def service_snapshot(registry: CollectorRegistry, service: str, instance: str) -> Snapshot:
    by = _samples(registry)
    hops = {
        "transit": _buckets_by(by["switchboard_service_transit_duration_seconds_bucket"], None),
        "handling": _buckets_by(by["switchboard_service_handling_duration_seconds_bucket"], None),
    }
    return {
        "v": VERSION,
        "component": service,
        "id": instance,
        "at": time.time(),
        "counters": {"requests": _sum_by(by["switchboard_service_requests_total"], "status")},
        "gauges": {"in_flight": _sum_by(by["switchboard_service_in_flight_requests"], "service")},
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
