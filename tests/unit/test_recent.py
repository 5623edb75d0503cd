"""services/chat/recent.py: each room's newest events in memory, one run without holes."""

from __future__ import annotations

from services.chat.recent import OVERHEAD, RecentEvents
from services.chat.rooms import StoredEvent


def ev(seq: int, stream: int | None = None) -> StoredEvent:
    return StoredEvent(seq, b"x" * 10, seq * 2 if stream is None else stream)


def evs(first: int, last: int) -> list[StoredEvent]:
    return [ev(s) for s in range(first, last + 1)]


def seqs(events: list[StoredEvent] | None) -> list[int] | None:
    return None if events is None else [e.seq for e in events]


def test_runs_grow_by_what_overlaps_or_provably_follows_them_and_never_get_a_hole() -> None:
    recent = RecentEvents(max_events=100, max_bytes=1 << 20)
    recent.add("r", evs(5, 9))
    recent.add("r", [ev(10)], after=ev(9).stream_seq)  # an append right after event 9
    recent.add("r", [ev(12)], after=ev(11).stream_seq)  # 11 not seen: dropped, not a hole
    assert recent.span("r") == (5, 10)
    # the next seq, but not known to follow event 10 in the stream: the room may have
    # been purged and written again (its seqs start over): dropped
    recent.add("r", [ev(11, stream=999)])
    recent.add("r", [ev(11, stream=999)], after=998)
    recent.add("r", evs(1, 4))  # just before the run: the same doubt
    assert recent.span("r") == (5, 10)
    recent.add("r", evs(10, 13))  # a read from the run's last event on: overlaps it
    recent.add("r", evs(2, 6))  # an older read that overlaps the start
    assert recent.span("r") == (2, 13)
    assert seqs(recent.get("r", 4, 13)) == list(range(4, 14))
    assert recent.get("r", 1, 5) is None and recent.get("r", 10, 14) is None


def test_the_rooms_newest_events_replace_a_run_they_do_not_touch() -> None:
    recent = RecentEvents(max_events=100, max_bytes=1 << 20)
    recent.add("r", evs(1, 5))
    recent.add("r", evs(20, 30))  # not the newest: kept apart, dropped
    assert recent.span("r") == (1, 5)
    recent.add("r", evs(20, 30), newest=True)  # read up to the head: the run moves on
    assert recent.span("r") == (20, 30)
    recent.add("r", evs(1, 5), newest=True)  # older than the run: never goes back
    assert recent.span("r") == (20, 30)


def test_a_different_event_under_the_same_seq_replaces_the_run() -> None:
    # the stream was recreated: seq 3 is another stored message now
    recent = RecentEvents(max_events=100, max_bytes=1 << 20)
    recent.add("r", evs(1, 5))
    recent.add("r", [ev(3, stream=999), ev(4, stream=1000)])
    assert recent.span("r") == (3, 4) and recent.get("r", 3, 3)[0].stream_seq == 999


def test_at_most_max_events_per_room_the_newest() -> None:
    recent = RecentEvents(max_events=10, max_bytes=1 << 20)
    recent.add("r", evs(1, 8))
    for seq in range(9, 26):
        recent.add("r", [ev(seq)], after=ev(seq - 1).stream_seq)
    assert recent.span("r") == (16, 25)
    assert recent.size == 10 * (10 + OVERHEAD)
    recent.add("q", evs(1, 30))
    assert recent.span("q") == (21, 30)


def test_past_max_bytes_the_least_recently_used_rooms_are_forgotten() -> None:
    per_room = 5 * (10 + OVERHEAD)
    recent = RecentEvents(max_events=100, max_bytes=3 * per_room)
    for room in ("a", "b", "c"):
        recent.add(room, evs(1, 5))
    assert recent.get("a", 1, 5) is not None  # a read: "a" is the most recent now
    recent.add("d", evs(1, 5))
    assert recent.span("b") is None  # the least recently used
    assert all(recent.span(r) is not None for r in ("a", "c", "d"))
    assert recent.size == 3 * per_room
    recent.forget("a")
    assert recent.span("a") is None and recent.size == 2 * per_room


def test_off_and_odd_inputs() -> None:
    off = RecentEvents(max_events=100, max_bytes=0)
    off.add("r", evs(1, 5))
    assert off.span("r") is None
    recent = RecentEvents(max_events=100, max_bytes=1 << 20)
    recent.add("r", [])
    recent.add("r", [ev(1), ev(3)])  # not contiguous: not taken
    assert recent.span("r") is None
    recent.add("r", evs(1, 3))
    assert recent.get("r", 3, 2) is None  # an empty range is not "held"
