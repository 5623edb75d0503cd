"""/ws/v2 rooms across two gateways: ordering, recovery, dedupe, presence, identity."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from switchboard.localstack import LocalStack, running
from tests.integration.client import closed_with, connect, recv_json
from tests.integration.v2client import V2

SECRET = "test-secret-that-is-at-least-32-characters-long"
API_KEY = "test-api-key-0123456789"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {
        "SB_CHAT_PRESENCE_TTL": "2",
        "SB_GATEWAY_PRESENCE_INTERVAL": "0.5",
        "SB_GATEWAY_JWT_SECRET": SECRET,
        "SB_GATEWAY_JWT_PUBLIC_KEY": RSA_PUBLIC,
        "SB_GATEWAY_API_KEY": API_KEY,
    }
    with running(tmp_path_factory.mktemp("rooms"), gateways=2, env=env) as s:
        yield s


def url(stack: LocalStack, gw: int = 0, **query: str) -> str:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return f"ws://127.0.0.1:{stack.gateways[gw].port}/ws/v2" + (f"?{qs}" if qs else "")


def room_name() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


def token(sub: str, *, key: object = SECRET, alg: str = "HS256", exp: float = 300, **claims) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + exp), **claims}, key, algorithm=alg)


async def test_concurrent_publishers_on_two_gateways_see_one_gap_free_order(stack) -> None:
    room = room_name()
    readers = [await V2.open(url(stack, gw, username=f"reader{gw}")) for gw in (0, 1)]
    writers = [await V2.open(url(stack, gw % 2, username=f"writer{gw}")) for gw in range(4)]
    try:
        for client in readers:
            assert (await client.request("join", room))["type"] == "ack"
        n = 40

        async def write(client: V2) -> list[int]:
            rids = [await client.send("publish", room, text=f"{i}") for i in range(n)]
            return [(await client.reply(rid))["payload"]["seq"] for rid in rids]

        acked = await asyncio.gather(*(write(w) for w in writers))
        all_seqs = sorted(s for seqs in acked for s in seqs)
        assert len(set(all_seqs)) == 4 * n  # every publish got its own seq
        for seqs in acked:
            assert seqs == sorted(seqs)  # one publisher's messages keep their order
        last = all_seqs[-1]
        views = []
        for client in readers:
            events = await client.until_seq(room, last)
            seqs = [e["seq"] for e in events]
            assert seqs == list(range(seqs[0], last + 1)), "a gap or a duplicate"
            views.append([(e["seq"], e["type"], e["payload"].get("text")) for e in events])
        # both readers, on different gateways, saw the same events in the same order
        common = max(v[0][0] for v in views)
        assert [x for x in views[0] if x[0] >= common] == [x for x in views[1] if x[0] >= common]
    finally:
        await asyncio.gather(*(c.close() for c in readers + writers))


async def test_recovery_after_reconnect_is_exactly_once(stack) -> None:
    room = room_name()
    writer = await V2.open(url(stack, 0, username="writer"))
    reader = await V2.open(url(stack, 1, username="reader"))
    try:
        await writer.request("join", room)
        await reader.request("join", room)
        for i in range(5):
            await writer.request("publish", room, text=f"before-{i}")
        seen = await reader.until_seq(
            room, (await writer.request("publish", room, text="last"))["payload"]["seq"]
        )
        last_seen = seen[-1]["seq"]
        await reader.close()
        missed = [
            (await writer.request("publish", room, text=f"away-{i}"))["payload"]["seq"]
            for i in range(7)
        ]
        # Keep publishing while the reader rejoins: the boundary between replay and live.
        back = await V2.open(url(stack, 0, username="reader"))
        rid = await back.send("join", room, since=last_seen)
        during = [
            (await writer.request("publish", room, text=f"during-{i}"))["payload"]["seq"]
            for i in range(7)
        ]
        ack = await back.reply(rid)
        assert ack["payload"]["recovered"] is True
        events = await back.until_seq(room, during[-1])
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(last_seen + 1, during[-1] + 1)), (
            "gap or duplicate at the boundary"
        )
        texts = [e["payload"].get("text") for e in events if e["type"] == "message"]
        assert texts == [f"away-{i}" for i in range(7)] + [f"during-{i}" for i in range(7)]
        assert set(missed) <= set(seqs)
        await back.close()
    finally:
        await writer.close()


async def test_recovery_older_than_retention_returns_newest(stack, tmp_path) -> None:
    room = room_name()
    client = await V2.open(url(stack, 0, username="late"))
    try:
        await client.request("join", room)
        # history keeps 1000 events per room by default: ask for one that never existed
        ack_seq = (await client.request("publish", room, text="x"))["payload"]["seq"]
        await client.request("leave", room)
        rid = await client.send("join", room, since=ack_seq + 100)
        ack = await client.reply(rid)
        assert ack["payload"]["recovered"] is False
        assert client.seqs(room)[-1] >= ack_seq
    finally:
        await client.close()


async def test_history_page_over_the_reply_budget_says_more(stack) -> None:
    """40 events of 60 KB do not fit one reply (1 MiB): the page says more, and paging
    with before gets every event once."""
    room = room_name()
    client = await V2.open(url(stack, 0, username="pager"))
    try:
        big = "x" * 60_000
        seqs = [
            (await client.request("publish", room, text=big, i=i))["payload"]["seq"]
            for i in range(40)
        ]
        got: list[int] = []
        before = None
        while True:
            query = {"limit": 500} if before is None else {"limit": 500, "before": before}
            page = (await client.request("history", room, **query))["payload"]
            got = [e["seq"] for e in page["events"]] + got
            if not page.get("more"):
                break
            assert 0 < len(page["events"]) < 40
            before = page["events"][0]["seq"]
        assert got == seqs
    finally:
        await client.close()


async def test_publish_id_is_deduplicated(stack) -> None:
    room = room_name()
    client = await V2.open(url(stack, 0, username="dup"))
    try:
        await client.request("join", room)
        first = await client.request("publish", room, rid="same-id", text="once")
        again = await client.reply(await client.send("publish", room, rid="same-id", text="twice"))
        assert first["payload"] == {"seq": first["payload"]["seq"], "duplicate": False}
        assert again["payload"] == {"seq": first["payload"]["seq"], "duplicate": True}
        history = await client.request("history", room, limit=50)
        texts = [
            e["payload"].get("text") for e in history["payload"]["events"] if e["type"] == "message"
        ]
        assert texts == ["once"]
    finally:
        await client.close()


async def test_sender_cannot_be_spoofed(stack) -> None:
    room = room_name()
    client = await V2.open(url(stack, 0, username="honest"))
    try:
        await client.request("join", room)
        ack = await client.request("publish", room, text="hi", sender="admin", ts=0)
        events = await client.until_seq(room, ack["payload"]["seq"])
        event = next(e for e in events if e["seq"] == ack["payload"]["seq"])
        assert event["payload"]["sender"] == "honest"
        assert event["payload"]["ts"] > 0
    finally:
        await client.close()


@pytest.mark.parametrize(
    "room", ["a.b", "*", ">", "a b", "sb.room.general", "x" * 65, "", "a\nb", "ü"]
)
async def test_room_name_injection_refused(stack, room) -> None:
    client = await V2.open(url(stack, 0, username="probe"))
    try:
        reply = await client.request("join", room)
        assert reply["type"] == "error" and reply["payload"]["code"] == "400"
        reply = await client.request("publish", room, text="x")
        assert reply["type"] == "error"
        assert (await client.request("ping"))["type"] == "pong"  # still usable
    finally:
        await client.close()


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[]",
        '{"type": "bogus", "id": "1"}',
        '{"type": "join", "room": "r"}',
        '{"type": "history", "id": "1", "room": "r", "payload": {"limit": 0}}',
    ],
)
async def test_malformed_frames_get_error_frames(stack, frame) -> None:
    client = await V2.open(url(stack, 0, username="probe"))
    try:
        await client.ws.send(frame)
        reply = await client.pump()
        assert reply["type"] == "error" and reply["payload"]["code"] == "400"
    finally:
        await client.close()


async def test_presence_across_gateways_and_after_sigkill(stack) -> None:
    room = room_name()
    extra = stack.start_gateway(env={"SB_GATEWAY_ID": f"doomed{uuid.uuid4().hex[:6]}"})
    watcher = await V2.open(url(stack, 0, username="watcher"))
    try:
        await watcher.request("join", room)
        others = [
            await V2.open(url(stack, 1, username="carol")),
            await V2.open(f"ws://127.0.0.1:{extra.port}/ws/v2?username=zombie"),
        ]
        for other in others:
            await other.request("join", room)
        deadline = time.monotonic() + 5
        while True:
            members = (await watcher.request("presence", room))["payload"]["members"]
            if {m["user"] for m in members} == {"watcher", "carol", "zombie"}:
                break
            assert time.monotonic() < deadline, members
            await asyncio.sleep(0.2)
        extra.signal(signal.SIGKILL)
        extra.wait(5)
        # within the TTL (2 s here) the zombie's leave event arrives and presence forgets it
        deadline = time.monotonic() + 8
        while not (
            leaves := [
                e
                for e in watcher.events.get(room, [])
                if e["type"] == "leave" and e["payload"]["user"] == "zombie"
            ]
        ):
            assert time.monotonic() < deadline, "no leave event for the killed gateway's member"
            await watcher.pump(timeout=8)
        assert leaves[0]["payload"]["expired"] is True, leaves  # not a leave of its own
        members = (await watcher.request("presence", room))["payload"]["members"]
        assert {m["user"] for m in members} == {"watcher", "carol"}
        await others[0].close()
    finally:
        await watcher.close()
        stack.processes.remove(extra)


async def test_leaving_and_joining_again_on_one_socket_are_new_events(stack) -> None:
    """Each join is a membership of its own (``Sb-Member``): a leave and a join again on
    the same socket, within the dedupe window, are new events, not duplicates of the
    first ones (which would be dropped, and the ack would carry the old seq)."""
    room = room_name()
    watcher = await V2.open(url(stack, 0, username="watcher"))
    mover = await V2.open(url(stack, 1, username="mover"))
    try:
        await watcher.request("join", room)
        kinds = ("join", "leave", "join", "leave", "join")
        seqs = [(await mover.request(kind, room))["payload"]["seq"] for kind in kinds]
        assert seqs == sorted(set(seqs)), seqs  # five events, each its own seq
        events = await watcher.until_seq(room, seqs[-1])
        moves = [(e["type"], e["seq"]) for e in events if e["payload"].get("user") == "mover"]
        assert moves == list(zip(kinds, seqs, strict=True))
        members = (await watcher.request("presence", room))["payload"]["members"]
        assert sorted(m["user"] for m in members) == ["mover", "watcher"]
        await mover.close()  # the leave written for a closed socket is new too
        last = await watcher.until_seq(room, seqs[-1] + 1)
        assert (last[-1]["type"], last[-1]["payload"]["user"]) == ("leave", "mover")
    finally:
        await watcher.close()


async def test_events_stored_before_a_leave_reach_the_leaver(stack) -> None:
    """A publish and a leave sent back to back: the message (stored first) is delivered
    before the leave's ack; nothing after the leave is."""
    client = await V2.open(url(stack, 0, username="leaver"))
    other = await V2.open(url(stack, 1, username="stayer"))
    try:
        for _ in range(10):  # the race lost the message most of the time
            room = room_name()
            await client.request("join", room)
            await other.request("join", room)
            pid = await client.send("publish", room, text="last words")
            lid = await client.send("leave", room)
            stored = (await client.reply(pid))["payload"]["seq"]
            left = (await client.reply(lid))["payload"]["seq"]
            assert stored in client.seqs(room), client.seqs(room)
            assert left not in client.seqs(room)
            after = (await other.request("publish", room, text="after"))["payload"]["seq"]
            await other.until_seq(room, after)
            await client.request("ping")  # a round trip: anything due has come by now
            assert max(client.seqs(room)) < left
    finally:
        await asyncio.gather(client.close(), other.close())


