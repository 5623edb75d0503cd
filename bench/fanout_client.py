"""The client side of the fan-out benchmark, as processes: ``python -m bench.fanout_client``.

Two roles, driven by the parent (:mod:`bench.fanout`) over stdin/stdout like
:mod:`bench.loadgen`:

- ``members``: connects its share of the room's members, joins each to the room, prints
  ``ready``; reads the window (``time.time_ns()`` bounds, the same clock in every
  process); counts every delivery read inside the window and its latency (read time
  minus the send time the publisher put in the payload); on ``finish`` waits until every
  member has every published message, then prints one JSON line: deliveries, a latency
  histogram (1 µs buckets), and the exactly-once check (each member got each message
  once; for Switchboard also each room ``seq`` after its join once, with no gap).
- ``publisher``: one publishing socket plus one *probe* member per server (joined last,
  so the last or nearly the last to be served in each fan-out pass). Closed loop with a
  window: at most ``window`` messages are out that some probe has not received yet, so
  the publisher runs at the rate the system delivers, never building an unbounded
  backlog (an ack alone would not do: Switchboard and socket.io ack a publish once it is
  stored or handed to Redis, before the fan-out). Publishes from ``go`` to the end of
  the window, then waits for the probes to catch up and prints its counts.

Systems: ``s`` Switchboard ``/ws/v2``, ``a`` the tutorial's ``/ws/chat``, ``b``
python-socketio (Engine.IO 4 over a WebSocket, spoken directly: see
:mod:`bench.fanout_ws`; ``client=asyncclient`` uses ``socketio.AsyncClient`` for the
members instead, to compare). Workers exit if the parent vanishes (stdin EOF,
parent-death signal, a hard deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from bench.fanout_ws import WsClient, client_frame
from bench.loadgen import CONNECT_TIMEOUT, GRACE, _emit

ROOM = "bench"
TEXT = "switchboard fan-out benchmark message"
PUBLISHER = "pub"
INF = 1 << 62


class Window:
    """Shared by every member of a process: which read times count."""

    def __init__(self) -> None:
        self.start = INF
        self.end = INF
        self.latencies: list[int] = []  # ns, deliveries read inside the window


class Member:
    """One member's deliveries: exactly-once bookkeeping and the window's latencies."""

    __slots__ = ("first_seq", "got", "name", "other", "received", "seqs", "window")

    def __init__(self, name: str, window: Window) -> None:
        self.name = name
        self.window = window
        self.got = bytearray(4096)  # per publish number n: times received (capped)
        self.received = 0  # messages from the publisher
        self.seqs: list[int] = []  # s: every room seq after the join ack
        self.first_seq = 0  # s: the join ack's seq
        self.other = 0  # frames that are not the publisher's messages

    def deliver(self, n: int, t: int, now: int) -> None:
        got = self.got
        if n >= len(got):
            got.extend(bytes(max(n + 1 - len(got), len(got))))
        if got[n] < 255:
            got[n] += 1
        self.received += 1
        w = self.window
        if w.start <= now < w.end:
            w.latencies.append(now - t)

    def check(self, published: int, last_seq: int | None) -> dict[str, int]:
        got = self.got[:published]
        out = {
            "missing": got.count(0) + max(0, published - len(got)),
            "duplicated": sum(1 for c in got if c > 1),
            "extra": sum(1 for c in self.got[published:] if c),
        }
        if last_seq is not None:
            seqs = self.seqs
            expected = range(self.first_seq + 1, last_seq + 1)
            seen = set(seqs)
            out["seq_missing"] = sum(1 for s in expected if s not in seen)
            out["seq_duplicated"] = len(seqs) - len(seen)
            out["seq_unordered"] = sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
        return out


# -- the three systems -----------------------------------------------------------------


class System:
    """How to reach, join, publish to and read from one system."""

    def url(self, base: str, name: str) -> str:
        raise NotImplementedError

    async def join(self, ws: WsClient, inbox: asyncio.Queue[tuple[bytes, int]], name: str):
        """After the socket opened: join the room; returns what the join said (s: seq)."""
        raise NotImplementedError

    def handler(self, member: Member, ws: WsClient) -> Callable[[bytes, int], None]:
        raise NotImplementedError

    def publish_frame(self, n: int, t: int) -> bytes:
        raise NotImplementedError

    def ack(self, payload: bytes) -> int | None:
        """A frame on the publisher's socket: -1 if not an ack, else the seq or 0."""
        raise NotImplementedError


