"""Batches against the real stack (wire/batch.py): frames for the same stateless
operation that the gateway reads in one loop pass leave as one NATS message and come
back as one; each client still gets its own replies, byte for byte and in order."""

from __future__ import annotations

import asyncio
import json
import time
import zlib

import nats

from tests.integration.client import connect, recv_n, sample, scrape
from wire import batch
from wire.subjects import Service, batch_subject


def ws_base(stack) -> str:
    return f"ws://127.0.0.1:{stack.gateways[0].port}"


def batched(port: int, service: str) -> tuple[float, float]:
    text = scrape(port)
    return (
        sample(text, "switchboard_gateway_batches_total", service=service),
        sample(text, "switchboard_gateway_batched_frames_total", service=service),
    )


async def test_pipelined_frames_are_batched_and_answered_in_order(stack) -> None:
    """One client writing 50 frames at once: the gateway reads them in one pass."""
    port = stack.gateways[0].port
    before = batched(port, "codec")
    async with connect(ws_base(stack) + "/ws") as ws:
        for _round in range(3):
            await asyncio.gather(*(ws.send(f"frame {i}") for i in range(50)))
            assert await recv_n(ws, 50) == [f"Echo: frame {i}" for i in range(50)]
    batches, frames = (a - b for a, b in zip(batched(port, "codec"), before, strict=True))
    assert batches >= 1 and frames >= 2 * batches, (batches, frames)


BURSTS = {  # per endpoint: one client's burst of frames, and replies per frame
    "/ws": (lambda c: [f"{c}-{k}" for k in range(20)], 1),
    "/ws/json": (lambda c: [json.dumps({"c": c, "k": k}) for k in range(10)] + ["{bad"], 1),
    "/ws/binary": (lambda c: [bytes(range(256))[: c + k] for k in range(10)], 2),
    "/ws/mixed": (lambda c: [f"t{c}", bytes(c), "", b""] * 3, 1),
    "/ws/compressed": (lambda c: [zlib.compress(b"a" * (c + 1) * 999), b"junk"] * 3, 1),
}


async def test_many_clients_get_the_tutorials_replies(stack, tutorial) -> None:
    """Concurrent clients on the five batched endpoints, each writing a burst of text and
    binary frames, valid and invalid: every socket gets exactly what the tutorial's code
    sends it for the same frames, in the same order."""
    port = stack.gateways[0].port
    before = [batched(port, s) for s in ("codec", "binary")]

    async def burst(base: str, path: str, c: int) -> list[str | bytes]:
        make, per_frame = BURSTS[path]
        frames = make(c)
        async with connect(base + path) as ws:
            await asyncio.gather(*(ws.send(f) for f in frames))
            return await recv_n(ws, per_frame * len(frames))

    async def compare(path: str, c: int) -> None:
        ours, theirs = await asyncio.gather(
            burst(ws_base(stack), path, c), burst(tutorial, path, c)
        )
        assert ours == theirs, path
        assert [type(g) for g in ours] == [type(e) for e in theirs]

    clients = [compare(path, c) for path in BURSTS for c in range(1, 7)]
    await asyncio.wait_for(asyncio.gather(*clients), 60)
    after = [batched(port, s) for s in ("codec", "binary")]
    for (b0, f0), (b1, f1) in zip(before, after, strict=True):
        assert b1 > b0 and f1 - f0 >= 2 * (b1 - b0)


async def test_a_batch_lost_with_its_replica_is_retried_frame_by_frame(stack) -> None:
    """A codec replica that takes a batch and never answers (killed with it in flight):
    each frame of the batch is sent again on its own after half the request timeout,
    another replica answers, and the client gets every reply, in order, well within
    the timeout."""
    nc = await nats.connect(stack.nats_url)
    swallowed: list[int] = []

    async def black_hole(msg) -> None:
        swallowed.append(len(msg.headers[batch.KEYS].split()))

    sub = await nc.subscribe(batch_subject(Service.CODEC), queue="codec", cb=black_hole)
    port = stack.gateways[0].port
    retries = sample(scrape(port), "switchboard_gateway_retries_total", service="codec")
    try:
        async with connect(ws_base(stack) + "/ws") as ws:
            for attempt in range(12):  # the queue group picks the black hole at random
                frames = [f"{attempt}:{i}" for i in range(20)]
                started = time.monotonic()
                await asyncio.gather(*(ws.send(f) for f in frames))
                assert await recv_n(ws, 20, timeout=5) == [f"Echo: {f}" for f in frames]
                if swallowed:
                    assert time.monotonic() - started < 2.0  # SB_GATEWAY_REQUEST_TIMEOUT
                    break
    finally:
        await sub.unsubscribe()
        await nc.close()
    assert swallowed, "no batch reached the stand-in replica in 12 tries"
    after = sample(scrape(port), "switchboard_gateway_retries_total", service="codec")
    assert after - retries >= sum(swallowed)
