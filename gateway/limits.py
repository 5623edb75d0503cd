"""Limits a public WebSocket endpoint needs: origin checks, connection caps, per-connection
rate limits. All configured in GatewaySettings; docs/security.md lists the defaults."""

from __future__ import annotations

import ipaddress
import time
from collections import Counter, OrderedDict
from collections.abc import Collection
from urllib.parse import urlsplit

from wire.errors import ErrorCode, WireError


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, amount: float = 1.0) -> bool:
        now = time.monotonic()
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < amount:
            self.tokens = tokens
            return False
        self.tokens = tokens - amount
        return True


RATE_LIMITED = WireError(ErrorCode.RATE_LIMITED, "rate limit exceeded")


class RateLimiter:
    """Frames and bytes per second for one connection. Excess frames are refused with
    an error frame; once refusals outnumber accepted frames by ``close_after`` the
    connection is closed (1008). (Not "in a row": a client sending at many times the rate
    gets a token now and then, which must not wipe its record.)"""

    __slots__ = ("bytes", "close_after", "frames", "refused")

    def __init__(
        self,
        frames: float,
        frames_burst: float,
        nbytes: float,
        bytes_burst: float,
        close_after: int,
    ) -> None:
        self.frames = TokenBucket(frames, frames_burst)
        self.bytes = TokenBucket(nbytes, bytes_burst)
        self.close_after = close_after
        self.refused = 0

    def allow(self, size: int) -> bool:
        if self.frames.take() and self.bytes.take(size):
            if self.refused:
                self.refused -= 1
            return True
        self.refused += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.refused >= self.close_after

    def inherit(self, other: RateLimiter) -> None:
        """Start where ``other`` (the address's previous connection) stands: reconnecting
        gives neither a fresh burst nor a clean record."""
        for mine, theirs in ((self.frames, other.frames), (self.bytes, other.bytes)):
            mine.tokens, mine.stamp = min(mine.burst, theirs.tokens), theirs.stamp
        self.refused = other.refused


class Admission:
    """Open connections, in all and per client address."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total = total
        self.per_ip = per_ip
        self.count = 0
        self.by_ip: Counter[str] = Counter()
        # each address's newest rate limiter, oldest address first
        self.recent: OrderedDict[str, RateLimiter] = OrderedDict()
        self.bans: dict[str, float] = {}  # address -> monotonic time its ban ends

    def limiter(self, ip: str, limiter: RateLimiter) -> RateLimiter:
        """``limiter`` for a new connection from ``ip``, carrying on from the address's
        previous one (:meth:`RateLimiter.inherit`): a flooder closed with 1008 that
        reconnects is refused again at once instead of getting another burst. The
        ``2 * total`` addresses that connected last are remembered (the oldest is
        forgotten first: a scan of them all for ones gone a minute cost 5 ms per new
        connection once 40,000 addresses had come by)."""
        last = self.recent.pop(ip, None)
        if last is not None:
            limiter.inherit(last)
        self.recent[ip] = limiter
        while len(self.recent) > 2 * self.total:
            self.recent.popitem(last=False)
        return limiter

    def ban(self, ip: str, seconds: float) -> None:
        """``ip`` had a connection closed for rate abuse: refuse its new connections for
        ``seconds`` (:meth:`banned`). Reconnecting in a loop then costs the gateway one
        handshake per attempt and no frames."""
        now = time.monotonic()
        if len(self.bans) >= 1024:  # forget the expired ones
            self.bans = {a: t for a, t in self.bans.items() if t > now}
        self.bans[ip] = now + seconds

    def banned(self, ip: str) -> float:
        """Seconds until ``ip`` may connect again (0: it may)."""
        until = self.bans.get(ip)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self.bans[ip]
            return 0.0
        return left

    def admit(self, ip: str) -> bool:
        if self.count >= self.total or self.by_ip[ip] >= self.per_ip:
            return False
        self.count += 1
        self.by_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.count -= 1
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]


LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def trusted_host(hostname: str | None, hosts: Collection[str]) -> bool:
    """A name this gateway's pages may be served under, for the same-host rule: an IP
    address, ``localhost`` (and ``*.localhost``, which browsers resolve to the loopback
    themselves), or one of ``hosts`` (``*`` = any). Any other name could be an attacker's,
    resolved to this gateway's address for the attack (DNS rebinding): the page's Origin
    and the Host header then name the same host, the attacker's."""
    if not hostname:
        return False
    if "*" in hosts or hostname in hosts:
        return True
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


def same_host(origin: str, host: str, hosts: Collection[str] = ()) -> bool:
    """``origin`` names ``host``, a :func:`trusted_host`, or both are this machine's
    loopback under two names and the same port: the tutorial's pages, opened at
    http://127.0.0.1:8000, connect to ws://localhost:8000 as written."""
    netloc = urlsplit(origin).netloc.lower()
    host = host.lower()
    try:
        a, b = urlsplit("//" + netloc), urlsplit("//" + host)
        if netloc == host:
            return trusted_host(b.hostname, hosts)
        return a.hostname in LOOPBACK and b.hostname in LOOPBACK and a.port == b.port
    except ValueError:  # a port that is not a number
        return False


def origin_allowed(scope: dict, allowed: list[str], hosts: Collection[str] = ()) -> bool:
    """Browsers send ``Origin``; other clients need not. Allowed: no Origin, an Origin
    in ``allowed`` (``*`` = any), or, when ``allowed`` is empty, an Origin naming the
    host the request was sent to, if that is a :func:`trusted_host` (the pages this
    gateway serves; :func:`same_host`)."""
    origin = host = None
    for name, value in scope.get("headers", ()):
        if name == b"origin":
            origin = value.decode("latin-1")
        elif name == b"host":
            host = value.decode("latin-1")
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    if allowed:
        return False
    return host is not None and same_host(origin, host, hosts)


def client_ip(scope: dict) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"
