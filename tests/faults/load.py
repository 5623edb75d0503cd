"""Clients that send and check continuously while processes die around them.

Three kinds, all in one asyncio loop (the test's), each with its own socket:

- :class:`Tutorial`: a closed loop on ``/ws`` (text echo) or ``/ws/binary`` (inspect +
  echoed bytes). Every reply must be exactly the expected one. An error frame is
  counted and the same request is sent again after a jittered pause; a request left
  unanswered by a dropped socket is sent again on the new socket.
- :class:`Publisher`: ``/ws/v2`` publishes to one room, each with a unique id, and
  records the ``seq`` of every ack. On an error frame, a dropped socket or a
  ``reconnect`` hint it reconnects if needed (jittered backoff, another gateway first)
  and sends the unacknowledged publish again with the SAME id: the chat service's
  dedupe makes that exactly-once.
- :class:`Subscriber`: ``/ws/v2``, joined to the room, checks that seqs arrive strictly
  one by one (no gap, no duplicate). When its socket drops or it gets a ``reconnect``
  hint it reconnects (another gateway first) and rejoins with ``since`` = the last seq
  it saw, and checks the replay continues exactly where it stopped.

:class:`Load` runs a set of them and turns their counters into a :class:`Report`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from wire.natsconn import backoff

REQUEST_TIMEOUT = 2.0  # the gateway's SB_GATEWAY_REQUEST_TIMEOUT (default, unchanged here)
HANG = REQUEST_TIMEOUT + 2.0  # no reply by then (socket still open): a hang
OPEN_TIMEOUT = 3.0
RETRYABLE = {"503", "408", "500"}  # error codes a client retries; others are a bug here
GIVE_UP = 20.0  # after the load stops, how long a sender keeps retrying its last request

Urls = Callable[[], list[str]]  # ws://host:port of every gateway that is up, in order

REPORTS: list[Report] = []  # every case's figures, for the summary table


def now() -> float:
    return time.monotonic()


def jitter(attempt: int) -> float:
    """Full-jitter exponential backoff, the same shape the browser pages use."""
    return backoff(attempt, base=0.05, cap=1.0)


class Hint(Exception):
    """The server sent ``{"type": "reconnect"}``: go elsewhere after ``after`` s."""

    def __init__(self, after: float) -> None:
        self.after = after


class Stall:
    """The longest gap between consecutive successes (replies, acks, deliveries)."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.max = 0.0

    def tick(self) -> None:
        t = now()
        if self.last is not None:
            self.max = max(self.max, t - self.last)
        self.last = t


class Client:
    path = ""

    def __init__(self, name: str, urls: Urls, home: int) -> None:
        self.name = name
        self.urls = urls
        self.home = home  # index of the gateway it first connects to
        self.url: str | None = None
        self.opens = 0  # sockets opened
        self.drops = 0  # sockets lost: closed by the server, or broken
        self.hints = 0  # reconnect frames received
        self.close_codes: list[int | None] = []  # of the sockets lost (None: no close frame)
        self.hangs = 0  # a request with no answer within HANG on an open socket
        self.errors = 0  # error frames
        self.max_wait = 0.0  # longest time from sending a request to its answer
        self.stall = Stall()
        self.notes: list[str] = []  # what went wrong, for assertion messages
        self.task: asyncio.Task[None] | None = None
        self.stopped_at: float | None = None

    def giving_up(self) -> bool:
        """After the load stops, a sender retries its last request for GIVE_UP s."""
        stop = getattr(self, "stop", None)
        if stop is None or not stop.is_set():
            return False
        if self.stopped_at is None:
            self.stopped_at = now()
        return now() - self.stopped_at > GIVE_UP

    def note(self, text: str) -> None:
        if len(self.notes) < 20:
            self.notes.append(f"{self.name} @{now():.2f}: {text}")

    @property
    def reconnects(self) -> int:
        return max(0, self.opens - 1)

    def query(self) -> str:
        return ""

    async def open(self, avoid: str | None) -> ClientConnection:
        """Connect to a gateway: first to its home one, after a loss to another one
        (``avoid`` is the one just lost), with jittered backoff between attempts."""
        for attempt in itertools.count(1):
            urls = self.urls()
            if not urls:
                await asyncio.sleep(jitter(attempt))
                continue
            if avoid is None and self.url is None:
                url = urls[self.home % len(urls)]
            else:
                others = [u for u in urls if u != avoid] if attempt <= 3 else []
                url = random.choice(others or urls)
            try:
                ws = await websockets.connect(
                    url + self.path + self.query(),
                    open_timeout=OPEN_TIMEOUT,
                    close_timeout=1,
                    # half with permessage-deflate (uvicorn's send compresses), half
                    # without (the gateway writes frames directly): both paths under faults
                    compression="deflate" if self.home % 2 else None,
                )
            except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                self.note(f"connect {url} failed: {exc!r}")
                await asyncio.sleep(jitter(attempt))
                continue
            self.url = url
            self.opens += 1
            return ws
        raise AssertionError("unreachable")

    async def lost(self, ws: ClientConnection, why: str) -> str | None:
        """Forget a socket; returns the URL to avoid on the next attempt."""
        self.drops += 1
        await ws.close()
        self.close_codes.append(ws.close_code)
        self.note(f"socket lost ({why}, {ws.close_code})")
        return self.url

    async def follow(self, ws: ClientConnection, hint: Hint) -> str | None:
        """A reconnect hint: the server closes next; then wait what it asked."""
        t0 = now()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.wait_closed(), hint.after + 0.5)
        avoid = await self.lost(ws, "reconnect hint")
        await asyncio.sleep(max(0.0, hint.after - (now() - t0)))
        return avoid


