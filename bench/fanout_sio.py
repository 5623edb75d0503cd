"""Baseline (b) of the fan-out benchmark: python-socketio's ``AsyncServer`` with its Redis
manager, as its documentation sets it up for several server processes.

Run: ``FANOUT_REDIS_URL=redis://127.0.0.1:<port>/0 uvicorn bench.fanout_sio:app``.

- ``join`` (with an ack): the client enters a socket.io room;
- ``publish`` (with an ack): the server emits the data as a ``message`` event to the
  room; through ``AsyncRedisManager`` the emit is a Redis PUBLISH, and every server
  process (this one included) delivers it to its own members of the room.
"""

from __future__ import annotations

import os

import socketio

manager = socketio.AsyncRedisManager(os.environ.get("FANOUT_REDIS_URL", "redis://127.0.0.1:6379/0"))
sio = socketio.AsyncServer(
    async_mode="asgi", client_manager=manager, logger=False, engineio_logger=False
)
app = socketio.ASGIApp(sio)


@sio.on("join")
async def join(sid: str, room: str) -> bool:
    await sio.enter_room(sid, room)
    return True


@sio.on("publish")
async def publish(sid: str, room: str, payload: dict) -> bool:
    await sio.emit("message", payload, room=room)
    return True
