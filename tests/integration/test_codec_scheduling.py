"""/ws/codec under a client that pipelines slow requests (services/scheduler.py):
another client's request is not stuck behind them, requests the gateway gave up on are
not worked on, and a codec replica stopped with SIGTERM answers every request it took."""

from __future__ import annotations

import asyncio
import signal
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from switchboard.localstack import LocalStack, running
from tests.integration.client import connect, recv, sample, scrape
from wire.codec import encode_request

# compressible but not trivially so: zstd level 19 takes ~0.15 s on 512 KiB here
TEXT = b"".join(b"%d bottles of beer %d\n" % (i, i * 7919 % 1000) for i in range(60000))
SLOW = encode_request("compress", "zstd", TEXT[: 512 * 1024], 19)
QUICK = encode_request("compress", "zlib", b"hello " * 10, 1)
REQUESTS = "switchboard_service_requests_total"
QUEUED = "switchboard_service_queued_requests"
# replies to a pipelining client that may come between another client's request and its
# reply: 2 (the one running when it came, then the pipeliner's next: its turn was first),
# more if one ends while the request is on its way to the codec, or for the order in
# which the two sockets are read here. In arrival order: all of the pipeliner's.
AHEAD = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # one at a time per replica, so that the order in which requests run is visible
    env = {"SB_CODEC_CONCURRENCY": "1"}
    with running(tmp_path_factory.mktemp("codec-scheduling"), env=env) as s:
        yield s


def url(stack: LocalStack) -> str:
    return f"ws://127.0.0.1:{stack.gateways[0].port}/ws/codec"


async def reply(ws) -> dict:
    """One transform's reply: its report, after reading its output frame if any."""
    report = orjson.loads(await recv(ws, 15))
    if report["status"] == "success":
        assert isinstance(await recv(ws, 15), bytes)
    return report


def transforms(stack: LocalStack, status: str) -> float:
    port = stack.replicas("codec")[0].metrics_port
    return sample(scrape(port), REQUESTS, service="codec", operation="transform", status=status)


def taken(stack: LocalStack, op: str) -> float:
    """Requests of ``op`` the codec has taken: waiting their turn, or answered."""
    text = scrape(stack.replicas("codec")[0].metrics_port)
    return sample(text, QUEUED, service="codec", operation=op) + sample(
        text, REQUESTS, service="codec", operation=op
    )


async def wait_taken(stack: LocalStack, op: str, count: float) -> None:
    """Wait until the codec has taken ``count`` requests of ``op`` (:func:`taken`)."""
    deadline = time.monotonic() + 10
    while await asyncio.to_thread(taken, stack, op) < count:
        assert time.monotonic() < deadline, f"the {op} requests did not reach the codec"
        await asyncio.sleep(0.02)


async def test_a_pipelining_client_neither_starves_others_nor_costs_work_nobody_waits_for(
    stack: LocalStack,
) -> None:
    count = 40  # ~6 s of work one at a time, three times the gateway's 2 s timeout
    ok_before, expired_before = transforms(stack, "ok"), transforms(stack, "timeout")

    def handled() -> tuple[float, float]:
        ok = transforms(stack, "ok") - ok_before
        return ok, transforms(stack, "timeout") - expired_before

    async with connect(url(stack), max_size=None) as heavy, connect(url(stack)) as light:
        before = await asyncio.to_thread(taken, stack, "transform")
        for _ in range(count):
            await heavy.send(SLOW)

        async def heavy_replies() -> list[tuple[float, str]]:
            return [(time.monotonic(), (await reply(heavy))["status"]) for _ in range(count)]

        reader = asyncio.create_task(heavy_replies())
        # all of them at the codec (waiting or answered, but one running) before the light
        # request: in arrival order, it would come after every one of them
        await wait_taken(stack, "transform", before + count - 1)
        sent = time.monotonic()
        await light.send(QUICK)
        report = await reply(light)
        answered = time.monotonic()
        heavy_done = await reader
        assert report["status"] == "success", report
        # it waited for the heavy client's running request and its next, not for all of
        # them: one at a time in arrival order, for every one the codec could compress
        # before the gateway's timeout (or it got "service unavailable" at 2 s)
        ahead = [status for at, status in heavy_done if sent < at < answered]
        assert len(ahead) <= AHEAD, ahead
        statuses = [status for _, status in heavy_done]
        assert statuses.count("success") >= 1
        assert statuses.count("success") < count
        assert set(statuses) == {"success", "error"}

        # the gateway answered the rest "service unavailable" at its timeout; the codec
        # skipped them instead of compressing for nobody
        deadline = time.monotonic() + 10  # the last ones are being skipped
        while sum(handled()) < count + 1 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        done, expired = handled()
        assert expired >= 1
        assert done + expired == count + 1  # each request once: 40 heavy + 1 light
        # and the codec is free at once afterwards
        await light.send(QUICK)
        assert (await reply(light))["status"] == "success"


