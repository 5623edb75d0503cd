"""Structured JSON logs, configured once per process (python-json-logger).

Every log line about one frame carries its ``trace_id`` (the 32 hex digits of the
frame's W3C ``traceparent``), in every process:

- workers: the service wrapper (``services/runner.py``) sets :data:`TRACE_ID` (a
  ``contextvars.ContextVar``) around each handler call, and the filter installed here
  copies it onto every record emitted meanwhile, so a handler's own log lines carry it
  without passing it around;
- the gateway handles replies in shared NATS callbacks and a per-socket sender, not in a
  task per frame, so its per-frame lines pass ``extra={"trace_id": ...}`` explicitly
  (``wire.headers.trace_id(traceparent)``).

Per-frame lines are DEBUG (INFO would cost throughput); errors and timeouts of a frame are
WARNING or ERROR, with the trace id. Levels come from ``SB_LOG_LEVEL``.

Secrets in query strings (``?token=<JWT>``, which uvicorn puts in its line about every
accepted WebSocket) are replaced with ``[redacted]`` before any line is written.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from urllib.parse import unquote_plus

from pythonjsonlogger.json import JsonFormatter

TRACE_ID: ContextVar[str | None] = ContextVar("sb_trace_id", default=None)


class TraceFilter(logging.Filter):
    """Adds ``trace_id`` from :data:`TRACE_ID` to records that do not carry one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "trace_id" not in record.__dict__:
            trace = TRACE_ID.get()
            if trace is not None:
                record.trace_id = trace
        return True


_PARAM = re.compile(r"([?&;])([^=&;?\s\"']+)=([^&;?\s\"']+)")
SECRET_NAMES = frozenset({"token", "access_token", "password", "secret"})
REDACTED = "[redacted]"


def _hide(match: re.Match[str]) -> str:
    # The name as the gateway reads it (parse_qsl decodes it: ?%74oken= is ?token=).
    if unquote_plus(match[2]).lower() not in SECRET_NAMES:
        return match[0]
    return f"{match[1]}{match[2]}={REDACTED}"


_USERINFO = re.compile(r"(://)[^/\s@]+@")  # nats://user:password@ or nats://token@


def redact(text: str) -> str:
    """``text`` with the values of secret query parameters, and the credentials of URLs
    (``scheme://user:password@host``, ``nats://token@host``), replaced."""
    if "=" in text:
        text = _PARAM.sub(_hide, text)
    if "@" in text:
        text = _USERINFO.sub(rf"\g<1>{REDACTED}@", text)
    return text


class RedactFilter(logging.Filter):
    """Redacts secret query parameters in a record's message and string arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        elif isinstance(args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in args.items()}
        return True


def configure(level: str, component: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceFilter())
    handler.addFilter(RedactFilter())
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "asctime": "time"},
            static_fields={"component": component},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
