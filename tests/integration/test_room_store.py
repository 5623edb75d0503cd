"""services/chat/rooms.py against a real nats-server: history read in pages of JetStream
batched direct gets (READ_PAGE events each), across page boundaries, forward, backward
and for recovery, with other rooms' events interleaved in the stream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import nats
import orjson
import pytest

from services.chat.recent import RecentEvents
from services.chat.rooms import READ_PAGE, SEEK_SLACK, RoomStore
from switchboard.localstack import LocalStack
from wire.errors import ErrorCode, WireError
from wire.subjects import ROOMS_STREAM, history_subject

COUNT = 2 * READ_PAGE + 37  # three pages


@pytest.fixture
async def store(server: LocalStack) -> AsyncIterator[RoomStore]:
    nc = await nats.connect(server.nats_url)
    store = RoomStore(
        nc, nc.jetstream(), max_msgs=10_000, max_age=3600, dedupe_window=120, replicas=1
    )
    await store.ensure()
    try:
        yield store
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def filled(server: LocalStack) -> str:
    """Room ``big`` with COUNT events, another room's event between every two."""

    async def fill() -> None:
        nc = await nats.connect(server.nats_url)
        store = RoomStore(
            nc, nc.jetstream(), max_msgs=10_000, max_age=3600, dedupe_window=120, replicas=1
        )
        await store.ensure()
        for i in range(COUNT):
            await store.append("big", "message", {"text": f"m{i + 1}"}, None)
            await store.append("other", "message", {"text": f"x{i}"}, None)
        await nc.close()

    asyncio.run(fill())
    return "big"


def texts(events) -> list[str]:
    return [orjson.loads(e.frame)["payload"]["text"] for e in events]


def count_fetched(store: RoomStore) -> list[int]:
    """The number of events each batched direct get of ``store`` fetches, from now on."""
    fetched: list[int] = []
    batch = store._direct_batch

    async def counting(request):
        page = await batch(request)
        fetched.append(len(page))
        return page

    store._direct_batch = counting
    return fetched


def remembering(nc, max_age: float = 3600) -> RoomStore:
    """A store as chat's: the newest events of rooms in memory (services/chat/recent.py)."""
    recent = RecentEvents(max_events=10_000, max_bytes=1 << 24)
    return RoomStore(
        nc, nc.jetstream(), max_msgs=10_000, max_age=max_age, dedupe_window=120, recent=recent
    )


async def test_reads_every_event_after_a_seq_across_pages(store, filled) -> None:
    events = await store.read(filled, after=10)
    assert [e.seq for e in events] == list(range(11, COUNT + 1))
    assert texts(events) == [f"m{i}" for i in range(11, COUNT + 1)]
    assert await store.read(filled, after=COUNT) == []


async def test_reads_the_newest_and_pages_backwards(store, filled) -> None:
    newest = await store.read(filled, limit=50)
    assert [e.seq for e in newest] == list(range(COUNT - 49, COUNT + 1))
    page = await store.read(filled, before=READ_PAGE + 5, limit=10)
    assert [e.seq for e in page] == list(range(READ_PAGE - 5, READ_PAGE + 5))


async def test_recovery_across_a_page_boundary(store, filled) -> None:
    since = READ_PAGE - 3
    recovery = await store.recover(filled, since, newest=20)
    assert recovery.recovered and recovery.head == COUNT
    assert [e.seq for e in recovery.events] == list(range(since + 1, COUNT + 1))


async def test_a_reply_budget_keeps_the_oldest_going_forward(store, filled) -> None:
    events = await store.read(filled, after=0, max_bytes=4000)
    assert events[0].seq == 1 and len(events) > 5
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert sum(len(e.frame) for e in events) <= 4000


async def test_a_recovery_fetches_its_gap_not_the_rooms_history(store, filled) -> None:
    """A client 5 events behind in a room of COUNT events: the read positions itself
    near the gap (direct gets by stream sequence) instead of walking the whole history
    (~40 us per event fetched, in chat's CPU)."""
    fetched = count_fetched(store)
    recovery = await store.recover(filled, COUNT - 5, newest=20)
    assert [e.seq for e in recovery.events] == list(range(COUNT - 4, COUNT + 1))
    assert sum(fetched) <= 5 + SEEK_SLACK, fetched
    fetched.clear()
    newest = await store.read(filled, limit=3)
    assert [e.seq for e in newest] == [COUNT - 2, COUNT - 1, COUNT]
    assert sum(fetched) <= 3 + SEEK_SLACK, fetched


