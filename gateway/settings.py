"""Gateway settings: environment variables ``SB_GATEWAY_*`` (plus the shared ``SB_NATS_*``)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from wire.settings import SharedSettings


class GatewaySettings(SharedSettings):
    model_config = SettingsConfigDict(env_prefix="SB_GATEWAY_", extra="ignore")
    nested_prefixes = ("SB_GATEWAY_FILES_",)  # gateway.files.FilesSettings

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (make run: PORT)")
    id: str = Field(
        default_factory=lambda: secrets.token_hex(6),
        pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="gateway instance id, part of its reply subjects",
    )

    request_timeout: float = Field(2.0, gt=0, description="seconds to wait for a worker")
    max_frame_bytes: int = Field(1024 * 1024, gt=0, description="larger frames: close 1009")
    max_in_flight: int = Field(
        64, ge=1, description="requests per connection awaiting a reply before reading pauses"
    )
    reply_mode: Literal["subscription", "request"] = Field(
        "subscription",
        description="subscription: one reply subscription per gateway (default); "
        "request: one nats request() and future per frame (kept for the benchmark)",
    )
    batch: bool = Field(
        True,
        description="send the frames of one event-loop pass for the same stateless operation "
        "as one NATS message (wire/batch.py); a pass with one frame sends it alone",
    )
    batch_max_frames: int = Field(64, ge=2, description="frames per batch at most")
    batch_max_bytes: int = Field(
        64 * 1024, ge=1, description="bytes of frames per batch at most; larger frames go alone"
    )
    per_message_deflate: bool = Field(True, description="offer permessage-deflate")
    deflate_context_takeover: bool = Field(
        False,
        description="true: permessage-deflate keeps zlib state per connection (a better "
        "ratio, ~34 KiB more per idle connection); false: each message on its own",
    )
    ping_interval: float = Field(20.0, gt=0, description="seconds between WebSocket pings")
    ping_timeout: float = Field(20.0, gt=0, description="no pong within it: the socket is closed")
    shutdown_timeout: float = Field(5.0, gt=0, description="grace for in-flight requests")
    discovery_timeout: float = Field(0.25, gt=0, description="wait for $SRV.PING answers")

    # identity (rooms)
    allow_anonymous: bool = Field(True, description="connections without a token allowed")
    jwt_secret: SecretStr | None = Field(None, description="HS256 key")
    jwt_public_key: str | None = Field(None, description="RS256 public key: PEM, or @path")
    jwt_audience: str | None = Field(None, description="required token aud, if set")
    jwt_issuer: str | None = Field(None, description="required token iss, if set")
    jwt_leeway: float = Field(
        30.0, ge=0, le=300, description="seconds of clock skew allowed on exp, nbf and iat"
    )
    api_key: SecretStr | None = Field(None, description="key for POST /api/rooms/*/messages")
    system_sender: str = Field(
        "system",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="sender of publish API messages (reserved: no user may take it)",
    )
    presence_interval: float = Field(5.0, gt=0, description="presence heartbeat period")
    max_rooms: int = Field(100, ge=1, description="rooms one connection may join")
    leave_retry_timeout: float = Field(
        60.0,
        gt=0,
        description="a closed socket's leave is sent again until a chat replica answers, "
        "for at most this long (keep it under SB_CHAT_DEDUPE_WINDOW: a leave handled "
        "whose answer was lost is then not stored twice)",
    )

    # limits (docs/security.md)
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="browser Origins allowed; empty = same host only; ['*'] = any",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="host names, besides IP addresses and localhost, that the same-host "
        "Origin rule trusts (empty SB_GATEWAY_ALLOWED_ORIGINS); others are refused, as a "
        "DNS rebinding attack would use them; ['*'] = any",
    )
    max_connections: int = Field(20000, ge=1, description="per gateway; more: close 1013")
    max_connections_per_ip: int = Field(512, ge=1, description="more: close 1013")
    rate_frames: float = Field(500.0, gt=0, description="frames/s per connection")
    rate_frames_burst: float = Field(1000.0, gt=0, description="frames at once per connection")
    rate_bytes: float = Field(32 * 1024 * 1024, gt=0, description="bytes/s per connection")
    rate_bytes_burst: float = Field(
        64 * 1024 * 1024, gt=0, description="bytes at once per connection"
    )
    rate_close_after: int = Field(
        200, ge=1, description="refused frames beyond accepted ones: close 1008"
    )
    rate_ban_seconds: float = Field(
        10.0,
        ge=0,
        description="after a 1008 for rate abuse, the address's new connections are "
        "closed 1008 at once for this long; 0 = off",
    )
    idle_timeout: float = Field(
        0.0,
        ge=0,
        description="no frame from the client for this long: close (readers too); 0 = off, "
        "as in the tutorial: a live peer answers pings, a dead one is found by them",
    )
    handshake_timeout: float = Field(
        10.0, gt=0, description="seconds to send a complete request (the upgrade): else closed"
    )
    send_queue_bytes: int = Field(
        1024 * 1024,
        gt=0,
        description="per socket; room events beyond it: close 1013; replies owed plus "
        "those expected for requests out beyond it: reading pauses",
    )
    send_queue_max_bytes: int = Field(
        32 * 1024 * 1024,
        gt=0,
        description="per socket; replies owed (queued, or waiting for an earlier one) "
        "beyond it: close 1013 (slow consumer) and what was owed is dropped; at least "
        "SB_GATEWAY_SEND_QUEUE_BYTES, best that plus two of the largest replies (NATS "
        "max_payload)",
    )
    max_in_flight_total: int = Field(20000, ge=1, description="per gateway; more: error frame")

    @model_validator(mode="after")
    def _check_queues(self) -> GatewaySettings:
        if self.send_queue_max_bytes < self.send_queue_bytes:
            raise ValueError(
                "SB_GATEWAY_SEND_QUEUE_MAX_BYTES must be at least SB_GATEWAY_SEND_QUEUE_BYTES"
            )
        return self

    @model_validator(mode="after")
    def _check_identity(self) -> GatewaySettings:
        if self.jwt_public_key and self.jwt_public_key.startswith("@"):
            self.jwt_public_key = Path(self.jwt_public_key[1:]).read_text()
        if self.jwt_public_key:
            try:
                key = serialization.load_pem_public_key(self.jwt_public_key.encode())
            except ValueError:
                key = None
            if not isinstance(key, rsa.RSAPublicKey):  # RS256 tokens are checked with it
                raise ValueError("SB_GATEWAY_JWT_PUBLIC_KEY must be an RSA PEM public key or @path")
        if self.api_key is not None and len(self.api_key.get_secret_value()) < 16:
            raise ValueError("SB_GATEWAY_API_KEY must be at least 16 characters (or unset)")
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError("SB_GATEWAY_JWT_SECRET must be at least 32 characters")
        if not self.allow_anonymous and not (self.jwt_secret or self.jwt_public_key):
            raise ValueError(
                "SB_GATEWAY_ALLOW_ANONYMOUS=false needs SB_GATEWAY_JWT_SECRET "
                "or SB_GATEWAY_JWT_PUBLIC_KEY"
            )
        return self
