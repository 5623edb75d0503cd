from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.settings import ServiceSettings


class BinarySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SB_BINARY_", extra="ignore")

    metrics_port: int = Field(9102, ge=0, le=65535)