async def test_positioning_through_a_stream_crowded_by_another_room(store) -> None:
    """Between two events of room ``sparse``, 300 of room ``crowd``: the probes go back
    4, 16, 64 ... times as far (finding the same event again on the way), then halve
    the distance, and still land on the right event."""
    sparse, crowd = f"sparse-{uuid.uuid4().hex[:6]}", f"crowd-{uuid.uuid4().hex[:6]}"
    for i in range(6):
        await store.append(sparse, "message", {"text": f"s{i + 1}"}, None)
        for j in range(300 if i == 2 else 3):
            await store.append(crowd, "message", {"text": f"c{j}"}, None)
    for since in range(0, 6):
        recovery = await store.recover(sparse, since, newest=20)
        assert recovery.recovered, since
        assert [e.seq for e in recovery.events] == list(range(since + 1, 7))
    assert texts(await store.read(sparse, before=4, limit=2)) == ["s2", "s3"]


async def test_history_pages_at_and_past_the_ends(store, filled) -> None:
    newest = await store.read(filled, before=COUNT + 1000, limit=10)  # "before" past the head
    assert [e.seq for e in newest] == list(range(COUNT - 9, COUNT + 1))
    assert await store.read(filled, before=1, limit=10) == []
    assert await store.read(filled, before=0, limit=10) == []
    assert [e.seq for e in await store.read(filled, before=3, limit=10)] == [1, 2]
    assert await store.read(filled, after=COUNT + 5) == []


async def test_a_small_gap_costs_a_few_single_gets(store, filled) -> None:
    probes = 0
    first_at = store._first_at

    async def counting(request):
        nonlocal probes
        probes += 1
        return await first_at(request)

    store._first_at = counting
    recovery = await store.recover(filled, COUNT - 3, newest=20)
    assert [e.seq for e in recovery.events] == [COUNT - 2, COUNT - 1, COUNT]
    assert probes <= 4, probes  # the age cut and one or two probes


async def test_a_read_that_ends_short_of_the_head_is_read_again(store, filled) -> None:
    """A replicated stream may answer direct gets from a follower that is behind: a
    read up to the head that misses it is retried, then refused (503), never returned
    as if the rest were not retained."""
    fetch = store._fetch
    answers: list[str] = []

    async def behind_once(subject, first, last, *args):
        events = await fetch(subject, first, last, *args)
        if not answers:
            answers.append("short")
            return events[:-1]
        answers.append("full")
        return events

    store._fetch = behind_once
    recovery = await store.recover(filled, COUNT - 5, newest=20)
    assert answers == ["short", "full"]
    assert [e.seq for e in recovery.events] == list(range(COUNT - 4, COUNT + 1))

    async def always_behind(subject, first, last, *args):
        return (await fetch(subject, first, last, *args))[:-1]

    store._fetch = always_behind
    with pytest.raises(WireError) as exc:
        await store.recover(filled, COUNT - 5, newest=20)
    assert exc.value.code == ErrorCode.UNAVAILABLE


@pytest.mark.parametrize("memory", [False, True], ids=["stream", "memory"])
async def test_events_older_than_max_age_are_never_read(server: LocalStack, memory: bool) -> None:
    nc = await nats.connect(server.nats_url)
    try:
        # the stream settings as the other tests have them (ensure() updates the stream)
        if memory:  # the events appended are held in memory too: still left out
            store = remembering(nc, max_age=1.0)
        else:
            store = RoomStore(nc, nc.jetstream(), max_msgs=10_000, max_age=1.0, dedupe_window=120)
        await store.ensure()
        room = f"aging-{uuid.uuid4().hex[:6]}"
        for i in range(3):
            await store.append(room, "message", {"text": f"old{i}"}, None)
        await asyncio.sleep(1.3)
        assert await store.read(room, after=0) == []  # all older than max_age
        for i in range(2):
            await store.append(room, "message", {"text": f"new{i}"}, None)
        assert texts(await store.read(room, after=0)) == ["new0", "new1"]
        assert texts(await store.read(room, limit=10)) == ["new0", "new1"]
        recovery = await store.recover(room, 1, newest=10)  # 2 and 3 aged out: a gap
        assert not recovery.recovered and texts(recovery.events) == ["new0", "new1"]
    finally:
        await nc.close()


