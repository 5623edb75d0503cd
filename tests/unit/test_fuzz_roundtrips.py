"""Round trips of wire/ encoders not covered by tests/unit/test_fuzz.py."""

from __future__ import annotations

import os
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wire import codec, envelope, errors
from wire import files as wf
from wire import headers as h
from wire.errors import ErrorCode, WireError
from wire.frames import Request, decode_request, request_headers

FUZZ = settings(
    max_examples=int(os.environ.get("SB_FUZZ_EXAMPLES", "200")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
no_surrogates = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)


@FUZZ
@given(
    st.sampled_from(list(codec.Direction)),
    st.sampled_from(list(codec.Format)),
    st.binary(max_size=100),
    st.data(),
)
def test_codec_request_round_trip(direction, fmt, data, draw) -> None:
    low, high, default = codec.LEVELS[fmt]
    level = draw.draw(st.none() | st.integers(low, high))
    frame = codec.encode_request(direction, fmt, data, level)
    req = codec.parse_request(frame)
    assert (req.direction, req.format, req.level) == (
        direction,
        fmt,
        default if level is None else level,
    )
    assert frame[req.start :] == data


@FUZZ
@given(st.integers(0, 2**64 - 1), st.binary(max_size=64))
def test_chunk_round_trip(offset: int, data: bytes) -> None:
    got_offset, got = wf.unpack_chunk(wf.pack_chunk(offset, data))
    assert (got_offset, bytes(got)) == (offset, data)


@FUZZ
@given(no_surrogates, no_surrogates, st.none() | no_surrogates, no_surrogates)
def test_request_headers_round_trip(user: str, room: str, rid: str | None, body: str) -> None:
    extra = {h.REQUEST_ID: envelope.request_id({"id": rid}) or "x"} if rid else None
    hdrs = request_headers("text", user=user, room=room, extra=extra)
    assert all("\r" not in v and "\n" not in v and v == v.strip() for v in hdrs.values())
    req = decode_request(body.encode(), hdrs)
    assert (req.user, req.room, req.text, req.frame) == (user, room, body, "text")


@FUZZ
@given(st.sampled_from(list(ErrorCode)), no_surrogates.filter(bool))
def test_error_headers_round_trip(code: ErrorCode, description: str) -> None:
    error = WireError(code, description)
    assert errors.from_headers(error.headers()) == error
    errors.close_code(code)


@FUZZ
@given(st.text(max_size=200))
def test_close_reason_fits(text: str) -> None:
    try:
        raw = text.encode()
    except UnicodeEncodeError:
        return
    reason = errors.close_reason(text)
    assert len(reason.encode()) <= errors.MAX_CLOSE_REASON and raw.startswith(reason.encode())


@FUZZ
@given(
    st.text(string.ascii_lowercase + "234567", min_size=26, max_size=26),
    no_surrogates,
    st.integers(0, 2**62),
    st.text("0123456789abcdef", min_size=64, max_size=64),
    st.none() | st.tuples(st.integers(1, 2**31), st.integers(1, 2**31)),
)
def test_file_info_and_upload_record_round_trip(fid, name, size, sha, dims) -> None:
    info = wf.FileInfo(fid, name, size, sha, width=dims and dims[0], height=dims and dims[1])
    assert wf.FileInfo.from_dict(info.to_dict()) == info
    record = wf.UploadRecord(fid, "u", name, size, sha, 1024, "now", {"k": [1, "v"]})
    assert wf.UploadRecord.decode(record.encode()) == record


@FUZZ
@given(
    st.none()
    | st.text(max_size=30)
    | st.integers(-(10**30), 10**30).map(str)
    | st.sampled_from(["1" * 400, "9" * 4000, "+5", " 5 ", "1_0", "٣"])
)
def test_timeout_seconds_never_raises(value) -> None:
    """Found by fuzzing: "1" * 400 raised OverflowError in ms / 1000."""
    seconds = h.timeout_seconds(value)
    assert seconds is None or seconds > 0
    req = Request(b"", "text", headers={} if value is None else {h.TIMEOUT: value})
    req.deadline  # noqa: B018
