"""Error codes shared by every process, and what the gateway does with each.

Workers raise :class:`WireError`; the service wrapper turns it into the nats.micro error
headers (``Nats-Service-Error-Code`` = code, ``Nats-Service-Error`` = description). The
gateway turns headers back into a :class:`WireError` (:func:`from_headers`) and either
sends an error frame in the endpoint's own shape or, for a connection-level failure,
closes the socket with :func:`close_code`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, StrEnum

from wire import headers as h


class ErrorCode(StrEnum):
    BAD_REQUEST = "400"  # malformed frame for the endpoint (invalid JSON, missing field)
    UNAUTHORIZED = "401"
    FORBIDDEN = "403"  # policy: bad user name, room not permitted
    NOT_FOUND = "404"
    TIMEOUT = "408"  # no reply within the request timeout
    GONE = "410"  # a re-sent publish stored before, no longer in the room's history
    TOO_LARGE = "413"
    UNSUPPORTED = "415"  # wrong frame type for the endpoint
    RATE_LIMITED = "429"
    INTERNAL = "500"
    UNAVAILABLE = "503"  # no worker instance answered (NATS no responders)
    STORAGE_FULL = "507"  # JetStream refused a write: out of storage (storage_full())


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013


MAX_CLOSE_REASON = 123  # bytes of UTF-8 a close frame's reason may carry (RFC 6455 5.5)


def close_reason(text: str) -> str:
    """``text`` cut to what fits in a close frame, at a character boundary (a longer
    reason makes the WebSocket library fail the close itself: the client sees 1006)."""
    raw = text.encode()
    if len(raw) <= MAX_CLOSE_REASON:
        return text
    return raw[:MAX_CLOSE_REASON].decode(errors="ignore")


_CLOSE_CODES: dict[ErrorCode, CloseCode] = {
    ErrorCode.BAD_REQUEST: CloseCode.POLICY_VIOLATION,
    ErrorCode.UNAUTHORIZED: CloseCode.POLICY_VIOLATION,
    ErrorCode.FORBIDDEN: CloseCode.POLICY_VIOLATION,
    ErrorCode.NOT_FOUND: CloseCode.POLICY_VIOLATION,
    ErrorCode.TIMEOUT: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.GONE: CloseCode.POLICY_VIOLATION,
    ErrorCode.TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
    ErrorCode.UNSUPPORTED: CloseCode.UNSUPPORTED_DATA,
    ErrorCode.RATE_LIMITED: CloseCode.POLICY_VIOLATION,
    ErrorCode.INTERNAL: CloseCode.INTERNAL_ERROR,
    ErrorCode.UNAVAILABLE: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.STORAGE_FULL: CloseCode.TRY_AGAIN_LATER,
}


class WireError(Exception):
    """A failure with a code every process understands and a human description."""

    def __init__(self, code: ErrorCode, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, WireError)
            and other.code == self.code
            and other.description == self.description
        )

    __hash__ = Exception.__hash__

    def headers(self) -> dict[str, str]:
        return {h.ERROR_CODE: str(self.code), h.ERROR: self.description}


def from_headers(headers: Mapping[str, str] | None) -> WireError | None:
    """The error a reply carries, or None for a successful reply.

    Covers worker errors (nats.micro headers) and the server's own status replies
    (``503`` no responders).
    """
    if not headers:
        return None
    code = headers.get(h.ERROR_CODE)
    if code is not None:
        try:
            known = ErrorCode(code)
        except ValueError:
            known = ErrorCode.INTERNAL
        return WireError(known, headers.get(h.ERROR, "") or "error")
    match headers.get(h.STATUS):
        case None:
            return None
        case "503":
            return WireError(ErrorCode.UNAVAILABLE, "service unavailable")
        case "408":
            return WireError(ErrorCode.TIMEOUT, "service timed out")
        case other:
            return WireError(ErrorCode.INTERNAL, f"NATS status {other}")


def close_code(code: ErrorCode) -> CloseCode:
    return _CLOSE_CODES[code]


# Refusals by a process that is there (code 503 like "no responders", which means no
# worker): a worker's full queue or its stop, the gateway's own in-flight cap. The
# gateway counts them as status "busy" (wire.metrics.Status), not "unavailable".
SERVICE_BUSY = WireError(ErrorCode.UNAVAILABLE, "service busy")
SERVICE_STOPPING = WireError(ErrorCode.UNAVAILABLE, "service stopping")
GATEWAY_BUSY = WireError(ErrorCode.UNAVAILABLE, "gateway busy")  # max_in_flight_total
_REFUSALS = frozenset(e.description for e in (SERVICE_BUSY, SERVICE_STOPPING, GATEWAY_BUSY))


def refused(error: WireError) -> bool:
    """True for a refusal (busy, stopping), not a missing worker."""
    return error.code is ErrorCode.UNAVAILABLE and error.description in _REFUSALS


def overloaded(error: WireError) -> bool:
    """True for a refusal for load (``service busy``, ``gateway busy``): the client is
    told so, rather than ``service unavailable``, so that it backs off."""
    return refused(error) and error != SERVICE_STOPPING


# JetStream's error codes for a write refused for want of room: insufficient resources
# (the server's max_file_store / max_memory_store, or the disk), and storage resources
# exceeded (the account's or the stream's limits).
JETSTREAM_FULL = frozenset({10023, 10047})


def storage_full(exc: BaseException) -> WireError | None:
    """The :class:`WireError` (507) for a JetStream API error that says it is out of
    room, else None: ``exc`` is whatever nats-py raised (its APIError carries
    ``err_code``)."""
    if getattr(exc, "err_code", None) in JETSTREAM_FULL:
        return WireError(ErrorCode.STORAGE_FULL, "storage full, try again later")
    return None