async def _wait_for(
    inbox: asyncio.Queue[tuple[bytes, int]], match: Callable[[bytes], Any], what: str
) -> Any:
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            while True:
                payload, _ = await inbox.get()
                found = match(payload)
                if found is not None:
                    return found
    except TimeoutError:
        raise TimeoutError(f"no {what} within {CONNECT_TIMEOUT:g} s") from None


class Switchboard(System):
    def url(self, base: str, name: str) -> str:
        return f"{base}/ws/v2?username={name}"

    async def join(self, ws, inbox, name):
        ws.send_text(orjson.dumps({"type": "join", "id": "j", "room": ROOM}))

        def acked(payload: bytes) -> int | None:
            frame = orjson.loads(payload)
            if frame.get("type") == "error":
                raise RuntimeError(f"join refused: {frame}")
            if frame.get("type") == "ack" and frame.get("id") == "j":
                return int(frame["payload"]["seq"])
            return None

        return await _wait_for(inbox, acked, "join ack")

    def handler(self, member, ws):
        loads, deliver, seqs = orjson.loads, member.deliver, member.seqs

        def on_text(payload: bytes, now: int) -> None:
            frame = loads(payload)
            seq = frame.get("seq")
            if seq is not None and frame.get("room") == ROOM:
                seqs.append(seq)
                if frame["type"] == "message":
                    body = frame["payload"]
                    if body.get("sender") == PUBLISHER:
                        deliver(body["n"], body["t"], now)
                        return
            member.other += 1

        return on_text

    def publish_frame(self, n, t):
        payload = {"text": TEXT, "t": t, "n": n}
        body = {"type": "publish", "id": f"p{n}", "room": ROOM, "payload": payload}
        return client_frame(orjson.dumps(body))

    def ack(self, payload):
        frame = orjson.loads(payload)
        kind = frame.get("type")
        if kind == "ack":
            return int(frame["payload"]["seq"])
        if kind == "error":
            raise RuntimeError(f"publish refused: {frame}")
        return -1


class Tutorial(System):
    prefix = f"{PUBLISHER}: "

    def url(self, base, name):
        return f"{base}/ws/chat?username={name}"

    async def join(self, ws, inbox, name):
        notice = f"{name} has joined the chat"
        # The tutorial broadcasts each join to everyone, the newcomer included.
        return await _wait_for(
            inbox, lambda p: 0 if orjson.loads(p).get("message") == notice else None, "join"
        )

    def handler(self, member, ws):
        loads, deliver, cut = orjson.loads, member.deliver, len(self.prefix)

        def on_text(payload: bytes, now: int) -> None:
            frame = loads(payload)
            if frame.get("type") == "message" and frame.get("sender") == PUBLISHER:
                body = loads(frame["message"][cut:])
                deliver(body["n"], body["t"], now)
            else:
                member.other += 1

        return on_text

    def publish_frame(self, n, t):
        inner = orjson.dumps({"text": TEXT, "t": t, "n": n}).decode()
        return client_frame(orjson.dumps({"message": inner}))

    def ack(self, payload):
        # No acks in the tutorial: its broadcast reaches the publisher too (first, as the
        # publisher connected first); that echo is counted as the ack.
        frame = orjson.loads(payload)
        return 0 if frame.get("type") == "message" and frame.get("sender") == PUBLISHER else -1


class SocketIO(System):
    """Engine.IO 4 / Socket.IO 5 packets over a WebSocket, default namespace."""

    def url(self, base, name):
        return f"{base}/socket.io/?EIO=4&transport=websocket"

    async def join(self, ws, inbox, name):
        await _wait_for(inbox, lambda p: 0 if p[:1] == b"0" else None, "engine.io open")
        ws.send_text(b"40")
        await _wait_for(inbox, lambda p: 0 if p[:2] == b"40" else None, "socket.io connect")
        ws.send_text(b'421["join","' + ROOM.encode() + b'"]')
        return await _wait_for(inbox, lambda p: 0 if p[:3] == b"431" else None, "join ack")

    def handler(self, member, ws):
        loads, deliver = orjson.loads, member.deliver
        pong = client_frame(b"3")

        def on_text(payload: bytes, now: int) -> None:
            if payload[:12] == b'42["message"':
                body = loads(payload[2:])[1]
                deliver(body["n"], body["t"], now)
            elif payload == b"2":  # Engine.IO ping
                ws.write(pong)
            else:
                member.other += 1

        return on_text

    def publish_frame(self, n, t):
        body = orjson.dumps(["publish", ROOM, {"text": TEXT, "t": t, "n": n}])
        return client_frame(b"42" + str(n).encode() + body)

    def ack(self, payload):
        if payload[:2] == b"43":
            return 0
        return -1