# -- tutorial endpoints ---------------------------------------------------------------
class Tutorial(Client):
    def __init__(
        self,
        name: str,
        urls: Urls,
        home: int,
        stop: asyncio.Event,
        *,
        binary: bool = False,
        pace: float = 0.01,
    ) -> None:
        super().__init__(name, urls, home)
        self.path = "/ws/binary" if binary else "/ws"
        self.binary = binary
        self.stop = stop
        self.pace = pace
        self.sent = 0  # frames sent, re-sends included
        self.ok = 0  # requests answered with exactly the expected reply
        self.resent = 0  # requests sent again because their socket dropped
        self.mismatches = 0  # a reply that is neither the expected one nor an error

    def frame(self, i: int) -> str | bytes:
        if self.binary:
            return f"{self.name}:{i}:".encode() + bytes(range(i % 7, i % 7 + 24))
        return f"{self.name}-{i}"

    def expected(self, i: int) -> list[str | bytes]:
        data = self.frame(i)
        if isinstance(data, bytes):
            preview = base64.b64encode(data[:15]).decode()[:20]
            text = (
                f"Received binary data of size {len(data)} bytes. "
                f"First 20 bytes in base64: {preview}..."
            )
            return [text, data]
        return [f"Echo: {data}"]

    async def run(self) -> None:
        pending: int | None = None  # the request awaiting its answer
        counter = itertools.count()
        avoid: str | None = None
        while True:
            if self.stop.is_set() and (pending is None or self.giving_up()):
                return
            ws = await self.open(avoid)
            try:
                failures = 0
                while True:
                    if pending is None:
                        if self.stop.is_set():
                            return
                        pending = next(counter)
                    elif failures == 0:
                        self.resent += 1  # its socket dropped before the answer came
                    t0 = now()
                    await ws.send(self.frame(pending))
                    self.sent += 1
                    first = await asyncio.wait_for(ws.recv(), HANG)
                    self.max_wait = max(self.max_wait, now() - t0)
                    want = self.expected(pending)
                    if isinstance(first, str) and first.startswith("Error: "):
                        self.errors += 1
                        failures += 1
                        self.note(f"error frame {first!r}")
                        if self.giving_up():
                            return
                        await asyncio.sleep(jitter(failures))
                        continue
                    got = [first]
                    if len(want) > 1:
                        got.append(await asyncio.wait_for(ws.recv(), HANG))
                    if got != want:
                        self.mismatches += 1
                        self.note(f"expected {want!r}, got {got!r}")
                    else:
                        self.ok += 1
                        self.stall.tick()
                    pending, failures = None, 0
                    await asyncio.sleep(self.pace)
            except websockets.ConnectionClosed as exc:
                avoid = await self.lost(ws, f"closed {exc.rcvd.code if exc.rcvd else 'abnormally'}")
            except TimeoutError:
                self.hangs += 1
                avoid = await self.lost(ws, f"no reply to {pending} within {HANG}s")
            finally:
                await ws.close()


