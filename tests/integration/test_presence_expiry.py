"""Leave events for the members of a gateway that stopped heartbeating
(ChatHandlers.expire; docs/protocol.md: they carry ``expired: true``, and every chat
replica may write them, ``Nats-Msg-Id`` makes it happen once). Two replicas' handlers
in process, each with its own connection and RoomStore, against a real nats-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import orjson
import pytest
from nats.aio.client import Client

from services.chat.handlers import DEFAULT_ROOM, ChatHandlers
from services.chat.presence import Member, PresenceBook
from services.chat.rooms import RoomStore
from switchboard.localstack import LocalStack
from wire import headers as h
from wire.frames import Request, request_headers


@dataclass
class Replica:
    nc: Client
    store: RoomStore
    handlers: ChatHandlers
    published: list[bytes]  # the tutorial's frames, sent to sb.room.general


@pytest.fixture
async def replicas(server: LocalStack) -> AsyncIterator[list[Replica]]:
    made: list[Replica] = []
    for _ in range(2):
        nc = await nats.connect(server.nats_url)
        store = RoomStore(
            nc, nc.jetstream(timeout=5), max_msgs=1000, max_age=3600, dedupe_window=120
        )
        await store.ensure()
        published: list[bytes] = []

        async def publish(subject: str, payload: bytes, published=published) -> None:
            published.append(payload)

        handlers = ChatHandlers(publish, store, PresenceBook(), 50)
        made.append(Replica(nc, store, handlers, published))
    yield made
    for replica in made:
        await replica.nc.close()


async def events(store: RoomStore, room: str) -> list[dict]:
    return [orjson.loads(e.frame) for e in await store.read(room)]


def left_the_chat(published: list[bytes], user: str) -> int:
    return sum(f"{user} has left the chat".encode() in frame for frame in published)


async def test_members_of_a_dead_gateway_leave_once_whichever_replicas_expire_them(
    replicas: list[Replica],
) -> None:
    gateway, room = f"gw-{uuid.uuid4().hex[:8]}", f"room-{uuid.uuid4().hex[:8]}"
    gone = [
        Member(gateway=gateway, conn=1, room=room, user="zombie"),
        Member(gateway=gateway, conn=2, room=room, user="zombie"),  # a second socket
        Member(gateway=gateway, conn=3, room=room, user="ghost"),
        Member(gateway=gateway, conn=4, room=DEFAULT_ROOM, user="ghost"),
    ]
    # both replicas saw the gateway go silent: they sweep at the same time
    await asyncio.gather(*(r.handlers.expire(gone) for r in replicas))
    # and one sweeps again, as a replica that learned of the members late would
    await replicas[1].handlers.expire(gone)

    for replica in replicas:  # the same history, whichever replica reads it
        leaves = [e for e in await events(replica.store, room) if e["type"] == "leave"]
        assert [(e["payload"]["user"], e["payload"]["expired"]) for e in leaves] == [
            ("zombie", True),
            ("zombie", True),
            ("ghost", True),
        ], leaves
    general = [
        e["payload"]
        for e in await events(replicas[0].store, DEFAULT_ROOM)
        if e["type"] == "leave" and e["payload"]["user"] == "ghost"
    ]
    assert [p.get("expired") for p in general] == [True]
    # the tutorial's /ws/chat is told once too
    assert sum(left_the_chat(r.published, "ghost") for r in replicas) == 1


async def test_a_member_whose_leave_was_written_is_not_left_again_on_expiry(
    replicas: list[Replica],
) -> None:
    """Its gateway wrote the leave, then died before its next heartbeat told the chat
    replicas: the expiry sweep finds the same event (one dedupe id per membership)."""
    gateway, room = f"gw-{uuid.uuid4().hex[:8]}", f"room-{uuid.uuid4().hex[:8]}"

    def request(**extra: str) -> Request:
        ids = {h.GATEWAY: gateway, h.CONN: "70", h.MEMBER: "7", **extra}
        hdrs = request_headers("text", user="quitter", room=room, extra=ids)
        return Request(b"", "text", user="quitter", room=room, headers=hdrs)

    await replicas[0].handlers.room_join(request(**{h.REQUEST_ID: "j1"}))
    await replicas[0].handlers.room_leave(request())  # its socket closed
    await replicas[1].handlers.expire([Member(gateway=gateway, conn=7, room=room, user="quitter")])
    moves = [(e["type"], e["payload"]) for e in await events(replicas[1].store, room)]
    assert [(kind, p["user"], p.get("expired")) for kind, p in moves] == [
        ("join", "quitter", None),
        ("leave", "quitter", None),
    ], moves