SYSTEMS: dict[str, System] = {"s": Switchboard(), "a": Tutorial(), "b": SocketIO()}


# -- connecting --------------------------------------------------------------------------


class Conn:
    """A socket whose frames go to a queue while it joins, then to the hot handler."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.inbox: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
        self.ws: WsClient | None = None

    def _queue(self, payload: bytes, now: int) -> None:
        self.inbox.put_nowait((payload, now))

    async def open(self, base: str, name: str) -> Any:
        self.ws = await WsClient.connect(self.system.url(base, name), self._queue)
        return await self.system.join(self.ws, self.inbox, name)

    def switch(self, on_text: Callable[[bytes, int], None]) -> None:
        """From now on frames go to ``on_text``, starting with any already queued."""
        assert self.ws is not None
        self.ws.on_text = on_text
        while not self.inbox.empty():
            on_text(*self.inbox.get_nowait())


async def open_member(system: System, base: str, name: str, window: Window) -> tuple[Conn, Member]:
    conn = Conn(system)
    joined = await conn.open(base, name)
    member = Member(name, window)
    member.first_seq = joined or 0
    assert conn.ws is not None
    conn.switch(system.handler(member, conn.ws))
    return conn, member


async def open_asyncclient_member(base: str, name: str, window: Window) -> tuple[Any, Member]:
    """``client=asyncclient``: python-socketio's own client (aiohttp) for a member of (b)."""
    import socketio

    member = Member(name, window)
    sio = socketio.AsyncClient(reconnection=False)

    @sio.on("message")
    async def on_message(body: dict[str, int]) -> None:
        member.deliver(body["n"], body["t"], time.time_ns())

    await sio.connect(base, transports=["websocket"], wait_timeout=CONNECT_TIMEOUT)
    await sio.call("join", ROOM, timeout=CONNECT_TIMEOUT)
    return sio, member


# -- roles -------------------------------------------------------------------------------


async def _until(done: Callable[[], bool], limit: float) -> None:
    """Poll ``done`` (counters the protocol callbacks update) for up to ``limit`` s."""
    deadline = time.monotonic() + limit
    while not done() and time.monotonic() < deadline:  # noqa: ASYNC110 (no event per frame)
        await asyncio.sleep(0.01)


