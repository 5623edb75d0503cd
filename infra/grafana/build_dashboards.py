"""Writes the Grafana dashboards in ``infra/grafana/dashboards/*.json``.

    .venv/bin/python infra/grafana/build_dashboards.py

The JSON files are generated (and committed) so that every panel is built the same way:
the datasource referenced by its fixed uid, ``$__rate_interval`` in every ``rate()``,
template variables matched with ``=~`` (so "All" = ``.*`` works). A unit test checks
that the committed files equal this script's output; an integration test evaluates
every expression against a real Prometheus scraping a running stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "switchboard-prometheus"}
RATE = "$__rate_interval"

Panel = dict[str, Any]


def target(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    return {
        "refId": ref,
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": True,
    }


def timeseries(
    title: str,
    targets: list[tuple[str, str]],
    unit: str = "short",
    description: str = "",
    stack: bool = False,
    w: int = 12,
    h: int = 8,
) -> Panel:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10}
    if stack:
        custom.update(stacking={"mode": "normal", "group": "A"}, fillOpacity=60)
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [
            target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)
        ],
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "_size": (w, h),
    }


def stat(
    title: str,
    expr: str,
    legend: str = "",
    unit: str = "short",
    description: str = "",
    thresholds: list[tuple[float | None, str]] | None = None,
    w: int = 6,
    h: int = 4,
) -> Panel:
    steps = [{"value": v, "color": c} for v, c in (thresholds or [(None, "green")])]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr, legend)],
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area",
            "textMode": "value_and_name",
        },
        "_size": (w, h),
    }


def variable(name: str, query: str, label: str, multi: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor"},
        "definition": query,
        "refresh": 2,  # on time range change
        "includeAll": True,
        "multi": multi,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard(
    uid: str, title: str, description: str, panels: list[Panel], variables: list[dict] = ()
) -> dict[str, Any]:
    x = y = row_h = 0
    laid: list[Panel] = []
    for i, panel in enumerate(panels, start=1):
        w, h = panel.pop("_size")
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        laid.append({"id": i, "gridPos": {"x": x, "y": y, "w": w, "h": h}, **panel})
        x += w
        row_h = max(row_h, h)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["switchboard"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "annotations": {"list": []},
        "templating": {"list": list(variables)},
        "panels": laid,
    }


RED_THRESHOLDS = [(None, "red"), (1, "green")]


def overview() -> dict[str, Any]:
    return dashboard(
        "switchboard-overview",
        "Switchboard / Overview",
        "Connections, frames per endpoint, errors and readiness over every gateway replica.",
        [
            stat(
                "Open connections",
                "sum(switchboard_gateway_connections_open)",
                "connections",
                description="WebSocket connections open on every gateway replica.",
            ),
            stat(
                "Frames/s in",
                f'sum(rate(switchboard_gateway_frames_total{{direction="in"}}[{RATE}]))',
                "frames/s",
                unit="reqps",
            ),
            stat(
                "Gateways ready",
                "sum(switchboard_gateway_ready)",
                "ready",
                description="Gateway replicas connected to NATS, accepting, with an "
                "instance of every service (switchboard_gateway_ready).",
                thresholds=RED_THRESHOLDS,
            ),
            stat(
                "Gateways not ready",
                "count(switchboard_gateway_ready == 0) or vector(0)",
                "not ready",
                thresholds=[(None, "green"), (1, "red")],
            ),
            timeseries(
                "Open connections per endpoint",
                [("sum by (endpoint) (switchboard_gateway_connections_open)", "{{endpoint}}")],
                description="switchboard_gateway_connections_open over every replica.",
            ),
            timeseries(
                "Frames/s per endpoint (in)",
                [
                    (
                        "sum by (endpoint) (rate(switchboard_gateway_frames_total"
                        f'{{direction="in"}}[{RATE}]))',
                        "{{endpoint}}",
                    )
                ],
                unit="reqps",
            ),
            timeseries(
                "Frames/s per endpoint (out)",
                [
                    (
                        "sum by (endpoint) (rate(switchboard_gateway_frames_total"
                        f'{{direction="out"}}[{RATE}]))',
                        "{{endpoint}}",
                    )
                ],
                unit="reqps",
                description="Replies, error frames and room events written to sockets.",
            ),
            timeseries(
                "Bytes/s per direction",
                [
                    (
                        f"sum by (direction) (rate(switchboard_gateway_bytes_total[{RATE}]))",
                        "{{direction}}",
                    )
                ],
                unit="Bps",
            ),
            timeseries(
                "Errors/s sent to clients, by code",
                [(f"sum by (code) (rate(switchboard_gateway_errors_total[{RATE}]))", "{{code}}")],
                unit="reqps",
                description="Error frames (and refused joins) by wire error code "
                "(docs/protocol.md): 408 timeout, 503 no worker, 4xx bad input.",
            ),
            timeseries(
                "Error ratio per service (gateway view)",
                [
                    (
                        "sum by (service) (rate(switchboard_gateway_request_duration_seconds_count"
                        f'{{status!="ok"}}[{RATE}])) / sum by (service) '
                        f"(rate(switchboard_gateway_request_duration_seconds_count[{RATE}]))",
                        "{{service}}",
                    )
                ],
                unit="percentunit",
            ),
            timeseries(
                "End-to-end p99 per endpoint",
                [
                    (
                        "histogram_quantile(0.99, sum by (endpoint, le) "
                        f"(rate(switchboard_gateway_frame_duration_seconds_bucket[{RATE}])))",
                        "{{endpoint}}",
                    )
                ],
                unit="s",
                description="Frame read from the socket -> reply written to it.",
            ),
            timeseries(
                "Instances per service",
                [
                    (
                        "max by (service) (switchboard_gateway_service_instances)",
                        "{{service}}",
                    ),
                    ("count(switchboard_gateway_nats_connected)", "gateway"),
                ],
                description="Worker instances the gateways hear from (live stats "
                "heartbeats), and gateway replicas scraped.",
            ),
            timeseries(
                "Gateway NATS connection",
                [("switchboard_gateway_nats_connected", "{{instance}}")],
                description="1 while connected.",
            ),
            timeseries(
                "Dropped and late messages/s",
                [
                    (
                        "sum by (reason) (rate(switchboard_gateway_dropped_messages_total"
                        f"[{RATE}]))",
                        "dropped: {{reason}}",
                    ),
                    (
                        f"sum(rate(switchboard_gateway_late_replies_total[{RATE}]))",
                        "late replies",
                    ),
                    (
                        "sum(rate(switchboard_gateway_leaves_total"
                        f'{{outcome="given_up"}}[{RATE}]))',
                        "leaves given up",
                    ),
                ],
                unit="reqps",
                description="Messages dropped for slow clients; replies that came after "
                "their request had timed out; closed sockets' leaves no chat replica "
                "answered in time.",
            ),
            timeseries(
                "Leaves waiting for chat",
                [("sum by (instance) (switchboard_gateway_leaves_pending)", "{{instance}}")],
                description="Closed sockets' leaves sent again until a chat replica answers "
                "(gateway/leaves.py): above 0 for long, chat is not answering.",
            ),
        ],
    )


SERVICE = 'service=~"$service", instance=~"$instance"'


def service_red() -> dict[str, Any]:
    return dashboard(
        "switchboard-service-red",
        "Switchboard / Service RED",
        "Rate, errors and duration of one worker service, per replica.",
        [
            timeseries(
                "Requests/s per replica",
                [
                    (
                        "sum by (instance) (rate(switchboard_service_requests_total"
                        f"{{{SERVICE}}}[{RATE}]))",
                        "{{instance}}",
                    )
                ],
                unit="reqps",
                description="How the queue group spreads the load over the replicas.",
            ),
            timeseries(
                "Requests/s per operation and outcome",
                [
                    (
                        "sum by (operation, status) (rate(switchboard_service_requests_total"
                        f"{{{SERVICE}}}[{RATE}]))",
                        "{{operation}} {{status}}",
                    )
                ],
                unit="reqps",
            ),
            timeseries(
                "Errors/s per replica",
                [
                    (
                        "sum by (instance) (rate(switchboard_service_requests_total"
                        f'{{{SERVICE}, status!="ok"}}[{RATE}]))',
                        "{{instance}}",
                    )
                ],
                unit="reqps",
                description="Requests the worker answered with an error.",
            ),
            timeseries(
                "Outcomes seen by the gateways",
                [
                    (
                        "sum by (status) (rate(switchboard_gateway_request_duration_seconds_count"
                        f'{{service=~"$service"}}[{RATE}]))',
                        "{{status}}",
                    )
                ],
                unit="reqps",
                description="Includes what no worker answered: timeout (no reply in time), "
                "unavailable (no responders) and busy (a worker refused: queue full or "
                "stopping).",
            ),
            timeseries(
                "Handling p50 / p99 per replica",
                [
                    (
                        "histogram_quantile(0.5, sum by (instance, le) (rate("
                        f"switchboard_service_handling_duration_seconds_bucket{{{SERVICE}}}"
                        f"[{RATE}])))",
                        "p50 {{instance}}",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (instance, le) (rate("
                        f"switchboard_service_handling_duration_seconds_bucket{{{SERVICE}}}"
                        f"[{RATE}])))",
                        "p99 {{instance}}",
                    ),
                ],
                unit="s",
            ),
            timeseries(
                "Round trip p50 / p99 (gateway -> worker -> gateway)",
                [
                    (
                        "histogram_quantile(0.5, sum by (le) (rate("
                        "switchboard_gateway_request_duration_seconds_bucket"
                        f'{{service=~"$service"}}[{RATE}])))',
                        "p50",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (le) (rate("
                        "switchboard_gateway_request_duration_seconds_bucket"
                        f'{{service=~"$service"}}[{RATE}])))',
                        "p99",
                    ),
                ],
                unit="s",
            ),
            timeseries(
                "Transit to the worker p99 per replica",
                [
                    (
                        "histogram_quantile(0.99, sum by (instance, le) (rate("
                        f"switchboard_service_transit_duration_seconds_bucket{{{SERVICE}}}"
                        f"[{RATE}])))",
                        "{{instance}}",
                    )
                ],
                unit="s",
                description="Gateway publish -> worker receipt: grows when the replicas "
                "fall behind their queue.",
            ),
            timeseries(
                "In-flight requests per replica",
                [
                    (
                        f"sum by (instance) (switchboard_service_in_flight_requests{{{SERVICE}}})",
                        "{{instance}}",
                    ),
                    (
                        f"sum by (instance) (switchboard_service_queued_requests{{{SERVICE}}})",
                        "{{instance}} waiting its turn",
                    ),
                    (
                        'max(switchboard_gateway_service_instances{service=~"$service"})',
                        "instances alive",
                    ),
                ],
            ),
            timeseries(
                "Frames per batch (gateways -> service)",
                [
                    (
                        "sum by (service) (rate(switchboard_gateway_batched_frames_total"
                        '{service=~"$service"}[$__rate_interval])) / sum by (service) '
                        "(rate(switchboard_gateway_batches_total"
                        '{service=~"$service"}[$__rate_interval]))',
                        "{{service}}",
                    ),
                ],
                description="Frames the gateways sent inside batches (the frames of one "
                "event-loop pass for one stateless operation, as one NATS message: "
                "docs/protocol.md), per batch. No line: every frame travels alone (light "
                "load, chat, or SB_GATEWAY_BATCH=false).",
            ),
        ],
        [
            variable(
                "service",
                "label_values(switchboard_service_requests_total, service)",
                "service",
            ),
            variable(
                "instance",
                'label_values(switchboard_service_requests_total{service=~"$service"}, instance)',
                "replica",
            ),
        ],
    )


def _gateway_hop(q: float, hop: str) -> tuple[str, str]:
    return (
        f"histogram_quantile({q}, sum by (le) (rate("
        "switchboard_gateway_hop_duration_seconds_bucket"
        f'{{endpoint=~"$endpoint", hop="{hop}", status="ok"}}[{RATE}])))',
        hop,
    )


def _worker_hop(q: float, metric: str, hop: str) -> tuple[str, str]:
    return (
        f"histogram_quantile({q}, sum by (le) (rate(switchboard_service_{metric}_bucket"
        f'{{service=~"$service", status="ok"}}[{RATE}])))',
        hop,
    )


def _breakdown(q: float, label: str) -> Panel:
    return timeseries(
        f"Hop breakdown {label} (stacked)",
        [
            _gateway_hop(q, "receive"),
            _worker_hop(q, "transit_duration_seconds", "transit"),
            _worker_hop(q, "queue_duration_seconds", "queue"),
            _worker_hop(q, "handling_duration_seconds", "handling"),
            _gateway_hop(q, "return"),
            _gateway_hop(q, "send"),
        ],
        unit="s",
        stack=True,
        description="Each hop's own percentile, stacked in order: receive (gateway), "
        "transit (NATS to the worker), queue (waiting in the worker), handling (worker), "
        "return (NATS back), send "
        "(gateway to the socket). Pick the endpoint and the service that serves it.",
    )


def hop_latency() -> dict[str, Any]:
    return dashboard(
        "switchboard-hop-latency",
        "Switchboard / Hop latency",
        "Where a frame's time goes, hop by hop, from timestamps carried in NATS headers.",
        [
            _breakdown(0.5, "p50"),
            _breakdown(0.99, "p99"),
            timeseries(
                "End to end p50 / p99",
                [
                    (
                        "histogram_quantile(0.5, sum by (le) (rate("
                        "switchboard_gateway_frame_duration_seconds_bucket"
                        f'{{endpoint=~"$endpoint", status="ok"}}[{RATE}])))',
                        "p50",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (le) (rate("
                        "switchboard_gateway_frame_duration_seconds_bucket"
                        f'{{endpoint=~"$endpoint", status="ok"}}[{RATE}])))',
                        "p99",
                    ),
                ],
                unit="s",
            ),
            timeseries(
                "Gateway hops p99 per endpoint",
                [
                    (
                        "histogram_quantile(0.99, sum by (endpoint, hop, le) (rate("
                        "switchboard_gateway_hop_duration_seconds_bucket"
                        f'{{endpoint=~"$endpoint"}}[{RATE}])))',
                        "{{endpoint}} {{hop}}",
                    )
                ],
                unit="s",
            ),
            timeseries(
                "Worker hops p99 per service",
                [
                    (
                        "histogram_quantile(0.99, sum by (service, le) (rate("
                        "switchboard_service_transit_duration_seconds_bucket"
                        f'{{service=~"$service"}}[{RATE}])))',
                        "{{service}} transit",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (service, le) (rate("
                        "switchboard_service_queue_duration_seconds_bucket"
                        f'{{service=~"$service"}}[{RATE}])))',
                        "{{service}} queue",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (service, le) (rate("
                        "switchboard_service_handling_duration_seconds_bucket"
                        f'{{service=~"$service"}}[{RATE}])))',
                        "{{service}} handling",
                    ),
                ],
                unit="s",
            ),
            timeseries(
                "End to end p99 per outcome",
                [
                    (
                        "histogram_quantile(0.99, sum by (status, le) (rate("
                        "switchboard_gateway_frame_duration_seconds_bucket"
                        f'{{endpoint=~"$endpoint"}}[{RATE}])))',
                        "{{status}}",
                    )
                ],
                unit="s",
                description="Timeouts take the request timeout; errors are usually fast.",
            ),
        ],
        [
            variable(
                "endpoint",
                "label_values(switchboard_gateway_hop_duration_seconds_count, endpoint)",
                "endpoint",
            ),
            variable(
                "service",
                "label_values(switchboard_service_transit_duration_seconds_count, service)",
                "service",
            ),
        ],
    )


NATS = 'instance=~"$instance"'


def nats() -> dict[str, Any]:
    return dashboard(
        "switchboard-nats",
        "Switchboard / NATS server",
        "The NATS server's health, from /varz through the Prometheus NATS exporter "
        "(compose: the official exporter; make run: switchboard.natsexporter).",
        [
            stat(
                "Servers exported",
                "count(gnatsd_varz_connections)",
                "servers",
                thresholds=RED_THRESHOLDS,
            ),
            stat("Client connections", f"sum(gnatsd_varz_connections{{{NATS}}})", "connections"),
            stat("Subscriptions", f"sum(gnatsd_varz_subscriptions{{{NATS}}})", "subscriptions"),
            stat(
                "Slow consumers (since start)",
                f"sum(gnatsd_varz_slow_consumers{{{NATS}}})",
                "slow consumers",
                thresholds=[(None, "green"), (1, "red")],
            ),
            timeseries(
                "Messages/s",
                [
                    (
                        f"sum by (instance) (rate(gnatsd_varz_in_msgs{{{NATS}}}[{RATE}]))",
                        "in {{instance}}",
                    ),
                    (
                        f"sum by (instance) (rate(gnatsd_varz_out_msgs{{{NATS}}}[{RATE}]))",
                        "out {{instance}}",
                    ),
                ],
                unit="reqps",
            ),
            timeseries(
                "Bytes/s",
                [
                    (
                        f"sum by (instance) (rate(gnatsd_varz_in_bytes{{{NATS}}}[{RATE}]))",
                        "in {{instance}}",
                    ),
                    (
                        f"sum by (instance) (rate(gnatsd_varz_out_bytes{{{NATS}}}[{RATE}]))",
                        "out {{instance}}",
                    ),
                ],
                unit="Bps",
            ),
            timeseries(
                "Connections and subscriptions",
                [
                    (f"gnatsd_varz_connections{{{NATS}}}", "connections {{instance}}"),
                    (f"gnatsd_varz_subscriptions{{{NATS}}}", "subscriptions {{instance}}"),
                ],
            ),
            timeseries(
                "New slow consumers",
                [
                    (
                        f"sum by (instance) (increase(gnatsd_varz_slow_consumers{{{NATS}}}"
                        f"[{RATE}]))",
                        "{{instance}}",
                    )
                ],
                description="Clients the server cut off for not reading fast enough: their "
                "messages were dropped.",
            ),
            timeseries(
                "Memory",
                [(f"gnatsd_varz_mem{{{NATS}}}", "{{instance}}")],
                unit="bytes",
            ),
            timeseries(
                "CPU",
                [(f"gnatsd_varz_cpu{{{NATS}}}", "{{instance}}")],
                unit="percent",
            ),
        ],
        [variable("instance", "label_values(gnatsd_varz_connections, instance)", "exporter")],
    )


DASHBOARDS = {
    "overview.json": overview,
    "service-red.json": service_red,
    "hop-latency.json": hop_latency,
    "nats.json": nats,
}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
