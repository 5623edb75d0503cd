"""Settings shared by every worker; each service subclasses with its own env prefix."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SB_SERVICE_", extra="ignore")

    nats_url: str = Field("nats://127.0.0.1:4222", validation_alias="SB_NATS_URL")
    nats_user: str | None = Field(None, validation_alias="SB_NATS_USER")
    nats_password: str | None = Field(None, validation_alias="SB_NATS_PASSWORD")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias="SB_LOG_LEVEL"
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(0, ge=0, le=65535, description="0 = pick a free port")
    shutdown_timeout: float = Field(10.0, gt=0)
