"""The stream ROOMS deleted, or re-created without what live delivery needs, under a
running chat (an operator's ``nats stream rm`` / ``add``): the next appends create it
again, once for all of them, instead of 500 forever; and :meth:`RoomStore.follow` puts
back republish and the rest, without which events are acked but never delivered live
(services/chat/rooms.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js import api

from services.chat.rooms import RoomStore
from switchboard.localstack import LocalStack
from wire.subjects import ROOMS_STREAM, history_wildcard, live_subject

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def rooms(server: LocalStack) -> AsyncIterator[RoomStore]:
    """A chat replica's store on its own connection, the stream made."""
    nc = await nats.connect(server.nats_url)
    try:
        store = RoomStore(nc, nc.jetstream(), max_msgs=100, max_age=3600, dedupe_window=120)
        await store.ensure()
        yield store
    finally:
        await nc.close()


async def test_appends_create_a_deleted_stream_again_once(
    rooms: RoomStore, caplog: pytest.LogCaptureFixture
) -> None:
    nc = rooms.nc
    assert (await rooms.append("gone", "message", {"text": "a"}, None)).seq == 1
    await nc.jetstream().delete_stream(ROOMS_STREAM)
    with caplog.at_level(logging.WARNING, logger="services.chat.rooms"):
        done = await asyncio.gather(
            *(rooms.append(f"gone{i}", "message", {"text": "b"}, None) for i in range(5)),
            rooms.append("gone", "message", {"text": "b"}, None),
        )
    assert [a.seq for a in done] == [1] * 6  # a new history: seqs start again
    gone = [r for r in caplog.records if "gone: creating it again" in r.getMessage()]
    assert len(gone) == 1
    info = await nc.jetstream().stream_info(ROOMS_STREAM)
    assert info.config.republish is not None and info.state.messages == 6


async def test_follow_restores_what_live_delivery_needs(
    rooms: RoomStore, caplog: pytest.LogCaptureFixture
) -> None:
    nc = rooms.nc
    js = nc.jetstream()
    await js.delete_stream(ROOMS_STREAM)
    plain = api.StreamConfig(name=ROOMS_STREAM, subjects=[history_wildcard()])
    await js.add_stream(plain)  # no republish, no direct gets
    with caplog.at_level(logging.WARNING, logger="services.chat.rooms"):
        await rooms.follow()
    assert any("lacks what live delivery needs" in r.getMessage() for r in caplog.records)
    config = (await js.stream_info(ROOMS_STREAM)).config
    assert config.republish is not None and config.allow_direct
    live = await nc.subscribe(live_subject("plain"))
    await rooms.append("plain", "message", {"text": "seen"}, None)
    msg = await live.next_msg(timeout=2)  # delivered live again
    assert b"seen" in msg.data
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="services.chat.rooms"):
        await rooms.follow()
    assert caplog.records == []  # once
    await js.delete_stream(ROOMS_STREAM)
    await rooms.follow()  # gone, and nobody writing: follow creates it again
    assert (await js.stream_info(ROOMS_STREAM)).config.republish is not None