def _histogram(latencies: list[int]) -> dict[str, int]:
    return {str(k): v for k, v in Counter(x // 1000 for x in latencies).items()}


async def _line(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    line = await reader.readline()
    return json.loads(line) if line else None


async def members_role(spec: dict[str, Any], reader: asyncio.StreamReader) -> None:
    system = SYSTEMS[spec["system"]]
    window = Window()
    asyncclient = spec.get("client") == "asyncclient"
    sockets: list[Any] = []
    members: list[Member] = []
    # Join one by one per server (bounded concurrency keeps the servers' accept queues
    # short on 2 cores); the order is the servers' fan-out order.
    for base, name in spec["members"]:
        if asyncclient:
            sock, member = await open_asyncclient_member(base, name, window)
        else:
            sock, member = await open_member(system, base, name, window)
        sockets.append(sock)
        members.append(member)
    _emit("ready")
    go = await _line(reader)
    if go is None:
        return
    window.start, window.end = int(go["start"]), int(go["end"])
    finish = await _line(reader)
    if finish is None:
        return
    published = int(finish["published"])
    last_seq = finish.get("last_seq")
    await _until(lambda: all(m.received >= published for m in members), GRACE)
    _emit(json.dumps(_report(members, window, published, last_seq), separators=(",", ":")))
    for sock in sockets:
        with contextlib.suppress(Exception):
            if asyncclient:
                await asyncio.wait_for(sock.disconnect(), 1)
            else:
                sock.ws.close()


def _report(
    members: list[Member], window: Window, published: int, last_seq: int | None
) -> dict[str, Any]:
    checks: Counter[str] = Counter()
    bad: list[str] = []
    for m in members:
        result = m.check(published, last_seq)
        checks.update(result)
        if any(result.values()):
            bad.append(f"{m.name}: {result}")
    return {
        "count": len(window.latencies),
        "hist_us": _histogram(window.latencies),
        "checks": dict(checks),
        "bad": bad[:5],
        "members": len(members),
    }


async def publisher_role(spec: dict[str, Any], reader: asyncio.StreamReader) -> None:
    system = SYSTEMS[spec["system"]]
    window = Window()
    limit = int(spec["window"])
    state = {"sent": 0, "acked": 0, "last_seq": 0, "stop": False, "errors": []}

    pub = Conn(system)
    pub_ws = await WsClient.connect(system.url(spec["publish"], PUBLISHER), pub._queue)
    pub.ws = pub_ws
    if isinstance(system, SocketIO):
        await _wait_for(pub.inbox, lambda p: 0 if p[:1] == b"0" else None, "engine.io open")
        pub_ws.send_text(b"40")
        await _wait_for(pub.inbox, lambda p: 0 if p[:2] == b"40" else None, "socket.io connect")
    elif isinstance(system, Tutorial):
        notice = f"{PUBLISHER} has joined the chat"
        await _wait_for(
            pub.inbox, lambda p: 0 if orjson.loads(p).get("message") == notice else None, "join"
        )

    probes: list[Member] = []
    probe_conns: list[Conn] = []
    for base, name in spec["probes"]:
        conn = Conn(system)
        member = Member(name, window)
        member.first_seq = await conn.open(base, name) or 0
        probes.append(member)
        probe_conns.append(conn)

    make = system.publish_frame
    ping = client_frame(b"3")

    def pump() -> None:
        if state["stop"]:
            return
        sent = state["sent"]
        room = limit - (sent - min(p.received for p in probes))
        if room <= 0:
            return
        if time.time_ns() >= window.end:
            state["stop"] = True
            return
        pub_ws.write(b"".join([make(n, time.time_ns()) for n in range(sent, sent + room)]))
        state["sent"] = sent + room

    def on_pub(payload: bytes, now: int) -> None:
        try:
            seq = system.ack(payload)
        except Exception as exc:
            if len(state["errors"]) < 5:
                state["errors"].append(f"{type(exc).__name__}: {exc}")
            return
        if seq is not None and seq >= 0:
            state["acked"] += 1
            state["last_seq"] = max(state["last_seq"], seq)
        elif payload == b"2" and isinstance(system, SocketIO):
            pub_ws.write(ping)

    def probe_handler(member: Member, ws: WsClient) -> Callable[[bytes, int], None]:
        inner = system.handler(member, ws)

        def on_text(payload: bytes, now: int) -> None:
            inner(payload, now)
            pump()

        return on_text

    pub.switch(on_pub)
    for conn, member in zip(probe_conns, probes, strict=True):
        assert conn.ws is not None
        conn.switch(probe_handler(member, conn.ws))
    _emit("ready")
    go = await _line(reader)
    if go is None:
        return
    window.start, window.end = int(go["start"]), int(go["end"])
    pump()
    while time.time_ns() < window.end:
        await asyncio.sleep(0.05)
        pump()  # in case the loop went idle (nothing outstanding)
    state["stop"] = True
    sent = state["sent"]
    await _until(lambda: state["acked"] >= sent and all(p.received >= sent for p in probes), GRACE)
    last_seq = state["last_seq"] if isinstance(system, Switchboard) else None
    result = _report(probes, window, state["sent"], last_seq)
    result.update(
        published=state["sent"], acked=state["acked"], last_seq=last_seq, errors=state["errors"]
    )
    _emit(json.dumps(result, separators=(",", ":")))
    await _line(reader)  # stay connected until the parent has every member's report
    for conn in [pub, *probe_conns]:
        if conn.ws is not None:
            conn.ws.close()


async def _main(spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    if spec["role"] == "publisher":
        await publisher_role(spec, reader)
    else:
        await members_role(spec, reader)


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    deadline = float(argv[1]) if len(argv) > 1 else 600.0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.alarm(int(deadline) + 1)  # hard bound whatever happens
    import uvloop

    try:
        uvloop.run(_main(spec))
    except Exception as exc:
        sys.stderr.write(f"fanout client ({spec.get('role')}): {type(exc).__name__}: {exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