# -- rooms (/ws/v2) -------------------------------------------------------------------
def _decode(raw: str | bytes) -> dict[str, Any]:
    assert isinstance(raw, str), raw
    return json.loads(raw)


def _hint(frame: dict[str, Any]) -> Hint:
    after = min(2.0, max(0.0, frame.get("payload", {}).get("after_ms", 0) / 1000))
    return Hint(after)


class Publisher(Client):
    path = "/ws/v2"

    def __init__(
        self, name: str, urls: Urls, home: int, room: str, stop: asyncio.Event, pace: float
    ) -> None:
        super().__init__(name, urls, home)
        self.room = room
        self.stop = stop
        self.pace = pace
        self.ids = 0  # distinct messages (ids) sent
        self.sent = 0  # publish frames sent, re-sends with the same id included
        self.resent = 0  # re-sends with the same id (after an error or a lost socket)
        self.acked: dict[str, int] = {}  # id -> seq
        self.duplicate_acks = 0  # re-sends the server recognised (``duplicate: true``)
        self.reacked = 0  # an id acknowledged with two different seqs: stored twice
        self.unacked: list[str] = []  # ids given up on when the load stopped

    def query(self) -> str:
        return f"?username={self.name}"

    async def _answer(self, ws: ClientConnection, rid: str) -> dict[str, Any]:
        deadline = now() + HANG
        while True:
            left = deadline - now()
            if left <= 0:
                raise TimeoutError
            frame = _decode(await asyncio.wait_for(ws.recv(), left))
            if frame.get("type") == "reconnect":
                self.hints += 1
                raise _hint(frame)
            if frame.get("id") == rid:
                return frame

    async def run(self) -> None:
        pending: str | None = None
        counter = itertools.count()
        avoid: str | None = None
        while True:
            if self.stop.is_set() and pending is None:
                return
            if self.giving_up():
                assert pending is not None
                self.unacked.append(pending)
                return
            ws = await self.open(avoid)
            try:
                failures = 0
                while True:
                    if pending is None:
                        if self.stop.is_set():
                            return
                        pending = f"{self.name}-{next(counter)}"
                        self.ids += 1
                    else:
                        self.resent += 1
                    frame = {
                        "type": "publish",
                        "id": pending,
                        "room": self.room,
                        "payload": {"text": pending, "pid": pending},
                    }
                    t0 = now()
                    await ws.send(json.dumps(frame))
                    self.sent += 1
                    reply = await self._answer(ws, pending)
                    self.max_wait = max(self.max_wait, now() - t0)
                    if reply["type"] == "ack":
                        seq = reply["payload"]["seq"]
                        if reply["payload"].get("duplicate"):
                            self.duplicate_acks += 1
                        if pending in self.acked and self.acked[pending] != seq:
                            self.reacked += 1
                            self.note(f"{pending} acked as {self.acked[pending]} and {seq}")
                        self.acked[pending] = seq
                        self.stall.tick()
                        pending, failures = None, 0
                        await asyncio.sleep(self.pace)
                    else:
                        self.errors += 1
                        failures += 1
                        self.note(f"publish {pending}: {reply}")
                        if reply.get("payload", {}).get("code") not in RETRYABLE:
                            raise AssertionError(f"publish refused: {reply}")
                        if self.giving_up():
                            break
                        await asyncio.sleep(jitter(failures))
            except Hint as hint:
                avoid = await self.follow(ws, hint)
            except websockets.ConnectionClosed as exc:
                avoid = await self.lost(ws, f"closed {exc.rcvd.code if exc.rcvd else 'abnormally'}")
            except TimeoutError:
                self.hangs += 1
                avoid = await self.lost(ws, f"no answer to publish {pending} within {HANG}s")
            finally:
                await ws.close()


