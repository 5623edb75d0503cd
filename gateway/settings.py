"""Gateway settings: environment variables ``SB_GATEWAY_*`` (plus the shared ``SB_NATS_*``)."""

from __future__ import annotations

import secrets
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SB_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    id: str = Field(
        default_factory=lambda: secrets.token_hex(6),
        pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="gateway instance id, part of its reply subjects",
    )
    nats_url: str = Field("nats://127.0.0.1:4222", validation_alias="SB_NATS_URL")
    nats_user: str | None = Field(None, validation_alias="SB_NATS_USER")
    nats_password: str | None = Field(None, validation_alias="SB_NATS_PASSWORD")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias="SB_LOG_LEVEL"
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
    per_message_deflate: bool = Field(True, description="offer permessage-deflate")
    ping_interval: float = Field(20.0, gt=0)
    ping_timeout: float = Field(20.0, gt=0)
    shutdown_timeout: float = Field(5.0, gt=0, description="grace for in-flight requests")
    discovery_timeout: float = Field(0.25, gt=0, description="wait for $SRV.PING answers")
