"""Who may use the tutorial's /ws/chat and what name they get.

By default (anonymous users allowed) /ws/chat is the tutorial's: any ``?username=``. With
``SB_GATEWAY_ALLOW_ANONYMOUS=false`` it needs a token, as /ws/v2 does, and the user is the
token's ``sub``; the token's room claims apply to the room ``general``. The server-side
publisher's name (``SB_GATEWAY_SYSTEM_SENDER``) is nobody's to take."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import jwt
import pytest

from switchboard.localstack import LocalStack, Process, running
from tests.integration.client import closed_with, connect, recv_json, sample, scrape

SECRET = "chat-auth-secret-that-is-at-least-32-characters"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("chat-auth"), env={"SB_GATEWAY_JWT_SECRET": SECRET}) as s:
        yield s


@pytest.fixture(scope="module")
def closed(stack: LocalStack) -> Process:
    """A second gateway that admits no anonymous users."""
    gateway = stack.start_gateway(env={"SB_GATEWAY_ALLOW_ANONYMOUS": "false"})
    stack.wait_ready(gateway)
    return gateway


def token(sub: str, **claims: object) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300, **claims}, SECRET, "HS256")


def chat(gateway: Process, **query: str) -> str:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return f"ws://127.0.0.1:{gateway.port}/ws/chat" + (f"?{qs}" if qs else "")


def chat_sends(gateway: Process) -> float:
    text = scrape(gateway.port)  # type: ignore[arg-type]
    return sample(text, "switchboard_gateway_request_duration_seconds_count", service="chat")


async def settled_chat_sends(gateway: Process, quiet: float = 0.5) -> float:
    """:func:`chat_sends` once it has not moved for ``quiet`` seconds: a join's own
    request is counted when its reply comes, which can be after its "joined" notice, and
    an earlier test's socket may still be leaving."""
    value = chat_sends(gateway)
    for _ in range(20):
        await asyncio.sleep(quiet)
        now = chat_sends(gateway)
        if now == value:
            return value
        value = now
    raise AssertionError("the gateway's chat requests never settled")


async def test_without_anonymous_users_chat_needs_a_token(stack, closed) -> None:
    async with connect(chat(closed, username="alice")) as ws:
        assert await closed_with(ws) == (1008, "a token is required")
    async with connect(f"ws://127.0.0.1:{closed.port}/ws/v2?username=alice") as ws:
        assert await closed_with(ws) == (1008, "a token is required")


async def test_a_tokens_subject_is_the_chat_user(stack, closed) -> None:
    name = f"tok-{uuid.uuid4().hex[:6]}"
    async with connect(chat(closed, token=token(name), username="someone-else")) as ws:
        frame = await recv_json(ws)
        assert frame == {
            "message": f"{name} has joined the chat",
            "sender": "Server",
            "type": "system",
        }
        await ws.send(json.dumps({"message": "hi"}))
        while frame["type"] != "message":
            frame = await recv_json(ws)
        assert frame == {"message": f"{name}: hi", "sender": name, "type": "message"}


async def test_a_token_for_other_rooms_cannot_join_general(stack, closed) -> None:
    async with connect(chat(closed, token=token("carol", rooms=["elsewhere"]))) as ws:
        assert await closed_with(ws) == (1008, "not permitted to join general")


async def test_a_read_only_token_gets_an_error_frame_per_message(stack, closed) -> None:
    name = f"ro-{uuid.uuid4().hex[:6]}"
    async with connect(chat(closed, token=token(name, rooms=["general"], publish=[]))) as ws:
        assert (await recv_json(ws))["message"] == f"{name} has joined the chat"
        before = await settled_chat_sends(closed)
        await ws.send(json.dumps({"message": "may I?"}))
        frame = await recv_json(ws)
        while frame["type"] == "system":  # someone else's join or leave in general
            frame = await recv_json(ws)
        assert frame == {
            "message": "not permitted to publish to general",
            "sender": "Server",
            "type": "error",
        }
        assert await settled_chat_sends(closed) == before  # chat never heard of it


async def test_the_system_senders_name_is_reserved(stack) -> None:
    gateway = stack.gateways[0]
    async with connect(chat(gateway, username="system")) as ws:
        assert await closed_with(ws) == (1008, "user name 'system' is reserved")
    async with connect(f"ws://127.0.0.1:{gateway.port}/ws/v2?username=system") as ws:
        assert await closed_with(ws) == (1008, "user name 'system' is reserved")
    async with connect(chat(gateway, username="alice")) as ws:  # anyone else, as before
        assert (await recv_json(ws))["message"] == "alice has joined the chat"


async def test_a_token_offered_as_a_subprotocol_is_selected(stack, closed) -> None:
    """Browsers cannot set headers, so they offer the token as ``bearer.<jwt>``, and
    fail the handshake (1006) unless the server selects one of the protocols they
    offered. /ws/chat authenticated such a client but selected none; /ws/v2 too when
    ``switchboard.v2`` was not offered with it."""
    name = f"sp-{uuid.uuid4().hex[:6]}"
    offer = f"bearer.{token(name)}"
    async with connect(chat(closed), subprotocols=[offer]) as ws:
        assert ws.subprotocol == offer
        assert (await recv_json(ws))["message"] == f"{name} has joined the chat"
    v2 = f"ws://127.0.0.1:{closed.port}/ws/v2"
    async with connect(v2, subprotocols=[offer]) as ws:
        assert ws.subprotocol == offer
    async with connect(v2, subprotocols=["switchboard.v2", offer]) as ws:
        assert ws.subprotocol == "switchboard.v2"  # its own protocol first, as before