async def test_a_join_sent_right_after_a_leave_does_not_cost_the_leaver_its_events(stack) -> None:
    """publish, leave, join pipelined on one socket: the join's membership used to
    replace the leaving one on the gateway, so the message stored before the leave
    never came (the new membership starts after it), and the old membership's presence
    entry stayed until the next full snapshot."""
    client = await V2.open(url(stack, 0, username="rejoiner"))
    try:
        for _ in range(5):  # lost every time before
            room = room_name()
            await client.request("join", room)
            pid = await client.send("publish", room, text="last words")
            lid = await client.send("leave", room)
            jid = await client.send("join", room)
            stored = (await client.reply(pid))["payload"]["seq"]
            left = (await client.reply(lid))["payload"]["seq"]
            joined = (await client.reply(jid))["payload"]["seq"]
            assert stored < left < joined
            await client.request("ping")  # a round trip: anything due has come by now
            assert stored in client.seqs(room), client.seqs(room)
            deadline = time.monotonic() + 2  # presence deltas travel apart from replies
            while True:
                members = (await client.request("presence", room))["payload"]["members"]
                if members == [{"user": "rejoiner", "connections": 1}]:
                    break
                assert time.monotonic() < deadline, members
                await asyncio.sleep(0.05)
            await client.request("leave", room)
    finally:
        await client.close()