class Subscriber(Client):
    path = "/ws/v2"

    def __init__(self, name: str, urls: Urls, home: int, room: str, done: asyncio.Event) -> None:
        super().__init__(name, urls, home)
        self.room = room
        self.done = done
        self.start: int | None = None  # seq of the first join's ack: expects all after it
        self.last: int | None = None  # last seq received
        self.joined = asyncio.Event()
        self.delivered: dict[int, str | None] = {}  # seq -> publish id of message events
        self.by_id: dict[str, int] = {}
        self.deliveries = 0  # message events received (replayed ones included)
        self.events = 0  # every room event (message, join, leave)
        self.gaps = 0
        self.duplicates = 0  # a seq received twice
        self.stored_twice = 0  # one publish id delivered under two seqs
        self.unrecovered = 0  # a rejoin with since answered recovered: false
        self.rejoins = 0
        self.replayed = 0  # events received in a rejoin's replay (since recovery)

    def query(self) -> str:
        return f"?username={self.name}"

    def on_event(self, frame: dict[str, Any]) -> None:
        seq = frame["seq"]
        if self.last is None:
            self.note(f"event {seq} before the first join's ack")
            return
        if seq <= self.last:
            self.duplicates += 1
            self.note(f"duplicate seq {seq} (last {self.last})")
            return
        if seq != self.last + 1:
            self.gaps += 1
            self.note(f"gap: {self.last} -> {seq}")
        self.last = seq
        self.events += 1
        if frame["type"] == "message":
            pid = frame["payload"].get("pid")
            self.delivered[seq] = pid
            self.deliveries += 1
            if pid is not None:
                if pid in self.by_id:
                    self.stored_twice += 1
                    self.note(f"{pid} delivered as {self.by_id[pid]} and {seq}")
                self.by_id[pid] = seq
            self.stall.tick()

    async def _join(self, ws: ClientConnection, attempt: int) -> None:
        """Join (with ``since`` after the first time), processing the replay; retried
        on an error reply."""
        for failures in itertools.count():
            rid = f"{self.name}-join-{attempt}-{failures}"
            frame: dict[str, Any] = {"type": "join", "id": rid, "room": self.room}
            since = self.last
            if since is not None:
                frame["payload"] = {"since": since}
            t0 = now()
            await ws.send(json.dumps(frame))
            deadline = now() + HANG
            while True:
                left = deadline - now()
                if left <= 0:
                    raise TimeoutError
                reply = _decode(await asyncio.wait_for(ws.recv(), left))
                if reply.get("type") == "reconnect":
                    self.hints += 1
                    raise _hint(reply)
                if "seq" in reply and reply.get("type") in ("message", "join", "leave"):
                    self.replayed += 1
                    self.on_event(reply)
                elif reply.get("id") == rid:
                    break
            self.max_wait = max(self.max_wait, now() - t0)
            if reply["type"] == "ack":
                head = reply["payload"]["seq"]
                if since is None:
                    self.start = self.last = head
                else:
                    self.rejoins += 1
                    if not reply["payload"].get("recovered"):
                        self.unrecovered += 1
                        self.note(f"rejoin since {since}: not recovered")
                    if head > (self.last or 0):
                        self.gaps += 1
                        self.note(f"replay ended at {self.last}, head is {head}")
                        self.last = head
                self.joined.set()
                return
            self.errors += 1
            self.note(f"join: {reply}")
            if reply.get("payload", {}).get("code") not in RETRYABLE:
                raise AssertionError(f"join refused: {reply}")
            await asyncio.sleep(jitter(failures + 1))

    async def run(self) -> None:
        avoid: str | None = None
        for attempt in itertools.count():
            if self.done.is_set():
                return
            ws = await self.open(avoid)
            try:
                await self._join(ws, attempt)
                while not self.done.is_set():
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 0.25)
                    except TimeoutError:
                        continue
                    frame = _decode(raw)
                    kind = frame.get("type")
                    if kind == "reconnect":
                        self.hints += 1
                        raise _hint(frame)
                    if "seq" in frame and kind in ("message", "join", "leave"):
                        self.on_event(frame)
                    else:
                        self.note(f"unexpected frame {frame}")
                return
            except Hint as hint:
                avoid = await self.follow(ws, hint)
            except websockets.ConnectionClosed as exc:
                avoid = await self.lost(ws, f"closed {exc.rcvd.code if exc.rcvd else 'abnormally'}")
            except TimeoutError:
                self.hangs += 1
                avoid = await self.lost(ws, f"no answer to join within {HANG}s")
            finally:
                await ws.close()


