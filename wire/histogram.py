"""A histogram for the gateway's per-frame hot path: one thread, no lock.

``prometheus_client.Histogram.observe`` takes a lock per value and costs about 1.7 µs;
the gateway observes several hops per frame, all from its event loop thread, and its
``/metrics`` endpoint is served by the same loop. :class:`LoopHistogram` keeps plain
per-bucket counts (``observe`` = one ``bisect`` and two additions, about 0.25 µs) and is
exposed exactly as a client_python histogram is: cumulative ``_bucket{le}``, ``_count``,
``_sum``, same ``le`` spelling. Observe from one thread only; reading from another (a
worker's metrics server thread) is fine: each bucket's count is read as it stands, so a
scrape may miss the last value or two, and cumulative counts stay monotonic.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class LoopHistogramChild:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket (not cumulative), then +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


class LoopHistogram(Collector):
    """A labelled histogram with the ``labels(...).observe(v)`` API of client_python."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self._children: dict[tuple[str, ...], LoopHistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> LoopHistogramChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = LoopHistogramChild(self.bounds)
        return child

    def cumulative_by(self, label: str | None) -> dict[str, list[int]]:
        """Cumulative bucket counts (+Inf last) summed by one label (``None``: all in
        one, under ``""``), children without observations left out. For the live
        figures (wire/stats.py): no samples built, so a once-a-second snapshot does not
        hold the event loop (a full ``registry.collect()`` of the gateway took ~6 ms)."""
        index = self.labelnames.index(label) if label is not None else None
        sums: dict[str, list[int]] = {}
        for key, child in list(self._children.items()):
            counts = child.counts
            if not any(counts):
                continue
            name = key[index] if index is not None else ""
            total = sums.get(name)
            if total is None:
                sums[name] = list(counts)
            else:
                sums[name] = [a + b for a, b in zip(total, counts, strict=True)]
        return {name: list(accumulate(counts)) for name, counts in sums.items()}

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(self._children.items()):
            cumulative = accumulate(child.counts)
            family.add_metric(list(key), list(zip(self._le, cumulative, strict=True)), child.sum)
        yield family
