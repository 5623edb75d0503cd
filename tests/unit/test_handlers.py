import json
import time
import zlib

import pytest

from services.binary.handlers import inspect, mixed
from services.chat.handlers import ChatHandlers, check_username
from services.chat.presence import PresenceBook
from services.chat.rooms import Appended, StoredEvent
from services.codec.handlers import echo, inflated_size, inspect_json, make_inflate
from wire import envelope
from wire import headers as h
from wire.errors import ErrorCode, WireError
from wire.frames import BinaryFrame, Request, TextFrame, decode_frames, request_headers


def text(data: str | bytes, **kw) -> Request:
    return Request(data.encode() if isinstance(data, str) else data, "text", **kw)


def binary(data: bytes) -> Request:
    return Request(data, "binary")


def only_text(payload: bytes) -> str:
    (frame,) = decode_frames(payload)
    assert isinstance(frame, TextFrame)
    return frame.data


async def test_echo() -> None:
    assert only_text(await echo(text("héllo"))) == "Echo: héllo"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"a": 1, "b": [1, 2]}', '{"original_message":{"a":1,"b":[1,2]},"response":'
         '"Server received your JSON with 2 fields"}'),
        ('[1,2,3]', '{"original_message":[1,2,3],"response":"Server received your JSON with 3 fields"}'),
        ('"abc"', '{"original_message":"abc","response":"Server received your JSON with 3 fields"}'),
        ('{"é": 1.5e300}', '{"original_message":{"é":1.5e+300},"response":'
         '"Server received your JSON with 1 fields"}'),
        ("{bad", "Error: Invalid JSON format"),
        ("", "Error: Invalid JSON format"),
        ("5", "Error: JSON must be an object, an array or a string"),
        ("null", "Error: JSON must be an object, an array or a string"),
        ("[" * 100_000 + "]" * 100_000, "Error: JSON nested too deeply"),
    ],
)  # fmt: skip
async def test_json_inspection(raw: str, expected: str) -> None:
    assert only_text(await inspect_json(text(raw))) == expected


async def test_inflate_reports_ratio() -> None:
    data = zlib.compress(b"a" * 1000)
    reply = json.loads(only_text(await make_inflate(1 << 20)(binary(data))))
    assert reply == {
        "status": "success",
        "message": f"Received and decompressed {len(data)} bytes into 1000 bytes",
        "compression_ratio": f"{len(data) / 1000:.2f}",
    }


@pytest.mark.parametrize(
    "data", [b"", b"not zlib", zlib.compress(b"x" * 100)[:-3]], ids=["empty", "junk", "truncated"]
)
async def test_inflate_failures(data: bytes) -> None:
    reply = json.loads(only_text(await make_inflate(1 << 20)(binary(data))))
    assert reply == {"status": "error", "message": "Failed to decompress data"}


async def test_inflate_cap_refuses_bombs() -> None:
    bomb = zlib.compress(b"\0" * (8 * 1024 * 1024), 9)
    assert len(bomb) < 16 * 1024
    reply = json.loads(only_text(await make_inflate(1024 * 1024)(binary(bomb))))
    assert reply["status"] == "error" and "exceeds" in reply["message"]


async def test_inflate_past_its_deadline_answers_timeout() -> None:
    # Inflating to the cap takes tens of ms: work the gateway gave up on stops.
    bomb = zlib.compress(b"\0" * (8 * 1024 * 1024), 9)
    asked = time.time_ns() - 2_000_000_000  # taken 2 s ago, with 1 s to answer
    late = Request(bomb, "binary", headers={"Sb-Timeout": "1000"}, received=asked)
    with pytest.raises(WireError) as refused:
        await make_inflate(16 * 1024 * 1024)(late)
    assert refused.value.code is ErrorCode.TIMEOUT


def test_inflated_size_streams_and_ignores_trailing_bytes() -> None:
    data = zlib.compress(b"abc" * 100_000)
    assert inflated_size(data + b"trailing", 1 << 30) == 300_000
    with pytest.raises(OverflowError):
        inflated_size(data, 100_000)


async def test_binary_inspect_and_echo() -> None:
    data = bytes(range(256)) * 3
    frames = decode_frames(await inspect(binary(data)))
    import base64

    expected = base64.b64encode(data).decode()[:20]
    assert frames == [
        TextFrame(
            f"Received binary data of size {len(data)} bytes. First 20 bytes in base64: {expected}..."
        ),
        BinaryFrame(data),
    ]
    short = decode_frames(await inspect(binary(b"ab")))
    assert short[0] == TextFrame(
        "Received binary data of size 2 bytes. First 20 bytes in base64: YWI=..."
    )


async def test_mixed() -> None:
    assert only_text(await mixed(text("hey"))) == "You sent a text message: hey"
    assert only_text(await mixed(binary(b"123"))) == "You sent a binary message of size 3 bytes"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 65,
        "a\x00b",
        "tab\there",
        "bell\x07",
        None,
        "evil\u202egpj.exe",
        "\ud800",
        "system\u200b",
        "sys\xadtem",
        "\u200esystem",
    ],
)
def test_bad_usernames_refused(name: str | None) -> None:
    with pytest.raises(WireError) as exc:
        check_username(name)
    assert exc.value.code == ErrorCode.FORBIDDEN


