"""Every NATS subject Switchboard uses, built only by the functions here.

    sb.svc.<service>.<op>              request to a worker (queue group = service name)
    sb.gw.<gateway>.<conn>.<seq>       reply to request <seq> of connection <conn>
    sb.room.<room>                     fan-out of a room's events to every gateway
    $SRV.PING.<service>                nats.micro discovery (built by nats.micro itself)

Tokens are validated so that no client input can smuggle ``.``, ``*`` or ``>`` into a
subject and reach somebody else's traffic.
"""

from __future__ import annotations

import re
from enum import StrEnum

PREFIX = "sb"

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
    # chat
    JOIN = "join"
    LEAVE = "leave"
    SEND = "send"


SERVICE_OPS: dict[Service, tuple[Op, ...]] = {
    Service.CODEC: (Op.ECHO, Op.JSON, Op.INFLATE),
    Service.BINARY: (Op.INSPECT, Op.MIXED),
    Service.CHAT: (Op.JOIN, Op.LEAVE, Op.SEND),
}


def is_token(value: str) -> bool:
    """True if ``value`` can stand as one subject token (1-64 of ``[A-Za-z0-9_-]``)."""
    return _TOKEN.fullmatch(value) is not None


def _token(value: str, what: str) -> str:
    if not is_token(value):
        raise ValueError(f"invalid {what} {value!r}: 1-64 characters of [A-Za-z0-9_-]")
    return value


def service_subject(service: Service, op: Op) -> str:
    return f"{PREFIX}.svc.{service}.{op}"


def service_wildcard(service: Service) -> str:
    return f"{PREFIX}.svc.{service}.>"


def reply_prefix(gateway: str) -> str:
    """Prefix of every reply subject of one gateway (``reply_subject`` appends to it)."""
    return f"{PREFIX}.gw.{_token(gateway, 'gateway id')}."


def reply_subject(prefix: str, conn: int, seq: int) -> str:
    return f"{prefix}{conn}.{seq}"


def reply_wildcard(gateway: str) -> str:
    return f"{PREFIX}.gw.{_token(gateway, 'gateway id')}.>"


def parse_reply_subject(subject: str) -> tuple[int, int]:
    """``sb.gw.<gateway>.<conn>.<seq>`` -> ``(conn, seq)``; ValueError if malformed."""
    _, conn, seq = subject.rsplit(".", 2)
    return int(conn), int(seq)


def room_subject(room: str) -> str:
    return f"{PREFIX}.room.{_token(room, 'room name')}"


def room_wildcard() -> str:
    return f"{PREFIX}.room.>"


def discovery_subject(verb: str, service: Service) -> str:
    """nats.micro's ``$SRV.<verb>.<service>`` (PING, INFO, STATS)."""
    return f"$SRV.{verb}.{service}"