async def test_every_recovery_point_starts_exactly_after_since(store, filled) -> None:
    for since in range(0, COUNT, 7):
        recovery = await store.recover(filled, since, newest=20, max_bytes=1 << 22)
        seqs = [e.seq for e in recovery.events]
        assert seqs == list(range(since + 1, COUNT + 1)), since
    for before in range(2, COUNT, 11):
        page = await store.read(filled, before=before, limit=4)
        assert [e.seq for e in page] == list(range(max(1, before - 4), before)), before


async def test_recovery_reads_from_the_stream_only_what_memory_lacks(server: LocalStack) -> None:
    """Chat's store keeps the newest events it appended or read: a recovery copies those
    and fetches from the stream only the events appended since by another replica.
    (Each event fetched costs chat ~25-40 us: in a reconnect storm the k-th client to
    rejoin is also sent the k-1 joins before its own, O(clients²) fetches.)"""
    nc = await nats.connect(server.nats_url)
    try:
        mine, other = remembering(nc), remembering(nc)
        room = f"mem-{uuid.uuid4().hex[:6]}"
        for i in range(300):
            await mine.append(room, "message", {"text": f"m{i + 1}"}, None)
        for i in range(3):
            await other.append(room, "message", {"text": f"o{i + 1}"}, None)
        fetched = count_fetched(mine)
        recovery = await mine.recover(room, 50, newest=20)
        assert recovery.recovered and recovery.head == 303
        assert [e.seq for e in recovery.events] == list(range(51, 304))
        assert texts(recovery.events) == [f"m{i}" for i in range(51, 301)] + ["o1", "o2", "o3"]
        assert sum(fetched) <= 3 + SEEK_SLACK, fetched
        # what a read of the stream alone gives, byte for byte
        plain = RoomStore(nc, nc.jetstream(), max_msgs=10_000, max_age=3600, dedupe_window=120)
        assert [e.frame for e in (await plain.recover(room, 50, newest=20)).events] == [
            e.frame for e in recovery.events
        ]
        fetched.clear()
        again = await mine.recover(room, 280, newest=20)
        assert [e.seq for e in again.events] == list(range(281, 304)) and sum(fetched) == 0
        budget = sum(len(e.frame) for e in again.events[:5])  # a gateway's fill, cut
        assert [e.seq for e in await mine.read(room, after=280, max_bytes=budget)] == list(
            range(281, 286)
        )
        # a store that starts cold: its first recovery reads the stream, the next none
        cold = remembering(nc)
        fetched = count_fetched(cold)
        assert len((await cold.recover(room, 200, newest=20)).events) == 103
        assert sum(fetched) >= 103
        fetched.clear()
        assert len((await cold.recover(room, 210, newest=20)).events) == 93
        assert sum(fetched) == 0
    finally:
        await nc.close()


@pytest.mark.parametrize("written", [3, 15], ids=["below", "past"])
async def test_a_purged_room_is_read_from_the_stream_not_from_memory(
    server: LocalStack, written: int
) -> None:
    """Memory is checked against the stream: a room purged and written again (its seqs
    start over), below or past the end of the run held from before, is not answered
    with those events, nor with a mix of them and the new ones."""
    nc = await nats.connect(server.nats_url)
    try:
        mine = remembering(nc)
        room = f"purged-{uuid.uuid4().hex[:6]}"
        for i in range(10):
            await mine.append(room, "message", {"text": f"before{i + 1}"}, None)
        await nc.jetstream().purge_stream(ROOMS_STREAM, subject=history_subject(room))
        other = remembering(nc)
        for i in range(written):
            await other.append(room, "message", {"text": f"after{i + 1}"}, None)
        after = [f"after{i + 1}" for i in range(written)]
        assert texts(await mine.read(room, after=0)) == after
        assert texts(await mine.read(room, after=2)) == after[2:]
        recovery = await mine.recover(room, 1, newest=20)
        assert texts(recovery.events) == after[1:]
    finally:
        await nc.close()


