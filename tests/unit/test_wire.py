import time

import orjson
import pytest

from wire import headers as h
from wire.errors import CloseCode, ErrorCode, WireError, close_code, from_headers
from wire.frames import (
    BinaryFrame,
    FrameDecodeError,
    TextFrame,
    decode_frames,
    decode_request,
    encode_frames,
    encode_text,
    request_headers,
)
from wire.subjects import (
    Op,
    Service,
    delivery_read,
    delivery_subject,
    delivery_wildcard,
    direct_get_subject,
    is_inbox,
    is_token,
    parse_reply_subject,
    pinned_op,
    pinned_subject,
    pinned_wildcard,
    reply_prefix,
    reply_subject,
    reply_wildcard,
    room_subject,
    service_subject,
)


def test_service_subjects() -> None:
    assert service_subject(Service.CODEC, Op.ECHO) == "sb.svc.codec.echo"
    assert room_subject("general") == "sb.room.general"
    pinned = pinned_subject(Service.CHAT, "5pL2fWgRBB9FB6OCFpyQ1k", Op.SEND)
    assert pinned == "sb.svc.chat.at.5pL2fWgRBB9FB6OCFpyQ1k.send"
    for bad in ("", "a.b", ">", "*"):  # a reply header names the instance: checked
        with pytest.raises(ValueError):
            pinned_subject(Service.CHAT, bad, Op.SEND)
        with pytest.raises(ValueError):
            pinned_wildcard(Service.CHAT, bad)
    wildcard = pinned_wildcard(Service.CHAT, "5pL2fWgRBB9FB6OCFpyQ1k")
    assert wildcard == "sb.svc.chat.at.5pL2fWgRBB9FB6OCFpyQ1k.*"
    assert pinned_op(pinned) == Op.SEND and pinned_op(wildcard[:-1] + "nope") is None


def test_reply_subject_round_trip() -> None:
    prefix = reply_prefix("gw1")
    subject = reply_subject(prefix, 42, 7)
    assert subject == "sb.gw.gw1.42.7"
    assert parse_reply_subject(subject) == (42, 7)
    assert reply_wildcard("gw1") == "sb.gw.gw1.>"


def test_only_an_inbox_may_receive_a_download() -> None:
    """binary has nats-server deliver a file's chunks where the gateway says: one inbox,
    nothing that reaches rooms, services or a wildcard."""
    assert is_inbox("_INBOX.5pL2fWgRBB9FB6OCFpyQ1k")
    delivery = delivery_subject("_INBOX.5pL2fWgRBB9FB6OCFpyQ1k", 12)
    assert is_inbox(delivery) and delivery_read(delivery) == 12
    assert delivery_wildcard("_INBOX.x") == "_INBOX.x.*"
    assert delivery_read("_INBOX.x") is None and delivery_read("_INBOX.x.²") is None
    for bad in ("", "_INBOX", "_INBOX.", "_INBOX.>", "_INBOX.a.b", "_INBOX.*", "sb.room.x",
                "sb.svc.binary.file_read", "_INBOX.a\r\n", "x_INBOX.a", "_INBOX.a.1.2", "_INBOX.a.*"):  # fmt: skip
        assert not is_inbox(bad), bad
    assert direct_get_subject("OBJ_SB_FILES") == "$JS.API.DIRECT.GET.OBJ_SB_FILES"
    with pytest.raises(ValueError):
        direct_get_subject("OBJ.>")


@pytest.mark.parametrize("bad", ["", "a.b", "*", ">", "a b", "x" * 65, "é", "a\n"])
def test_room_names_cannot_inject_subject_tokens(bad: str) -> None:
    assert not is_token(bad)
    with pytest.raises(ValueError):
        room_subject(bad)


def test_frames_round_trip() -> None:
    frames = [TextFrame("héllo"), BinaryFrame(b"\x00\xff" * 3), TextFrame(""), BinaryFrame(b"")]
    assert decode_frames(encode_frames(frames)) == frames
    assert decode_frames(b"") == []
    assert decode_frames(encode_text("x")) == [TextFrame("x")]


@pytest.mark.parametrize(
    "payload",
    [b"t\x00\x00", b"t\x00\x00\x00\x05ab", b"x\x00\x00\x00\x00", b"t\x00\x00\x00\x01\xff"],
)
def test_malformed_frames_raise(payload: bytes) -> None:
    with pytest.raises(FrameDecodeError):
        decode_frames(payload)


def test_request_headers_and_decode() -> None:
    hdrs = request_headers("binary", user="alice", room="general")
    req = decode_request(b"\x01", hdrs)
    assert req.frame == "binary" and req.user == "alice" and req.room == "general"
    assert h.trace_id(req.traceparent) is not None
    assert h.age_seconds(req.sent_at) is not None
    assert decode_request(b"x", None).frame == "text"


