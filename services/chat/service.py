"""Wiring of the chat worker: history store, presence heartbeats, expiry sweep."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from services.chat.handlers import ChatHandlers
from services.chat.presence import Member, PresenceBook, Sweep
from services.chat.recent import RecentEvents
from services.chat.rooms import FOLLOW_INTERVAL, RoomStore
from services.chat.settings import ChatSettings
from services.runner import Handler
from wire.metrics import HistoryMetrics
from wire.natsconn import with_jetstream
from wire.presence import Heartbeat
from wire.subjects import Op, presence_sync_subject, presence_wildcard

log = logging.getLogger(__name__)


async def build(
    nc: Client, settings: ChatSettings, registry: CollectorRegistry | None = None
) -> Mapping[Op, Handler]:
    store = RoomStore(
        nc,
        nc.jetstream(timeout=2.0),
        max_msgs=settings.history_max_messages,
        max_age=settings.history_max_age,
        dedupe_window=settings.dedupe_window,
        replicas=settings.stream_replicas,
        recent=RecentEvents(settings.history_max_messages, settings.recent_bytes)
        if settings.recent_bytes
        else None,
    )
    await with_jetstream(store.ensure)  # JetStream may still be starting up
    book = PresenceBook()
    handlers = ChatHandlers(
        nc.publish,
        store,
        book,
        settings.recover_newest,
        settings.reply_budget_bytes,
        HistoryMetrics(registry or CollectorRegistry()),
    )
    loop = asyncio.get_running_loop()
    leaving: set[asyncio.Task[None]] = set()

    async def write_leaves(gone: list[Member]) -> None:
        try:
            await handlers.expire(gone)
        except Exception as exc:  # what comes next must still run
            log.warning("presence leaves failed: %s", exc)

    async def on_heartbeat(msg: Msg) -> None:
        try:
            dropped = book.apply(Heartbeat.decode(msg.data), loop.time())
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("bad presence heartbeat: %s", exc)
            return
        if dropped:  # their leaves, in a task: the next heartbeats need not wait
            log.info("presence dropped by a snapshot", extra={"members": len(dropped)})
            task = loop.create_task(write_leaves(dropped))
            leaving.add(task)
            task.add_done_callback(leaving.discard)

    await nc.subscribe(presence_wildcard(), cb=on_heartbeat)
    # A replica that starts knows no members: the gateways' full lists come now, not at
    # their next snapshot (until then its presence answers would leave people out).
    await nc.publish(presence_sync_subject(), b"")

    passes = Sweep(book, nc, settings.presence_ttl, settings.dedupe_window / 2)

    async def sweep() -> None:
        interval = min(1.0, settings.presence_ttl / 3)
        while True:
            await asyncio.sleep(interval)
            gone = passes.run(loop.time())
            if gone is None:  # NATS is back: the gateways' full lists now
                try:
                    await nc.publish(presence_sync_subject(), b"")
                except Exception as exc:  # down again: the next reconnect asks again
                    log.warning("presence sync request failed: %s", exc)
            elif gone:
                log.info("presence expired", extra={"members": len(gone)})
                await write_leaves(gone)

    async def trim() -> None:
        while True:
            await asyncio.sleep(settings.history_trim_interval)
            try:
                rooms = await store.trim()
            except Exception as exc:  # NATS restarting, JetStream busy: next time
                log.warning("history trim failed: %s", exc)
            else:
                if rooms:
                    log.info("history trimmed", extra={"rooms": rooms})

    async def follow() -> None:
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL)
            try:
                await store.follow()
            except Exception as exc:  # NATS restarting: next time
                log.warning("history stream check failed: %s", exc)

    tasks = (
        asyncio.create_task(sweep()),
        asyncio.create_task(trim()),
        asyncio.create_task(follow()),
    )
    for task in tasks:
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return handlers.ops()
