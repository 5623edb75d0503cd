import time

import pytest

from gateway.app import STATIC, TUTORIAL_WS, tutorial_page
from gateway.connection import Connection
from gateway.endpoints import V2
from gateway.limits import Admission, RateLimiter, TokenBucket, origin_allowed


def scope(origin: str | None, host: str = "127.0.0.1:8000") -> dict:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"headers": headers}


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        (None, [], True),  # not a browser
        ("http://127.0.0.1:8000", [], True),  # the gateway's own pages
        ("http://evil.example", [], False),  # cross-site WebSocket hijacking
        ("http://127.0.0.1:8001", [], False),
        # the tutorial's pages, opened at 127.0.0.1, connect to ws://localhost:8000
        ("http://localhost:8000", [], True),
        ("http://[::1]:8000", [], True),
        ("http://localhost:8001", [], False),
        ("http://localhost.evil.example:8000", [], False),
        ("http://127.0.0.1:80x", [], False),
        ("https://app.example", ["https://app.example"], True),
        ("http://127.0.0.1:8000", ["https://app.example"], False),
        ("http://anything", ["*"], True),
    ],
)
def test_origin_allowlist(origin, allowed, ok) -> None:
    assert origin_allowed(scope(origin), allowed) is ok


@pytest.mark.parametrize(
    ("origin", "host", "hosts", "ok"),
    [
        # DNS rebinding: the attacker's name, resolved to this gateway for the attack;
        # Origin and Host name the same host, which is not a host the gateway trusts
        ("http://rebind.evil.example:8000", "rebind.evil.example:8000", [], False),
        ("http://evil.example", "evil.example", [], False),
        ("http://chat.example.com", "chat.example.com", ["chat.example.com"], True),
        ("http://rebind.evil.example", "rebind.evil.example", ["chat.example.com"], False),
        ("http://anything.example", "anything.example", ["*"], True),
        # addresses cannot be rebound; localhost never leaves the machine
        ("http://192.168.1.20:8080", "192.168.1.20:8080", [], True),
        ("http://[2001:db8::1]:8080", "[2001:db8::1]:8080", [], True),
        ("http://localhost:8080", "localhost:8080", [], True),
        ("http://app.localhost:8080", "app.localhost:8080", [], True),
        ("http://localhost.evil.example", "localhost.evil.example", [], False),
    ],
)
def test_same_host_rule_trusts_no_foreign_name(origin, host, hosts, ok) -> None:
    assert origin_allowed(scope(origin, host), [], hosts) is ok


def test_token_bucket_allows_burst_then_rate() -> None:
    bucket = TokenBucket(rate=1000, burst=5)
    assert all(bucket.take() for _ in range(5))
    assert not bucket.take()
    time.sleep(0.01)  # ~10 tokens accrue, capped at the burst
    assert sum(bucket.take() for _ in range(20)) == 5


def test_rate_limiter_closes_after_repeated_excess() -> None:
    limiter = RateLimiter(frames=1e-9, frames_burst=2, nbytes=1e9, bytes_burst=1e9, close_after=3)
    assert limiter.allow(1) and limiter.allow(1)
    assert not limiter.allow(1) and not limiter.exhausted
    assert not limiter.allow(1) and not limiter.allow(1)
    assert limiter.exhausted


def test_rate_limiter_counts_bytes() -> None:
    limiter = RateLimiter(frames=1e9, frames_burst=1e9, nbytes=1e-9, bytes_burst=100, close_after=3)
    assert limiter.allow(60)
    assert not limiter.allow(60)


def test_admission_per_ip_and_total() -> None:
    admission = Admission(total=3, per_ip=2)
    assert admission.admit("a") and admission.admit("a")
    assert not admission.admit("a")
    assert admission.admit("b")
    assert not admission.admit("c")  # total reached
    admission.release("a")
    assert admission.admit("c")


def test_ban_after_rate_abuse_is_per_address_and_expires() -> None:
    admission = Admission(total=10, per_ip=10)
    assert admission.banned("a") == 0.0
    admission.ban("a", 0.2)  # as RelayEndpoint.refuse_rate does on its 1008
    assert 0.0 < admission.banned("a") <= 0.2
    assert admission.banned("b") == 0.0
    time.sleep(0.25)
    assert admission.banned("a") == 0.0 and "a" not in admission.bans


def test_an_address_carries_its_rate_limiter_and_few_addresses_are_remembered() -> None:
    admission = Admission(total=10, per_ip=5)
    flooder = RateLimiter(1, 1, 1, 1, close_after=3)
    flooder.refused = 3
    admission.limiter("10.0.0.1", flooder)
    again = admission.limiter("10.0.0.1", RateLimiter(1, 1, 1, 1, close_after=3))
    assert again.refused == 3  # reconnecting is no clean slate
    for i in range(5000):  # addresses that come once (an IPv6 /64, NAT churn)
        admission.limiter(f"10.1.{i // 256}.{i % 256}", RateLimiter(1, 1, 1, 1, 3))
    # the 2 x total newest only: the scan of them all on each new address is gone
    assert len(admission.recent) == 20
    assert "10.1.19.135" in admission.recent and "10.0.0.1" not in admission.recent


def test_expired_bans_are_forgotten() -> None:
    admission = Admission(total=10, per_ip=10)
    for i in range(1024):
        admission.ban(f"10.0.{i // 256}.{i % 256}", -1.0)  # already over
    admission.ban("a", 5)
    assert list(admission.bans) == ["a"]


def msg(n: int) -> dict:
    return {"type": "websocket.send", "text": "x" * n}


def test_room_events_overflowing_the_queue_close_1013() -> None:
    drops = []
    conn = Connection(1, V2, 8, max_out_bytes=100)
    conn.on_slow = lambda: drops.append(1)
    conn.push(msg(60))
    conn.push(msg(60))  # over 100 bytes queued: slow consumer
    assert drops == [1]
    assert list(conn.out) == [
        {
            "type": "websocket.close",
            "code": 1013,
            "reason": "slow consumer: reconnect and rejoin with since",
        }
    ]
    conn.push(msg(1))  # nothing more after the close
    assert len(conn.out) == 1


def test_replies_are_kept_and_pause_reading_instead() -> None:
    conn = Connection(1, V2, 8, max_out_bytes=100)
    seq = conn.allocate(None)
    conn.complete(seq, [msg(80), msg(80)])
    assert len(conn.out) == 2 and not conn.capacity.is_set()  # kept; reading paused
    sent = conn.out.popleft()
    conn.sent(sent)
    assert conn.capacity.is_set() and conn.out_bytes == 80


def test_tutorial_pages_open_their_socket_where_they_were_asked_for() -> None:
    page = (STATIC / "echo.html").read_text()
    assert TUTORIAL_WS + "/ws" in page
    # at the tutorial's own address: its bytes, unchanged
    assert tutorial_page(page, "localhost:8000") == page
    assert tutorial_page(page, None) == page
    moved = tutorial_page(page, "127.0.0.1:9000")
    assert moved == page.replace("ws://localhost:8000/ws", "ws://127.0.0.1:9000/ws")
    assert "ws://[::1]:9000/ws" in tutorial_page(page, "[::1]:9000")
    assert "wss://chat.example.com/ws" in tutorial_page(page, "chat.example.com", secure=True)
    # a Host that is not a plain host[:port] changes nothing (no markup from a header)
    for odd in ('x"><script>alert(1)</script>', "a b", "host:port:9", "a/b"):
        assert tutorial_page(page, odd) == page
