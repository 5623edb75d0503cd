"""Metric definitions for every process, each on an explicit ``CollectorRegistry``.

Names are ``switchboard_<component>_<what>_<unit>``; counters end in ``_total``,
durations are histograms in seconds. Labels are bounded: endpoint paths, service and
operation names, frame types and the :class:`Status` values; never users, rooms or
connection ids. ``docs/metrics.md`` lists them.
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge

from wire.batch import BATCH_OPS
from wire.errors import ErrorCode
from wire.histogram import LoopHistogram
from wire.subjects import SERVICE_OPS

# 50 µs .. 10 s: the hot path is sub-millisecond, timeouts are seconds.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"  # the worker answered with an error
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"  # no worker instance (NATS no responders), or NATS down
    BUSY = "busy"  # a worker refused it: its queue full ("service busy"), or stopping


class Hop(StrEnum):
    """The legs of one frame's trip, in order (``hop`` label values)."""

    RECEIVE = "receive"  # gateway: frame read from the socket -> published to NATS
    TRANSIT = "transit"  # NATS: gateway publish -> worker receipt (Sb-Sent-At)
    HANDLING = "handling"  # worker: receipt -> reply published
    RETURN = "return"  # NATS: worker reply -> gateway receipt (Sb-Handled-At)
    SEND = "send"  # gateway: reply received -> last frame written to the socket


class DropReason(StrEnum):
    """Why the gateway dropped an outgoing message instead of sending it."""

    SLOW_CONSUMER = "slow_consumer"  # the client does not read fast enough