def test_good_usernames() -> None:
    # zero-width joiner and non-joiner (emoji sequences, Persian): format characters in
    # ordinary names, which the tutorial accepts (they were refused)
    for name in (
        "alice",
        "Anonymous",
        "x" * 64,
        "Zoë 🚀",
        "a b",
        "👩\u200d💻",
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with a ZWNJ
    ):
        assert check_username(name) == name


class MemoryStore:
    """In-memory stand-in for RoomStore (the real one is tested against JetStream)."""

    def __init__(self) -> None:
        self.events: dict[str, list[StoredEvent]] = {}
        self.ids: dict[str, Appended] = {}

    async def append(self, room, kind, payload, msg_id):
        if msg_id in self.ids:
            first = self.ids[msg_id]
            return Appended(first.seq, first.frame, True)
        events = self.events.setdefault(room, [])
        seq = len(events) + 1
        frame = envelope.event(kind, room, seq, payload).encode()
        events.append(StoredEvent(seq, frame))
        result = Appended(seq, frame, False)
        if msg_id is not None:
            self.ids[msg_id] = result
        return result

    async def read(self, room, *, after=0, before=None, limit=None):
        events = [
            e
            for e in self.events.get(room, [])
            if e.seq > after and (before is None or e.seq < before)
        ]
        return events[-limit:] if limit else events


def chat(published: list[tuple[str, bytes]] | None = None) -> tuple[ChatHandlers, MemoryStore]:
    async def publish(subject: str, payload: bytes) -> None:
        if published is None:
            raise AssertionError("must not publish")
        published.append((subject, payload))

    store = MemoryStore()
    return ChatHandlers(publish, store, PresenceBook(), 50), store


async def test_chat_publishes_tutorial_frames() -> None:
    published: list[tuple[str, bytes]] = []
    handlers, store = chat(published)
    ops = handlers.ops()
    from wire.subjects import Op

    assert await ops[Op.JOIN](text("", user="alice")) == b""
    await ops[Op.SEND](text('{"message": "hi"}', user="alice"))
    await ops[Op.SEND](text('{"message": [1, true, null]}', user="alice"))
    await ops[Op.LEAVE](text("", user="alice"))
    assert [s for s, _ in published] == ["sb.room.general"] * 4
    assert [only_text(p) for _, p in published] == [
        '{"message":"alice has joined the chat","sender":"Server","type":"system"}',
        '{"message":"alice: hi","sender":"alice","type":"message"}',
        '{"message":"alice: [1, True, None]","sender":"alice","type":"message"}',
        '{"message":"alice has left the chat","sender":"Server","type":"system"}',
    ]
    # the same events are in the room's history, sequenced
    kinds = [json.loads(e.frame)["type"] for e in store.events["general"]]
    assert kinds == ["join", "message", "message", "leave"]


@pytest.mark.parametrize("raw", ["nope", "[1]", '{"msg": 1}', "5"])
async def test_chat_bad_frames_are_errors(raw: str) -> None:
    from wire.subjects import Op

    handlers, _ = chat()
    with pytest.raises(WireError) as exc:
        await handlers.ops()[Op.SEND](text(raw, user="alice"))
    assert exc.value.code == ErrorCode.BAD_REQUEST


async def test_v2_publish_stamps_sender_and_dedupes() -> None:
    from wire import headers as h
    from wire.subjects import Op

    handlers, store = chat([])
    hdrs = {h.REQUEST_ID: "r1"}
    req = Request(
        b'{"text": "hi", "sender": "mallory"}', "text", user="bob", room="lobby", headers=hdrs
    )
    first = json.loads(only_text(await handlers.ops()[Op.PUBLISH](req)))
    again = json.loads(only_text(await handlers.ops()[Op.PUBLISH](req)))
    assert first == {
        "type": "ack",
        "id": "r1",
        "room": "lobby",
        "payload": {"seq": 1, "duplicate": False},
    }
    assert again["payload"] == {"seq": 1, "duplicate": True}
    (stored,) = store.events["lobby"]
    event = json.loads(stored.frame)
    assert event["payload"]["sender"] == "bob"  # the client's "mallory" was replaced
    assert event["seq"] == 1 and event["type"] == "message"


async def test_same_publish_id_in_two_rooms_is_two_messages() -> None:
    from wire import headers as h
    from wire.subjects import Op

    handlers, store = chat([])
    for room in ("one", "two"):
        req = Request(
            b'{"text": "hi"}', "text", user="bob", room=room, headers={h.REQUEST_ID: "same"}
        )
        ack = json.loads(only_text(await handlers.ops()[Op.PUBLISH](req)))
        assert ack["payload"] == {"seq": 1, "duplicate": False}
    assert len(store.events["one"]) == len(store.events["two"]) == 1


