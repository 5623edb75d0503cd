"""Every NATS subject Switchboard uses, built only by the functions here.

    sb.svc.<service>.<op>              request to a worker (queue group = service name)
    sb.svc.<service>.batch             frames of one stateless op, batched (wire.batch)
    sb.svc.<service>.at.<instance>.<op>  an ordered op (ORDERED_OPS) to one replica: where
                                       a gateway sends a connection's requests of them
                                       once a reply has said which replica (queue group
                                       <service>, one member, taking every op's on one
                                       subscription: sb.svc.<service>.at.<instance>.*)
    sb.svc.binary.chunk.<file>         an upload's chunks, to the one binary replica that
                                       owns the upload (queue group binary, one member)
    sb.gw.<gateway>.<conn>.<seq>       reply to request <seq> of connection <conn>
    sb.gw.<gateway>.b.<n>              reply to the gateway's batch <n>
    sb.room.<room>                     the tutorial chat's frames, to every gateway (core)
    sb.hist.<room>                     a room's events, stored in the JetStream stream ROOMS
    sb.live.<room>                     a room's stored events, republished by JetStream once
                                       committed, in stream order (core; gateways subscribe)
    sb.presence.<gateway>              a gateway's member list heartbeat (every chat replica)
    sb.sync.presence                   a chat replica that starts or reconnects asks every
                                       gateway for its full member list now (not at the
                                       next snapshot)
    sb.stats.<component>.<instance>    an instance's live figures, every second (wire.stats)
    $SRV.PING.<service>                nats.micro discovery (built by nats.micro itself)
    $JS.API.DIRECT.GET.<stream>        JetStream's direct get (binary asks nats-server to send
                                       a download's chunks straight to the gateway; chat
                                       finds a room's first event after a time)
    $JS.API.STREAM.INFO.<stream>       JetStream's stream info, paged by subject (chat lists
                                       the rooms to trim)
    _INBOX.<id>                        a gateway's inbox for one upload
    _INBOX.<id>.<read>                 the chunks of one read of a download (binary has
                                       nats-server deliver them there); also JetStream's
                                       ack of chunk <read> a binary replica stored

Tokens are validated so that no client input can smuggle ``.``, ``*`` or ``>`` into a
subject and reach somebody else's traffic.
"""

from __future__ import annotations

import functools
import re
from enum import StrEnum

PREFIX = "sb"

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_INBOX = re.compile(r"_INBOX\.[A-Za-z0-9_-]{1,64}(\.[0-9]{1,12})?")


class Service(StrEnum):
    CHAT = "chat"
    BINARY = "binary"
    CODEC = "codec"


class Op(StrEnum):
    # codec
    ECHO = "echo"
    JSON = "json"
    INFLATE = "inflate"
    # binary
    INSPECT = "inspect"
    MIXED = "mixed"
    # chat: the tutorial's /ws/chat
    JOIN = "join"
    LEAVE = "leave"
    SEND = "send"
    # chat: rooms (/ws/v2, server-side publish)
    ROOM_JOIN = "room_join"
    ROOM_LEAVE = "room_leave"
    PUBLISH = "publish"
    HISTORY = "history"
    PRESENCE = "presence"
    # codec: client-chosen compression (/ws/codec)
    TRANSFORM = "transform"
    # binary: inspection report (/ws/inspect) and files (/ws/files)
    DESCRIBE = "describe"
    FILE_UPLOAD = "file_upload"
    FILE_INFO = "file_info"
    FILE_READ = "file_read"
    FILE_LIST = "file_list"
    FILE_DELETE = "file_delete"


SERVICE_OPS: dict[Service, tuple[Op, ...]] = {
    Service.CODEC: (Op.ECHO, Op.JSON, Op.INFLATE, Op.TRANSFORM),
    Service.BINARY: (
        Op.INSPECT,
        Op.MIXED,
        Op.DESCRIBE,
        Op.FILE_UPLOAD,
        Op.FILE_INFO,
        Op.FILE_READ,
        Op.FILE_LIST,
        Op.FILE_DELETE,
    ),
    Service.CHAT: (
        Op.JOIN,
        Op.LEAVE,
        Op.SEND,
        Op.ROOM_JOIN,
        Op.ROOM_LEAVE,
        Op.PUBLISH,
        Op.HISTORY,
        Op.PRESENCE,
    ),
}