async def test_tutorial_chat_and_v2_share_general(stack) -> None:
    name = f"tut{uuid.uuid4().hex[:6]}"
    v2 = await V2.open(url(stack, 1, username="modern"))
    try:
        await v2.request("join", "general")
        async with connect(
            f"ws://127.0.0.1:{stack.gateways[0].port}/ws/chat?username={name}"
        ) as old:
            while (await recv_json(old))["message"] != f"{name} has joined the chat":
                pass
            await old.send(json.dumps({"message": "from the tutorial"}))
            # v2 sees it as a sequenced message event
            deadline = time.monotonic() + 5
            while not any(
                e["payload"].get("text") == "from the tutorial"
                for e in v2.events.get("general", [])
            ):
                assert time.monotonic() < deadline
                await v2.pump()
            event = next(
                e for e in v2.events["general"] if e["payload"].get("text") == "from the tutorial"
            )
            assert event["payload"]["sender"] == name
            # and the tutorial client sees the v2 message in its own shape
            await v2.request("publish", "general", text="from v2")
            while True:
                frame = await recv_json(old)
                if frame["type"] == "message" and frame["sender"] == "modern":
                    break
            assert frame == {"message": "modern: from v2", "sender": "modern", "type": "message"}
    finally:
        await v2.close()


async def test_jwt_identity_and_room_permissions(stack) -> None:
    room, other = room_name(), room_name()
    good = token("tok-user", rooms=[room])
    client = await V2.open(url(stack, 0, token=good, username="ignored"))
    try:
        assert (await client.request("join", room))["type"] == "ack"
        ack = await client.request("publish", room, text="signed")
        events = await client.until_seq(room, ack["payload"]["seq"])
        assert events[-1]["payload"]["sender"] == "tok-user"
        denied = await client.request("join", other)
        assert denied["type"] == "error" and denied["payload"]["code"] == "403"
    finally:
        await client.close()
    # uvicorn logs every accepted WebSocket with its query string: not the token, though
    log = stack.gateways[0].log()
    assert "token=[redacted]" in log and good.split(".")[2] not in log


