import asyncio

from prometheus_client import CollectorRegistry

from gateway.codec_endpoint import CODEC
from gateway.connection import HOLD, Connection, Pending
from gateway.endpoints import CHAT, ECHO, V2
from gateway.hub import Hub
from gateway.relay import RelayEndpoint
from gateway.settings import GatewaySettings
from wire.metrics import GatewayMetrics


def msg(n: int) -> dict:
    return {"type": "websocket.send", "text": str(n)}


def test_replies_leave_in_request_order() -> None:
    conn = Connection(1, ECHO, max_in_flight=10)
    seqs = [conn.allocate(Pending(0, 0, "codec")) for _ in range(4)]
    assert seqs == [0, 1, 2, 3]
    for seq in (2, 1, 3):
        conn.pending.pop(seq)
        conn.complete(seq, [msg(seq)])
    assert list(conn.out) == []
    conn.pending.pop(0)
    conn.complete(0, [msg(0)])
    assert [m["text"] for m in conn.out] == ["0", "1", "2", "3"]
    assert conn.wake.is_set()


def test_capacity_closes_at_max_in_flight_and_reopens() -> None:
    conn = Connection(1, ECHO, max_in_flight=2)
    conn.allocate(Pending(0, 0, "codec"))
    assert conn.capacity.is_set()
    conn.allocate(Pending(0, 0, "codec"))
    assert not conn.capacity.is_set()
    conn.pending.pop(0)
    conn.complete(0, [msg(0)])
    assert conn.capacity.is_set()


def test_close_is_sent_once() -> None:
    conn = Connection(1, ECHO, max_in_flight=2)
    conn.close(1008, "bad")
    conn.close(1011, "again")
    assert list(conn.out) == [{"type": "websocket.close", "code": 1008, "reason": "bad"}]


