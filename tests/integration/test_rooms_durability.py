"""Room history lives in JetStream file storage: it survives a NATS server restart, and
the live fan-out works again afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from switchboard.localstack import LocalStack, running
from tests.integration.v2client import V2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("durable")) as s:
        yield s


async def test_history_survives_nats_restart(stack) -> None:
    url = f"ws://127.0.0.1:{stack.gateways[0].port}/ws/v2?username=keeper"
    client = await V2.open(url)
    await client.request("join", "durable")
    acks = [
        (await client.request("publish", "durable", text=f"kept-{i}"))["payload"]["seq"]
        for i in range(5)
    ]
    await client.close()

    await asyncio.to_thread(stack.restart_nats)
    await asyncio.to_thread(stack.wait_ready, stack.gateways[0], 30)

    client = await V2.open(url)
    try:
        deadline = time.monotonic() + 20
        while True:  # workers may still be re-subscribing after the restart
            reply = await client.request("history", "durable", limit=50)
            if reply["type"] == "history":
                break
            assert time.monotonic() < deadline, reply
            await asyncio.sleep(0.5)
        texts = [
            e["payload"].get("text") for e in reply["payload"]["events"] if e["type"] == "message"
        ]
        assert texts == [f"kept-{i}" for i in range(5)]
        # live delivery works after the restart, and the sequence continues
        await client.request("join", "durable")
        ack = await client.request("publish", "durable", text="after")
        assert ack["payload"]["seq"] > acks[-1]
        events = await client.until_seq("durable", ack["payload"]["seq"])
        assert events[-1]["payload"]["text"] == "after"
    finally:
        await client.close()
