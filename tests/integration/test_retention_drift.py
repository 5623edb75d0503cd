"""Two chat replicas started with different retention settings (a rolling change of
``SB_CHAT_HISTORY_MAX_MESSAGES`` / ``SB_CHAT_HISTORY_MAX_AGE``): the stream holds one
retention, the one the replica started last wrote, with a warning; the other replica
follows it, so that both answer history alike (services/chat/rooms.py)."""

from __future__ import annotations

import logging
import time

import nats
import orjson
import pytest

from services.chat.recent import RecentEvents
from services.chat.rooms import RoomStore
from switchboard.localstack import LocalStack
from wire.subjects import ROOMS_STREAM

pytestmark = pytest.mark.timeout(30)


def store(nc: nats.NATS, max_msgs: int, max_age: float) -> RoomStore:
    recent = RecentEvents(max_msgs, 1 << 20)
    js = nc.jetstream()
    return RoomStore(nc, js, max_msgs=max_msgs, max_age=max_age, dedupe_window=120, recent=recent)


async def test_replicas_follow_the_retention_the_stream_has(
    server: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    old_nc = await nats.connect(server.nats_url)
    new_nc = await nats.connect(server.nats_url)
    try:
        old = store(old_nc, 10, 3600.0)
        await old.ensure()
        for i in range(8):
            await old.append("drift", "message", {"text": f"m{i + 1}"}, None)
        first = await old.read("drift")  # also fills old's in-memory run
        assert len(first) == 8
        assert not await old.follow()  # nothing changed yet

        with caplog.at_level(logging.WARNING, logger="services.chat.rooms"):
            new = store(new_nc, 4, 1800.0)
            await new.ensure()  # the replica started last: its retention is the stream's
        assert [r.getMessage() for r in caplog.records] == [
            "this replica changes the rooms' history retention"
        ]
        info = await new_nc.jetstream().stream_info(ROOMS_STREAM)
        assert info.config.max_msgs_per_subject == 4

        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="services.chat.rooms"):
            assert await old.follow()
        assert (old.max_msgs, old.max_age) == (4, 1800.0)
        assert "changed by another replica" in caplog.records[0].getMessage()
        assert old.recent is not None and old.recent.max_events == 4
        # Both replicas now answer the same read with what the stream keeps: m5..m8.
        for replica in (old, new):
            events = await replica.read("drift")
            texts = [orjson.loads(e.frame)["payload"]["text"] for e in events]
            assert texts == ["m5", "m6", "m7", "m8"], texts
        assert not await old.follow()  # once only
    finally:
        await old_nc.close()
        await new_nc.close()


async def test_a_stream_without_retention_metadata_is_left_to_the_replica(
    server: LocalStack,
) -> None:
    """A stream made by an older version (no max age in its metadata): follow() keeps
    the replica's own settings until a replica of this version writes them."""
    nc = await nats.connect(server.nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(ROOMS_STREAM)
        info.config.metadata = {}
        await js.update_stream(info.config)
        replica = store(nc, 7, 60.0)
        assert not await replica.follow()
        assert (replica.max_msgs, replica.max_age) == (7, 60.0)
        started = time.monotonic()
        await replica.ensure()  # writes its own, without a warning (nothing to compare)
        assert time.monotonic() - started < 5
        info = await js.stream_info(ROOMS_STREAM)
        assert info.config.max_msgs_per_subject == 7
        assert info.config.metadata is not None
        assert float(info.config.metadata["switchboard_history_max_age"]) == 60.0
    finally:
        await nc.close()