class LeaveOutcome(StrEnum):
    """What became of a leave the gateway sends until chat answers (gateway/leaves.py)."""

    DELIVERED = "delivered"  # a chat replica acknowledged it
    REFUSED = "refused"  # chat answered with an error that sending again cannot cure
    GIVEN_UP = "given_up"  # no answer within SB_GATEWAY_LEAVE_RETRY_TIMEOUT, or shutdown


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.connections = Gauge(
            "switchboard_gateway_connections_open",
            "Open WebSocket connections",
            ["endpoint"],
            registry=registry,
        )
        self.connections_total = Counter(
            "switchboard_gateway_connections_accepted_total",
            "WebSocket connections accepted",
            ["endpoint"],
            registry=registry,
        )
        self.frames = Counter(
            "switchboard_gateway_frames_total",
            "WebSocket frames received (in) and sent (out)",
            ["endpoint", "direction", "frame_type"],
            registry=registry,
        )
        self.bytes = Counter(
            "switchboard_gateway_bytes_total",
            "WebSocket payload bytes received (in) and sent (out)",
            ["endpoint", "direction", "frame_type"],
            registry=registry,
        )
        # Per-frame histograms of the gateway: LoopHistogram (one thread, no lock; the
        # gateway observes several per frame from its event loop).
        self.request_seconds = LoopHistogram(
            "switchboard_gateway_request_duration_seconds",
            "Round trip gateway -> worker -> gateway per frame",
            ["service", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "switchboard_gateway_errors_total",
            "Errors reported to clients, by wire error code",
            ["code"],
            registry=registry,
        )
        self.hop_seconds = LoopHistogram(
            "switchboard_gateway_hop_duration_seconds",
            "Time a frame spends in one gateway hop (receive, return, send), by outcome",
            ["endpoint", "hop", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.frame_seconds = LoopHistogram(
            "switchboard_gateway_frame_duration_seconds",
            "End to end per frame: read from the socket -> reply written to it",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.dropped = Counter(
            "switchboard_gateway_dropped_messages_total",
            "Outgoing messages dropped instead of sent, by reason",
            ["reason"],
            registry=registry,
        )
        self.service_instances = Gauge(
            "switchboard_gateway_service_instances",
            "Worker instances whose live stats arrived in the last 3.5 s, per service",
            ["service"],
            registry=registry,
        )
        self.ready = Gauge(
            "switchboard_gateway_ready",
            "1 while connected to NATS, accepting, and every service has an instance",
            registry=registry,
        )
        # Every bounded label value exists from the start (at 0), so that rates and
        # alerts see a series before the first error / drop happens.
        for code in ErrorCode:
            self.errors.labels(code)
        for reason in DropReason:
            self.dropped.labels(reason)
        self.late_replies = Counter(
            "switchboard_gateway_late_replies_total",
            "Replies that arrived after their request timed out or its socket closed (dropped)",
            registry=registry,
        )
        self.send_queue_bytes = Gauge(
            "switchboard_gateway_send_queue_bytes",
            "Bytes waiting in sockets' send queues (sampled every second): sum and largest",
            ["stat"],
            registry=registry,
        )
        self.batches = Counter(
            "switchboard_gateway_batches_total",
            "Batches of frames sent to workers as one NATS message (wire/batch.py)",
            ["service"],
            registry=registry,
        )
        self.batched_frames = Counter(
            "switchboard_gateway_batched_frames_total",
            "Frames sent inside batches (divided by batches_total: frames per batch)",
            ["service"],
            registry=registry,
        )
        for service in {s for s, ops in SERVICE_OPS.items() if BATCH_OPS & set(ops)}:
            self.batches.labels(service)  # a bounded label set: its series exist at 0
            self.batched_frames.labels(service)
        self.retries = Counter(
            "switchboard_gateway_retries_total",
            "Idempotent requests sent once more after no reply within half the timeout",
            ["service"],
            registry=registry,
        )
        self.leaves = Counter(
            "switchboard_gateway_leaves_total",
            "Leaves of closed sockets sent to chat until a replica answers, by outcome",
            ["outcome"],
            registry=registry,
        )
        for outcome in LeaveOutcome:
            self.leaves.labels(outcome)
        self.leave_retries = Counter(
            "switchboard_gateway_leave_retries_total",
            "Leaves sent again because no chat replica answered the last attempt",
            registry=registry,
        )
        self.leaves_pending = Gauge(
            "switchboard_gateway_leaves_pending",
            "Leaves waiting for a chat replica to answer",
            registry=registry,
        )
        self.room_events = Counter(
            "switchboard_gateway_room_events_total",
            "Room events received from NATS (one per gateway, not per socket)",
            registry=registry,
        )
        self.nats_connected = Gauge(
            "switchboard_gateway_nats_connected",
            "1 while the gateway is connected to NATS",
            registry=registry,
        )


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.registry = registry
        self.service = service
        self.requests = Counter(
            "switchboard_service_requests_total",
            "Requests handled, by operation and outcome",
            ["service", "operation", "status"],
            registry=registry,
        )
        # LoopHistogram, as the gateway's: observed from the event loop only (no lock
        # per value); the metrics thread reading them sees each bucket's count as of
        # its read, which can only make a scrape a frame or two behind.
        self.handling_seconds = LoopHistogram(
            "switchboard_service_handling_duration_seconds",
            "Time inside the handler, by outcome (for a batch: each frame's own)",
            ["service", "operation", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_seconds = LoopHistogram(
            "switchboard_service_queue_duration_seconds",
            "Time from the worker's receipt to its handler's start (its turn in a "
            "scheduler; in a batch, behind its frames before), by outcome",
            ["service", "operation", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.transit_seconds = LoopHistogram(
            "switchboard_service_transit_duration_seconds",
            "NATS transit from gateway publish to worker receipt (Sb-Sent-At header), "
            "by the frame's outcome",
            ["service", "operation", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ready = Gauge(
            "switchboard_service_ready",
            "1 while the worker serves requests: its endpoints are up and NATS connected "
            "(the compose healthcheck reads it)",
            ["service"],
            registry=registry,
        ).labels(service)
        self.ready.set(0)
        self.in_flight = Gauge(
            "switchboard_service_in_flight_requests",
            "Requests being handled right now",
            ["service"],
            registry=registry,
        )
        self.queued = Gauge(
            "switchboard_service_queued_requests",
            "Requests taken but waiting their turn (operations with a scheduler; "
            "operation=ordered: chat's joins, leaves and publishes)",
            ["service", "operation"],
            registry=registry,
        )


class HistoryMetrics:
    """Chat's: room events let through without being stored in the room's history."""

    def __init__(self, registry: CollectorRegistry, service: str = "chat") -> None:
        self.unsaved = Counter(
            "switchboard_service_history_unsaved_total",
            "Room events chat let through without storing them, the history store "
            "refusing them (reason storage_full: 507; unavailable: anything else): "
            "/ws/chat messages and notices the tutorial chat was sent but /ws/v2 members "
            "and history never see, /ws/v2 joins and leaves answered without their event",
            ["service", "event", "reason"],
            registry=registry,
        )
        self.service = service

    def count(self, event: str, full: bool) -> None:
        reason = "storage_full" if full else "unavailable"
        self.unsaved.labels(self.service, event, reason).inc()