async def test_inflation_bombs_hold_up_neither_other_endpoints_nor_other_clients(
    stack: LocalStack,
) -> None:
    """/ws/compressed inflates each frame up to the 16 MiB cap: tens of ms for a bomb.
    That ran on the codec's event loop, so one client pipelining bombs made every /ws
    and /ws/json request of the replica wait past the gateway's timeout ("Error:
    service unavailable"). Now inflation runs in threads, taking turns by connection
    (one at a time here, so the turns show in the order the replies come in)."""
    bomb = zlib.compress(bytes(17 * 1024 * 1024), 9)  # ~17 KB, over the cap
    count = 100  # one after another on the loop: ~4 s or more, twice the timeout
    base = f"ws://127.0.0.1:{stack.gateways[0].port}"
    async with (
        connect(f"{base}/ws/compressed") as attacker,
        connect(f"{base}/ws") as echo,
        connect(f"{base}/ws/compressed") as other,
    ):
        before = await asyncio.to_thread(taken, stack, "inflate")
        for _ in range(count):
            await attacker.send(bomb)

        async def attacker_replies() -> list[tuple[float, str]]:
            replies = [(await recv(attacker, 15), time.monotonic()) for _ in range(count)]
            return [(at, orjson.loads(frame)["message"]) for frame, at in replies]

        reader = asyncio.create_task(attacker_replies())
        await wait_taken(stack, "inflate", before + count - 1)  # the codec is busy with them
        for i in range(10):
            await echo.send(f"m{i}")
            assert await recv(echo, 5) == f"Echo: m{i}"
            await asyncio.sleep(0.05)
        sent = time.monotonic()
        await other.send(zlib.compress(b"abc" * 100))
        assert orjson.loads(await recv(other, 5))["status"] == "success"
        answered = time.monotonic()
        bombs = await reader
        # the other client waited for the bomb being inflated and the attacker's next,
        # not for all of them: in arrival order, for every bomb inflated before the
        # gateway's timeout (or "service unavailable" at 2 s)
        ahead = [message for at, message in bombs if sent < at < answered]
        assert len(ahead) <= AHEAD, ahead
        messages = {message for _, message in bombs}
        # each bomb answered: refused at the cap or, past the timeout, unavailable
        assert messages <= {
            "Decompressed data exceeds 16777216 bytes",
            "service unavailable",
            "service busy",
        }
        assert "Decompressed data exceeds 16777216 bytes" in messages


async def test_a_stopping_codec_answers_every_request_it_took(tmp_path: Path) -> None:
    count = 8
    frame = encode_request("compress", "zstd", TEXT[: 256 * 1024], 19)  # ~0.1 s each
    # a long gateway timeout: none of them may expire, however slow the machine
    env = {"SB_CODEC_CONCURRENCY": "1", "SB_GATEWAY_REQUEST_TIMEOUT": "10"}
    with running(tmp_path, env=env) as stack:
        codec = stack.replicas("codec")[0]
        async with connect(url(stack), max_size=None) as ws:
            for _ in range(count):
                await ws.send(frame)
            await asyncio.sleep(0.3)  # taken by the codec: running or waiting their turn
            codec.signal(signal.SIGTERM)
            reports = [await reply(ws) for _ in range(count)]
        assert [r["status"] for r in reports] == ["success"] * count, reports
        assert await asyncio.to_thread(codec.wait, 15) == 0


async def test_a_codec_out_of_time_on_shutdown_refuses_what_still_waits(tmp_path: Path) -> None:
    """SIGTERM with more queued work than SB_CODEC_SHUTDOWN_TIMEOUT allows: what runs
    finishes, what still waits is answered at once ("service unavailable": send it
    again), not dropped for the client to wait out the gateway's timeout."""
    count = 12
    env = {
        "SB_CODEC_CONCURRENCY": "1",
        "SB_CODEC_SHUTDOWN_TIMEOUT": "0.5",
        "SB_GATEWAY_REQUEST_TIMEOUT": "20",
    }
    with running(tmp_path, env=env) as stack:
        codec = stack.replicas("codec")[0]
        async with connect(url(stack), max_size=None) as ws:
            for _ in range(count):
                await ws.send(SLOW)  # ~0.15 s each here: ~1.8 s of work
            await asyncio.sleep(0.3)
            stopped = time.monotonic()
            codec.signal(signal.SIGTERM)
            reports = [await reply(ws) for _ in range(count)]
            took = time.monotonic() - stopped
        statuses = [r["status"] for r in reports]
        assert statuses[0] == "success" and "error" in statuses, statuses
        assert {r["message"] for r in reports if r["status"] == "error"} == {"service unavailable"}
        assert took < 10, took  # answered, not left to the gateway's 20 s timeout
        assert await asyncio.to_thread(codec.wait, 15) == 0
