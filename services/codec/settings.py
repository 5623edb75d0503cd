from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.settings import ServiceSettings


class CodecSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SB_CODEC_", extra="ignore")

    metrics_port: int = Field(9103, ge=0, le=65535, description="/metrics port; 0 = any free")
    inflate_cap_bytes: int = Field(16 * 1024 * 1024, gt=0, description="max inflated size")
    transform_cap_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        description="/ws/codec: largest decompressed output (also kept under NATS max_payload)",
    )
    concurrency: int = Field(
        4,
        ge=1,
        description="/ws/codec and /ws/compressed requests handled at once per replica "
        "and operation (in threads); the rest wait, taken in turn between connections",
    )
    queue_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="/ws/codec and /ws/compressed requests waiting per replica and "
        "operation, in bytes; past it a request is refused at once (service busy)",
    )