def test_request_deadline_from_its_timeout_counted_from_receipt() -> None:
    assert decode_request(b"x", {}).deadline is None
    received = time.time_ns() - 300_000_000  # it waited 0.3 s in a queue
    req = decode_request(b"x", {h.TIMEOUT: "2000"}, received)
    assert req.deadline is not None
    assert 1.6 < req.deadline - time.monotonic() <= 1.7
    assert decode_request(b"x", {h.TIMEOUT: "soon"}).deadline is None


def test_traceparent_format() -> None:
    tp = h.new_traceparent()
    version, trace, span, flags = tp.split("-")
    assert (version, flags) == ("00", "01")
    assert len(trace) == 32 and len(span) == 16
    assert h.trace_id(tp) == trace
    assert h.trace_id("garbage") is None


def test_errors_from_headers() -> None:
    err = WireError(ErrorCode.FORBIDDEN, "nope")
    assert from_headers(err.headers()) == err
    assert from_headers({"Status": "503"}).code == ErrorCode.UNAVAILABLE
    assert from_headers({h.ERROR_CODE: "999", h.ERROR: "x"}).code == ErrorCode.INTERNAL
    assert from_headers({h.HANDLED_AT: "1"}) is None
    assert from_headers(None) is None


def test_close_codes() -> None:
    assert close_code(ErrorCode.FORBIDDEN) == CloseCode.POLICY_VIOLATION == 1008
    assert close_code(ErrorCode.TOO_LARGE) == 1009
    assert close_code(ErrorCode.UNAVAILABLE) == 1013
    assert all(close_code(code) for code in ErrorCode)


@pytest.mark.parametrize("user", [" padded ", "tab\t", "a\r\nSb-Room: other", "Zoë 🚀", "%41"])
def test_user_header_survives_any_characters(user: str) -> None:
    hdrs = request_headers("text", user=user, room="general")
    assert all("\r" not in v and "\n" not in v for v in hdrs.values())
    assert decode_request(b"", hdrs).user == user


def test_reconnect_backoff_stays_bounded_for_ever() -> None:
    from wire.natsconn import backoff

    for attempt in (1, 10, 1023, 1024, 10**6):
        assert 0 <= backoff(attempt) <= 2.0


def _nested(depth: int) -> dict:
    """A payload object ``depth`` levels deep (the object itself is level 1)."""
    payload: dict = {"a": 1}
    for _ in range(depth - 1):
        payload = {"a": payload}
    return payload


@pytest.mark.parametrize("depth", [200, 252, 253, 254, 255, 300])
def test_a_publish_the_gateway_accepts_can_be_stored(depth: int) -> None:
    """The gateway's depth check (publish_body) matches what chat encodes: the payload
    inside the stored event frame, one level deeper. Found by fuzzing: at 254 levels the
    gateway accepted a publish whose event orjson could not encode (chat: 500)."""
    from wire import envelope

    payload = _nested(depth)
    try:
        body = envelope.publish_body(payload)
    except WireError as exc:
        assert (exc.code, exc.description) == (ErrorCode.BAD_REQUEST, "payload nested too deeply")
        accepted = False
    else:
        assert orjson.loads(body) == payload
        event = envelope.event("message", "r1", 1, orjson.loads(body))  # must not raise
        assert orjson.loads(event)["payload"] == payload
        accepted = True
    assert accepted == (depth <= 253)


@pytest.mark.parametrize("value", ["1" + "0" * 312, "9" * 400, "-" + "9" * 400])
def test_a_huge_timeout_header_is_malformed_not_an_exception(value: str) -> None:
    assert h.timeout_seconds(value) is None


def test_jetstream_out_of_room_is_storage_full() -> None:
    from nats.js.errors import APIError, ServiceUnavailableError

    from wire.errors import storage_full

    full = ServiceUnavailableError(code=503, err_code=10023, description="insufficient resources")
    error = storage_full(full)
    assert error is not None and error.code == ErrorCode.STORAGE_FULL
    assert close_code(error.code) == CloseCode.TRY_AGAIN_LATER
    exceeded = APIError(code=400, err_code=10047, description="storage resources exceeded")
    assert storage_full(exceeded) is not None
    assert storage_full(APIError(code=404, err_code=10059, description="stream not found")) is None
    assert storage_full(TimeoutError()) is None


async def test_a_worker_without_jetstream_says_what_to_check() -> None:
    """nats-py's own error for JetStream off is 'ServiceUnavailableError: code=None'."""
    from wire.natsconn import JetStreamUnavailable, with_jetstream

    tries = []

    async def setup() -> None:
        tries.append(1)
        if len(tries) < 3:
            raise TimeoutError("starting")

    await with_jetstream(setup, attempts=5, delay=0)
    assert len(tries) == 3  # again while it starts

    async def never() -> None:
        raise TimeoutError("nats: no response from stream")

    with pytest.raises(JetStreamUnavailable, match="is JetStream enabled on the NATS server"):
        await with_jetstream(never, attempts=3, delay=0)
