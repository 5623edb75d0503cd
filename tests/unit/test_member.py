"""The per-member merge of live room events with replayed history (gateway/rooms.py)."""

import json
from types import SimpleNamespace

from gateway import rooms
from gateway.connection import Connection
from gateway.endpoints import V2
from gateway.rooms import Member


def ev(seq: int) -> dict:
    return {"type": "websocket.send", "text": f"e{seq}"}


def sent(conn: Connection) -> list[str]:
    return [m["text"] for m in conn.out]


def member() -> tuple[Member, list[Member]]:
    fills: list[Member] = []
    m = Member(Connection(1, V2, 8), "r", fills.append)
    return m, fills


def test_live_events_buffered_until_join_reply_then_merged_without_duplicates() -> None:
    m, fills = member()
    for seq in (5, 6, 7):  # live events arrive while the join is in flight
        m.on_event(seq, ev(seq))
    assert sent(m.conn) == []
    ack = {"type": "websocket.send", "text": "ack"}
    # the join replays 4..6 (since=3) with head 6
    m.synced([ev(4), ev(5), ev(6)], 4, 6, [ack], accept_gaps=False)
    assert sent(m.conn) == ["e4", "e5", "e6", "ack", "e7"]
    m.on_event(7, ev(7))  # a duplicate is dropped
    m.on_event(8, ev(8))
    assert sent(m.conn)[-1] == "e8" and m.last == 8 and fills == []


def test_a_gap_in_live_events_asks_for_a_fill() -> None:
    m, fills = member()
    m.synced([], None, 10, [], accept_gaps=False)
    m.on_event(11, ev(11))
    m.on_event(13, ev(13))  # 12 lost
    assert fills == [m] and m.syncing
    m.on_event(14, ev(14))
    m.synced([ev(12), ev(13)], 12, None, [], accept_gaps=True)
    assert sent(m.conn) == ["e11", "e12", "e13", "e14"]
    assert not m.syncing


def test_a_fill_that_cannot_close_the_gap_moves_on() -> None:
    m, _ = member()
    m.synced([], None, 1, [], accept_gaps=False)
    m.on_event(5, ev(5))
    m.synced([], None, None, [], accept_gaps=True)  # history had nothing (aged out)
    assert sent(m.conn) == ["e5"] and m.last == 5


def test_abandon_sends_only_the_error() -> None:
    m, _ = member()
    m.on_event(3, ev(3))
    m.abandon({"type": "websocket.send", "text": "err"})
    assert sent(m.conn) == ["err"]


def test_an_abandoned_member_takes_no_more_events_and_asks_no_fill() -> None:
    # Its join failed (timed out): until the gateway has removed it from the room (a
    # task), live events still reach it. Taken as a gap after seq 0, each one asked
    # for a fill of the room's whole history, which was then sent to a client not in
    # the room (seen in a reconnect storm: 88 fills of 1,000 events each).
    m, fills = member()
    m.abandon({"type": "websocket.send", "text": "err"})
    for seq in (40, 41, 43):
        m.on_event(seq, ev(seq))
    m.synced([ev(42)], 42, None, [], accept_gaps=True)  # a fill's late answer
    assert fills == [] and sent(m.conn) == ["err"]


def test_a_member_that_left_takes_nothing_more_not_even_a_fills_answer() -> None:
    # A join whose replay was cut to the reply budget, then at once a leave: the fill
    # for the rest is still out when the leave's turn comes. Its answer came after the
    # leave's ack, with events past the leave, and asked for more fills.
    m, fills = member()
    m.synced([ev(5)], 5, None, [], accept_gaps=False)  # the join's replay, cut
    m.syncing = True  # the fill for the rest is out
    m.on_event(9, ev(9))
    leave_ack = [{"type": "websocket.send", "text": "leave-ack"}]
    assert not m.left(9, leave_ack)  # the leave reads 6..8 itself (v2._read_before_leave)
    assert m.left(9, leave_ack, [ev(6), ev(7), ev(8), ev(9)], 6, final=True)
    m.on_event(10, ev(10))
    m.synced([ev(6), ev(7)], 6, None, [], accept_gaps=True)  # the fill's late answer
    done = ["e5", "e6", "e7", "e8", "leave-ack"]
    assert sent(m.conn) == done and fills == []
    # nor does a fill's answer saying there is more ask for the next page
    from gateway.v2 import V2Endpoint
    from wire import headers as h

    endpoint = SimpleNamespace(_fill=fills.append)
    V2Endpoint._filled(endpoint, m, [ev(7)], {h.FIRST_SEQ: "7", h.MORE: "1"}, None)  # type: ignore[arg-type]
    assert sent(m.conn) == done and fills == []


