"""services.runner.serve against a real nats-server: a connection's ordered requests of
different operations, pipelined to the replica that handled its first one, are handled
in the order they were sent.

Each op used to have its pinned subject on a subscription of its own; nats-py drains a
subscription's backlog in one go when its task wakes, so of two requests that came in
one socket read, a publish could be handled before the join sent ahead of it (the
message stored before its sender's join, unseen by the sender)."""

from __future__ import annotations

import asyncio
import json

import nats

from services.runner import OrderedOps, serve
from services.settings import ServiceSettings
from switchboard.localstack import LocalStack
from tests.integration.client import connect
from tests.integration.conftest import ws_base
from wire import headers as h
from wire.frames import Request, encode_text
from wire.subjects import Op, Service, pinned_subject, service_subject


async def test_a_connections_pipelined_ops_are_handled_in_the_order_sent(
    server: LocalStack,
) -> None:
    handled: list[bytes] = []
    first_done = asyncio.Event()

    async def record(req: Request) -> bytes:
        handled.append(req.data)
        if req.data == b"first":
            await asyncio.sleep(0.2)  # the rest pile up behind it meanwhile
            first_done.set()
        return encode_text("ok")

    handlers = {Op.ROOM_JOIN: record, Op.PUBLISH: record, Op.ROOM_LEAVE: record}
    stop = asyncio.Event()
    settings = ServiceSettings(SB_NATS_URL=server.nats_url, metrics_port=0)
    worker = asyncio.create_task(
        serve(Service.CHAT, settings, lambda nc: handlers, stop, ordered=OrderedOps(8, 1 << 20))
    )
    nc = await nats.connect(server.nats_url)
    try:
        hdrs = {h.SENT_AT: h.now_ns(), h.FRAME: "t", h.GATEWAY: "gw", h.CONN: "7"}
        subject = service_subject(Service.CHAT, Op.ROOM_JOIN)
        for _ in range(100):  # until the worker serves
            try:
                reply = await nc.request(subject, b"probe", timeout=0.2, headers=hdrs)
                break
            except Exception:
                await asyncio.sleep(0.05)
        instance = reply.headers[h.INSTANCE]
        handled.clear()
        inbox = nc.new_inbox()
        replies: list[bytes] = []
        done = asyncio.Event()

        async def on_reply(msg) -> None:
            replies.append(msg.data)
            if len(replies) == 301:
                done.set()

        await nc.subscribe(inbox, cb=on_reply)
        ops = (Op.PUBLISH, Op.ROOM_JOIN, Op.ROOM_LEAVE)
        sent = [b"first"] + [b"%d" % i for i in range(300)]
        for i, data in enumerate(sent):  # one connection's requests, pipelined
            op = Op.ROOM_JOIN if i == 0 else ops[i % 3]
            target = pinned_subject(Service.CHAT, instance, op)
            await nc.publish(target, data, reply=inbox, headers=hdrs)
        await nc.flush()
        await asyncio.wait_for(done.wait(), 10)
        assert first_done.is_set()
        assert handled == sent
    finally:
        await nc.close()
        stop.set()
        await asyncio.wait_for(worker, 15)


async def test_the_tutorial_chats_requests_name_their_connection(stack: LocalStack) -> None:
    """The worker keeps a connection's ordered requests in order by Sb-Gateway and
    Sb-Conn: a /ws/chat socket's messages carried neither (its join and leave did), so
    a message could run beside the join before it."""
    nc = await nats.connect(stack.nats_url)
    seen: list[tuple[str, str | None, str | None]] = []

    async def tap(msg) -> None:
        hdrs = msg.headers or {}
        seen.append((msg.subject.rpartition(".")[2], hdrs.get(h.GATEWAY), hdrs.get(h.CONN)))

    await nc.subscribe("sb.svc.chat.>", cb=tap)  # copies, beside the workers' queue group
    try:
        async with connect(ws_base(stack) + "/ws/chat?username=orderly") as ws:
            for text in ("one", "two"):
                await ws.send(json.dumps({"message": text}))
            for _ in range(3):  # the join notice and both messages come back
                await asyncio.wait_for(ws.recv(), 5)
        for _ in range(50):
            if [op for op, _, _ in seen].count("send") >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
    mine = [(op, gw, conn) for op, gw, conn in seen if op in ("join", "send")]
    assert [op for op, _, _ in mine] == ["join", "send", "send"], seen
    assert len({(gw, conn) for _, gw, conn in mine}) == 1 and None not in mine[0], mine
