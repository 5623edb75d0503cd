"""The gateway's NATS side, shared by all its sockets.

- One wildcard subscription (``sb.gw.<id>.>``) receives every reply for this gateway;
  the subject says which connection and which request it answers, so no Python future
  is spent per frame.
- Frames for the same stateless operation received in one event-loop pass leave as one
  batch (``wire.batch``), answered by one reply; a pass with one frame sends it alone.
- One subscription per room that has local members receives that room's events once,
  whatever the number of local sockets in it.
- A sweeper answers requests that outlive the timeout with an error.
- ``$SRV.PING`` discovery counts worker instances for ``/readyz``.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import functools
import itertools
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import MaxPayloadError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from gateway.connection import Connection, Message, Pending
from gateway.endpoints import Route
from gateway.hops import HopTable
from gateway.leaves import Leaves
from gateway.limits import Admission
from gateway.rooms import Rooms
from gateway.settings import GatewaySettings
from wire import batch, envelope, errors, natsconn
from wire import headers as h
from wire.errors import CloseCode, ErrorCode, WireError
from wire.frames import FrameDecodeError, decode_frames
from wire.logs import redact
from wire.metrics import GatewayMetrics, Status
from wire.subjects import (
    Service,
    batch_reply_prefix,
    batch_reply_subject,
    discovery_subject,
    is_token,
    parse_reply_subject,
    pinned_subject,
    reply_prefix,
    reply_subject,
    reply_wildcard,
    room_subject,
)

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 0.05
RETRY_AFTER = 0.5  # of the request timeout: when an idempotent request is sent again

# hook(messages, reply headers, error): see Hub.request; it may return HOLD
# (Connection.complete)
Hook = Callable[[list[Message], Mapping[str, str] | None, WireError | None], object]
# A frame waiting for its batch: connection, request seq, its Pending, bytes, headers.
Queued = tuple[Connection, int, Pending, bytes, dict[str, str]]
RELEASING = -1  # Connection.gate while held requests are being published


def _stamp_deadline(headers: dict[str, str], pending: Pending) -> None:
    """``Sb-Timeout``: how long we still wait for the reply; a worker that cannot start
    the request by then skips it (services/scheduler.py)."""
    left = pending.deadline - asyncio.get_running_loop().time()
    if left < math.inf:
        headers[h.TIMEOUT] = h.timeout_ms(left)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("gateway could not start on NATS: %r", exc, exc_info=exc)


def frames_to_messages(payload: bytes) -> list[Message]:
    out: list[Message] = []
    for frame in decode_frames(payload):
        if frame.kind == "text":
            out.append({"type": "websocket.send", "text": frame.data})
        else:
            out.append({"type": "websocket.send", "bytes": frame.data})
    return out


class Hub:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.nc: Client | None = None
        self.connections: dict[int, Connection] = {}
        self.rooms: dict[str, set[Connection]] = {}
        self._room_subs: dict[str, Subscription] = {}
        # Connection and membership ids, from a random start: chat's dedupe ids of join
        # and leave events are "<gateway id>:<id>", and a gateway restarted under the same
        # SB_GATEWAY_ID within the dedupe window had its first joins taken for the old
        # process's (not stored; acked with the old seq)
        self._ids = itertools.count(1 + secrets.randbelow(1 << 40))
        self._prefix = reply_prefix(settings.id)
        self._batch_prefix = batch_reply_prefix(self._prefix)
        self._batch_ids = itertools.count(1)
        self._outbox: dict[Route, list[Queued]] = {}  # frames of this loop pass, to batch
        self._flushing: asyncio.Task[None] | None = None
        # batch number -> (deadline, whose frames it holds), until its reply comes
        self._batches: dict[int, tuple[float, list[tuple[Connection, int]]]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None  # connecting to NATS
        self._releasing: set[asyncio.Task[None]] = set()  # held requests being published
        self._settling: dict[int, asyncio.Future[None]] = {}  # Hub.settle's waiters
        self._discovery: tuple[float, dict[str, int]] | None = None
        self.accepting = True
        self.live = Rooms(settings.id, settings.presence_interval)  # rooms and presence
        self.leaves = Leaves(settings, metrics)  # closed sockets' leaves, until answered
        self.admission = Admission(settings.max_connections, settings.max_connections_per_ip)
        self.in_flight = 0  # requests awaiting a reply, all connections
        self._rtt = {
            (svc, st): metrics.request_seconds.labels(svc, st) for svc in Service for st in Status
        }
        self.hops = HopTable(metrics)  # per-hop latency and per-frame logs (gateway.hops)

    # -- lifecycle -----------------------------------------------------------------
    async def start(self, on_connected: Callable[[Client], Awaitable[None]] | None = None) -> None:
        """Connect to NATS in the background, then ``on_connected(nc)``. Until then
        ``nc`` is None: sockets are refused (1013), ``/readyz`` answers 503, while
        ``/healthz`` answers and SIGTERM stops the process (a gateway that waited for
        NATS before serving ignored SIGTERM until killed)."""
        self._starting = asyncio.create_task(self._connect(on_connected))
        self._starting.add_done_callback(_log_failure)

    async def _connect(self, on_connected: Callable[[Client], Awaitable[None]] | None) -> None:
        nc = await natsconn.connect(
            self.settings.nats_url,
            f"gateway-{self.settings.id}",
            user=self.settings.nats_user,
            password=self.settings.nats_password,
            on_state=self._nats_state,
        )
        if nc.max_payload < self.settings.max_frame_bytes + 4096:
            log.error(
                "NATS max_payload %d is smaller than max_frame_bytes %d plus headers: "
                "large frames will be refused",
                nc.max_payload,
                self.settings.max_frame_bytes,
            )
        if nc.max_payload * 2 + self.settings.send_queue_bytes > self.settings.send_queue_max_bytes:
            log.warning(
                "SB_GATEWAY_SEND_QUEUE_MAX_BYTES %d is under SB_GATEWAY_SEND_QUEUE_BYTES plus "
                "two replies of NATS max_payload %d: a client that reads may be closed 1013 "
                "as a slow consumer by two such replies",
                self.settings.send_queue_max_bytes,
                nc.max_payload,
            )
        await nc.subscribe(reply_wildcard(self.settings.id), cb=self._on_reply)
        self._sweeper = asyncio.create_task(self._sweep())
        self.live.start(nc)
        self.leaves.start(nc)
        if on_connected is not None:
            await on_connected(nc)
        self.nc = nc  # only now: sockets are taken once replies can come back
        log.info("gateway connected to NATS", extra={"nats_url": redact(self.settings.nats_url)})

    def _nats_state(self, up: bool) -> None:
        self.metrics.nats_connected.set(1 if up else 0)
        if up:
            self.live.reconnected()
            self.leaves.reconnected()

    async def stop(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()  # still connecting: nothing was sent
        if self._starting is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        # the sockets are closed: their leaves go before the drain (at most the timeout)
        await self.leaves.stop(self.settings.shutdown_timeout)
        await self.live.stop()
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.nc and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), self.settings.shutdown_timeout)
            if not self.nc.is_closed:
                await self.nc.close()

    async def close_all(self, code: int, reason: str, grace: float) -> None:
        """Stop accepting, let in-flight requests finish, then close every socket."""
        self.accepting = False
        deadline = time.monotonic() + grace
        # Polled: the condition spans every connection, and this runs once, at shutdown.
        while any(c.pending for c in self.connections.values()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        for conn in list(self.connections.values()):
            if conn.rooms is not None and conn.spec.path == "/ws/v2":
                # v2 clients are told to come back (to another gateway) and recover.
                after_ms = random.randint(100, 1000)
                conn.push({"type": "websocket.send", "text": envelope.reconnect(reason, after_ms)})
            conn.close(code, reason)
        # Let the senders write those frames: the server's own shutdown, next, would
        # close the sockets at once with 1012, no reason and no reconnect hint.
        deadline = time.monotonic() + min(grace, 2.0)
        while self.connections and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    # -- connections ---------------------------------------------------------------
    def new_id(self) -> int:
        return next(self._ids)

    def register(self, conn: Connection) -> None:
        self.connections[conn.id] = conn

    def unregister(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is not None:
            self.admission.release(conn.ip)
            self.in_flight -= len(conn.pending)

    # -- requests ------------------------------------------------------------------
    async def request(
        self,
        conn: Connection,
        route: Route,
        data: bytes,
        headers: dict[str, str],
        *,
        tag: str | None = None,
        hook: Hook | None = None,
        received: float | None = None,
    ) -> None:
        """Publish one frame to its worker; the reply arrives through ``_on_reply``.

        ``tag`` (the client's request id) goes into error frames. ``hook``, if given, is
        called as ``hook(messages, headers, error)`` when the reply's turn comes in the
        connection's order, instead of sending the reply's frames. ``received``: when
        the relay read the frame (``perf_counter``), where its hop timings start."""
        todo = self.submit(conn, route, data, headers, tag=tag, hook=hook, received=received)
        if todo is not None:
            await self._publish(conn, todo[0], todo[1], self._target(conn, route), data, headers)

    def batches(self, route: Route, size: int) -> bool:
        """True if a frame of ``size`` bytes for ``route`` goes into a batch: submitting
        it then never leaves a publish to wait for."""
        settings = self.settings
        return route.batch is not None and settings.batch and size <= settings.batch_max_bytes

    def submit(
        self,
        conn: Connection,
        route: Route,
        data: bytes,
        headers: dict[str, str],
        *,
        tag: str | None = None,
        hook: Hook | None = None,
        received: float | None = None,
    ) -> tuple[int, Pending] | None:
        """What :meth:`request` does without waiting: number the frame, fail it at once
        (shutting down, NATS down, too much in flight), hold it behind the connection's
        request of an ordered route still out (:meth:`_release` sends it when that one is
        answered), or queue it in this loop pass's batch (:meth:`batches`). Returns
        ``(seq, pending)`` when the frame is still to be published on its own."""
        if not self.accepting:
            # Shutting down: what is in flight is being finished, nothing new is
            # started, so the 1001 close comes promptly even under load. A frame left
            # unanswered at that close was not processed: the client sends it again.
            return None
        loop_now = asyncio.get_running_loop().time()
        pending = Pending(
            loop_now + self.settings.request_timeout,
            time.perf_counter() if received is None else received,
            route.service,
            tag,
            hook,
            headers.get(h.TRACEPARENT),
        )
        seq = conn.allocate(pending)
        self.in_flight += 1
        nc = self.nc
        assert nc is not None
        if not nc.is_connected:  # NATS is down: say so now rather than at the timeout
            self._fail(conn, seq, WireError(ErrorCode.UNAVAILABLE, "service unavailable"))
            return None
        if self.in_flight > self.settings.max_in_flight_total:  # workers are not keeping up
            self._fail(conn, seq, errors.GATEWAY_BUSY)
            return None
        if route.idempotent:
            pending.retry_at = loop_now + self.settings.request_timeout * RETRY_AFTER
            pending.retry = (route.subject, data, headers)
        if route.ordered:
            pending.resend = (route, data, headers)
            if conn.gate is not None:  # waits its turn (_release)
                self._hold(conn, seq, pending)
                return None
            if conn.pin is None:  # no replica yet: this one alone, its reply names one
                out = self._sent_before(conn, seq)
                if out is not None:  # unpinned with requests still out: after them
                    self._hold(conn, seq, pending)
                    conn.gate = out
                    return None
                conn.gate = seq
                conn.unpinned = None  # whichever answers it, the one that left too
            else:
                pending.at = conn.pin
        if self.batches(route, len(data)):
            self._queue(route, (conn, seq, pending, data, headers))
            return None
        return seq, pending

    async def _publish(
        self,
        conn: Connection,
        seq: int,
        pending: Pending,
        subject: str,
        data: bytes,
        headers: dict[str, str],
    ) -> None:
        assert self.nc is not None
        _stamp_deadline(headers, pending)
        try:
            await self.nc.publish(
                subject, data, reply=reply_subject(self._prefix, conn.id, seq), headers=headers
            )
        except MaxPayloadError:
            self._fail(conn, seq, WireError(ErrorCode.TOO_LARGE, "frame too large"))
        except Exception as exc:  # connection closed or reconnecting with a full buffer
            log.warning("publish failed: %s", exc)
            self._fail(conn, seq, WireError(ErrorCode.UNAVAILABLE, "service unavailable"))
        else:
            self.hops[conn.spec.path].published(pending, conn.id, seq)

    # -- batches (wire.batch) ------------------------------------------------------
    def _queue(self, route: Route, item: Queued) -> None:
        """Hold a frame until the end of this loop pass, with the others for its route."""
        queued = self._outbox.get(route)
        if queued is None:
            queued = self._outbox[route] = []
        queued.append(item)
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Send what this loop pass queued: per route, batches of at most
        ``batch_max_frames`` frames and ``batch_max_bytes`` bytes; a lone frame as an
        ordinary request."""
        outbox, self._outbox = self._outbox, {}
        self._flushing = None  # frames queued from here on go in the next flush
        most, room = self.settings.batch_max_frames, self.settings.batch_max_bytes
        for route, queued in outbox.items():
            # not failed nor closed since they were queued
            conns = self.connections
            live = [q for q in queued if q[0].pending.get(q[1]) is q[2] and q[0].id in conns]
            chunk: list[Queued] = []
            size = 0
            for item in live:  # each fits alone: request() sends larger frames at once
                if chunk and (len(chunk) == most or size + len(item[3]) > room):
                    await self._send(route, chunk)
                    chunk, size = [], 0
                chunk.append(item)
                size += len(item[3])
            if chunk:
                await self._send(route, chunk)

    async def _send(self, route: Route, chunk: list[Queued]) -> None:
        if len(chunk) > 1:
            await self._publish_batch(route, chunk)
        else:
            conn, seq, pending, data, headers = chunk[0]
            await self._publish(conn, seq, pending, route.subject, data, headers)

    async def _publish_batch(self, route: Route, queued: list[Queued]) -> None:
        assert self.nc is not None and route.batch is not None
        number = next(self._batch_ids)
        items = [
            (batch.key(c.id, seq), data, hdrs.get(h.FRAME) != h.FRAME_BINARY, p.trace or "-")
            for c, seq, p, data, hdrs in queued
        ]
        payload, hdrs = batch.encode_request(route.op, items)
        self._batches[number] = (queued[0][2].deadline, [(q[0], q[1]) for q in queued])
        reply = batch_reply_subject(self._batch_prefix, number)
        try:
            await self.nc.publish(route.batch, payload, reply=reply, headers=hdrs)
        except Exception as exc:  # connection closed or reconnecting with a full buffer
            log.warning("publish failed: %s", exc)
            self._batches.pop(number, None)
            error = WireError(ErrorCode.UNAVAILABLE, "service unavailable")
            for conn, seq, _, _, _ in queued:
                self._fail(conn, seq, error)
            return
        self.metrics.batches.labels(route.service).inc()
        self.metrics.batched_frames.labels(route.service).inc(len(queued))
        for conn, seq, pending, _, _ in queued:
            self.hops[conn.spec.path].published(pending, conn.id, seq)

    def _on_batch_reply(self, msg: Msg) -> None:
        try:
            number = int(msg.subject[len(self._batch_prefix) :])
        except ValueError:
            return
        entry = self._batches.pop(number, None)
        if entry is None:  # its frames timed out, were answered by a retry, or were closed
            self.metrics.late_replies.inc()
            return
        members = entry[1]
        hdrs = msg.headers
        results: list[bytes | WireError]
        error = errors.from_headers(hdrs) if hdrs else None
        if error is None:
            try:
                results = batch.decode_reply(msg.data, hdrs, len(members))
            except FrameDecodeError as exc:
                error = WireError(ErrorCode.INTERNAL, f"bad reply: {exc}")
        if error is not None:
            results = [error] * len(members)
        stamp = {h.HANDLED_AT: hdrs[h.HANDLED_AT]} if hdrs and h.HANDLED_AT in hdrs else None
        for (conn, seq), result in zip(members, results, strict=True):
            pending = conn.pending.pop(seq, None)
            if pending is None or self.connections.get(conn.id) is not conn:
                self.metrics.late_replies.inc()
                continue
            self.in_flight -= 1
            data, failed = (b"", result) if isinstance(result, WireError) else (result, None)
            self._deliver(
                conn,
                seq,
                data,
                stamp,
                failed,
                pending.service,
                pending.started,
                pending.tag,
                pending.hook,
                pending,
            )

    # -- ordered routes (Route.ordered) ---------------------------------------------
    # A connection's requests of ordered routes go one at a time to the queue group until
    # a reply names the replica that handled it (Sb-Instance); then they are pipelined to
    # that replica (wire.subjects.pinned_subject), which handles them in order. If it is
    # gone (no responders), they are sent again, one at a time, to the queue group.
    def _target(self, conn: Connection, route: Route) -> str:
        if route.ordered and conn.pin is not None:
            return pinned_subject(route.service, conn.pin, route.op)
        return route.subject

    def _hold(self, conn: Connection, seq: int, pending: Pending) -> None:
        """Keep request ``seq`` until its turn (what to send is ``pending.resend``);
        ``held`` stays in seq order (a request sent again after a pinned replica left
        goes back ahead of later ones)."""
        held = conn.held
        if held is None:
            held = conn.held = collections.deque()
        pending.deadline = math.inf  # until sent: the one ahead has its own deadline
        if not held or held[-1][0] < seq:
            held.append((seq, pending))
            return
        held.insert(bisect.bisect(held, seq, key=lambda item: item[0]), (seq, pending))

    def _release(self, conn: Connection, instance: str | None = None) -> None:
        """The request at the connection's gate is answered (by replica ``instance``,
        if it says, and it is not the one that left): send what waits behind it; but
        with no replica pinned, only once every request sent before it is answered
        (:meth:`_sent_before`)."""
        self._ungate(conn)
        if conn.held:
            out = self._sent_before(conn, conn.held[0][0])
            if out is not None:  # not pinned anywhere yet either (a hand-off's answer
                conn.gate = out  # names a new replica while the old one still works)
                return
        if instance is not None and conn.pin is None and is_token(instance):
            if instance != conn.unpinned:
                conn.pin = instance
        if conn.held:
            conn.gate = RELEASING
            task = asyncio.get_running_loop().create_task(self._send_held(conn))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def _send_held(self, conn: Connection) -> None:
        """Publish the held requests in order: all of them to the pinned replica, or the
        first alone (the new gate) while there is none. Requests submitted meanwhile are
        held behind them (``gate`` is RELEASING), so nothing overtakes."""
        held = conn.held
        assert held is not None
        loop = asyncio.get_running_loop()
        while held:
            seq, pending = held.popleft()
            if conn.pending.get(seq) is not pending:
                continue  # failed while held (timed out, closed)
            assert pending.resend is not None
            alone = conn.pin is None
            if alone and (out := self._sent_before(conn, seq)) is not None:
                held.appendleft((seq, pending))  # unpinned meanwhile: wait for those
                conn.gate = out
                return
            route, data, headers = pending.resend
            pending.deadline = loop.time() + self.settings.request_timeout
            pending.at = conn.pin
            if alone:
                conn.gate = seq
                conn.unpinned = None  # sent to the queue group: its answerer is alive
            await self._publish(conn, seq, pending, self._target(conn, route), data, headers)
            if alone:
                return
        if conn.gate == RELEASING:
            self._ungate(conn)

    def _unpin(self, conn: Connection, seq: int, pending: Pending) -> None:
        """A request sent to the pinned replica found it gone (no responders, so it was
        not handled): forget the replica and send the request again, in its turn, once
        the requests sent before it are answered (:meth:`_release`)."""
        if pending.at is not None and pending.at == conn.pin:  # not an older replica's
            conn.unpinned, conn.pin = conn.pin, None
        self._hold(conn, seq, pending)
        if conn.gate is None:
            self._release(conn)

    @staticmethod
    def _sent_before(conn: Connection, seq: int) -> int | None:
        """The last ordered request of ``conn`` before ``seq`` that is out (sent, not
        answered), if any. A replica that stops finishes what it took (or hands it to
        another), so a request sent again elsewhere waits for them: else it could take
        effect first."""
        held = {s for s, _ in conn.held or ()}
        out = [s for s, p in conn.pending.items() if s < seq and p.resend is not None]
        return max((s for s in out if s not in held), default=None)

    def _ungate(self, conn: Connection) -> None:
        conn.gate = None
        if self._settling:
            self._wake_settle(conn)

    def _wake_settle(self, conn: Connection) -> None:
        waiter = self._settling.pop(conn.id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # Hub.settle looks again

    async def settle(self, conn: Connection, step: float) -> None:
        """Wait until every request of an ordered route the connection made is answered,
        as long as each step takes under ``step`` s: a closing chat socket's last
        messages are still handled, and its leave (which goes to any replica) does not
        overtake them."""
        loop = asyncio.get_running_loop()
        while conn.gate is not None or any(p.resend for p in conn.pending.values()):
            waiter = self._settling[conn.id] = loop.create_future()
            try:
                await asyncio.wait_for(waiter, step)
            except TimeoutError:
                return
            finally:
                self._settling.pop(conn.id, None)

    async def request_future(
        self,
        conn: Connection,
        route: Route,
        data: bytes,
        headers: dict[str, str],
        *,
        received: float | None = None,
    ) -> None:
        """``reply_mode=request``: one ``nc.request()`` (a future) per frame, in order.
        (The benchmark's baseline: no per-hop histograms in this mode.)"""
        seq = conn.allocate(None)
        started = time.perf_counter() if received is None else received
        assert self.nc is not None
        try:
            msg = await self.nc.request(
                route.subject, data, timeout=self.settings.request_timeout, headers=headers
            )
        except NoRespondersError:
            error = WireError(ErrorCode.UNAVAILABLE, "service unavailable")
        except NatsTimeout:
            error = WireError(ErrorCode.TIMEOUT, "service timed out")
        else:
            error = errors.from_headers(msg.headers) if msg.headers else None
            self._deliver(conn, seq, msg.data, msg.headers, error, route.service, started)
            return
        self._rtt[(route.service, _status(error))].observe(time.perf_counter() - started)
        self._fail(conn, seq, error)

    async def ask(
        self, route: Route, data: bytes, headers: dict[str, str]
    ) -> tuple[list[Message], Mapping[str, str]]:
        """One request outside any connection's reply order (for a release holding its
        connection's turn, ``HOLD``: a reply in that order would wait behind it). Returns
        the reply's frames and headers; an error reply, no responders or no reply within
        the request timeout are raised as WireError."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            raise WireError(ErrorCode.UNAVAILABLE, "service unavailable")
        timeout = self.settings.request_timeout
        headers[h.TIMEOUT] = h.timeout_ms(timeout)  # a worker that cannot start it skips it
        started = time.perf_counter()
        messages: list[Message] = []
        try:
            msg = await nc.request(route.subject, data, timeout=timeout, headers=headers)
            error = errors.from_headers(msg.headers) if msg.headers else None
            if error is None:
                messages = frames_to_messages(msg.data)
        except NoRespondersError:
            error = WireError(ErrorCode.UNAVAILABLE, "service unavailable")
        except NatsTimeout:
            error = WireError(ErrorCode.TIMEOUT, "service timed out")
        except FrameDecodeError as exc:
            error = WireError(ErrorCode.INTERNAL, f"bad reply: {exc}")
        self._rtt[(route.service, _status(error))].observe(time.perf_counter() - started)
        if error is not None:
            self.metrics.errors.labels(error.code).inc()
            raise error
        return messages, msg.headers or {}

    def answer_locally(
        self, conn: Connection, error: WireError | None, tag: str | None = None, text: str = ""
    ) -> None:
        """An answer the gateway itself gives (a wrong frame type, a v2 pong), in order."""
        seq = conn.allocate(None)
        if error is None:
            conn.complete(seq, [{"type": "websocket.send", "text": text}])
        else:
            self._fail(conn, seq, error, tag)

    def _fail(
        self,
        conn: Connection,
        seq: int,
        error: WireError,
        tag: str | None = None,
        hook: Hook | None = None,
    ) -> None:
        pending = conn.pending.pop(seq, None)
        if pending is not None:
            self.in_flight -= 1
            tag, hook = pending.tag, pending.hook
            if pending.resend is not None:
                hung = pending.at is not None and pending.at == conn.pin
                if error.code is ErrorCode.TIMEOUT and hung:
                    # the pinned replica does not answer: find another
                    conn.unpinned, conn.pin = conn.pin, None
                if self._settling:
                    self._wake_settle(conn)
        if seq == conn.gate:
            self._release(conn)
        self.metrics.errors.labels(error.code).inc()
        if hook is not None:
            conn.complete(seq, functools.partial(hook, [], None, error))
        else:
            message = conn.spec.error_message(error, tag)
            if pending is not None:
                self.hops[conn.spec.path].failed(pending, conn.id, seq, _status(error), message)
            conn.complete(seq, [message])

    async def _on_reply(self, msg: Msg) -> None:
        if msg.subject.startswith(self._batch_prefix):
            self._on_batch_reply(msg)
            return
        try:
            cid, seq = parse_reply_subject(msg.subject)
        except ValueError:
            return
        conn = self.connections.get(cid)
        if conn is None:
            self.metrics.late_replies.inc()  # its socket closed before the reply came
            return
        pending = conn.pending.get(seq)
        if pending is None:
            self.metrics.late_replies.inc()
            return
        hdrs = msg.headers
        if hdrs and pending.resend is not None and seq != conn.gate and hdrs.get(h.STATUS) == "503":
            self._unpin(conn, seq, pending)  # the pinned replica is gone; it never had it
            return
        del conn.pending[seq]
        self.in_flight -= 1
        error = errors.from_headers(hdrs) if hdrs else None
        self._deliver(
            conn,
            seq,
            msg.data,
            msg.headers,
            error,
            pending.service,
            pending.started,
            pending.tag,
            pending.hook,
            pending,
        )

    def _deliver(
        self,
        conn: Connection,
        seq: int,
        data: bytes,
        headers: Mapping[str, str] | None,
        error: WireError | None,
        service: str,
        started: float,
        tag: str | None = None,
        hook: Hook | None = None,
        pending: Pending | None = None,
    ) -> None:
        """Send (or hand to ``hook``) a worker's reply: its payload ``data`` and
        ``headers``, or the ``error`` it carries."""
        if seq == conn.gate:
            self._release(conn, headers.get(h.INSTANCE) if headers else None)
        elif self._settling:
            self._wake_settle(conn)
        if error is None:
            try:
                messages = frames_to_messages(data)
            except FrameDecodeError as exc:
                error = WireError(ErrorCode.INTERNAL, f"bad reply: {exc}")
        self._rtt[(service, _status(error))].observe(time.perf_counter() - started)
        if hook is not None:
            if error is not None:
                self.metrics.errors.labels(error.code).inc()
                messages = []
            if pending is not None:
                self.hops[conn.spec.path].replied(
                    pending, conn.id, seq, headers, _status(error), []
                )
            size = 0 if error is not None else len(data)  # owed until its turn
            conn.complete(seq, functools.partial(hook, messages, headers, error), size)
            return
        if error is not None:
            self.metrics.errors.labels(error.code).inc()
            # seq 0 of a chat connection is its join: a refused join closes the socket.
            if conn.spec.chat and seq == 0 and error.code in _FATAL_ON_JOIN:
                conn.complete(seq, [])
                conn.close(int(errors.close_code(error.code)), error.description)
                return
            messages = [conn.spec.error_message(error, tag)]
        if pending is not None:
            self.hops[conn.spec.path].replied(
                pending, conn.id, seq, headers, _status(error), messages
            )
        conn.complete(seq, messages)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = WireError(ErrorCode.TIMEOUT, "service timed out")
        ticks = 0
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = loop.time()
            ticks += 1
            if ticks % round(1 / SWEEP_INTERVAL) == 0:
                self._housekeeping()
            for conn in list(self.connections.values()):
                if not conn.pending:
                    continue
                for seq, pending in list(conn.pending.items()):
                    if pending.deadline <= now:
                        self._rtt[(pending.service, Status.TIMEOUT)].observe(
                            time.perf_counter() - pending.started
                        )
                        self._fail(conn, seq, timeout)
                    elif pending.retry is not None and pending.retry_at <= now:
                        await self._retry(conn, seq, pending)

    def _housekeeping(self) -> None:
        """Once a second: close idle connections, sample send-queue depth (what is owed to
        each socket: queued, or parked behind an earlier reply), forget batches
        whose frames have all timed out."""
        idle = self.settings.idle_timeout
        cutoff = time.monotonic() - idle
        total = largest = 0
        for conn in self.connections.values():
            owed = conn.out_bytes + conn.parked_bytes  # queued, or parked behind a reply
            total += owed
            largest = max(largest, owed)
            if idle and conn.active < cutoff and not conn.closing:
                conn.close(int(CloseCode.NORMAL), "idle timeout")
        self.metrics.send_queue_bytes.labels("sum").set(total)
        self.metrics.send_queue_bytes.labels("max").set(largest)
        now = asyncio.get_running_loop().time()
        for number in [n for n, (deadline, _) in self._batches.items() if deadline < now]:
            del self._batches[number]

    async def _retry(self, conn: Connection, seq: int, pending: Pending) -> None:
        """Publish an idempotent request once more; whichever reply comes first wins,
        the other is dropped as late."""
        assert pending.retry is not None and self.nc is not None
        subject, data, headers = pending.retry
        pending.retry = None
        self.metrics.retries.labels(pending.service).inc()
        _stamp_deadline(headers, pending)  # what is left now, not the first's
        with contextlib.suppress(Exception):
            reply = reply_subject(self._prefix, conn.id, seq)
            await self.nc.publish(subject, data, reply=reply, headers=headers)

    # -- rooms ---------------------------------------------------------------------
    async def join_room(self, conn: Connection, room: str) -> None:
        members = self.rooms.get(room)
        if members is None:
            members = self.rooms[room] = set()
            assert self.nc is not None
            self._room_subs[room] = await self.nc.subscribe(
                room_subject(room), cb=self._on_room_event
            )
        members.add(conn)

    async def leave_room(self, conn: Connection, room: str) -> None:
        members = self.rooms.get(room)
        if members is None:
            return
        members.discard(conn)
        if not members:
            del self.rooms[room]
            sub = self._room_subs.pop(room, None)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _on_room_event(self, msg: Msg) -> None:
        room = msg.subject.rsplit(".", 1)[1]
        members = self.rooms.get(room)
        self.metrics.room_events.inc()
        if not members:
            return
        try:
            messages = frames_to_messages(msg.data)
        except FrameDecodeError:
            log.error("malformed room event", extra={"subject": msg.subject})
            return
        for conn in members:
            for message in messages:
                conn.push(message)

    # -- discovery -----------------------------------------------------------------
    async def instances(self) -> dict[str, int]:
        """Worker instances answering ``$SRV.PING`` per service (cached for 1 s)."""
        loop = asyncio.get_running_loop()
        if self._discovery and loop.time() - self._discovery[0] < 1.0:
            return self._discovery[1]
        counts = {str(s): 0 for s in Service}
        nc = self.nc
        if nc is None or not nc.is_connected:
            return counts
        inbox = nc.new_inbox()
        seen: set[str] = set()
        replies: asyncio.Queue[Msg] = asyncio.Queue()
        sub = await nc.subscribe(inbox, cb=replies.put)
        try:
            for service in Service:
                await nc.publish(discovery_subject("PING", service), b"", reply=inbox)
            end = loop.time() + self.settings.discovery_timeout
            while (left := end - loop.time()) > 0:
                try:
                    msg = await asyncio.wait_for(replies.get(), left)
                except TimeoutError:
                    break
                if not msg.data:  # nats-server's 503 "no responders": none of that service
                    continue
                try:
                    info: dict[str, Any] = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    log.warning("discovery: an answer that is not JSON: %r", msg.data[:80])
                    continue
                if not isinstance(info, dict):
                    continue
                if info.get("id") not in seen and info.get("name") in counts:
                    seen.add(info["id"])
                    counts[info["name"]] += 1
        finally:
            await sub.unsubscribe()
        self._discovery = (loop.time(), counts)
        return counts


_FATAL_ON_JOIN = {ErrorCode.FORBIDDEN, ErrorCode.UNAUTHORIZED, ErrorCode.BAD_REQUEST}


def _status(error: WireError | None) -> Status:
    if error is None:
        return Status.OK
    if error.code == ErrorCode.TIMEOUT:
        return Status.TIMEOUT
    if error.code == ErrorCode.UNAVAILABLE:
        return Status.BUSY if errors.refused(error) else Status.UNAVAILABLE
    return Status.ERROR