def test_a_leave_while_the_joins_replay_is_filled_answers_the_join_first() -> None:
    m, _ = member()
    join_ack = {"type": "websocket.send", "text": "join-ack"}
    m.held = (6, join_ack)  # v2._joined: the replay was cut, its ack waits for the head
    m.synced([ev(5)], 5, None, [], accept_gaps=False)
    m.syncing = True  # the fill is out
    leave_ack = [{"type": "websocket.send", "text": "leave-ack"}]
    assert not m.left(8, leave_ack)  # 6 and 7 are read first
    m.left(8, leave_ack, [ev(6), ev(7), ev(8)], 6, final=True)
    m.synced([ev(6)], 6, None, [], accept_gaps=True)  # the fill's answer, after the leave
    assert sent(m.conn) == ["e5", "e6", "join-ack", "e7", "leave-ack"]
    # the same when the leave fails (v2._left: abandon with its error)
    m, _ = member()
    m.held = (6, join_ack)
    m.syncing = True
    m.abandon({"type": "websocket.send", "text": "leave-error"})
    assert sent(m.conn) == ["join-ack", "leave-error"]


def test_failed_fill_closes_instead_of_skipping_the_gap() -> None:
    from gateway.v2 import V2Endpoint
    from wire.errors import ErrorCode, WireError

    m, _ = member()
    m.synced([], None, 1, [], accept_gaps=False)
    m.on_event(3, ev(3))  # 2 lost, a fill is asked
    V2Endpoint._filled(None, m, [], None, WireError(ErrorCode.UNAVAILABLE, "down"))  # type: ignore[arg-type]
    assert [x.get("text") for x in m.conn.out] == [None]  # no e3: only the close
    assert m.conn.out[-1]["code"] == 1013


def test_a_joins_late_reply_while_its_leave_is_out_sends_nothing_past_the_leave() -> None:
    # [history (slow), join, leave] pipelined in a busy room: the join's reply has its
    # turn behind the history page, by when live events past the leave have come. They
    # went out with the join's ack, before the leave's.
    m, fills = member()
    m.leaving = True  # the leave is out
    for seq in range(5, 10):  # the join is stored at 5, the leave at 8
        m.on_event(seq, ev(seq))
    m.synced([], None, 5, [{"type": "websocket.send", "text": "join-ack"}], accept_gaps=False)
    assert sent(m.conn) == ["join-ack"]
    m.left(8, [{"type": "websocket.send", "text": "leave-ack"}])
    assert sent(m.conn) == ["join-ack", "e6", "e7", "leave-ack"] and fills == []


def test_a_join_again_after_a_leave_sends_no_seq_twice() -> None:
    # [join, leave, join] on one socket, the first join's reply late: the first
    # membership sent the events it had buffered, past the leave, and the second sent
    # them again after its own ack.
    first, _ = member()
    first.leaving = True
    second = Member(first.conn, "r", lambda m: None, 2)  # the join again, in flight
    for seq in range(5, 12):  # join at 5, leave at 8, join again at 9
        first.on_event(seq, ev(seq))
        second.on_event(seq, ev(seq))
    first.synced([], None, 5, [{"type": "websocket.send", "text": "ack1"}], accept_gaps=False)
    first.left(8, [{"type": "websocket.send", "text": "leave-ack"}])
    second.synced([], None, 9, [{"type": "websocket.send", "text": "ack2"}], accept_gaps=False)
    assert sent(first.conn) == ["ack1", "e6", "e7", "leave-ack", "ack2", "e10", "e11"]


def test_a_fills_answer_while_the_leave_is_out_waits_for_the_leaves_seq() -> None:
    # a gap fill asked before the leave was sent can read past the leave event
    m, fills = member()
    m.synced([], None, 4, [], accept_gaps=False)
    m.on_event(6, ev(6))  # 5 lost: a fill is asked
    assert fills == [m]
    m.leaving = True
    m.synced([ev(5), ev(6), ev(7), ev(8), ev(9)], 5, None, [], accept_gaps=True)
    assert sent(m.conn) == []
    m.left(8, [{"type": "websocket.send", "text": "leave-ack"}])
    assert sent(m.conn) == ["e5", "e6", "e7", "leave-ack"]


