"""Settings shared by every worker; each service subclasses with its own env prefix."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from wire.settings import SharedSettings


class ServiceSettings(SharedSettings):
    model_config = SettingsConfigDict(env_prefix="SB_SERVICE_", extra="ignore")

    metrics_host: str = Field("127.0.0.1", description="address of the /metrics listener")
    metrics_port: int = Field(0, ge=0, le=65535, description="0 = pick a free port")
    shutdown_timeout: float = Field(
        10.0, gt=0, description="SIGTERM: seconds to answer what was taken, then close"
    )