# -- a whole load ---------------------------------------------------------------------
@dataclass
class Report:
    """One fault case's figures (see docs/reliability.md for the definitions)."""

    case: str
    seconds: float = 0.0
    # tutorial endpoints
    requests: int = 0  # frames sent on /ws and /ws/binary, re-sends included
    answered: int = 0  # requests answered with exactly the expected reply
    request_errors: int = 0  # error frames on /ws and /ws/binary
    request_resent: int = 0  # requests sent again because their socket dropped
    request_hangs: int = 0
    mismatches: int = 0
    # rooms
    published: int = 0  # distinct messages (publish ids)
    publish_frames: int = 0  # publish frames, re-sends with the same id included
    acknowledged: int = 0  # distinct ids acknowledged
    duplicate_acks: int = 0  # re-sends answered duplicate: true (the first was stored)
    delivered: int = 0  # message events received by subscribers
    expected: int = 0  # acknowledged messages x subscribers
    lost: int = 0  # acknowledged, never delivered to a subscriber (must be 0)
    duplicated: int = 0  # a seq delivered twice, or one message stored twice (must be 0)
    gaps: int = 0
    unrecovered: int = 0
    replayed: int = 0  # events subscribers recovered with since on a rejoin
    room_errors: int = 0  # error frames to publishers and joins
    room_hangs: int = 0
    unacked: int = 0  # ids a publisher gave up on (none expected)
    # both
    reconnects: int = 0  # sockets re-opened after a drop or a reconnect hint
    drops: int = 0
    hints: int = 0
    max_wait: float = 0.0  # longest single request (send -> answer)
    request_stall: float = 0.0  # longest gap between two successes of one tutorial client
    room_stall: float = 0.0  # longest gap between two acks / two deliveries of one client
    extra: dict[str, Any] = field(default_factory=dict)
    load: Any = field(default=None, repr=False)  # the Load, for case-specific checks
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.request_errors + self.room_errors

    @property
    def stall(self) -> float:
        return max(self.request_stall, self.room_stall)

    def line(self) -> str:
        return (
            f"[{self.case}] {self.seconds:.1f}s | requests {self.requests} sent, "
            f"{self.answered} ok, {self.request_errors} error frames, {self.request_resent} "
            f"re-sent, {self.request_hangs} hangs, {self.mismatches} wrong | room: "
            f"{self.published} sent ({self.publish_frames} frames), {self.acknowledged} acked "
            f"({self.duplicate_acks} dup acks), {self.delivered}/{self.expected} delivered, "
            f"lost {self.lost}, duplicated {self.duplicated}, gaps {self.gaps}, "
            f"unrecovered {self.unrecovered}, replayed {self.replayed}, {self.room_errors} error frames, "
            f"{self.room_hangs} hangs | reconnects {self.reconnects} | max wait "
            f"{self.max_wait:.2f}s, stall requests {self.request_stall:.2f}s / room "
            f"{self.room_stall:.2f}s | {self.extra}"
        )


