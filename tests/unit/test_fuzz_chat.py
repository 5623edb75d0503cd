"""Fuzzing of chat's handlers (services/chat/handlers.py) called directly: any frame and
any of the headers the gateway sets give a reply or WireError, never another exception."""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.chat.handlers import ChatHandlers
from services.chat.presence import PresenceBook
from services.chat.rooms import Recovery
from tests.unit.test_handlers import MemoryStore as _MemoryStore
from wire import headers as h
from wire.errors import WireError
from wire.frames import Reply, decode_frames, decode_request, request_headers
from wire.subjects import Op


class MemoryStore(_MemoryStore):
    """The tests' store, with head and recover (as RoomStore's, without max_age)."""

    async def read(self, room, *, after=0, before=None, limit=None, max_bytes=None, head=None):
        return await super().read(room, after=after, before=before, limit=limit)

    async def head(self, room):
        events = self.events.get(room, [])
        return events[-1].seq if events else 0

    async def recover(self, room, since, newest, max_bytes=None):
        head = await self.head(room)
        if since == head:
            return Recovery([], True, head)
        if since < head:
            return Recovery(await self.read(room, after=since), True, head)
        return Recovery(await self.read(room, limit=newest), False, head)


FUZZ = settings(
    max_examples=int(os.environ.get("SB_FUZZ_EXAMPLES", "200")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
bodies = (
    st.binary(max_size=100)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.dictionaries(
        st.sampled_from(["message", "text", "sender", "ts"]), json_values, max_size=3
    ).map(lambda v: json.dumps(v).encode())
    | st.integers(1, 3000).map(lambda n: b'{"message":' + b"[" * n + b"]" * n + b"}")
    | st.sampled_from(
        [
            b'{"message":"\\ud800"}',
            b'{"text":"\\udfff"}',
            b'{"message":1e999}',
            b'{"message":' + b"9" * 5000 + b"}",
        ]
    )
)
names = st.none() | st.text(max_size=70) | st.sampled_from(["alice", "system", "a.b", "", " "])
rooms = st.none() | st.text(max_size=70) | st.sampled_from(["general", "r1", "a.b", "*", ">"])
ints = (
    st.none()
    | st.sampled_from(["0", "1", "²", "-1", "1" * 25, "99999999999999999999"])
    | st.integers(0, 2**64).map(str)
)


@FUZZ
@given(
    st.sampled_from(list(Op)),
    bodies,
    names,
    rooms,
    st.none() | st.text(max_size=70),
    ints,
    ints,
    ints,
)
@example(
    Op.SEND, b'{"message":' + b"[" * 900 + b"]" * 900 + b"}", "a", None, None, None, None, None
)
@example(  # an object 254 levels deep: orjson cannot encode the event around it
    Op.PUBLISH, b'{"a":' * 254 + b"1" + b"}" * 254, "a", "r", "p1", None, None, None
)
async def test_chat_ops_answer_or_raise_wire_error(
    op, body, user, room, rid, since, before, limit
) -> None:
    published: list = []

    async def publish(subject: str, payload: bytes) -> None:
        published.append((subject, payload))

    handlers = ChatHandlers(publish, MemoryStore(), PresenceBook(), 50)
    ops = handlers.ops()
    if op not in ops:
        return
    extra = {h.GATEWAY: "gw", h.CONN: "1"}
    if rid is not None:
        extra[h.REQUEST_ID] = quote(rid, safe="")
    for name, value in ((h.SINCE, since), (h.BEFORE, before), (h.LIMIT, limit)):
        if value is not None:
            extra[name] = value
    try:
        hdrs = request_headers("text", user=user, room=room, extra=extra)
    except UnicodeEncodeError:
        return  # lone surrogates: the gateway never has such a name
    req = decode_request(body, hdrs)
    try:
        result = await ops[op](req)
    except WireError:  # a payload too deep to store inside its event too (fuzzing found it)
        return
    payload = result.payload if isinstance(result, Reply) else result
    for frame in decode_frames(payload):
        if frame.kind == "text":
            orjson.loads(frame.data)
    for _, payload in published:
        decode_frames(payload)
