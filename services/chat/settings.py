from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.settings import ServiceSettings


class ChatSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SB_CHAT_", extra="ignore")

    metrics_port: int = Field(9101, ge=0, le=65535, description="/metrics port; 0 = any free")
    history_max_messages: int = Field(1000, ge=1, description="events kept per room")
    history_max_age: float = Field(7 * 24 * 3600.0, gt=0, description="seconds")
    history_trim_interval: float = Field(
        600.0, gt=0, description="seconds between deletions of events older than max age"
    )
    dedupe_window: float = Field(120.0, gt=0, description="publish id dedupe window, seconds")
    recover_newest: int = Field(50, ge=1, le=500, description="events sent when not recovered")
    presence_ttl: float = Field(15.0, gt=0, description="forget a silent gateway's members")
    stream_replicas: int = Field(
        1, ge=1, le=5, description="JetStream replicas of the rooms stream (a NATS cluster)"
    )
    reply_budget_bytes: int = Field(
        1024 * 1024, ge=65536, description="events per history/recovery reply, in bytes"
    )
    concurrency: int = Field(
        8,
        ge=1,
        description="history and presence requests handled at once per replica; the rest "
        "wait, taking turns by connection (joins, leaves and publishes keep their order)",
    )
    recent_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="memory for rooms' newest events, which recoveries read instead of the "
        "stream (least recently used rooms forgotten first); 0 = off",
    )
    ordered_concurrency: int = Field(
        64,
        ge=1,
        description="connections whose join, leave or publish is handled at once per "
        "replica (each connection's one at a time, in order; the rest wait their turn)",
    )
    ordered_queue_bytes: int = Field(
        16 * 1024 * 1024,
        ge=0,
        description="joins and publishes waiting their turn; past it: busy (leaves are "
        "always taken)",
    )
    queue_bytes: int = Field(
        4 * 1024 * 1024, ge=0, description="history/presence requests waiting; past it: busy"
    )