async def test_a_read_only_token_cannot_publish(stack) -> None:
    room = room_name()
    reader = await V2.open(url(stack, 0, token=token("read-only", rooms=[room], publish=[])))
    watcher = await V2.open(url(stack, 1, username="watcher"))
    try:
        await watcher.request("join", room)
        assert (await reader.request("join", room))["type"] == "ack"
        denied = await reader.request("publish", room, text="sneaked in")
        assert denied["type"] == "error", denied
        assert denied["payload"]["code"] == "403"
        assert f"not permitted to publish to {room}" in denied["payload"]["message"]
        # nothing reached the room: the watcher's next event is the one after the join
        ack = await watcher.request("publish", room, text="allowed")
        events = await watcher.until_seq(room, ack["payload"]["seq"])
        assert [e["payload"].get("text") for e in events if e["type"] == "message"] == ["allowed"]
        history = await reader.request("history", room, limit=50)
        assert "sneaked in" not in json.dumps(history)
    finally:
        await asyncio.gather(reader.close(), watcher.close())


async def test_rs256_token_in_subprotocol(stack) -> None:
    rs = token("rsa-user", key=RSA_KEY, alg="RS256")
    ws = await connect(url(stack, 0), subprotocols=["switchboard.v2", f"bearer.{rs}"])
    client = V2(ws)
    try:
        assert ws.subprotocol == "switchboard.v2"
        room = room_name()
        await client.request("join", room)
        ack = await client.request("publish", room, text="rsa")
        events = await client.until_seq(room, ack["payload"]["seq"])
        assert events[-1]["payload"]["sender"] == "rsa-user"
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: token("u", exp=-120), "token expired"),  # beyond the 30 s leeway
        (
            lambda: jwt.encode(
                {"sub": "u", "exp": int(time.time()) + 60},
                "wrong-secret-wrong-secret-wrong-secret!!",
                algorithm="HS256",
            ),
            "invalid token signature",
        ),
        (lambda: "not.a.token", "malformed token"),
        (lambda: token("u" * 65), "claim 'sub': user name is longer than 64 characters"),
        (lambda: token("bad\nname"), "claim 'sub': user name contains control characters"),
        (lambda: token("system"), "user name 'system' is reserved"),
        (
            lambda: jwt.encode({"sub": "u"}, SECRET, algorithm="HS256"),
            "token lacks the 'exp' claim",
        ),
    ],
)
async def test_bad_tokens_close_1008(stack, make, reason) -> None:
    async with connect(url(stack, 0, token=make())) as ws:
        assert await closed_with(ws) == (1008, reason)