class Load:
    """Tutorial clients, publishers and subscribers spread over the gateways."""

    def __init__(
        self,
        urls: Urls,
        room: str,
        *,
        echo: int = 2,
        binary: int = 1,
        publishers: int = 1,
        subscribers: int = 1,
        gateways: int = 2,
        pace: float = 0.01,
        publish_pace: float = 0.02,
    ) -> None:
        self.room = room
        self.stop = asyncio.Event()  # senders: finish the request in flight, then stop
        self.done = asyncio.Event()  # subscribers: stop reading
        tag = room[-6:]
        self.tutorial: list[Tutorial] = []
        self.publishers: list[Publisher] = []
        self.subscribers: list[Subscriber] = []
        for gw in range(gateways):
            for k in range(echo):
                self.tutorial.append(Tutorial(f"e{gw}{k}", urls, gw, self.stop, pace=pace))
            for k in range(binary):
                self.tutorial.append(
                    Tutorial(f"b{gw}{k}", urls, gw, self.stop, binary=True, pace=pace)
                )
            for k in range(publishers):
                self.publishers.append(
                    Publisher(f"p{gw}{k}-{tag}", urls, gw, room, self.stop, publish_pace)
                )
            for k in range(subscribers):
                self.subscribers.append(Subscriber(f"s{gw}{k}-{tag}", urls, gw, room, self.done))
        self.started = 0.0

    @property
    def clients(self) -> list[Client]:
        return [*self.tutorial, *self.publishers, *self.subscribers]

    async def start(self, timeout: float = 15.0) -> None:
        for sub in self.subscribers:
            sub.task = asyncio.create_task(sub.run())
        deadline = now() + timeout
        while not all(s.joined.is_set() for s in self.subscribers):
            for s in self.subscribers:
                if s.task is not None and s.task.done():
                    s.task.result()  # raises what killed it
            assert now() < deadline, "subscribers did not join: " + "; ".join(self.notes())
            await asyncio.sleep(0.05)
        for client in (*self.tutorial, *self.publishers):
            client.task = asyncio.create_task(client.run())
        deadline = now() + timeout
        while any(c.stall.last is None for c in (*self.tutorial, *self.publishers)):
            assert now() < deadline, "load did not warm up: " + "; ".join(self.notes())
            await asyncio.sleep(0.05)
        self.started = now()
        # stalls count from here: the warm-up (first connections) is not a fault
        for client in self.clients:
            client.stall.max = 0.0

    def deliveries(self) -> int:
        return sum(s.deliveries for s in self.subscribers)

    def notes(self) -> list[str]:
        return [n for c in self.clients for n in c.notes]

    async def finish(self, settle: float = 15.0) -> Report:
        """Stop sending, let every subscriber catch up with the last acknowledged seq,
        then count."""
        seconds = now() - self.started
        self.stop.set()
        senders = [c.task for c in (*self.tutorial, *self.publishers) if c.task]
        await asyncio.wait_for(asyncio.gather(*senders), GIVE_UP + HANG + 5)
        acked: dict[str, int] = {}
        for pub in self.publishers:
            acked.update(pub.acked)
        target = max(acked.values(), default=0)
        deadline = now() + settle
        while now() < deadline:
            if all((s.last or 0) >= target for s in self.subscribers):
                break
            await asyncio.sleep(0.05)
        self.done.set()
        await asyncio.wait_for(
            asyncio.gather(*(s.task for s in self.subscribers if s.task)), HANG + 5
        )

        r = Report(case="", seconds=seconds)
        for t in self.tutorial:
            r.requests += t.sent
            r.answered += t.ok
            r.request_errors += t.errors
            r.request_resent += t.resent
            r.request_hangs += t.hangs
            r.mismatches += t.mismatches
            r.request_stall = max(r.request_stall, t.stall.max)
        for p in self.publishers:
            r.published += p.ids
            r.publish_frames += p.sent
            r.duplicate_acks += p.duplicate_acks
            r.room_errors += p.errors
            r.room_hangs += p.hangs
            r.duplicated += p.reacked
            r.unacked += len(p.unacked)
            r.room_stall = max(r.room_stall, p.stall.max)
        r.acknowledged = len(acked)
        for s in self.subscribers:
            r.delivered += s.deliveries
            r.duplicated += s.duplicates + s.stored_twice
            r.gaps += s.gaps
            r.unrecovered += s.unrecovered
            r.replayed += s.replayed
            r.room_errors += s.errors
            r.room_hangs += s.hangs
            r.room_stall = max(r.room_stall, s.stall.max)
            start = s.start or 0
            for pid, seq in acked.items():
                if seq <= start:
                    continue  # published before this subscriber joined (never, here)
                r.expected += 1
                if s.delivered.get(seq) != pid:
                    r.lost += 1
                    if r.lost <= 5:
                        r.notes.append(f"{s.name} never got {pid} (seq {seq})")
        for c in self.clients:
            r.reconnects += c.reconnects
            r.drops += c.drops
            r.hints += c.hints
            r.max_wait = max(r.max_wait, c.max_wait)
        r.notes.extend(self.notes())
        return r

    async def abort(self) -> None:
        self.stop.set()
        self.done.set()
        for c in self.clients:
            if c.task is not None and not c.task.done():
                c.task.cancel()
        await asyncio.gather(*(c.task for c in self.clients if c.task), return_exceptions=True)
