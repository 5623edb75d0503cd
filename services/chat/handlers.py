"""chat: join, leave and send for the tutorial's chat room, fanned out over NATS.

Each event is published once to the room's subject; every gateway with members in the
room receives it once and delivers it to its own sockets. The payload is the exact frame
the tutorial's ``ConnectionManager.broadcast`` sends.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from services.runner import Handler
from wire.errors import ErrorCode, WireError
from wire.frames import Request, encode_text
from wire.subjects import Op, is_token, room_subject

DEFAULT_ROOM = "general"
MAX_USERNAME = 64

Publish = Callable[[str, bytes], Awaitable[None]]


def _frame(message: str, sender: str, type_: str) -> bytes:
    # Key order and separators as Starlette's send_json writes the tutorial's payload.
    payload = {"message": message, "sender": sender, "type": type_}
    return encode_text(json.dumps(payload, separators=(",", ":"), ensure_ascii=False))


def check_username(name: str | None) -> str:
    if name is None:
        raise WireError(ErrorCode.FORBIDDEN, "missing user name")
    if not name:
        raise WireError(ErrorCode.FORBIDDEN, "user name is empty")
    if len(name) > MAX_USERNAME:
        raise WireError(ErrorCode.FORBIDDEN, f"user name is longer than {MAX_USERNAME} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name):
        raise WireError(ErrorCode.FORBIDDEN, "user name contains control characters")
    return name


def _room(req: Request) -> str:
    room = req.room or DEFAULT_ROOM
    if not is_token(room):
        raise WireError(ErrorCode.BAD_REQUEST, "invalid room name")
    return room


def handlers(publish: Publish) -> Mapping[Op, Handler]:
    async def join(req: Request) -> bytes:
        user = check_username(req.user)
        await publish(
            room_subject(_room(req)), _frame(f"{user} has joined the chat", "Server", "system")
        )
        return b""

    async def leave(req: Request) -> bytes:
        user = check_username(req.user)
        await publish(
            room_subject(_room(req)), _frame(f"{user} has left the chat", "Server", "system")
        )
        return b""

    async def send(req: Request) -> bytes:
        user = check_username(req.user)
        room = _room(req)
        try:
            data: Any = json.loads(req.data)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise WireError(ErrorCode.BAD_REQUEST, "Invalid JSON format") from None
        if not isinstance(data, dict) or "message" not in data:
            raise WireError(ErrorCode.BAD_REQUEST, 'Expected a JSON object with a "message" field')
        # f-string formatting of the parsed value, exactly as the tutorial does.
        await publish(room_subject(room), _frame(f"{user}: {data['message']}", user, "message"))
        return b""

    return {Op.JOIN: join, Op.LEAVE: leave, Op.SEND: send}