def post(
    stack: LocalStack, room: str, body: object, key: str | None = API_KEY, idem: str | None = None
):
    req = urllib.request.Request(
        f"http://127.0.0.1:{stack.gateways[0].port}/api/rooms/{room}/messages",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    if idem:
        req.add_header("Idempotency-Key", idem)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post_raw(
    stack: LocalStack, headers: dict[str, str], body: bytes | Iterator[bytes]
) -> tuple[int, dict]:
    """A POST to the API with exactly these headers; an iterator body goes chunked."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.gateways[0].port, timeout=10)
    try:
        conn.request("POST", "/api/rooms/lobby/messages", body=body, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


async def test_server_side_publish_refuses_bad_requests_without_failing(stack) -> None:
    """Each is a 4xx with a reason, never a 500 (each was, or a 422 after holding the
    whole body in memory)."""
    auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    nested = b"[" * 300 + b"]" * 300
    status, body = await asyncio.to_thread(post_raw, stack, auth, b'{"a":' + nested + b"}")
    assert (status, body["detail"]) == (422, "payload nested too deeply")
    bad_key = {**auth, "Authorization": "Bearer \u00e9t\u00e9"}
    status, body = await asyncio.to_thread(post_raw, stack, bad_key, b'{"text":"x"}')
    assert (status, body["detail"]) == (401, "missing or wrong API key")
    lower = {**auth, "Authorization": f"bearer {API_KEY}"}  # the scheme in any case
    status, body = await asyncio.to_thread(post_raw, stack, lower, b'{"text":"x"}')
    assert status == 201, body
    empty_key = {**auth, "Idempotency-Key": ""}  # was taken as no key: a 201
    status, body = await asyncio.to_thread(post_raw, stack, empty_key, b'{"text":"x"}')
    assert (status, body["detail"]) == (422, "Idempotency-Key must be 1-64 printable characters")
    big = b'{"text":"' + b"x" * 300_000 + b'"}'
    status, body = await asyncio.to_thread(post_raw, stack, auth, big)
    assert (status, body["detail"]) == (413, "body over 262144 bytes")
    chunks = iter([big[i : i + 65536] for i in range(0, len(big), 65536)])
    status, body = await asyncio.to_thread(post_raw, stack, auth, chunks)  # no length given
    assert (status, body["detail"]) == (413, "body over 262144 bytes")
    assert "Traceback" not in stack.gateways[0].log()


async def test_server_side_publish(stack) -> None:
    room = room_name()
    client = await V2.open(url(stack, 1, username="listener"))
    try:
        await client.request("join", room)
        status, body = await asyncio.to_thread(
            post, stack, room, {"text": "from the backend"}, API_KEY, "k1"
        )
        assert status == 201 and body["room"] == room and body["duplicate"] is False
        status2, body2 = await asyncio.to_thread(
            post, stack, room, {"text": "again"}, API_KEY, "k1"
        )
        assert status2 == 201 and body2["seq"] == body["seq"] and body2["duplicate"] is True
        events = await client.until_seq(room, body["seq"])
        assert events[-1]["payload"] == {
            "text": "from the backend",
            "sender": "system",
            "ts": events[-1]["payload"]["ts"],
        }
        assert (await asyncio.to_thread(post, stack, room, {"text": "x"}, "wrong"))[0] == 401
        assert (await asyncio.to_thread(post, stack, room, {"text": "x"}, None))[0] == 401
        assert (await asyncio.to_thread(post, stack, "a.b", {"text": "x"}))[0] == 422
        assert (await asyncio.to_thread(post, stack, room, [1, 2]))[0] == 422
    finally:
        await client.close()