# Operations whose effects must happen in the client's order (a chat message after its
# sender's join, one sender's messages in the order sent). Pipelined to a queue group,
# two replicas would handle them side by side; so a gateway sends a connection's
# requests of these one at a time until a reply names the replica that handled them
# (headers.INSTANCE), then pipelines them to that replica (pinned_subject), which takes
# them on one subscription (pinned_wildcard) and handles each connection's in order,
# across these operations (services.runner.OrderedOps).
ORDERED_OPS = frozenset({Op.JOIN, Op.SEND, Op.ROOM_JOIN, Op.ROOM_LEAVE, Op.PUBLISH})
# Ordered operations a worker skips (answers 408) when their turn comes after the
# gateway stopped waiting (Sb-Timeout), and refuses (503 busy) past its queue bound: the
# gateway has told the client it failed and dropped what it held for it (a join's
# membership; a publish is sent again by the client, with its id; a tutorial chat
# message got its error frame). The others must happen: leaves, and the tutorial chat's
# join (its leave follows); there is at most one of each per membership, so they are
# bounded by the connections.
EXPIRING_OPS = frozenset({Op.ROOM_JOIN, Op.PUBLISH, Op.SEND})


def is_token(value: str) -> bool:
    """True if ``value`` can stand as one subject token (1-64 of ``[A-Za-z0-9_-]``)."""
    return _TOKEN.fullmatch(value) is not None


def _token(value: str, what: str) -> str:
    if not is_token(value):
        raise ValueError(f"invalid {what} {value!r}: 1-64 characters of [A-Za-z0-9_-]")
    return value


def service_subject(service: Service, op: Op) -> str:
    return f"{PREFIX}.svc.{service}.{op}"


@functools.lru_cache(maxsize=1024)  # per request on the hot path: built once per replica
def pinned_subject(service: Service, instance: str, op: Op) -> str:
    """Request of an ordered op (:data:`ORDERED_OPS`) to one instance of ``service``."""
    return f"{PREFIX}.svc.{service}.at.{_token(instance, 'instance id')}.{op}"


def pinned_wildcard(service: Service, instance: str) -> str:
    """Every ordered op's :func:`pinned_subject` of one instance: the instance takes
    them with one subscription, so a connection's requests of different ops reach it
    in the order they were sent (a subscription per op would each be drained by a task
    of its own, one subject's backlog before another's)."""
    return f"{PREFIX}.svc.{service}.at.{_token(instance, 'instance id')}.*"


def pinned_op(subject: str) -> Op | None:
    """The op a :func:`pinned_subject` names, None if it names none."""
    try:
        return Op(subject.rpartition(".")[2])
    except ValueError:
        return None


def batch_subject(service: Service) -> str:
    """Where a gateway sends batches of frames for one of ``service``'s stateless ops."""
    return f"{PREFIX}.svc.{service}.batch"


def service_wildcard(service: Service) -> str:
    return f"{PREFIX}.svc.{service}.>"


def upload_subject(file_id: str) -> str:
    """Where the chunks of one upload go: only the binary replica that owns the upload
    subscribes (services/binary/files.py), so its chunks reach one writer, in order."""
    return f"{PREFIX}.svc.{Service.BINARY}.chunk.{_token(file_id, 'file id')}"


def direct_get_subject(stream: str) -> str:
    """JetStream's direct get API for ``stream``: answered by nats-server itself, to the
    request's reply subject (wire.files.direct_get_request)."""
    return f"$JS.API.DIRECT.GET.{_token(stream, 'stream name')}"


