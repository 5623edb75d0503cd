"""Settings every process shares: how to reach NATS, and the log level. Each process's
own ``Settings`` class (gateway/settings.py, services/settings.py) extends this one; these
fields keep their fixed names (``SB_NATS_*``, ``SB_LOG_LEVEL``) whatever its prefix."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings


class SharedSettings(BaseSettings):
    nats_url: str = Field(
        "nats://127.0.0.1:4222", validation_alias="SB_NATS_URL", description="NATS server"
    )
    nats_user: str | None = Field(
        None, validation_alias="SB_NATS_USER", description="NATS user (infra/nats/auth.conf)"
    )
    nats_password: str | None = Field(
        None, validation_alias="SB_NATS_PASSWORD", description="that user's password"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias="SB_LOG_LEVEL", description="JSON log lines from this level up"
    )
