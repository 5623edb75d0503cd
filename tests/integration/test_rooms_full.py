"""The JetStream store full (nats-server's ``max_file_store`` reached) under a running
chat: writes are answered ``507 storage full`` (HTTP 507), not ``500 internal error``
with a traceback per request; /ws/v2 members can still join and leave (their events not
stored); the tutorial chat goes on, its senders told their messages were not saved,
counted in ``switchboard_service_history_unsaved_total``; once room is freed, all is
as before. (services/chat/rooms.py, services/chat/handlers.py)"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import websockets

from switchboard.localstack import LocalStack, running
from tests.integration.client import sample, scrape
from tests.integration.jsfull import CAPPED, full
from tests.integration.v2client import V2

pytestmark = pytest.mark.timeout(60)

API_KEY = "k" * 40


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {"SB_GATEWAY_API_KEY": API_KEY}
    with running(tmp_path_factory.mktemp("full"), env=env, nats_conf=CAPPED) as s:
        yield s


def post(stack: LocalStack, room: str, text: str) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{stack.gateways[0].port}/api/rooms/{room}/messages",
        data=json.dumps({"text": text}).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_a_full_store_answers_507_and_lets_members_in(stack: LocalStack) -> None:
    base = f"ws://127.0.0.1:{stack.gateways[0].port}"
    ann = await V2.open(f"{base}/ws/v2?username=ann")
    tut = await websockets.connect(f"{base}/ws/chat?username=tut")
    try:
        await tut.recv()  # its own join notice
        assert (await ann.request("join", "general"))["type"] == "ack"
        before = await ann.request("publish", "general", text="before")
        async with full(stack.nats_url):
            refused = await ann.request("publish", "general", text="during")
            assert refused["type"] == "error" and refused["payload"]["code"] == "507", refused
            assert post(stack, "general", "api") == (
                507,
                {"detail": "storage full, try again later"},
            )
            bob = await V2.open(f"{base}/ws/v2?username=bob")
            joined = await bob.request("join", "general", since=0)  # in, and reads the history
            assert joined["type"] == "ack" and joined["payload"]["seq"] >= before["payload"]["seq"]
            assert "before" in [e["payload"].get("text") for e in bob.events["general"]]
            assert (await bob.request("leave", "general"))["type"] == "ack"
            await bob.close()

            await tut.send(json.dumps({"message": "unsaved"}))
            frames: list[dict] = []
            while not frames or frames[-1]["type"] != "error":
                frames.append(json.loads(await asyncio.wait_for(tut.recv(), 5)))
            assert {"message": "tut: unsaved", "sender": "tut", "type": "message"} in frames
            assert {
                "message": "not saved to history: storage full, try again later",
                "sender": "Server",
                "type": "error",
            } in frames, frames

            log = stack.replicas("chat")[0].log()
            assert "Traceback" not in log and "internal error" not in log
            assert log.count("history store full") == 1  # once per burst, not per request
            text = scrape(stack.replicas("chat")[0].metrics_port)
            name = "switchboard_service_history_unsaved_total"
            assert sample(text, name, event="message", reason="storage_full") == 1
            assert sample(text, name, event="join", reason="storage_full") == 1

        after = await ann.request("publish", "general", text="after")
        assert after["type"] == "ack" and after["payload"]["seq"] == before["payload"]["seq"] + 1
    finally:
        await ann.close()
        await tut.close()