async def test_an_append_racing_a_recovery_keeps_memory(server: LocalStack) -> None:
    """This replica's own append can be stored while a recovery reads the head (the
    head read answers the older one): memory then holds an event past that head. That
    is no reason to forget the room (as it did: in a reconnect storm, joins append and
    recover side by side, so the room was read from the stream again and again)."""
    nc = await nats.connect(server.nats_url)
    try:
        mine = remembering(nc)
        await mine.ensure()
        room = f"race-{uuid.uuid4().hex[:6]}"
        for i in range(10):
            await mine.append(room, "message", {"text": f"m{i + 1}"}, None)
        get_last_msg = mine.js.get_last_msg
        raced: list[int] = []
        racing = False

        async def appended_meanwhile(*args, **kwargs):
            nonlocal racing
            msg = await get_last_msg(*args, **kwargs)  # the head before the append
            if not racing:
                racing = True  # (the append reads the head too)
                raced.append((await mine.append(room, "message", {"text": "m11"}, None)).seq)
            return msg

        mine.js.get_last_msg = appended_meanwhile
        fetched = count_fetched(mine)
        recovery = await mine.recover(room, 5, newest=20)
        assert raced == [11] and recovery.head == 10
        assert texts(recovery.events) == ["m6", "m7", "m8", "m9", "m10"]
        assert sum(fetched) == 0 and mine.recent.span(room) == (1, 11)
    finally:
        await nc.close()


async def test_the_newest_page_comes_from_memory_older_pages_from_the_stream(
    server: LocalStack,
) -> None:
    """A client's history request for the newest events (no ``before``), as the rooms
    page sends on every join, is answered from memory; a page further back is read from
    the stream; both exactly as a stream read gives them."""
    nc = await nats.connect(server.nats_url)
    try:
        mine = remembering(nc)
        await mine.ensure()
        plain = RoomStore(nc, nc.jetstream(), max_msgs=10_000, max_age=3600, dedupe_window=120)
        room = f"page-{uuid.uuid4().hex[:6]}"
        for i in range(120):
            await mine.append(room, "message", {"text": f"m{i + 1}"}, None)
        fetched = count_fetched(mine)
        for limit in (1, 50, 120, 500):
            page = await mine.read(room, limit=limit)
            assert [e.frame for e in page] == [e.frame for e in await plain.read(room, limit=limit)]
        assert len(page) == 120 and sum(fetched) == 0
        budget = sum(len(e.frame) for e in page[-7:])  # cut to a reply budget: the newest
        assert texts(await mine.read(room, limit=50, max_bytes=budget)) == [
            f"m{i}" for i in range(114, 121)
        ]
        older = await mine.read(room, before=60, limit=10)
        assert texts(older) == [f"m{i}" for i in range(50, 60)] and sum(fetched) >= 10
    finally:
        await nc.close()


async def test_a_duplicate_is_answered_from_memory_only_for_that_very_event(store) -> None:
    """An id may be used again once the dedupe window has passed: a replica that
    remembers its first use (another stream sequence) must not answer a retry of the
    second with the first's seq (it did: the review's two-replica run acked seq 1 for
    the message stored as 5)."""
    room = f"dup-{uuid.uuid4().hex[:8]}"
    await store.append(room, "message", {"text": "filler"}, None)
    stored = await store.append(room, "message", {"text": "second use"}, "msg:reused")
    _, stream_seq = await store._head(room)
    store._stored["msg:reused"] = (stream_seq - 1, 1)  # as if from the id's first use
    again = await store._original("msg:reused", stream_seq)
    assert (again.seq, again.duplicate) == (stored.seq, True)
    store._stored["msg:reused"] = (stream_seq, stored.seq)
    assert (await store._original("msg:reused", stream_seq)).seq == stored.seq
