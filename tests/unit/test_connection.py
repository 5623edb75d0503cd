from gateway.connection import HOLD, Connection, Pending
from gateway.endpoints import ECHO


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