def stream_info_subject(stream: str) -> str:
    """JetStream's stream info API for ``stream`` (chat pages through its subjects)."""
    return f"$JS.API.STREAM.INFO.{_token(stream, 'stream name')}"


def is_inbox(subject: str) -> bool:
    """True if ``subject`` is one inbox (``_INBOX.<id>``, as nats-py's ``new_inbox()``
    makes them) or one delivery subject under it (:func:`delivery_subject`): where a
    worker may have nats-server deliver on a gateway's behalf."""
    return _INBOX.fullmatch(subject) is not None


def delivery_subject(inbox: str, read: int) -> str:
    """Where read number ``read`` of a download with inbox ``inbox`` is delivered."""
    return f"{inbox}.{read}"


def delivery_wildcard(inbox: str) -> str:
    return f"{inbox}.*"


def delivery_read(subject: str) -> int | None:
    """The read number of a :func:`delivery_subject`, or None if it has none."""
    last = subject.rsplit(".", 1)[-1]
    return int(last) if last.isascii() and last.isdigit() and len(last) <= 12 else None


def reply_prefix(gateway: str) -> str:
    """Prefix of every reply subject of one gateway (``reply_subject`` appends to it)."""
    return f"{PREFIX}.gw.{_token(gateway, 'gateway id')}."


def reply_subject(prefix: str, conn: int, seq: int) -> str:
    return f"{prefix}{conn}.{seq}"


def batch_reply_prefix(prefix: str) -> str:
    """Prefix of a gateway's batch reply subjects, from its :func:`reply_prefix`."""
    return f"{prefix}b."


def batch_reply_subject(batch_prefix: str, batch: int) -> str:
    return f"{batch_prefix}{batch}"


def reply_wildcard(gateway: str) -> str:
    return f"{PREFIX}.gw.{_token(gateway, 'gateway id')}.>"


def parse_reply_subject(subject: str) -> tuple[int, int]:
    """``sb.gw.<gateway>.<conn>.<seq>`` -> ``(conn, seq)``; ValueError if malformed."""
    _, conn, seq = subject.rsplit(".", 2)
    return int(conn), int(seq)


def reply_caller(reply: str) -> str:
    """Who is waiting for a request's reply: its reply subject without the last token.
    ``sb.gw.<gateway>.<conn>.<seq>`` -> ``sb.gw.<gateway>.<conn>`` (one connection);
    an ``nc.request()`` inbox -> that client's inbox prefix."""
    return reply.rpartition(".")[0] or reply


def room_subject(room: str) -> str:
    return f"{PREFIX}.room.{_token(room, 'room name')}"


def room_wildcard() -> str:
    return f"{PREFIX}.room.>"


ROOMS_STREAM = "ROOMS"


def history_subject(room: str) -> str:
    return f"{PREFIX}.hist.{_token(room, 'room name')}"


def history_wildcard() -> str:
    return f"{PREFIX}.hist.>"


def live_subject(room: str) -> str:
    return f"{PREFIX}.live.{_token(room, 'room name')}"


def live_wildcard() -> str:
    return f"{PREFIX}.live.>"


def room_of(subject: str) -> str:
    """The room token of a ``sb.room|hist|live.<room>`` subject."""
    return subject.rsplit(".", 1)[1]


def presence_subject(gateway: str) -> str:
    return f"{PREFIX}.presence.{_token(gateway, 'gateway id')}"


def presence_wildcard() -> str:
    return f"{PREFIX}.presence.*"


def presence_sync_subject() -> str:
    return f"{PREFIX}.sync.presence"


def stats_subject(component: str, instance: str) -> str:
    """Where one gateway or worker instance publishes its live figures (wire.stats)."""
    return f"{PREFIX}.stats.{_token(component, 'component')}.{_token(instance, 'instance id')}"


def stats_wildcard() -> str:
    return f"{PREFIX}.stats.>"


def discovery_subject(verb: str, service: Service) -> str:
    """nats.micro's ``$SRV.<verb>.<service>`` (PING, INFO, STATS)."""
    return f"$SRV.{verb}.{service}"
