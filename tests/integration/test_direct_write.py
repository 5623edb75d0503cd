"""The gateway's direct write path against the real stack. A client without
permessage-deflate has its frames written straight to the socket (gateway.wsframe,
``Connection.write_now``); once the socket backs up they wait in the connection's send
queue, and direct writes resume only behind it. Nothing is reordered or lost across the
switch, and the metrics count both ways alike."""

from __future__ import annotations

import asyncio

from tests.integration.client import connect, recv, sample, scrape
from tests.integration.v2client import V2


def ws_base(stack) -> str:
    return f"ws://127.0.0.1:{stack.gateways[0].port}"


async def test_a_backed_up_socket_queues_then_drains_in_order(stack) -> None:
    port = stack.gateways[0].port
    n, pad = 900, "x" * 16000  # ~14 MB of echoes: more than the socket buffers hold
    before = sample(scrape(port), "switchboard_gateway_frames_total", direction="out")
    async with connect(ws_base(stack) + "/ws", compression=None, max_queue=1) as ws:

        async def send_all() -> None:  # blocks once the gateway stops reading us
            for i in range(n):
                await ws.send(f"{i}:{pad}")

        sender = asyncio.create_task(send_all())
        # Not reading: the gateway's transport fills and replies wait in the send queue
        # (sampled every second into switchboard_gateway_send_queue_bytes).
        queued = 0.0
        for _ in range(40):
            await asyncio.sleep(0.1)
            queued = sample(scrape(port), "switchboard_gateway_send_queue_bytes", stat="max")
            if queued:
                break
        got = [await recv(ws, 10) for _ in range(n)]
        await asyncio.wait_for(sender, 10)
        # ... and once drained, direct writes again, still in order.
        await ws.send("after")
        assert await recv(ws) == "Echo: after"
    assert queued > 0, "the send queue was never used: the test did not back the socket up"
    wrong = [i for i, g in enumerate(got) if g != f"Echo: {i}:{pad}"]
    assert not wrong, f"{len(wrong)} replies out of place, the first at {wrong[:1]}"
    after = sample(scrape(port), "switchboard_gateway_frames_total", direction="out")
    assert after - before >= n + 1


async def test_room_events_reach_plain_and_deflate_members_in_order(stack) -> None:
    base = ws_base(stack)
    room = "direct-write"
    plain = await V2.open(f"{base}/ws/v2?username=plain", compression=None)
    deflate = await V2.open(f"{base}/ws/v2?username=deflate", compression="deflate")
    publisher = await V2.open(f"{base}/ws/v2?username=pub", compression=None)
    try:
        for member in (plain, deflate):
            assert (await member.request("join", room))["type"] == "ack"
        rids = [await publisher.send("publish", room, n=i) for i in range(200)]
        for rid in rids:
            assert (await publisher.reply(rid))["type"] == "ack"
        for member in (plain, deflate):
            deadline = asyncio.get_running_loop().time() + 10
            while (
                len(
                    mine := [
                        e
                        for e in member.events.get(room, [])
                        if e["payload"].get("sender") == "pub"
                    ]
                )
                < 200
            ):
                await member.pump(max(0.01, deadline - asyncio.get_running_loop().time()))
            assert [e["payload"]["n"] for e in mine] == list(range(200))
            seqs = member.seqs(room)
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no repeat
    finally:
        for ws in (plain, deflate, publisher):
            await ws.close()
