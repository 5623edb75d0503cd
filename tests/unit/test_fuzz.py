"""Property-based fuzzing (Hypothesis) of every decoder in ``wire/`` and of the gateway's
frame handling: whatever bytes arrive — from a client socket or from NATS — no exception
escapes but the documented ones.

Documented exceptions, per decoder:

- ``wire.frames.decode_frames``: ``FrameDecodeError``;
- ``wire.batch.decode_request``: ``BatchDecodeError``; ``wire.batch.decode_reply``:
  ``FrameDecodeError``;
- ``wire.frames.decode_request``: ``ValueError`` (``UnicodeDecodeError``) for a
  percent-encoded header that is not UTF-8; ``Request.text``: ``UnicodeDecodeError``;
- ``wire.envelope.decode_client``, ``wire.files.decode_client``, ``unpack_chunk`` and
  ``stored_item``, ``wire.codec.parse_request``: ``WireError``;
- ``wire.presence.Heartbeat.decode``: ``ValueError``, ``KeyError``, ``TypeError`` (what its
  caller, ``services/chat/service.py``, catches);
- ``wire.subjects.parse_reply_subject`` and the subject builders: ``ValueError``;
- ``wire.names.check_username``: ``WireError``;
- ``wire.errors.from_headers``, ``wire.headers.trace_id`` / ``age_seconds``,
  ``gateway.rooms.seq_header``, ``wire.envelope.request_id``: nothing.

The gateway's side is driven through its real ASGI apps and hub with a NATS stand-in:
frames from a client, replies and room events from NATS, handshakes with any query string
and subprotocols. Each failing example found here stays below as a regression test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gateway.auth import Authenticator
from gateway.connection import Connection
from gateway.endpoints import TUTORIAL_ENDPOINTS, EndpointSpec, Route
from gateway.hub import Hub
from gateway.relay import RelayEndpoint
from gateway.rooms import Member, seq_header
from gateway.settings import GatewaySettings
from gateway.v2 import V2Endpoint
from wire import batch, codec, envelope, errors, frames, names, subjects
from wire import files as wf
from wire import headers as h
from wire.errors import ErrorCode, WireError
from wire.frames import BinaryFrame, FrameDecodeError, TextFrame
from wire.metrics import GatewayMetrics
from wire.presence import Heartbeat
from wire.subjects import Op

# Bounded so the file runs in seconds; SB_FUZZ_EXAMPLES=5000 for a deeper search.
EXAMPLES = int(os.environ.get("SB_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
FUZZ_SLOW = settings(FUZZ, max_examples=max(1, EXAMPLES // 2))  # whole-endpoint runs

# -- strategies ---------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson encodes
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
room_like = st.sampled_from(
    ["general", "r1", "a.b", "*", ">", "sb.room.>", "", " ", "x" * 65]
) | st.text(max_size=70)
id_like = st.sampled_from(["a", "r1", "x" * 64, "x" * 65, "", "a b", "é"]) | st.text(max_size=70)


@st.composite
def envelopes(draw) -> Any:
    """Envelope-shaped JSON: mostly the right keys, with any values."""
    frame: dict[str, Any] = {}
    if draw(st.booleans()):
        frame["type"] = draw(
            st.sampled_from([*envelope.CLIENT_TYPES, "message", "ack"]) | json_values
        )
    if draw(st.booleans()):
        frame["id"] = draw(id_like | json_values)
    if draw(st.booleans()):
        frame["room"] = draw(room_like | json_values)
    if draw(st.booleans()):
        payload = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "since": json_values,
                    "before": json_values,
                    "limit": st.integers(-5, 1000) | json_values,
                    "text": json_values,
                    "sender": json_values,
                },
            )
            | json_values
        )
        frame["payload"] = payload
    return frame


def nested(depth: int, kind: str = "{") -> str:
    return ('{"a":' * depth + "1" + "}" * depth) if kind == "{" else "[" * depth + "]" * depth


client_text = (
    st.text(max_size=200)
    | envelopes().map(lambda f: orjson.dumps(f).decode())
    | json_values.map(lambda v: orjson.dumps(v).decode())
    | st.integers(1, 3000).map(lambda n: nested(n))
    | st.integers(1, 3000).map(lambda n: nested(n, "["))
)
header_names = st.sampled_from(
    [
        h.SENT_AT,
        h.FRAME,
        h.USER,
        h.ROOM,
        h.TRACEPARENT,
        h.HANDLED_AT,
        h.SEQ,
        h.FIRST_SEQ,
        h.SINCE,
        h.BEFORE,
        h.LIMIT,
        h.MORE,
        h.REQUEST_ID,
        h.ERROR,
        h.ERROR_CODE,
        h.STATUS,
        h.OFFSET,
        h.END,
        h.STREAM_SEQUENCE,
    ]
)
header_values = (
    st.text(max_size=40)
    | st.sampled_from(["%ff", "%", "%zz", "²", "٣", "-1", "1" * 5000, "503", "408", "400", "999"])
    | st.integers(-(10**30), 10**30).map(str)
)
headers_maps = st.dictionaries(header_names | st.text(max_size=10), header_values, max_size=6)
wire_frames = st.lists(
    st.builds(TextFrame, st.text(max_size=50)) | st.builds(BinaryFrame, st.binary(max_size=50)),
    max_size=5,
)
payloads = st.binary(max_size=300) | wire_frames.map(frames.encode_frames)


# -- wire/ decoders ----------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=400))
def test_decode_frames_raises_only_frame_decode_error(data: bytes) -> None:
    try:
        decoded = frames.decode_frames(data)
    except FrameDecodeError:
        return
    assert frames.encode_frames(decoded) == data  # whatever decodes re-encodes to itself


batch_headers = st.fixed_dictionaries(
    {},
    optional={
        batch.OP: st.sampled_from([str(op) for op in Op]) | st.text(max_size=8),
        batch.KEYS: st.lists(st.from_regex(r"[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True)).map(" ".join)
        | st.text(max_size=20),
        batch.TRACES: st.text(max_size=60),
        batch.ERRORS: st.text(max_size=40)
        | st.lists(st.tuples(st.integers(-1, 5), st.sampled_from(list(ErrorCode)), st.text())).map(
            lambda es: " ".join(f"{i}:{c}:{d.replace(' ', '%20')}" for i, c, d in es)
        ),
    },
)


@FUZZ
@given(payloads, batch_headers)
def test_batch_request_decoder_raises_only_batch_decode_error(data: bytes, hdrs: dict) -> None:
    try:
        op, items = batch.decode_request(data, hdrs)
    except batch.BatchDecodeError:
        return
    assert op in batch.BATCH_OPS
    assert len(items) == len(hdrs[batch.KEYS].split())


@FUZZ
@given(st.binary(max_size=300), st.none() | batch_headers, st.integers(0, 6))
def test_batch_reply_decoder_raises_only_frame_decode_error(
    data: bytes, hdrs: dict | None, count: int
) -> None:
    try:
        results = batch.decode_reply(data, hdrs, count)
    except FrameDecodeError:
        return
    assert len(results) == count


@FUZZ
@given(
    st.sampled_from(sorted(batch.BATCH_OPS)),
    st.lists(st.tuples(st.binary(max_size=40), st.booleans()), min_size=1, max_size=8),
    st.lists(
        st.binary(max_size=40)
        | st.text(max_size=30).map(lambda t: WireError(ErrorCode.BAD_REQUEST, t)),
        min_size=1,
        max_size=8,
    ),
)
def test_batch_round_trip(op: Op, sent: list, answers: list) -> None:
    items = [
        (batch.key(i, i * 7), data, text, h.new_traceparent())
        for i, (data, text) in enumerate(sent)
    ]
    payload, hdrs = batch.encode_request(op, items)
    got_op, got = batch.decode_request(payload, hdrs)
    assert got_op == op
    assert [(g.data, g.frame == "text", g.traceparent) for g in got] == [
        (data, text, trace) for _, data, text, trace in items
    ]
    reply, reply_headers = batch.encode_reply(answers)
    assert batch.decode_reply(reply, reply_headers, len(answers)) == answers


@FUZZ
@given(st.binary(max_size=100), st.none() | headers_maps)
@example(b"", {h.STATUS: "1" * 5000})  # int() refuses over 4,300 digits: ValueError
def test_stored_item(data: bytes, hdrs: dict[str, str] | None) -> None:
    """A message at a download's inbox: a chunk whose range is its payload's, an end of
    batch, or WireError."""
    try:
        item = wf.stored_item(hdrs, data)
    except WireError:
        return
    if item.kind == "chunk":
        assert 0 <= item.offset and item.end - item.offset == len(data) and item.seq >= 0
    else:
        assert item.status >= 0 and (hdrs or {}).get(h.STATUS) is not None


@FUZZ
@given(wire_frames)
def test_frames_round_trip(items: list[frames.Frame]) -> None:
    assert frames.decode_frames(frames.encode_frames(items)) == items


@FUZZ
@given(st.binary(max_size=100), st.none() | headers_maps)
@example(b"", {h.SINCE: "²"})  # str.isdigit() is true for "²"; int("²") raised ValueError
@example(b"", {h.USER: "%ff"})  # percent-encoded bytes that are not UTF-8
def test_decode_request(data: bytes, hdrs: dict[str, str] | None) -> None:
    try:
        req = frames.decode_request(data, hdrs)
    except UnicodeDecodeError:  # documented: a percent-encoded header that is not UTF-8
        assert any("%" in v for v in (hdrs or {}).values())
        return
    for name in (h.SINCE, h.BEFORE, h.LIMIT, h.SEQ, "absent"):
        value = req.int_header(name)
        assert value is None or (isinstance(value, int) and value >= 0)
        try:
            req.header(name)
        except UnicodeDecodeError:
            pass
    try:
        assert req.text == data.decode()
    except UnicodeDecodeError:
        pass


def check_decoded(msg: envelope.ClientMessage) -> None:
    """What decode_client returns is safe to route: ids and rooms are valid tokens."""
    assert envelope.request_id({"id": msg.id}) == msg.id
    if isinstance(msg, envelope.Ping):
        return
    assert subjects.is_token(msg.room)
    subjects.room_subject(msg.room)  # never raises for a decoded room
    match msg:
        case envelope.Publish(payload=payload):
            assert len(payload) <= envelope.MAX_PAYLOAD_BYTES
            assert isinstance(orjson.loads(payload), dict)
        case envelope.History(limit=limit, before=before):
            assert 1 <= limit <= envelope.MAX_HISTORY
            assert before is None or 0 <= before <= 2**53
        case envelope.Join(since=since):
            assert since is None or 0 <= since <= 2**53


@FUZZ
@given(client_text | st.binary(max_size=200))
@example(
    '{"type":"publish","id":"a","room":"r","payload":' + nested(300) + "}"
)  # orjson re-encodes at most 254 levels: JSONEncodeError (a TypeError) escaped
def test_decode_client_raises_only_wire_error(data: str | bytes) -> None:
    try:
        msg = envelope.decode_client(data)
    except WireError as exc:
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE)
        return
    check_decoded(msg)


@FUZZ
@given(envelopes())
def test_decode_client_envelopes(frame: Any) -> None:
    text = orjson.dumps(frame)
    try:
        msg = envelope.decode_client(text)
    except WireError:
        return
    check_decoded(msg)
    assert msg.type == frame["type"]


@FUZZ
@given(json_values | st.text() | st.binary())
def test_request_id_never_raises(frame: Any) -> None:
    rid = envelope.request_id(frame)
    assert rid is None or (1 <= len(rid) <= 64 and rid.isascii())


heartbeat_json = st.fixed_dictionaries(
    {"gateway": json_values, "full": json_values},
    optional={
        "joined": st.lists(st.lists(json_values, max_size=4), max_size=3) | json_values,
        "left": st.lists(st.lists(json_values, max_size=3), max_size=3) | json_values,
    },
)


@FUZZ
@given(st.binary(max_size=200) | (heartbeat_json | json_values).map(orjson.dumps))
def test_heartbeat_decode_raises_only_what_chat_catches(data: bytes) -> None:
    try:
        beat = Heartbeat.decode(data)
    except (ValueError, KeyError, TypeError):
        return
    assert isinstance(beat.gateway, str)
    assert all(isinstance(c, int) for c, _, _ in beat.joined)
    assert all(isinstance(c, int) for c, _ in beat.left)


@FUZZ
@given(
    st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=64),
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 2**40), st.text(max_size=10), st.text(max_size=10))),
    st.lists(st.tuples(st.integers(0, 2**40), st.text(max_size=10))),
)
def test_heartbeat_round_trip(gw: str, full: bool, joined: list, left: list) -> None:
    beat = Heartbeat(gw, full, joined, left)
    assert Heartbeat.decode(beat.encode()) == beat


@FUZZ
@given(st.none() | headers_maps)
def test_from_headers_never_raises(hdrs: dict[str, str] | None) -> None:
    error = errors.from_headers(hdrs)
    if error is not None:
        assert error.code in set(ErrorCode) and error.description
        errors.close_code(error.code)  # every code has a close code


@FUZZ
@given(
    st.text(max_size=80) | st.builds(lambda c, s: f"sb.gw.g.{c}.{s}", header_values, header_values)
)
def test_parse_reply_subject_raises_only_value_error(subject: str) -> None:
    try:
        cid, seq = subjects.parse_reply_subject(subject)
    except ValueError:
        return
    assert isinstance(cid, int) and isinstance(seq, int)


@FUZZ
@given(st.integers(0, 2**63), st.integers(0, 2**63))
def test_reply_subject_round_trip(cid: int, seq: int) -> None:
    prefix = subjects.reply_prefix("gw-1")
    assert subjects.parse_reply_subject(subjects.reply_subject(prefix, cid, seq)) == (cid, seq)


@FUZZ
@given(st.text(max_size=80))
def test_subject_tokens_refuse_wildcards(value: str) -> None:
    for build in (subjects.room_subject, subjects.history_subject, subjects.live_subject):
        try:
            subject = build(value)
        except ValueError:
            assert not subjects.is_token(value)
            continue
        assert subject.rsplit(".", 1)[1] == value
        assert not ({".", "*", ">", " "} & set(value))


@FUZZ
@given(
    st.none() | st.text(max_size=80), st.none() | header_values, st.none() | st.integers(0, 2**64)
)
@example(None, "9" * 4000, None)  # int of 4000 digits / 1e9: OverflowError escaped
@example(None, "-" + "9" * 4000, 0)
def test_headers_helpers_never_raise(tp: str | None, stamp: str | None, now: int | None) -> None:
    tid = h.trace_id(tp)
    assert tid is None or len(tid) == 32
    age = h.age_seconds(stamp, now)
    assert age is None or age >= 0.0


@FUZZ
@given(st.none() | st.text(max_size=80))
def test_check_username_raises_only_wire_error(name: str | None) -> None:
    try:
        assert names.check_username(name) == name
    except WireError as exc:
        assert exc.code == ErrorCode.FORBIDDEN
        return
    assert name and len(name) <= names.MAX_USERNAME
    quote(name, safe="")  # an accepted name always fits in a header (no lone surrogates)


@FUZZ
@given(st.none() | headers_maps | json_values, header_names)
@example({h.SEQ: "²"}, h.SEQ)
def test_seq_header_never_raises(hdrs: Any, name: str) -> None:
    value = seq_header(hdrs, name)
    assert value is None or (isinstance(value, int) and value >= 0)


@FUZZ
@given(
    st.binary(max_size=60)
    | st.builds(
        lambda op, fmt, level, data: f"{op}:{fmt}{level}".encode() + b"\n" + data,
        st.sampled_from(["compress", "decompress", "COMPRESS", ""]) | st.text(max_size=6),
        st.sampled_from(["zlib", "gzip", "zstd", "lz4"]) | st.text(max_size=6),
        st.sampled_from(["", ":", ":0", ":19", ":-1", ":--1", ":-", ":+1", ": 1", ":1_0"])
        | st.text(max_size=5).map(lambda t: ":" + t),
        st.binary(max_size=10),
    )
)
@example(b"compress:zstd:--1\nx")  # "--1".lstrip("-").isdigit(): int("--1") raised ValueError
def test_codec_parse_request_raises_only_wire_error(frame: bytes) -> None:
    try:
        req = codec.parse_request(frame)
    except WireError as exc:
        assert exc.code == ErrorCode.BAD_REQUEST
        return
    low, high, _ = codec.LEVELS[req.format]
    assert low <= req.level <= high
    assert frame[req.start - 1 : req.start] == b"\n"


files_json = st.fixed_dictionaries(
    {"type": st.sampled_from([*wf.CLIENT_TYPES, "hello"]) | json_values},
    optional={
        "id": id_like | json_values,
        "name": st.text(max_size=300) | json_values,
        "size": st.integers(-5, 2**64 - 1) | json_values,
        "sha256": st.sampled_from(["0" * 64, "A" * 64, "g" * 64]) | json_values,
        "file": st.sampled_from(["a" * 26, "../../etc/passwd", "a.*.>"]) | json_values,
        "offset": st.integers(-5, 2**64 - 1) | json_values,
        "window": st.integers(-5, 2**64 - 1) | json_values,
    },
)


@FUZZ
@given(st.text(max_size=200) | (files_json | json_values).map(lambda v: orjson.dumps(v).decode()))
def test_files_decode_client_raises_only_wire_error(text: str) -> None:
    try:
        msg = wf.decode_client(text)
    except WireError as exc:
        assert exc.code == ErrorCode.BAD_REQUEST
        return
    for name in ("file", "id"):
        value = getattr(msg, name, None)
        assert value is None or (value.isascii() and " " not in value)
    if isinstance(msg, wf.Upload):
        assert len(msg.sha256) == 64 and msg.size >= 0


@FUZZ
@given(st.binary(max_size=40), st.none() | headers_maps, header_names)
def test_files_chunks_and_headers(frame: bytes, hdrs: dict[str, str] | None, name: str) -> None:
    try:
        offset, data = wf.unpack_chunk(frame)
    except WireError:
        assert len(frame) < 8
    else:
        assert wf.pack_chunk(offset, bytes(data)) == frame
    value = wf.header_int(hdrs, name)
    assert value is None or value >= 0
    assert wf.request_id(hdrs) is None or isinstance(wf.request_id(hdrs), str)


# -- the gateway's frame handling -----------------------------------------------------


class FakeNats:
    """Enough of nats.aio.client.Client for the hub, relay and rooms."""

    is_connected = True
    is_closed = False
    max_payload = 8 * 1024 * 1024

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, str, dict[str, str]]] = []

    async def publish(self, subject, data=b"", reply="", headers=None) -> None:
        self.published.append((subject, data, reply, headers or {}))

    async def subscribe(self, subject, cb=None, **kwargs):
        return FakeSub()

    def requests(self) -> list[tuple[str, bytes, str, dict[str, str]]]:
        return [p for p in self.published if p[0].startswith("sb.svc.")]


class FakeSub:
    async def unsubscribe(self) -> None:
        pass


@dataclass
class Msg:
    subject: str
    data: bytes
    headers: dict[str, str] | None = None


def make_hub(**overrides: Any) -> tuple[Hub, GatewaySettings, GatewayMetrics]:
    settings = GatewaySettings(id="fuzz", **overrides)
    metrics = GatewayMetrics(CollectorRegistry())
    hub = Hub(settings, metrics)
    hub.nc = FakeNats()  # type: ignore[assignment]
    hub.live.nc = hub.nc  # type: ignore[assignment]
    return hub, settings, metrics


def check_asgi(message: dict[str, Any]) -> None:
    """Every message the gateway hands to uvicorn is one uvicorn accepts."""
    kind = message["type"]
    assert kind in ("websocket.accept", "websocket.send", "websocket.close"), message
    if kind == "websocket.send":
        text, data = message.get("text"), message.get("bytes")
        assert (text is None) != (data is None), message
        if text is not None:
            assert isinstance(text, str)
            text.encode()  # valid UTF-8 on the wire
        else:
            assert isinstance(data, bytes)
    elif kind == "websocket.close":
        assert isinstance(message["code"], int) and 1000 <= message["code"] < 5000
        assert len(message.get("reason", "").encode()) <= 123


ws_frames = st.lists(
    st.builds(lambda t: {"type": "websocket.receive", "text": t}, client_text)
    | st.builds(lambda b: {"type": "websocket.receive", "bytes": b}, st.binary(max_size=100)),
    max_size=20,
)


def drain(conn: Connection) -> list[dict[str, Any]]:
    out = list(conn.out)
    conn.out.clear()
    for message in out:
        message.pop("sb.hop", None)
        check_asgi(message)
    return out


def settle(hub: Hub, conn: Connection) -> list[dict[str, Any]]:
    """Time out whatever is still in flight (as the sweeper would), then check that every
    request of the connection was answered, in order, and nothing is left parked."""
    for seq in list(conn.pending):
        hub._fail(conn, seq, WireError(ErrorCode.TIMEOUT, "service timed out"))
    assert not conn.pending and not conn.parked
    assert conn.next_out == conn.next_seq
    return drain(conn)


async def run_relay(
    spec: EndpointSpec,
    received: list[dict],
    replies: list[tuple],
    strays: list[tuple],
    batching: bool = False,
) -> None:
    hub, settings, metrics = make_hub(batch=batching)
    relay = RelayEndpoint(spec, hub, settings, metrics)
    conn = relay.connection("10.0.0.1", "fuzzer" if spec.chat else None, None)
    queue = [*received, {"type": "websocket.disconnect"}]

    async def receive() -> dict:
        return queue.pop(0)

    await asyncio.wait_for(relay._receive(conn, receive), 5)
    if hub._flushing is not None:  # frames held for a batch leave at the end of the pass
        await hub._flushing
    # Each frame is either relayed byte for byte to its worker, alone or in a batch, or
    # refused locally.
    requests = hub.nc.requests()
    frames: list[tuple[str, Op, bytes]] = []
    for subject, data, _, hdrs in requests:
        if subject.endswith(".batch"):
            op, items = batch.decode_request(data, hdrs)
            frames += [(subject, op, item.data) for item in items]
        else:
            frames.append((subject, Op(subject.rsplit(".", 1)[1]), data))
    routed: list[tuple[Route, bytes]] = []
    refused = 0
    for frame in received:
        route = spec.text if "text" in frame else spec.binary
        if route is None:
            refused += 1
            continue
        routed.append((route, frame["text"].encode() if "text" in frame else frame["bytes"]))
    if any(route.ordered for route, _ in routed):
        # One at a time until a reply names a replica: the first goes, the rest wait.
        assert len(frames) == 1 and len(conn.held or ()) == len(routed) - 1
    else:
        assert len(frames) == len(routed)
    for (subject, op, data), (route, want) in zip(frames, routed, strict=False):
        assert subject in (route.subject, route.batch) and op == route.op
        assert data == want
    assert conn.next_seq == len(received)
    # Any reply from NATS, well-formed or not, ends as frames or an error frame; stray
    # subjects are dropped.
    for (_, _, reply, _), (payload, hdrs) in zip(requests, replies, strict=False):
        await hub._on_reply(Msg(reply, payload, hdrs))
    for subject, payload, hdrs in strays:
        await hub._on_reply(Msg(subject, payload, hdrs))
    out = settle(hub, conn)
    errors_out = [m for m in out if m.get("text", "").startswith("Error: expected a")]
    if spec.error_shape.__name__ == "_text_error":
        assert len(errors_out) == refused


@FUZZ_SLOW
@given(
    st.sampled_from(TUTORIAL_ENDPOINTS),
    ws_frames,
    st.lists(st.tuples(payloads, st.none() | headers_maps), max_size=20),
    st.lists(st.tuples(st.text(max_size=40), payloads, st.none() | headers_maps), max_size=3),
    st.booleans(),
)
def test_relay_endpoints_handle_any_frames_and_replies(
    spec, received, replies, strays, batching
) -> None:
    asyncio.run(run_relay(spec, received, replies, strays, batching))


async def run_relay_asgi(spec: EndpointSpec, received: list[dict], **limits: Any) -> list[dict]:
    """The whole ASGI app of a relay endpoint (receiver in the app's task, sender in its
    own, gateway.relay.both), until the client disconnects or the gateway closes."""
    hub, settings, metrics = make_hub(**limits)
    relay = RelayEndpoint(spec, hub, settings, metrics)
    queue = [{"type": "websocket.connect"}, *received]
    sent: list[dict] = []

    async def receive() -> dict:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(0.01)  # let the sender catch up, then the peer leaves
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict) -> None:
        check_asgi(message)
        sent.append(message)

    scope = {"type": "websocket", "query_string": b"username=fuzzer", "headers": []}
    await asyncio.wait_for(relay(scope, receive, send), 5)
    assert hub.connections == {} and hub.admission.count == 0  # nothing leaked
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    return sent


@FUZZ_SLOW
@given(st.sampled_from(TUTORIAL_ENDPOINTS), ws_frames)
def test_relay_asgi_app_ends_cleanly(spec, received) -> None:
    # Nothing answers here: a short request timeout (the chat examples waited out 2 s
    # each: 40 s for the test)
    sent = asyncio.run(run_relay_asgi(spec, received, request_timeout=0.2))
    assert sent[0] == {"type": "websocket.accept"}


def test_relay_asgi_app_ends_when_the_gateway_closes() -> None:
    """The sender ends first (a rate-limit close): the receiver is stopped, the app
    returns normally instead of raising CancelledError."""
    frames = [{"type": "websocket.receive", "text": f"f{i}"} for i in range(10)]
    limits = {"rate_frames": 1e-6, "rate_frames_burst": 1, "rate_close_after": 3}
    binary = TUTORIAL_ENDPOINTS[2]  # text frames there are answered by the gateway itself
    sent = asyncio.run(run_relay_asgi(binary, frames, **limits))
    assert sent[-1] == {"type": "websocket.close", "code": 1008, "reason": "rate limit exceeded"}


async def run_v2(query: bytes, protocols: list[str], received: list[dict], replies: list) -> None:
    hub, settings, metrics = make_hub(jwt_secret="k" * 32, max_rooms=3)
    v2 = V2Endpoint(hub, hub.live, Authenticator(settings), settings, metrics)
    queue = [{"type": "websocket.connect"}, *received, {"type": "websocket.disconnect"}]
    sent: list[dict] = []

    async def receive() -> dict:
        if len(queue) == 1:  # before the disconnect: let the sender catch up
            await asyncio.sleep(0)
        return queue.pop(0)

    async def send(message: dict) -> None:
        check_asgi(message)
        sent.append(message)

    scope = {"type": "websocket", "query_string": query, "subprotocols": protocols, "headers": []}
    await asyncio.wait_for(v2(scope, receive, send), 5)
    assert sent and sent[0]["type"] == "websocket.accept"
    if len(sent) > 1 and sent[1]["type"] == "websocket.close":
        assert sent[1]["code"] == 1008  # refused identity: a reason, no crash
        return
    for message in sent[1:]:
        if message["type"] == "websocket.send":
            frame = json.loads(message["text"])
            assert frame["type"] in ("error", "pong"), frame
            if frame["type"] == "error":
                assert frame["payload"]["code"] in set(ErrorCode)
    assert hub.connections == {} and hub.admission.count == 0  # nothing leaked
    assert hub.live.members == {}


@FUZZ_SLOW
@given(
    st.binary(max_size=60)
    | st.builds(lambda u: b"username=" + quote(u).encode(), st.text(max_size=70))
    | st.builds(lambda t: b"token=" + quote(t).encode(), st.text(max_size=200)),
    st.lists(
        st.text(max_size=30) | st.builds(lambda t: "bearer." + t, st.text(max_size=50)), max_size=3
    ),
    ws_frames,
    st.lists(st.tuples(payloads, st.none() | headers_maps), max_size=5),
)
@example(
    b"username=u",
    [],
    [
        {
            "type": "websocket.receive",
            "text": '{"type":"publish","id":"a","room":"r","payload":' + nested(300) + "}",
        }
    ],
    [],
)
def test_v2_endpoint_handles_any_handshake_and_frames(query, protocols, received, replies) -> None:
    asyncio.run(run_v2(query, protocols, received, replies))


async def run_v2_frames(received: list[dict], replies: list[tuple]) -> None:
    """/ws/v2 frames against a connection: every frame gets exactly one answer (an error
    or pong now, or a request to chat whose reply, whatever it is, is delivered)."""
    hub, settings, metrics = make_hub(max_rooms=3)
    v2 = V2Endpoint(hub, hub.live, Authenticator(settings), settings, metrics)
    conn = v2.connection("10.0.0.1", "fuzzer", None)
    identity = v2.auth.identify(None, "fuzzer")
    queue = [*received, {"type": "websocket.disconnect"}]

    async def receive() -> dict:
        return queue.pop(0)

    await asyncio.wait_for(v2._receive_v2(conn, identity, receive), 5)
    assert conn.next_seq == len(received)  # one request or one local answer per frame
    requests = hub.nc.requests()
    local = [conn.parked.get(seq) for seq in range(conn.next_seq)] + list(conn.out)
    for answer in local:
        for message in answer if isinstance(answer, list) else []:
            assert json.loads(message["text"])["type"] in ("error", "pong")
    for (_, _, reply, _), (payload, hdrs) in zip(requests, replies, strict=False):
        await hub._on_reply(Msg(reply, payload, hdrs))
    await asyncio.sleep(0)  # history fills spawned by joins
    settle(hub, conn)
    for room in list(hub.live.members):  # room events, well-formed or not
        for payload, hdrs in replies:
            await hub.live._on_event(Msg(subjects.live_subject(room), payload, hdrs))
        drain(conn)


@FUZZ_SLOW
@given(
    st.lists(
        st.builds(
            lambda t: {"type": "websocket.receive", "text": t},
            client_text | envelopes().map(json.dumps),
        )
        | st.builds(lambda b: {"type": "websocket.receive", "bytes": b}, st.binary(max_size=20)),
        max_size=20,
    ),
    st.lists(st.tuples(payloads, st.none() | headers_maps), max_size=20),
)
@example(
    [{"type": "websocket.receive", "text": '{"type":"join","id":"j","room":"r"}'}],
    [(b"", {h.SEQ: "²"})],
)
def test_v2_frames_get_exactly_one_answer(received, replies) -> None:
    asyncio.run(run_v2_frames(received, replies))


@FUZZ
@given(
    st.text(max_size=12, alphabet=string.ascii_letters + ".*>"), payloads, st.none() | headers_maps
)
@example("r", b"\xff\xfe", {h.SEQ: "1"})  # a live event that is not UTF-8 raised in the callback
def test_room_events_from_nats_never_raise(room: str, payload: bytes, hdrs) -> None:
    async def run() -> None:
        hub, settings, metrics = make_hub()
        relay = RelayEndpoint(TUTORIAL_ENDPOINTS[4], hub, settings, metrics)  # /ws/chat
        conn = relay.connection("10.0.0.1", "fuzzer", "general")
        await hub.join_room(conn, "general")
        await hub._on_room_event(Msg(f"sb.room.{room or 'general'}", payload, hdrs))
        await hub._on_room_event(Msg("sb.room.general", payload, hdrs))
        drain(conn)
        v2 = V2Endpoint(hub, hub.live, Authenticator(settings), settings, metrics)
        other = v2.connection("10.0.0.2", "fuzzer", None)
        member = Member(other, "r", lambda m: None)
        member.syncing = False
        await hub.live.add(member)
        await hub.live._on_event(Msg("sb.live.r", payload, hdrs))
        drain(other)

    asyncio.run(run())


@FUZZ
@given(
    st.text(max_size=200)
    | st.builds(
        lambda header, body, sig: ".".join(
            base64.urlsafe_b64encode(part).decode().rstrip("=")
            for part in (orjson.dumps(header), orjson.dumps(body), sig)
        ),
        json_values
        | st.fixed_dictionaries({"alg": st.sampled_from(["HS256", "RS256", "none", "x"])}),
        json_values,
        st.binary(max_size=40),
    ),
    st.none() | st.text(max_size=20),
)
def test_tokens_raise_only_wire_error(token: str, username: str | None) -> None:
    auth = Authenticator(GatewaySettings(id="fuzz", jwt_secret="k" * 32))
    try:
        identity = auth.identify(token, username)
    except WireError as exc:
        assert exc.code == ErrorCode.UNAUTHORIZED
        return
    assert identity.user
