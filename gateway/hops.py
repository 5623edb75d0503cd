"""The gateway's share of per-hop latency and of per-frame trace logging.

A frame's trip, and where each leg is measured (``hop`` label, :class:`wire.metrics.Hop`):

    socket --receive--> NATS --transit--> worker --handling--> NATS --return--> gateway
    --send--> socket

- ``receive``: the relay read the frame from the socket -> ``publish`` returned (gateway,
  ``perf_counter``);
- ``transit`` and ``handling``: measured by the worker (``services/runner.py``);
- ``return``: the worker's ``Sb-Handled-At`` stamp -> the reply reached the gateway's
  reply callback (wall clocks of two processes: exact on one host, subject to clock skew
  across hosts, clamped at 0);
- ``send``: the reply reached the gateway -> its last frame was written to the socket
  (includes waiting behind earlier replies of the same connection: head-of-line time
  the client sees);
- end to end (``switchboard_gateway_frame_duration_seconds``): read from the socket ->
  reply written. A reply with nothing to send (chat) ends when it reaches the gateway.

The hot path stays lean: histogram children are resolved once per endpoint here
(:class:`EndpointHops`), the :class:`~gateway.connection.Pending` that already exists per
request carries the timestamps, and the last ASGI message of a reply carries that
``Pending`` under :data:`HOP_KEY` to the sender, which pops it before writing.

Log lines about one frame carry its ``trace_id``; per-frame lines are DEBUG and only
built when DEBUG is enabled; timeouts and failures are WARNING.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.connection import Pending
from wire import headers as h
from wire.metrics import GatewayMetrics, Hop, Status

log = logging.getLogger("gateway.frames")

HOP_KEY = "sb.hop"  # on the last ASGI message of a reply: its Pending (popped before send)

_DEBUG = logging.DEBUG


class _Children(dict[Status, Any]):
    """Histogram children of one label set by status: the outcomes a hop can have are
    made up front (their series exist at 0 before the first frame), others on first use."""

    def __init__(self, make: Callable[[Status], Any], outcomes: Iterable[Status]) -> None:
        super().__init__((st, make(st)) for st in outcomes)
        self.make = make

    def __missing__(self, status: Status) -> Any:
        child = self[status] = self.make(status)
        return child


class EndpointHops:
    """Pre-resolved hop histogram children of one endpoint, by outcome."""

    __slots__ = ("endpoint", "receive", "ret", "send", "total")

    def __init__(self, metrics: GatewayMetrics, endpoint: str) -> None:
        self.endpoint = endpoint

        def hop(name: Hop, outcomes: Iterable[Status]) -> _Children:
            return _Children(lambda st: metrics.hop_seconds.labels(endpoint, name, st), outcomes)

        # A publish either happens (ok) or the frame fails before any hop; only a worker's
        # reply (ok or error) carries Sb-Handled-At; the socket sees every outcome.
        self.receive = hop(Hop.RECEIVE, (Status.OK,))
        self.ret = hop(Hop.RETURN, (Status.OK, Status.ERROR))
        self.send = hop(Hop.SEND, Status)
        self.total = _Children(lambda st: metrics.frame_seconds.labels(endpoint, st), Status)

    # -- called by the hub ---------------------------------------------------------
    def published(self, pending: Pending, cid: int, seq: int) -> None:
        """The frame left for NATS: the receive hop ends."""
        seconds = time.perf_counter() - pending.started
        self.receive[Status.OK].observe(seconds)
        if log.isEnabledFor(_DEBUG):
            log.debug(
                "frame published",
                extra={
                    "trace_id": h.trace_id(pending.trace),
                    "endpoint": self.endpoint,
                    "service": pending.service,
                    "conn": cid,
                    "seq": seq,
                    "hop": "receive",
                    "seconds": seconds,
                },
            )

    def replied(
        self,
        pending: Pending,
        cid: int,
        seq: int,
        headers: Mapping[str, str] | None,
        status: Status,
        messages: list[dict[str, Any]],
    ) -> None:
        """A reply reached the gateway: the return hop ends, the send hop starts."""
        now = time.perf_counter()
        pending.arrived = now
        pending.status = status
        back = h.age_seconds(headers.get(h.HANDLED_AT)) if headers else None
        if back is not None:
            self.ret[status].observe(back)
        if messages:
            messages[-1][HOP_KEY] = pending
        else:
            self.total[status].observe(now - pending.started)
        level = logging.WARNING if status is Status.UNAVAILABLE else _DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "reply received",
                extra={
                    "trace_id": h.trace_id(pending.trace),
                    "endpoint": self.endpoint,
                    "service": pending.service,
                    "conn": cid,
                    "seq": seq,
                    "hop": "return",
                    "status": str(status),
                    "seconds": back,
                },
            )

    def failed(
        self, pending: Pending, cid: int, seq: int, status: Status, message: dict[str, Any]
    ) -> None:
        """The gateway answers in the worker's place (timeout, no worker, publish failed)."""
        pending.arrived = time.perf_counter()
        pending.status = status
        message[HOP_KEY] = pending
        log.warning(
            "request failed: %s",
            status,
            extra={
                "trace_id": h.trace_id(pending.trace),
                "endpoint": self.endpoint,
                "service": pending.service,
                "conn": cid,
                "seq": seq,
                "status": str(status),
                "seconds": pending.arrived - pending.started,
            },
        )

    # -- called by the relay's sender ----------------------------------------------
    def sent(self, pending: Pending) -> None:
        """The last frame of a reply was written to the socket."""
        now = time.perf_counter()
        status = pending.status
        self.send[status].observe(now - pending.arrived)
        self.total[status].observe(now - pending.started)
        if log.isEnabledFor(_DEBUG):
            log.debug(
                "reply sent",
                extra={
                    "trace_id": h.trace_id(pending.trace),
                    "endpoint": self.endpoint,
                    "service": pending.service,
                    "hop": "send",
                    "status": str(status),
                    "seconds": now - pending.arrived,
                    "total_seconds": now - pending.started,
                },
            )


class HopTable(dict[str, EndpointHops]):
    """``table[endpoint]``: that endpoint's :class:`EndpointHops`, made on first use."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def __missing__(self, endpoint: str) -> EndpointHops:
        hops = self[endpoint] = EndpointHops(self.metrics, endpoint)
        return hops
