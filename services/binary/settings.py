from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.settings import ServiceSettings

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


class BinarySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SB_BINARY_", extra="ignore")

    metrics_port: int = Field(9102, ge=0, le=65535, description="/metrics port; 0 = any free")

    # files (services/binary/files.py, docs/protocol.md "Files")
    files_bucket: str = Field(
        "SB_FILES", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="object store of stored files"
    )
    uploads_bucket: str = Field(
        "SB_UPLOADS", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="KV bucket of open uploads"
    )
    chunk_bytes: int = Field(256 * KIB, ge=1 * KIB, le=4 * MIB, description="stored chunk size")
    max_file_bytes: int = Field(1 * GIB, ge=0, description="largest file; larger: 413")
    quota_bytes: int = Field(4 * GIB, ge=0, description="per user, stored + uploading; 413")
    store_max_bytes: int = Field(-1, ge=-1, description="the whole bucket; -1 = no limit")
    upload_idle_timeout: float = Field(
        300.0, gt=0, description="an owned upload without chunks for this long is let go"
    )
    upload_ttl: float = Field(
        24 * 3600.0, gt=0, description="an upload not resumed for this long is discarded"
    )
    store_timeout: float = Field(5.0, gt=0, description="JetStream acks and API calls")
    concurrency: int = Field(
        16,
        ge=1,
        description="/ws/files requests (upload, read, info, list, delete) handled at once "
        "per replica; the rest wait, taking turns by caller",
    )
    queue_bytes: int = Field(
        16 * MIB, ge=0, description="/ws/files requests waiting per replica; past it: busy"
    )
