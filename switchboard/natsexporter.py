"""A stand-in for the official Prometheus NATS exporter, for the local stack only.

nats-server's monitoring port serves JSON (``/varz``), not the Prometheus format. In
compose the official ``prometheus-nats-exporter`` (``-varz``) translates it; it is
packaged neither by Debian nor on PyPI, so ``make run`` and the tests run this instead.
It exports exactly what the official exporter's ``varz`` collector exports, with the
same names, so the Grafana NATS dashboard and the alert rules work unchanged on both:

- every top-level numeric field of ``/varz`` as a gauge ``gnatsd_varz_<field>`` with the
  label ``server_id`` (the monitoring URL, as the official exporter labels it unless
  ``-use_internal_server_id`` is given) — e.g. ``gnatsd_varz_connections``,
  ``gnatsd_varz_in_msgs``, ``gnatsd_varz_slow_consumers``, ``gnatsd_varz_mem``;
- ``server_id``, ``server_name`` and ``version`` as ``gnatsd_varz_<field>{server_id,
  value} 1``.

When the server does not answer, the scrape is empty (as with the official exporter).

    python -m switchboard.natsexporter --url http://127.0.0.1:8222 --port 7777
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import urllib.request
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "gnatsd_varz_"
LABEL_FIELDS = ("server_id", "server_name", "version")
DEFAULT_PORT = 7777  # the official exporter's default

log = logging.getLogger(__name__)


class VarzCollector(Collector):
    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with urllib.request.urlopen(f"{self.url}/varz", timeout=self.timeout) as r:
                varz = json.load(r)
        except (OSError, ValueError) as exc:
            log.debug("varz unavailable: %s", exc)
            return
        for key, value in sorted(varz.items()):
            if isinstance(value, bool):
                continue  # the official exporter keeps JSON numbers only
            if isinstance(value, int | float):
                family = GaugeMetricFamily(PREFIX + key, key, labels=["server_id"])
                family.add_metric([self.url], float(value))
                yield family
            elif isinstance(value, str) and key in LABEL_FIELDS:
                family = GaugeMetricFamily(PREFIX + key, key, labels=["server_id", "value"])
                family.add_metric([self.url, value], 1.0)
                yield family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8222", help="NATS monitoring URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args()
    registry = CollectorRegistry()
    registry.register(VarzCollector(args.url))
    server, _ = start_http_server(args.port, args.host, registry=registry)
    print(f"nats exporter on http://{args.host}:{server.server_port}/metrics", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