class Socket:
    """A stand-in for the protocol's ``write_frame``: takes frames while ``open``."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.open = True

    def __call__(self, frame: bytes) -> bool:
        if self.open:
            self.frames.append(frame)
        return self.open


def direct(max_out_bytes: int = 1 << 20) -> tuple[Connection, Socket, list[dict]]:
    conn = Connection(1, ECHO, max_in_flight=10, max_out_bytes=max_out_bytes)
    sock, written = Socket(), []
    conn.direct, conn.on_written = sock, written.append
    return conn, sock, written


def test_direct_writes_skip_the_queue_and_keep_request_order() -> None:
    conn, sock, written = direct()
    for _ in range(3):
        conn.allocate(Pending(0, 0, "codec"))
    conn.pending.pop(1)
    conn.complete(1, [msg(1)])  # parked: 0 is not back yet
    assert sock.frames == []
    conn.pending.pop(0)
    conn.complete(0, [msg(0)])
    assert sock.frames == [b"\x81\x010", b"\x81\x011"]
    assert [m["text"] for m in written] == ["0", "1"]
    assert not conn.out and not conn.wake.is_set()  # the sender was not woken


def test_a_full_socket_queues_and_later_frames_wait_behind_the_queue() -> None:
    conn, sock, written = direct()
    sock.open = False  # transport above its high-water mark
    conn.push(msg(0))
    sock.open = True
    conn.push(msg(1))  # the socket takes frames again, but 0 is still queued
    assert sock.frames == [] and [m["text"] for m in conn.out] == ["0", "1"]
    assert conn.wake.is_set() and written == []


def test_no_direct_write_while_the_sender_is_writing() -> None:
    conn, sock, _ = direct()
    conn.busy = True  # the sender popped a message and waits for the transport
    conn.push(msg(0))
    assert sock.frames == [] and len(conn.out) == 1


def test_slow_consumer_still_closes_when_the_socket_stays_full() -> None:
    conn, sock, _ = direct(max_out_bytes=4)
    sock.open = False
    conn.push(msg(1234))
    conn.push(msg(5))  # over the 4-byte bound: 1013, the queue replaced by the close
    assert [m["type"] for m in conn.out] == ["websocket.close"]
    assert conn.out[0]["code"] == 1013


def test_a_slow_consumer_is_hung_up_on_if_it_does_not_take_its_close() -> None:
    # Its close frame waits behind a full transport: without the protocol's hang-up
    # only the keepalive (40 s) would drop the connection and free its transport.
    conn, sock, _ = direct(max_out_bytes=4)
    hung_up = []
    conn.hang_up = lambda: hung_up.append(True)
    sock.open = False
    conn.push(msg(1234))
    assert hung_up == []  # queued, within the bound
    conn.push(msg(5))
    assert hung_up == [True]
    conn.push(msg(6))
    assert hung_up == [True]  # once


def test_one_encoding_for_every_recipient() -> None:
    event = msg(7)
    a, sa, _ = direct()
    b, sb, _ = direct()
    a.push(event)
    b.push(event)
    assert sa.frames[0] is sb.frames[0]


def test_a_release_can_hold_the_replies_after_it() -> None:
    conn = Connection(1, ECHO, max_in_flight=10)
    for _ in range(4):
        conn.allocate(Pending(0, 0, "codec"))
    conn.complete(1, lambda: HOLD)  # a room leave waiting for the events below it
    conn.complete(3, [msg(3)])
    conn.complete(0, [msg(0)])
    conn.complete(2, [msg(2)])
    assert [m["text"] for m in conn.out] == ["0"]
    conn.enqueue(msg(1))  # what the leave sends when they have come
    conn.resume()
    assert [m["text"] for m in conn.out] == ["0", "1", "2", "3"]
    conn.complete(4, [msg(4)])  # and on as usual
    assert [m["text"] for m in conn.out][-1] == "4"


# -- replies a client does not read (security.md, "Slow consumers") ------------------


def reply(n: int) -> list[dict]:
    return [{"type": "websocket.send", "bytes": bytes(n)}]


def codec_connection(**kwargs: int) -> tuple[Connection, list[int]]:
    """A /ws/codec connection with a 1,000-byte send-queue bound, 64 requests out at most,
    and a cap of 4,000 bytes owed."""
    drops: list[int] = []
    conn = Connection(1, CODEC, 64, max_out_bytes=1000, max_owed_bytes=4000, **kwargs)
    conn.on_slow = lambda: drops.append(1)
    return conn, drops


def test_replies_owed_past_the_cap_close_1013_and_are_dropped() -> None:
    """Tiny requests whose replies are large (zlib bombs on /ws/codec): the gateway read
    them all before any reply came. Replies the client does not read pile up to the cap,
    then the client is a slow consumer: 1013, and nothing it was owed is kept."""
    conn, drops = codec_connection()
    for _ in range(64):
        conn.allocate(Pending(0, 0, "codec"))
    assert conn.capacity.is_set() is False  # 64 out
    for seq in range(2):
        conn.pending.pop(seq)
        conn.complete(seq, reply(1500))  # 3,000 bytes owed: kept
    assert drops == [] and conn.out_bytes == 3000
    conn.pending.pop(2)
    conn.complete(2, reply(1500))  # 4,500 owed: over the cap
    assert drops == [1]
    assert list(conn.out) == [
        {"type": "websocket.close", "code": 1013, "reason": CODEC.slow_consumer}
    ]
    assert conn.out_bytes == 0 and not conn.capacity.is_set()
    for seq in range(3, 64):  # what comes later is dropped, and the client is read no more
        conn.pending.pop(seq)
        conn.complete(seq, reply(1500))
    conn.sent(conn.out.popleft())
    assert not conn.out and conn.out_bytes == 0 and not conn.parked
    assert not conn.capacity.is_set() and drops == [1]


def test_parked_replies_are_owed_too() -> None:
    """Replies waiting for an earlier, slower one count against the cap as well."""
    conn, drops = codec_connection()
    for _ in range(8):
        conn.allocate(Pending(0, 0, "codec"))
    for seq in range(1, 3):  # 0 is not back: parked
        conn.pending.pop(seq)
        conn.complete(seq, reply(1500))
    assert not conn.out and conn.parked_bytes == 3000 and drops == []
    conn.pending.pop(3)
    conn.complete(3, reply(1500))
    assert drops == [1] and not conn.parked and conn.parked_bytes == 0
    assert [m["code"] for m in conn.out] == [1013]


def test_parked_replies_are_released_with_their_bytes() -> None:
    conn, drops = codec_connection()
    for _ in range(3):
        conn.allocate(Pending(0, 0, "codec"))
    conn.pending.pop(1)
    conn.complete(1, reply(300))
    assert conn.parked_bytes == 300
    conn.pending.pop(0)
    conn.complete(0, reply(200))
    assert conn.parked_bytes == 0 and conn.out_bytes == 500 and len(conn.out) == 2
    assert drops == []


def test_reading_pauses_for_what_the_requests_out_are_expected_to_bring() -> None:
    """Once replies are known to be large, the gateway takes a new request only while
    what it owes plus what the requests out are expected to bring is under the bound:
    a client that reads is never owed much more than the bound and one reply."""
    conn, drops = codec_connection()
    conn.allocate(Pending(0, 0, "codec"))
    conn.allocate(Pending(0, 0, "codec"))
    conn.pending.pop(0)
    conn.complete(0, reply(1500))  # replies are large now
    assert not conn.capacity.is_set()  # 1,500 owed, and one out expected to bring as much
    conn.sent(conn.out.popleft())  # the client read it
    assert not conn.capacity.is_set()  # the one out may still bring 1,500
    conn.pending.pop(1)
    conn.complete(1, reply(1500))
    conn.sent(conn.out.popleft())
    assert conn.capacity.is_set()  # nothing owed, nothing out: one more
    conn.allocate(Pending(0, 0, "codec"))
    assert not conn.capacity.is_set()
    # small replies again: the expectation halves with each, and more may be out
    for seq in range(2, 10):
        conn.pending.pop(seq)
        conn.complete(seq, reply(10))
        conn.sent(conn.out.popleft())
        conn.allocate(Pending(0, 0, "codec"))
    assert conn.expect < 20
    while conn.capacity.is_set():
        conn.allocate(Pending(0, 0, "codec"))
    assert len(conn.pending) > 32 and drops == []


async def test_the_sender_gives_up_a_write_the_full_socket_holds_for_the_close() -> None:
    """A slow consumer's sender waits for a transport that does not drain: it gives that
    write up (the message was dropped with the queue) and the close frame is next."""
    settings = GatewaySettings(id="gwtest")
    metrics = GatewayMetrics(CollectorRegistry())
    hub = Hub(settings, metrics)
    relay = RelayEndpoint(CODEC, hub, settings, metrics)
    conn, drops = codec_connection()
    writable = asyncio.Event()  # uvicorn's send waits for it, then writes at once
    written: list[dict] = []

    async def send(message: dict) -> None:
        await writable.wait()
        written.append(message)

    for _ in range(4):
        conn.allocate(Pending(0, 0, "codec"))
    sender = asyncio.create_task(relay._send(conn, send))
    conn.pending.pop(0)
    conn.complete(0, reply(1500))
    await asyncio.sleep(0)
    assert conn.busy and not conn.out  # popped, waiting for the transport
    for seq in (1, 2):
        conn.pending.pop(seq)
        conn.complete(seq, reply(1500))  # the third: over the 4,000-byte cap
    assert drops == [1]
    await asyncio.sleep(0)
    # the 1,500-byte write was given up: the sender took the close and waits with it
    assert conn.busy and not conn.out and not written and not sender.done()
    writable.set()
    await asyncio.wait_for(sender, 1)
    assert written == [{"type": "websocket.close", "code": 1013, "reason": CODEC.slow_consumer}]
    assert conn.sender is None and not conn.out and conn.out_bytes == 0


def test_the_slow_consumer_reason_says_what_the_endpoint_allows() -> None:
    """Only /ws/v2 clients can rejoin with ``since``; the others are told what applies."""
    reasons = {}
    for spec in (ECHO, CODEC, CHAT, V2):
        conn = Connection(1, spec, max_in_flight=8, max_out_bytes=100)
        conn.push({"type": "websocket.send", "text": "x" * 60})
        conn.push({"type": "websocket.send", "text": "x" * 60})  # over 100 bytes queued
        (close,) = conn.out
        assert close["code"] == 1013
        reasons[spec.path] = close["reason"]
    assert reasons == {
        "/ws": "slow consumer: read what you are sent, then reconnect",
        "/ws/codec": "slow consumer: read what you are sent, then reconnect",
        "/ws/chat": "slow consumer: messages were dropped, reconnect",
        "/ws/v2": "slow consumer: reconnect and rejoin with since",
    }