async def test_deep_but_valid_json_is_never_called_invalid() -> None:
    """Around the recursion limit a document may parse but be one level too deep to
    encode with the reply: that is 'nested too deeply', not 'Invalid JSON format'."""
    seen = set()
    for depth in range(800, 1200, 1):
        reply = only_text(await inspect_json(text("[" * depth + "]" * depth)))
        assert reply != "Error: Invalid JSON format", depth
        seen.add("deep" if reply == "Error: JSON nested too deeply" else "ok")
    assert seen == {"ok", "deep"}  # the range crossed the limit


def tutorial_leave(conn: str = "7") -> Request:
    hdrs = request_headers(
        "text", user="alice", room="general", extra={h.GATEWAY: "gw1", h.CONN: conn}
    )
    return Request(b"", "text", user="alice", room="general", headers=hdrs)


async def test_a_tutorial_leave_sent_again_is_told_once() -> None:
    """The gateway sends a closed socket's leave again until chat answers: a first
    attempt handled whose reply was lost must not tell the room twice."""
    published: list[tuple[str, bytes]] = []
    handlers, store = chat(published)
    for _ in range(2):
        assert await handlers.leave(tutorial_leave()) == b""
    await handlers.leave(tutorial_leave("8"))  # another socket of hers: its own notice
    notices = [p for _, p in published if b"alice has left the chat" in p]
    assert len(notices) == 2
    assert [e.frame.count(b'"leave"') for e in store.events["general"]] == [1, 1]


async def test_a_tutorial_leave_is_told_when_the_store_fails() -> None:
    published: list[tuple[str, bytes]] = []
    handlers, store = chat(published)

    async def broken(*args: object) -> Appended:
        raise TimeoutError("JetStream unavailable")

    store.append = broken  # type: ignore[method-assign]
    await handlers.leave(tutorial_leave())
    assert [p for _, p in published if b"alice has left the chat" in p]


class FullStore(MemoryStore):
    """The history store out of room: every write refused 507 (RoomStore.append)."""

    async def append(self, room, kind, payload, msg_id):
        raise WireError(ErrorCode.STORAGE_FULL, "storage full, try again later")

    async def head(self, room):
        return len(self.events.get(room, []))


def full_chat(published: list[tuple[str, bytes]]):
    from prometheus_client import CollectorRegistry

    from wire.metrics import HistoryMetrics

    async def publish(subject: str, payload: bytes) -> None:
        published.append((subject, payload))

    store, registry = FullStore(), CollectorRegistry()
    store.events["general"] = [StoredEvent(1, b"{}"), StoredEvent(2, b"{}")]
    handlers = ChatHandlers(publish, store, PresenceBook(), 50, metrics=HistoryMetrics(registry))
    return handlers, registry


async def test_a_full_store_refuses_publishes_but_lets_members_in_and_out() -> None:
    from wire.subjects import Op

    published: list[tuple[str, bytes]] = []
    handlers, registry = full_chat(published)
    ops = handlers.ops()
    hdrs = {h.REQUEST_ID: "j", h.GATEWAY: "g", h.MEMBER: "7"}
    req = Request(b"", "text", user="ann", room="general", headers=hdrs)
    joined = await ops[Op.ROOM_JOIN](req)  # not stored, but answered: at the room's head
    assert json.loads(only_text(joined.payload))["payload"] == {"seq": 2}
    assert joined.headers[h.SEQ] == "2"
    pub = Request(b'{"text": "x"}', "text", user="ann", room="general", headers=hdrs)
    with pytest.raises(WireError) as refused:
        await ops[Op.PUBLISH](pub)
    assert refused.value.code is ErrorCode.STORAGE_FULL
    left = await ops[Op.ROOM_LEAVE](req)
    assert json.loads(only_text(left.payload))["payload"] == {"seq": 2}
    assert left.headers[h.SEQ] == "3"  # delivery ends after the head, event 2 included
    notices = [json.loads(only_text(p))["message"] for _, p in published]
    assert notices == ["ann has joined the chat", "ann has left the chat"]
    labels = {"service": "chat", "reason": "storage_full"}
    count = registry.get_sample_value
    assert count("switchboard_service_history_unsaved_total", labels | {"event": "join"}) == 1
    assert count("switchboard_service_history_unsaved_total", labels | {"event": "leave"}) == 1


async def test_a_tutorial_message_the_store_refuses_is_delivered_and_its_sender_told() -> None:
    from wire.subjects import Op

    published: list[tuple[str, bytes]] = []
    handlers, registry = full_chat(published)
    reply = await handlers.ops()[Op.SEND](text('{"message": "hi"}', user="bob"))
    assert [only_text(p) for _, p in published] == [
        '{"message":"bob: hi","sender":"bob","type":"message"}'
    ]
    assert json.loads(only_text(reply)) == {
        "message": "not saved to history: storage full, try again later",
        "sender": "Server",
        "type": "error",
    }
    labels = {"service": "chat", "event": "message", "reason": "storage_full"}
    assert registry.get_sample_value("switchboard_service_history_unsaved_total", labels) == 1
