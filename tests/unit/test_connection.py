from gateway.connection import Connection, Pending
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