def test_a_leave_before_the_events_below_it_have_come_reads_them_from_history() -> None:
    # The leave's reply (chat) can reach the gateway before the events stored just before
    # it (JetStream's republish): nats-server does not order two publishers. Those were
    # dropped: the leave's turn ended the membership.
    m, fills = member()
    m.synced([], None, 10, [], accept_gaps=False)
    m.leaving = True
    m.on_event(11, ev(11))  # 12 to 14 are on their way, the leave is 15
    ack = [{"type": "websocket.send", "text": "leave-ack"}]
    assert not m.left(15, ack)
    assert sent(m.conn) == ["e11"] and not m.gone
    m.on_event(14, ev(14))  # came meanwhile
    assert not m.left(15, ack, [ev(12)], 12)  # a page cut to the reply budget
    assert m.left(15, ack, [ev(13), ev(14), ev(15)], 13)  # reaches the leave: done
    m.on_event(16, ev(16))
    assert sent(m.conn) == ["e11", "e12", "e13", "e14", "leave-ack"]
    assert m.gone and fills == []


def test_a_leave_takes_what_history_still_holds() -> None:
    m, _ = member()
    m.synced([], None, 10, [], accept_gaps=False)
    m.leaving = True
    ack = [{"type": "websocket.send", "text": "leave-ack"}]
    assert not m.left(20, ack)
    # 11..16 no longer retained (a busy room): the rest is what can be sent
    assert m.left(20, ack, [ev(17), ev(18), ev(19)], 17, final=True)
    assert sent(m.conn) == ["e17", "e18", "e19", "leave-ack"]
    m, _ = member()  # nothing retained below the leave at all
    m.synced([], None, 10, [], accept_gaps=False)
    assert not m.left(20, ack)
    assert m.left(20, ack, [], None, final=True)
    assert sent(m.conn) == ["leave-ack"]


def test_a_replay_cut_to_the_reply_budget_is_acked_right_after_the_joins_head() -> None:
    # join since=2, stored at 8: the reply carries 3 and 4 (cut to the budget) and the
    # ack; the fill for the rest reads on to the room's head by then, 10. The ack came
    # after 10, so a client taking its seq (8) as "caught up to" got 9 and 10 as replay.
    from gateway.v2 import V2Endpoint
    from wire import headers as h

    m, fills = member()
    endpoint = SimpleNamespace(_fill=fills.append)
    for seq in (8, 9, 10):  # live meanwhile
        m.on_event(seq, ev(seq))
    ack = {"type": "websocket.send", "text": "join-ack"}
    reply = {h.FIRST_SEQ: "3", h.SEQ: "8", h.MORE: "1"}
    V2Endpoint._joined(endpoint, m, "j", [ev(3), ev(4), ack], reply, None)  # type: ignore[arg-type]
    assert fills == [m] and sent(m.conn) == ["e3", "e4"]
    page = [ev(seq) for seq in range(5, 11)]
    V2Endpoint._filled(endpoint, m, page, {h.FIRST_SEQ: "5"}, None)  # type: ignore[arg-type]
    m.on_event(11, ev(11))
    assert sent(m.conn) == ["e3", "e4", "e5", "e6", "e7", "e8", "join-ack", "e9", "e10", "e11"]


def test_a_cut_replay_whose_head_history_no_longer_holds_is_still_acked() -> None:
    m, _ = member()
    m.held = (8, {"type": "websocket.send", "text": "join-ack"})
    m.synced([ev(3)], 3, None, [], accept_gaps=False)
    m.syncing = True
    m.synced([], None, None, [], accept_gaps=True)  # the last fill: nothing more retained
    assert sent(m.conn) == ["e3", "join-ack"] and m.held is None


def test_seqs_going_back_after_live_events_mean_a_reset_the_client_is_told_to_rejoin() -> None:
    """ROOMS deleted and created again: the room's seqs start at 1 again. Dropped as
    duplicates, they would never reach the member; it is told to reconnect instead."""
    m, _ = member()
    m.synced([], None, 2, [], accept_gaps=False)  # joined at head 2
    for seq in (3, 4, 5):
        m.on_event(seq, ev(seq))
    m.on_event(2, ev(2))  # the join's own event coming live late: not a reset
    assert not m.conn.closing
    m.on_event(3, ev(3))  # the reset room's third event: seen live before, as "3"
    assert m.gone and m.conn.closing
    reconnect = json.loads(m.conn.out[-2]["text"])
    assert reconnect["type"] == "reconnect" and "reset" in reconnect["payload"]["reason"]
    assert m.conn.out[-1]["type"] == "websocket.close" and m.conn.out[-1]["code"] == 1012
    m.on_event(4, ev(4))
    assert len(m.conn.out) == 5  # e3, e4, e5, reconnect, close: nothing more


def test_old_seqs_long_after_the_sync_mean_a_reset() -> None:
    m, _ = member()
    m.synced([], None, 50, [], accept_gaps=False)
    m.on_event(49, ev(49))  # right after the join: late live copies of what it read
    assert not m.conn.closing
    m.synced_at -= rooms.LATE_EVENTS + 1
    m.on_event(1, ev(1))  # the reset room's first event, the member having seen 50
    assert m.gone and m.conn.closing
