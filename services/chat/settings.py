from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.settings import ServiceSettings


class ChatSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SB_CHAT_", extra="ignore")

    metrics_port: int = Field(9101, ge=0, le=65535)
