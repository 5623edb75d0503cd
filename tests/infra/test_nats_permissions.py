"""infra/nats/ on a real nats-server: every process connects as its own user and can do
exactly what it needs; anything else is refused.

nats-py reports a refused publish or subscribe through ``error_cb`` ("permissions
violation ..."); the connection stays up, so each check waits for that error (or, for
an allowed operation, for the message to arrive and no error).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import RePublish, StreamConfig
from nats.micro import add_service

from tests.infra.conftest import NATS_CONF, NATS_PASSWORDS, ROOT, NatsServer
from wire.files import direct_get_request
from wire.subjects import (
    EXPIRING_OPS,
    ORDERED_OPS,
    Op,
    Service,
    direct_get_subject,
    service_subject,
)

WAIT = 2.0


@dataclass
class Peer:
    """One connection and the errors the server sent it."""

    user: str
    nc: Client
    errors: asyncio.Queue[Exception] = field(default_factory=asyncio.Queue)

    async def sync(self) -> None:
        """Wait until the server has processed everything sent so far.

        nats-py 2.16's ``flush()`` writes its PING straight to the socket, ahead of
        commands still in the client's buffer (a SUB, say), so one flush proves nothing
        about them; by the second PONG the buffer has been written before it.
        """
        await self.nc.flush()
        await self.nc.flush()

    async def violation(self, timeout: float = WAIT) -> str:
        await self.sync()
        try:
            error = await asyncio.wait_for(self.errors.get(), timeout)
        except TimeoutError:
            pytest.fail(f"{self.user}: expected a permissions violation, got none")
        return str(error).lower()

    async def no_error(self) -> None:
        await self.sync()
        await asyncio.sleep(0.1)
        assert self.errors.empty(), f"{self.user}: unexpected error {self.errors.get_nowait()}"


Connect = Callable[[str], "contextlib.AbstractAsyncContextManager[Peer]"]


@pytest.fixture
def connect(nats_server: NatsServer) -> Connect:
    @contextlib.asynccontextmanager
    async def open_peer(user: str) -> AsyncIterator[Peer]:
        errors: asyncio.Queue[Exception] = asyncio.Queue()

        async def on_error(exc: Exception) -> None:
            errors.put_nowait(exc)

        nc = await nats.connect(
            nats_server.url(),
            user=user,
            password=NATS_PASSWORDS[user],
            name=f"test-{user}",
            error_cb=on_error,
            allow_reconnect=False,
            connect_timeout=2,
        )
        try:
            yield Peer(user, nc, errors)
        finally:
            await nc.close()

    return open_peer


async def _refused_connection(url: str, **auth: str) -> None:
    async def quiet(exc: Exception) -> None:
        pass

    with pytest.raises(NatsError):
        nc = await nats.connect(
            url, allow_reconnect=False, connect_timeout=2, error_cb=quiet, **auth
        )
        await nc.close()


async def test_anonymous_connection_is_refused(nats_server: NatsServer) -> None:
    await _refused_connection(nats_server.url())


async def test_wrong_password_is_refused(nats_server: NatsServer) -> None:
    await _refused_connection(nats_server.url(), user="chat", password="notThePassword")


async def test_request_and_reply_between_gateway_and_worker(connect: Connect) -> None:
    async with connect("gateway") as gateway, connect("codec") as codec:
        replies: asyncio.Queue[Msg] = asyncio.Queue()
        await gateway.nc.subscribe("sb.gw.g1.>", cb=replies.put)

        async def echo(msg: Msg) -> None:
            await msg.respond(b"Echo: " + msg.data)

        await codec.nc.subscribe("sb.svc.codec.echo", queue="codec", cb=echo)
        await codec.sync()
        await gateway.nc.publish("sb.svc.codec.echo", b"hi", reply="sb.gw.g1.1.1")
        reply = await asyncio.wait_for(replies.get(), WAIT)
        assert (reply.subject, reply.data) == ("sb.gw.g1.1.1", b"Echo: hi")
        await codec.no_error()
        await gateway.no_error()


async def test_requests_in_flight_may_share_a_reply_subject(connect: Connect) -> None:
    """An upload's chunks all ask for their acks on one inbox, the gateway's
    fire-and-forget requests on one sink: every reply must get through."""
    async with connect("gateway") as gateway, connect("binary") as binary:
        acks: asyncio.Queue[Msg] = asyncio.Queue()
        inbox = gateway.nc.new_inbox()
        await gateway.nc.subscribe(inbox, cb=acks.put)
        held: asyncio.Queue[Msg] = asyncio.Queue()
        await binary.nc.subscribe("sb.svc.binary.chunk.f1", queue="binary", cb=held.put)
        await binary.sync()
        for _ in range(64):  # the largest upload window
            await gateway.nc.publish("sb.svc.binary.chunk.f1", b"chunk", reply=inbox)
        await gateway.sync()
        await binary.sync()
        assert held.qsize() == 64
        while not held.empty():
            await held.get_nowait().respond(b"ack")
        await binary.no_error()
        for _ in range(64):
            await asyncio.wait_for(acks.get(), WAIT)


async def test_binary_replicas_talk_to_the_owner_of_an_upload(connect: Connect) -> None:
    async with connect("binary") as owner, connect("binary") as other:

        async def serve(msg: Msg) -> None:
            await msg.respond(b"offset")

        await owner.nc.subscribe("sb.svc.binary.chunk.f2", queue="binary", cb=serve)
        await owner.sync()
        reply = await other.nc.request("sb.svc.binary.chunk.f2", b"", timeout=WAIT)
        assert reply.data == b"offset"
        await owner.no_error()
        await other.no_error()
        async with connect("codec") as codec:
            await codec.nc.publish("sb.svc.binary.chunk.f2", b"")
            assert "sb.svc.binary.chunk.f2" in await codec.violation()


async def test_a_stopping_chat_replica_hands_must_run_requests_on(connect: Connect) -> None:
    """services.runner._hand_off: a leave (or a tutorial join) a chat replica took but
    could not handle before it stopped goes to the queue group again, with the
    gateway's reply subject; another replica answers the gateway. Any other request
    is still refused to chat."""
    must_run = sorted(ORDERED_OPS - EXPIRING_OPS)
    assert must_run == [Op.JOIN, Op.ROOM_LEAVE]
    async with (
        connect("gateway") as gateway,
        connect("chat") as stopping,
        connect("chat") as other,
    ):
        replies: asyncio.Queue[Msg] = asyncio.Queue()
        await gateway.nc.subscribe("sb.gw.g1.>", cb=replies.put)

        async def answer(msg: Msg) -> None:
            await msg.respond(b"handled")

        for op in must_run:
            await other.nc.subscribe(service_subject(Service.CHAT, op), queue="chat", cb=answer)
        await other.sync()
        for i, op in enumerate(must_run):
            reply = f"sb.gw.g1.0.{i}"
            await stopping.nc.publish(service_subject(Service.CHAT, op), b"", reply=reply)
            got = await asyncio.wait_for(replies.get(), WAIT)
            assert (got.subject, got.data) == (reply, b"handled")
        await stopping.no_error()
        await stopping.nc.publish(service_subject(Service.CHAT, Op.PUBLISH), b"")
        assert "sb.svc.chat.publish" in await stopping.violation()


async def test_binary_has_a_download_delivered_to_the_gateway(connect: Connect) -> None:
    """file_read (services/binary/files.py): binary publishes a batched direct get with
    the gateway's inbox as reply subject; nats-server sends the chunks and the end of
    batch there, and the gateway, which has no JetStream rights, receives them."""
    async with connect("binary") as binary, connect("gateway") as gateway:
        js = binary.nc.jetstream(timeout=WAIT)
        await js.add_stream(
            StreamConfig(name="TEST_OBJ", subjects=["$O.test_dl.>"], allow_direct=True)
        )
        for i in range(3):
            await js.publish("$O.test_dl.C.f", bytes([i]) * 10, headers={"Sb-Offset": str(10 * i)})
        inbox = gateway.nc.new_inbox()
        got: asyncio.Queue[Msg] = asyncio.Queue()
        await gateway.nc.subscribe(inbox, cb=got.put)
        await gateway.sync()
        body = direct_get_request(1, "$O.test_dl.C.f", 2)
        await binary.nc.publish(direct_get_subject("TEST_OBJ"), body, reply=inbox)
        first, second, end = [await asyncio.wait_for(got.get(), WAIT) for _ in range(3)]
        assert (first.data, second.data) == (b"\0" * 10, b"\1" * 10)
        assert second.headers["Sb-Offset"] == "10" and end.headers["Status"] == "204"
        await binary.no_error()
        await gateway.no_error()
        await js.delete_stream("TEST_OBJ")


async def test_discovery_of_a_nats_micro_service(connect: Connect) -> None:
    async with connect("gateway") as gateway, connect("binary") as binary:
        svc = await add_service(binary.nc, name="binary", version="0.1.0", queue_group="binary")

        async def handler(req) -> None:
            await req.respond(b"ok")

        await svc.add_endpoint(name="inspect", subject="sb.svc.binary.inspect", handler=handler)
        await binary.sync()

        inbox = gateway.nc.new_inbox()
        pongs: asyncio.Queue[Msg] = asyncio.Queue()
        await gateway.nc.subscribe(inbox, cb=pongs.put)
        await gateway.nc.publish("$SRV.PING.binary", b"", reply=inbox)
        pong = await asyncio.wait_for(pongs.get(), WAIT)
        assert b'"name":"binary"' in pong.data.replace(b" ", b"")

        await gateway.nc.publish("sb.svc.binary.inspect", b"x", reply="sb.gw.g1.2.1")
        await binary.no_error()
        await gateway.no_error()
        await svc.stop()


async def test_only_chat_publishes_to_rooms(connect: Connect) -> None:
    async with connect("gateway") as gateway, connect("chat") as chat:
        events: asyncio.Queue[Msg] = asyncio.Queue()
        await gateway.nc.subscribe("sb.room.general", cb=events.put)
        await gateway.sync()
        await chat.nc.publish("sb.room.general", b"alice has joined the chat")
        event = await asyncio.wait_for(events.get(), WAIT)
        assert event.data == b"alice has joined the chat"
        await chat.no_error()

        for user in ("gateway", "codec", "binary"):
            async with connect(user) as other:
                await other.nc.publish("sb.room.general", b"spoofed")
                assert "sb.room.general" in await other.violation()
        await asyncio.sleep(0.2)
        assert events.empty(), "a spoofed room event was delivered"


FORBIDDEN_PUBLISH = [
    ("gateway", "sb.gw.g2.1.1"),  # gateways only receive replies
    ("gateway", "sb.hist.general"),  # room history is chat's
    ("gateway", "sb.live.general"),  # only JetStream republishes here
    ("gateway", "sb.stats.codec.x"),  # no one speaks for another component
    ("gateway", "$SRV.INFO.codec"),
    ("gateway", "$JS.API.INFO"),
    ("codec", "sb.svc.chat.send"),  # workers publish nothing but replies
    ("codec", "sb.gw.g1.1.1"),
    ("codec", "$SRV.PING.chat"),
    ("codec", "$JS.API.INFO"),
    ("codec", "$KV.presence.alice"),
    ("codec", "sb.presence.g1"),
    ("codec", "sb.sync.presence"),  # only chat asks gateways for their member lists
    ("gateway", "sb.sync.presence"),
    ("codec", "sb.stats.chat.x"),
    ("binary", "sb.svc.codec.echo"),
    ("binary", "sb.gw.g1.1.1"),
    ("chat", "sb.svc.codec.echo"),
    ("chat", "sb.gw.g1.1.1"),
    ("chat", "sb.live.general"),
    ("chat", "sb.presence.g1"),
    ("chat", "sb.stats.gateway.x"),
]


@pytest.mark.parametrize(("user", "subject"), FORBIDDEN_PUBLISH)
async def test_forbidden_publish_is_refused(connect: Connect, user: str, subject: str) -> None:
    async with connect(user) as peer:
        await peer.nc.publish(subject, b"x")
        error = await peer.violation()
        assert "publish" in error
        assert subject.lower() in error


FORBIDDEN_SUBSCRIBE = [
    ("gateway", "sb.svc.codec.echo", "codec"),  # only workers serve requests
    ("gateway", "sb.svc.>", ""),
    ("gateway", "$SRV.PING", ""),
    ("codec", "sb.svc.codec.echo", ""),  # outside its queue group
    ("codec", "sb.svc.codec.echo", "other"),
    ("codec", "sb.svc.chat.send", "chat"),  # another service's requests
    ("codec", "sb.gw.>", ""),  # replies to gateways
    ("codec", "sb.room.>", ""),
    ("codec", "_INBOX.>", ""),
    ("codec", "$SRV.PING.chat", ""),
    ("codec", "sb.presence.*", ""),
    ("codec", "sb.sync.presence", ""),
    ("codec", "sb.stats.>", ""),
    ("binary", "sb.svc.codec.>", "codec"),
    ("binary", "sb.room.>", ""),
    ("chat", "sb.svc.binary.inspect", "binary"),
    ("chat", "sb.room.>", ""),
    ("chat", "sb.gw.>", ""),
    ("chat", "sb.live.>", ""),
    ("chat", "sb.stats.>", ""),
    ("chat", ">", ""),
]


@pytest.mark.parametrize(("user", "subject", "queue"), FORBIDDEN_SUBSCRIBE)
async def test_forbidden_subscribe_is_refused(
    connect: Connect, user: str, subject: str, queue: str
) -> None:
    async with connect(user) as peer:
        await peer.nc.subscribe(subject, queue=queue)
        error = await peer.violation()
        assert "subscription" in error
        assert subject.lower() in error


@pytest.mark.parametrize("user", ["chat", "binary"])
async def test_jetstream_kv_and_object_store_allowed(connect: Connect, user: str) -> None:
    async with connect(user) as peer:
        js = peer.nc.jetstream(timeout=WAIT)
        kv = await js.create_key_value(bucket=f"test_{user}")
        await kv.put("alice", b"online")
        assert (await kv.get("alice")).value == b"online"

        store = await js.create_object_store(bucket=f"files_{user}")
        await store.put("hello.bin", b"\x00\x01" * 1000)
        assert (await store.get("hello.bin")).data == b"\x00\x01" * 1000

        await peer.no_error()


async def test_room_history_is_republished_to_gateways(connect: Connect) -> None:
    """chat stores room events on sb.hist.<room>; JetStream republishes them on
    sb.live.<room>, where gateways listen (services/chat/rooms.py's stream)."""
    async with connect("gateway") as gateway, connect("chat") as chat:
        live: asyncio.Queue[Msg] = asyncio.Queue()
        await gateway.nc.subscribe("sb.live.general", cb=live.put)
        await gateway.sync()
        js = chat.nc.jetstream(timeout=WAIT)
        await js.add_stream(
            StreamConfig(
                name="TEST_ROOMS",
                subjects=["sb.hist.>"],
                allow_direct=True,
                republish=RePublish(src="sb.hist.>", dest="sb.live.>"),
            )
        )
        ack = await js.publish("sb.hist.general", b"alice: hi")
        assert ack.stream == "TEST_ROOMS"
        assert (await asyncio.wait_for(live.get(), WAIT)).data == b"alice: hi"
        last = await js.get_last_msg("TEST_ROOMS", "sb.hist.general", direct=True)
        assert last.data == b"alice: hi"
        replay = await js.subscribe("sb.hist.general", ordered_consumer=True)
        assert (await replay.next_msg(WAIT)).data == b"alice: hi"
        await replay.unsubscribe()
        await chat.no_error()
        await gateway.no_error()
        await js.delete_stream("TEST_ROOMS")


async def test_presence_and_stats(connect: Connect) -> None:
    async with connect("gateway") as gateway, connect("chat") as chat, connect("codec") as codec:
        beats: asyncio.Queue[Msg] = asyncio.Queue()
        stats: asyncio.Queue[Msg] = asyncio.Queue()
        await chat.nc.subscribe("sb.presence.*", cb=beats.put)
        await gateway.nc.subscribe("sb.stats.>", cb=stats.put)
        await chat.sync()
        await gateway.sync()
        syncs: asyncio.Queue[Msg] = asyncio.Queue()
        await gateway.nc.subscribe("sb.sync.presence", cb=syncs.put)
        await gateway.sync()
        await chat.nc.publish("sb.sync.presence", b"")
        assert (await asyncio.wait_for(syncs.get(), WAIT)).subject == "sb.sync.presence"
        await gateway.nc.publish("sb.presence.g1", b"{}")
        await codec.nc.publish("sb.stats.codec.abc", b"{}")
        await chat.nc.publish("sb.stats.chat.def", b"{}")
        assert (await asyncio.wait_for(beats.get(), WAIT)).subject == "sb.presence.g1"
        got = {(await asyncio.wait_for(stats.get(), WAIT)).subject for _ in range(2)}
        assert got == {"sb.stats.codec.abc", "sb.stats.chat.def"}
        for peer in (gateway, chat, codec):
            await peer.no_error()


@pytest.mark.parametrize("user", ["gateway", "codec"])
async def test_jetstream_refused_to_gateway_and_codec(connect: Connect, user: str) -> None:
    async with connect(user) as peer:
        await peer.nc.publish("$JS.API.STREAM.CREATE.X", b"{}", reply="_INBOX.x")
        assert "$js.api.stream.create.x" in await peer.violation()


def test_every_subject_family_has_a_rule() -> None:
    """A new family in wire/subjects.py needs a rule in infra/nats/auth.conf: without
    one every process is refused it and the containers stop working."""
    documented = (ROOT / "wire" / "subjects.py").read_text()
    families = set(re.findall(r"^\s+(sb\.[a-z]+)\.", documented, flags=re.M))
    assert {"sb.svc", "sb.gw", "sb.room"} <= families
    rules = (NATS_CONF.parent / "auth.conf").read_text()
    missing = sorted(f for f in families if f'"{f}.' not in rules)
    assert not missing, f"no permission in infra/nats/auth.conf for {missing}"
