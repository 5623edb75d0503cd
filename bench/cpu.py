"""CPU accounting over a measurement window, from ``/proc`` (Linux).

Figures are in percent of one core: on a 2-core machine the whole machine is 200 %.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def machine_seconds() -> float:
    """Busy CPU seconds of the whole machine so far, all cores summed."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / _TICK  # up to steal; guest time is inside user


@dataclass(frozen=True, slots=True)
class Usage:
    servers: float  # % of one core
    loadgen: float
    machine: float  # everything busy on the machine, including the two above

    @property
    def other(self) -> float:
        return max(0.0, self.machine - self.servers - self.loadgen)


class Sampler:
    """Sample at the window's start and end: ``sampler.window(start, end)`` blocks."""

    def __init__(self, servers: Iterable[int]) -> None:
        self.servers = list(servers)
        self.usage: Usage | None = None

    def _sample(self, loadgen: list[int]) -> tuple[float, float, float, float]:
        return (
            time.monotonic(),
            sum(process_seconds(p) for p in self.servers),
            sum(process_seconds(p) for p in loadgen),
            machine_seconds(),
        )

    def window(self, start: float, end: float, loadgen: list[int]) -> None:
        time.sleep(max(0.0, start - time.monotonic()))
        t0, s0, g0, m0 = self._sample(loadgen)
        time.sleep(max(0.0, end - time.monotonic()))
        t1, s1, g1, m1 = self._sample(loadgen)
        span = max(t1 - t0, 1e-9)
        self.usage = Usage(100 * (s1 - s0) / span, 100 * (g1 - g0) / span, 100 * (m1 - m0) / span)
