"""Fifty members of a room that never read, while the room gets ~1,000 messages a second:
the gateway's memory stays bounded, the stuck members are disconnected with 1013 (the
slow-consumer policy for room events), and the members that do read keep receiving every
message, in order, with normal latency. And replies: a /ws/codec client that asks for
far more than it reads (zlib bombs) is disconnected with 1013 once it is owed
``SB_GATEWAY_SEND_QUEUE_MAX_BYTES``, while one that reads gets every reply.

Bounds (documented in docs/security.md, "Slow consumers"):

- gateway RSS grows by at most :data:`RSS_GROWTH_MIB` over its level before the test:
  each socket's queue is capped by bytes (``SB_GATEWAY_SEND_QUEUE_BYTES``, 1 MiB), and a
  room event is one object shared by every member's queue;
- the readers are not stalled: p99 latency (publish -> delivered) under :data:`P99_BOUND`
  seconds (a stall, not a performance figure: those are printed, and measured by
  ``make bench``).

The messages are published like any client's: four ``/ws/v2`` sockets send ``publish``
frames on a fixed schedule, the chat service stores each in JetStream and JetStream
republishes it to the gateway. The stuck readers use a 4 KiB socket receive buffer, no
permessage-deflate and incompressible payloads, so the bytes really pile up in the
gateway.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
import zlib
from collections.abc import Iterator

import pytest
import websockets

from switchboard.localstack import LocalStack, running
from tests.integration.client import closed_with, connect, recv, sample, scrape
from tests.integration.v2client import V2
from wire.codec import encode_request

ROOM = "slow-readers"
STUCK = 50
READERS = 5
RATE = 1000  # messages per second into the room, in all ...
PUBLISHERS = 4  # ... from this many sockets (250/s each, under the 500 frames/s limit)
SECONDS = 4.0
PAYLOAD = 1500  # bytes of base64 text per message (incompressible)
RSS_GROWTH_MIB = 32  # measured: +5.4 to +6.5 MiB
P99_BOUND = 5.0  # seconds; measured 14-300 ms here, 1.1-3.8 s with 6 busy loops beside


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("slowreaders")) as s:
        yield s


def status_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of /proc/<pid>/status (VmRSS: now; VmHWM: peak), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


def rss_mib(pid: int) -> float:
    return status_mib(pid)


async def stuck_member(url: str, i: int) -> websockets.ClientConnection:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    ws = await connect(
        f"{url}/ws/v2?username=stuck{i}",
        sock=sock,
        max_queue=1,
        compression=None,
        ping_interval=None,  # a stuck client does not ping (it would not read the pongs)
    )
    await ws.send(json.dumps({"type": "join", "id": "j", "room": ROOM}))
    assert json.loads(await recv(ws))["type"] == "ack"
    ws.transport.pause_reading()  # never reads again
    return ws


async def reader(member: V2, latencies: list[float], done: asyncio.Future) -> list[int]:
    """Reads everything until the last published seq; returns the seqs of the room's
    events (messages, joins, leaves), in the order received."""
    seqs: list[int] = []
    quiet_since = time.monotonic()
    while not (done.done() and seqs and seqs[-1] >= done.result()):
        try:
            frame = await member.pump(timeout=0.2)
        except TimeoutError:
            assert time.monotonic() - quiet_since < 10, f"no event for 10 s after {seqs[-1:]}"
            continue
        quiet_since = time.monotonic()
        if frame.get("room") == ROOM and "seq" in frame:
            seqs.append(frame["seq"])
            if frame["type"] == "message":
                latencies.append(time.time() - frame["payload"]["t"])
    return seqs


async def inject(url: str, count: int) -> tuple[float, float, int]:
    """The room's messages, published through the gateway like any client's (``/ws/v2``
    ``publish`` -> chat -> JetStream -> ``sb.live.<room>`` -> the gateway): RATE per
    second in all from PUBLISHERS sockets, each on a fixed schedule without waiting for
    its acks. Returns the seconds the sending took, the seconds until every message was
    acked (stored), and the room seq of the last one."""
    text = base64.b64encode(os.urandom(PAYLOAD * 3 // 4)).decode()
    publishers = [
        await V2.open(f"{url}/ws/v2?username=injector{k}", compression=None)
        for k in range(PUBLISHERS)
    ]
    started = time.perf_counter()

    async def publish(k: int, publisher: V2) -> list[str]:
        rids = []
        for n in range(k, count, PUBLISHERS):
            await asyncio.sleep(max(0.0, started + n / RATE - time.perf_counter()))
            rids.append(await publisher.send("publish", ROOM, text=text, t=time.time()))
        return rids

    sent = await asyncio.gather(*(publish(k, p) for k, p in enumerate(publishers)))
    sending = time.perf_counter() - started
    last = 0
    for publisher, rids in zip(publishers, sent, strict=True):
        for rid in rids:
            ack = await publisher.reply(rid, timeout=10)
            assert ack["type"] == "ack", ack
            last = max(last, ack["payload"]["seq"])
    storing = time.perf_counter() - started
    for publisher in publishers:
        await publisher.close()
    return sending, storing, last


async def test_stuck_readers_closed_1013_memory_bounded_others_unaffected(stack) -> None:
    gateway = stack.gateways[0]
    url = f"ws://127.0.0.1:{gateway.port}"
    stuck = await asyncio.gather(*(stuck_member(url, i) for i in range(STUCK)))
    members = [await V2.open(f"{url}/ws/v2?username=reader{i}") for i in range(READERS)]
    heads = [(await m.request("join", ROOM))["payload"]["seq"] for m in members]
    await asyncio.sleep(0.5)
    baseline = rss_mib(gateway.pid)
    peak = baseline
    sampling = True

    async def sample_rss() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss_mib(gateway.pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample_rss())
    latencies: list[float] = []
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    readers = [asyncio.create_task(reader(m, latencies, done)) for m in members]
    count = int(RATE * SECONDS)
    elapsed, stored, last = await inject(url, count)
    done.set_result(last)

    # The stuck members: disconnected with 1013, per the room-event policy. They read
    # again now, to see the close frame.
    async def close_code(ws: websockets.ClientConnection) -> tuple[int, str] | None:
        # A 4 KiB buffer whose window closed may never reopen (the receiver's silly-window
        # avoidance waits for a full segment of room): give it room first.
        ws.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18
        )
        ws.transport.resume_reading()
        try:
            while True:
                await recv(ws, 10)
        except websockets.ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else None

    codes = await asyncio.gather(*(close_code(ws) for ws in stuck))
    received = await asyncio.gather(*readers)
    sampling = False
    await sampler
    for m in members:
        await m.close()

    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    report = (
        f"{count} messages sent in {elapsed:.2f} s ({count / elapsed:.0f}/s), all stored "
        f"after {stored:.2f} s ({count / stored:.0f}/s); "
        f"gateway RSS {baseline:.1f} MiB before, peak {peak:.1f} MiB (+{peak - baseline:.1f}); "
        f"readers' latency p50 {latencies[len(latencies) // 2] * 1e3:.1f} ms, "
        f"p99 {p99 * 1e3:.1f} ms, max {latencies[-1] * 1e3:.1f} ms; "
        f"stuck members closed: {sum(1 for c in codes if c and c[0] == 1013)}/{STUCK}"
    )
    print(report)
    # The room really took a heavy load (~RATE messages a second on a quiet machine;
    # the pace is printed, not asserted: a loaded CI machine stores slower), and the
    # stuck members' queues really filled.
    assert count / stored > 0.3 * RATE, report
    assert last - heads[-1] == count, report  # nothing else was published to the room
    reason = "slow consumer: reconnect and rejoin with since"
    assert codes == [(1013, reason)] * STUCK, report
    # Every reader got every event after its join, in order, none twice, none missing.
    for head, seqs in zip(heads, received, strict=True):
        upto = seqs[: seqs.index(last) + 1]
        assert upto == list(range(head + 1, last + 1)), report
    assert peak - baseline < RSS_GROWTH_MIB, report
    assert p99 < P99_BOUND, report
    dropped = sample(scrape(gateway.port), "switchboard_gateway_dropped_messages_total")
    assert dropped >= STUCK, report


MIB = 1 << 20
OWED_CAP = 32 * MIB  # SB_GATEWAY_SEND_QUEUE_MAX_BYTES default
# ~4 KiB asking /ws/codec for 4 MiB (SB_CODEC_TRANSFORM_CAP_BYTES)
BOMB = encode_request("decompress", "zlib", zlib.compress(bytes(4 * MIB - 64), 9))
OUTPUT = 4 * MIB - 64
CAPPED_RSS_GROWTH_MIB = 96  # measured: +48 to +56 MiB (without the cap: +180, not closed)


def reset_peak_rss(pid: int) -> None:
    """Peak RSS (VmHWM) := RSS now (Linux clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mib(pid: int) -> float:
    return status_mib(pid, "VmHWM")


def slow_consumer_drops(port: int) -> float:
    return sample(
        scrape(port), "switchboard_gateway_dropped_messages_total", reason="slow_consumer"
    )


async def bombard(gateway) -> tuple[websockets.ClientConnection, str]:
    """A /ws/codec client sends 64 zlib bombs of 4 KiB each and never reads: the replies
    owed to it (up to 256 MiB) pile up only to SB_GATEWAY_SEND_QUEUE_MAX_BYTES, then it is
    a slow consumer and what it was owed is freed at once, while it still does not read.
    Returns the client, still not reading, once that is so, and a report."""
    port = gateway.port
    drops = slow_consumer_drops(port)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    ws = await connect(
        f"ws://127.0.0.1:{port}/ws/codec",
        sock=sock,
        max_queue=1,
        max_size=None,
        compression=None,  # the replies really take their room
        ping_interval=None,  # it does not read: it would not see the pongs
    )
    ws.transport.pause_reading()  # never reads
    reset_peak_rss(gateway.pid)
    baseline = rss_mib(gateway.pid)
    for _ in range(64):
        await ws.send(BOMB)
    largest = queued = 0.0  # the largest queue of a socket, as sampled each second
    closed = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = scrape(port)
        queued = sample(text, "switchboard_gateway_send_queue_bytes", stat="max")
        largest = max(largest, queued)
        dropped = "switchboard_gateway_dropped_messages_total"
        closed = closed or sample(text, dropped, reason="slow_consumer") > drops
        if closed and queued == 0:
            break
        await asyncio.sleep(0.2)
    growth = peak_rss_mib(gateway.pid) - baseline
    report = (
        f"largest queue sampled {largest / MIB:.1f} MiB, gateway peak RSS "
        f"+{growth:.1f} MiB, closed as a slow consumer: {closed}"
    )
    assert closed, report
    assert queued == 0, report  # freed, though the client still does not read
    assert largest <= OWED_CAP + 2 * OUTPUT, report
    assert growth < CAPPED_RSS_GROWTH_MIB, report
    return ws, report


async def connections_left(port: int) -> float:
    """/ws/codec connections still open, once they are none or after 5 s."""
    for _ in range(50):
        left = sample(scrape(port), "switchboard_gateway_connections_open", endpoint="/ws/codec")
        if left == 0:
            break
        await asyncio.sleep(0.1)
    return left


async def test_replies_a_client_never_reads_are_capped_then_closed_1013(stack) -> None:
    """:func:`bombard`; once the client reads it gets the close frame, 1013, and the
    connection is gone."""
    port = stack.gateways[0].port
    ws, report = await bombard(stack.gateways[0])
    ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
    ws.transport.resume_reading()
    code, reason = await closed_with(ws, 10)
    # /ws/codec has no rooms to rejoin: its reason says what to do instead
    assert (code, reason) == (1013, "slow consumer: read what you are sent, then reconnect"), report
    assert await connections_left(port) == 0, report
    print(report)


async def test_a_slow_consumer_that_never_reads_is_gone_with_its_transport(stack) -> None:
    """:func:`bombard`, and the client keeps its TCP connection open without ever
    reading: the gateway's side, left with the close frame waiting for the full
    transport, aborts it SB_GATEWAY_PING_TIMEOUT (2 s here) later, ends the relay and
    unregisters the connection (it used to wait for the keepalive: 40 s by default)."""
    gateway = stack.start_gateway(env={"SB_GATEWAY_PING_TIMEOUT": "2"})
    try:
        ws, report = await bombard(gateway)
        try:
            await asyncio.sleep(2.5)
            left = await connections_left(gateway.port)
        finally:
            ws.transport.abort()
        assert left == 0, report
    finally:
        gateway.stop()


async def test_a_client_that_reads_gets_every_reply_to_its_pipelined_bombs(stack) -> None:
    """The same bombs from a client that reads while it keeps 64 requests out: every
    request is answered (a 4 MiB output, or a timeout from the busy codec), nothing is
    dropped and it is not closed."""
    port = stack.gateways[0].port
    drops = slow_consumer_drops(port)
    total, depth = 128, 64
    async with connect(f"ws://127.0.0.1:{port}/ws/codec", max_size=None) as ws:
        answered = outputs = 0
        out = asyncio.Semaphore(depth)

        async def send_all() -> None:
            for _ in range(total):
                await out.acquire()
                await ws.send(BOMB)

        sender = asyncio.create_task(send_all())
        while answered < total:
            report = json.loads(await recv(ws, 30))
            if report["status"] == "success":
                output = await recv(ws, 30)
                assert isinstance(output, bytes) and len(output) == OUTPUT
                outputs += 1
            answered += 1
            out.release()
        await sender
    print(f"{outputs} outputs of {total} (the rest timed out in the codec)")
    assert outputs > 0
    assert slow_consumer_drops(port) == drops
